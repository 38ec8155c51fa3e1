"""The inspection commands (tokenize, detokenize, embeddings, logits, topk, info, trace, and
generate's --top-logprobs/--show-tokens/--json) against sentencepiece and transformers.

Models are tiny random ``transformers.LlamaForCausalLM`` checkpoints (``conftest.make_checkpoint``)
paired with the tokenizer trained in ``conftest.tiny_tokenizer_model``; the CLI runs in-process
through ``llmcli.cli.app.main`` (so exit codes and one-line errors are the real ones).
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from conftest import SHARED, make_checkpoint
from llmcli.errors import LLMCLIError, UsageError
from llmcli.inspection import tensors as T
from llmcli.inspection.tokens import detokenize_ids, explain_roundtrip, parse_ids, tokenize_text
from llmcli.sampling import apply_min_p, apply_top_p, filter_logits, SamplingParams
from llmcli.tokenizer import Tokenizer
from llmcli.weights import load_model

pytest.importorskip("transformers")

TRICKY = [
    "", " ", "   ", "  two leading", "two trailing  ", "a   b    c", "\n", "line1\nline2\n\n",
    "\ttab\t", " \n \t ", "\r\n", "emoji 😀🎉", "👨‍👩‍👧 family ZWJ", "中文字符测试", "e\u0301 combining",
    "a\u0308\u0323 two marks", "ｆｕｌｌｗｉｄｔｈ　１２３", "ﬁ ligature ① ㎏ Ⅳ", "1234567890",
    "3.14159 and 2,000,000", "<s>", "</s>", "<s>hello</s>", " <s> ", "<unk>", "<0x41>",
    "\u200bzero width", "\ufeffBOM", "Once upon a time, Lily 🐶!",
]

TEXT = "Once upon a time there was a little girl"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def nfkc_tokenizer_model(tmp_path_factory) -> Path:
    """sentencepiece's defaults: NFKC normalization, extra whitespace removed, no byte
    fallback (characters outside the vocabulary become <unk>)."""
    buf = io.BytesIO()
    corpus = ["Once upon a time there was a little girl named Lily.",
              "She liked to play in the park with her dog, Max!", "The sun was shining."]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus * 20), model_writer=buf,
                                   vocab_size=60, model_type="bpe", num_threads=1, minloglevel=2,
                                   hard_vocab_limit=False)
    path = tmp_path_factory.mktemp("spm_nfkc") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer_model):
    """``(model_dir, hf_model, llmcli_model, tokenizer)``: GQA, untied, context 64."""
    tmp = tmp_path_factory.mktemp("inspect")
    vocab = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_model)).get_piece_size()
    model_dir, hf = make_checkpoint(tmp, vocab_size=vocab, num_key_value_heads=2)
    shutil.copyfile(tiny_tokenizer_model, model_dir / "tokenizer.model")
    model, _ = load_model(model_dir)
    return model_dir, hf, model, Tokenizer(model_dir / "tokenizer.model")


@pytest.fixture(scope="module")
def hf_eager(tiny):
    from transformers import LlamaForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            m = LlamaForCausalLM.from_pretrained(str(tiny[0]), attn_implementation="eager",
                                                 dtype=torch.float32)
        except TypeError:  # older transformers
            m = LlamaForCausalLM.from_pretrained(str(tiny[0]), attn_implementation="eager",
                                                 torch_dtype=torch.float32)
    return m.eval()


def _ids(tok: Tokenizer, text: str = TEXT) -> list[int]:
    return tok.encode(text)


@torch.no_grad()
def _hf(hf, ids: list[int], **kw):
    return hf(input_ids=torch.tensor([ids]), use_cache=False, **kw)


def _one_line_error(result: tuple[int, str, str], expected_code: int, *needles: str) -> None:
    """``result`` of the ``cli`` fixture: exit code ``expected_code``, nothing on stdout, and
    one ``error: ...`` line on stderr containing every needle (e.g. the option's name)."""
    code, out, err = result
    assert code == expected_code, err
    assert out == "", out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], err


# ----------------------------------------------------------------------------- tokenize
def _tokenizers(tiny_tokenizer_model, nfkc_tokenizer_model):
    out = [Tokenizer(tiny_tokenizer_model), Tokenizer(nfkc_tokenizer_model)]
    llama2 = SHARED / "fixtures" / "tokenizers" / "llama2" / "tokenizer.model"
    if llama2.is_file():
        out.append(Tokenizer(llama2))
    return out


@pytest.mark.parametrize("add_bos", [True, False])
def test_tokenize_matches_sentencepiece(tiny_tokenizer_model, nfkc_tokenizer_model, add_bos):
    for tok in _tokenizers(tiny_tokenizer_model, nfkc_tokenizer_model):
        sp = spm.SentencePieceProcessor(model_file=str(tok.path))
        for text in TRICKY:
            r = tokenize_text(tok, text, add_bos=add_bos)
            expected = ([sp.bos_id()] if add_bos else []) + sp.encode(text)
            assert r.ids == expected, (tok.path, text)
            assert [t.piece for t in r.tokens] == [sp.id_to_piece(i) for i in expected]
            assert r.count == len(expected) and r.characters == len(text)
            assert r.num_bytes == len(text.encode("utf-8"))
            assert r.decoded == sp.decode(expected)
            assert r.roundtrip_ok == (sp.decode(expected) == text)
            assert bool(r.roundtrip_notes) != r.roundtrip_ok
            for t in r.tokens:
                if sp.is_byte(t.id):
                    assert t.kind == "byte" and t.bytes == bytes([int(t.piece[3:5], 16)])
                elif sp.is_control(t.id):
                    assert t.kind == "control" and t.bytes == b""
                elif sp.is_unknown(t.id):
                    assert t.kind == "unknown"
                else:
                    assert t.kind == "normal"
                    assert t.bytes == t.piece.replace("\u2581", " ").encode()
            if not any(t.kind == "unknown" for t in r.tokens):
                joined = b"".join(t.bytes for t in r.tokens).decode("utf-8")
                assert joined in (r.decoded, " " + r.decoded)  # sentencepiece's dummy prefix
            # detokenize is the inverse of tokenize, exactly as sentencepiece decodes
            assert detokenize_ids(tok, expected).text == sp.decode(expected)


def test_roundtrip_explains_normalization(nfkc_tokenizer_model):
    tok = Tokenizer(nfkc_tokenizer_model)
    r = tokenize_text(tok, "  Once   upon ｏｎｃｅ ")
    assert not r.roundtrip_ok
    notes = " ".join(r.roundtrip_notes)
    assert "collapsed" in notes and "leading spaces" in notes and "trailing spaces" in notes
    assert "NFKC" in notes and "first difference" in notes
    r = tokenize_text(tok, "Once 中")
    assert any("<unk>" in n for n in r.roundtrip_notes)
    assert explain_roundtrip("same", "same") == []


def test_cli_tokenize_and_detokenize(tiny, cli):
    model_dir, _, _, tok = tiny
    text = "Once  upon\ta time 😀 中文"
    code, out, _ = cli("tokenize", "-m", model_dir, text, "--json")
    assert code == 0
    doc = json.loads(out)
    assert [t["id"] for t in doc["tokens"]] == tok.encode(text) == doc["ids"]
    assert doc["count"] == len(doc["tokens"])
    assert all(bytes(t["bytes"]).hex() == t["hex"] for t in doc["tokens"])
    assert doc["roundtrip"]["ok"] is True
    code, out, _ = cli("tokenize", "-m", model_dir, text, "--ids", "--no-bos")
    assert out.split() == [str(i) for i in tok.encode(text, add_bos=False)]
    code, out, _ = cli("tokenize", "-m", model_dir, "--count", stdin=text)
    assert out == f"{len(tok.encode(text))}\n"
    code, out, _ = cli("tokenize", "-m", model_dir, text)
    assert code == 0 and "<0xF0>" in out and "byte" in out and "round-trip: ok" in out
    assert f"{len(tok.encode(text))} tokens" in out
    # detokenize: ids as arguments, and from stdin (the output of tokenize --ids)
    ids = " ".join(map(str, tok.encode(text)))
    code, out, _ = cli("detokenize", "-m", model_dir, *ids.split())
    assert code == 0 and out == text
    code, out, _ = cli("detokenize", "-m", model_dir, stdin=ids + "\n")
    assert code == 0 and out == text
    code, out, _ = cli("detokenize", "-m", model_dir, "--json", "1,2", "[5]")
    assert json.loads(out)["ids"] == [1, 2, 5]
    # empty text is not an error for tokenize: BOS alone, or nothing
    assert cli("tokenize", "-m", model_dir, "", "--ids")[1].split() == ["1"]
    assert cli("tokenize", "-m", model_dir, "", "--count", "--no-bos")[1] == "0\n"


def test_detokenize_errors(tiny, cli):
    model_dir, _, _, tok = tiny
    _one_line_error(cli("detokenize", "-m", model_dir, "1", str(tok.vocab_size)), 2, "ID", "vocabulary")
    _one_line_error(cli("detokenize", "-m", model_dir, "12x"), 2, "ID", "'12x'")
    _one_line_error(cli("detokenize", "-m", model_dir), 2, "ID")
    with pytest.raises(UsageError, match="ID: 'two'"):
        parse_ids(["1", "two"])


def test_tokenize_detokenize_info_do_not_import_torch(tiny):
    model_dir = str(tiny[0])
    code = (
        "import sys\n"
        "from llmcli.cli.app import main\n"
        f"for args in (['tokenize', '-m', {model_dir!r}, 'Hello there', '--json'],\n"
        f"             ['detokenize', '-m', {model_dir!r}, '1', '5', '9'],\n"
        f"             ['info', '-m', {model_dir!r}, '--json']):\n"
        "    sys.argv = ['llmcli', *args]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "    print()\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('TORCH', bad[:3])\n"
        "sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "TORCH []" in proc.stdout


# ----------------------------------------------------------------------------- embeddings
def test_embeddings_match_transformers_hidden_states(tiny):
    model_dir, hf, model, tok = tiny
    ids = _ids(tok)
    ref = _hf(hf, ids, output_hidden_states=True).hidden_states
    _, cap = T.forward(model, ids)
    n = model.config.num_hidden_layers
    assert len(ref) == n + 1
    for layer in range(n + 1):
        r = T.embeddings_report(model, tok, ids, cap, layer, neighbors=3)
        got = torch.tensor(r.vectors)
        assert got.shape == (len(ids), model.config.hidden_size)
        assert (got - ref[layer][0]).abs().max() < 1e-4, layer
        assert torch.allclose(torch.tensor(r.norms), got.norm(dim=-1))
        assert len(r.neighbors) == len(ids) and all(len(x) == 3 for x in r.neighbors)
    # layer 0 is exactly the embedding matrix's rows; a token's nearest row is itself
    r0 = T.embeddings_report(model, tok, ids, cap, 0, neighbors=1)
    emb = hf.model.embed_tokens.weight
    assert torch.equal(torch.tensor(r0.vectors), emb[ids])
    assert [nb[0]["id"] for nb in r0.neighbors] == ids


def test_cli_embeddings_json_and_save(tiny, cli, tmp_path):
    model_dir, hf, _, tok = tiny
    ids = _ids(tok)
    save = tmp_path / "h.safetensors"
    code, out, err = cli("embeddings", "-m", model_dir, TEXT, "--layer", "2", "--json", "--save", save)
    assert code == 0, err
    doc = json.loads(out)
    assert [t["id"] for t in doc["tokens"]] == ids and doc["layer"] == 2
    ref = _hf(hf, ids, output_hidden_states=True).hidden_states[2][0]
    assert (torch.tensor(doc["vectors"]) - ref).abs().max() < 1e-4
    from safetensors.torch import load_file

    saved = load_file(str(save))
    assert torch.equal(saved["hidden_states"], torch.tensor(doc["vectors"]))
    assert saved["input_ids"].tolist() == ids
    assert [p.name for p in tmp_path.iterdir()] == ["h.safetensors"]  # no temporary left
    code, out, _ = cli("embeddings", "-m", model_dir, TEXT, "--dims", "3", "--neighbors", "2")
    assert code == 0 and "RoPE" in out and "nearest" in out and "d2" in out and "d3" not in out


# ----------------------------------------------------------------------------- logits
def test_logits_match_transformers_at_every_position(tiny, cli):
    model_dir, hf, model, tok = tiny
    ids = _ids(tok)
    ref = _hf(hf, ids).logits[0]
    logits, _ = T.forward(model, ids)
    assert (logits - ref).abs().max() < 1e-4
    r = T.logits_report(tok, ids, logits, top=5, all_positions=True)
    assert len(r.positions) == len(ids)
    for t, pos in enumerate(r.positions):
        assert (torch.tensor(pos.logits) - ref[t]).abs().max() < 1e-4
        assert [c["id"] for c in pos.top] == torch.topk(logits[t], 5).indices.tolist()
        tops = [c["logit"] for c in pos.top]
        assert tops == sorted(tops, reverse=True)
        assert [c["logit"] for c in pos.bottom] == sorted(c["logit"] for c in pos.bottom)
        assert math.isclose(pos.stats["max"], tops[0], rel_tol=1e-6)
        assert math.isclose(pos.stats["mean"], float(logits[t].double().mean()), abs_tol=1e-6)
    code, out, err = cli("logits", "-m", model_dir, TEXT, "--json", "--top", "4")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["logits"]) == model.config.vocab_size
    assert (torch.tensor(doc["logits"]) - ref[-1]).abs().max() < 1e-4
    assert [c["id"] for c in doc["top"]] == torch.topk(ref[-1], 4).indices.tolist()
    assert {"id", "piece", "logit"} <= set(doc["top"][0])
    code, out, _ = cli("logits", "-m", model_dir, TEXT, "--all-positions", "--top", "2")
    assert code == 0 and out.count("next-token logits after position") == len(ids)


def test_cli_logits_save_full_tensor(tiny, cli, tmp_path):
    model_dir, hf, _, tok = tiny
    save = tmp_path / "logits.safetensors"
    code, _, err = cli("logits", "-m", model_dir, TEXT, "--save", save)
    assert code == 0 and "saved" in err
    from safetensors.torch import load_file

    got = load_file(str(save))["logits"]
    assert (got - _hf(hf, _ids(tok)).logits[0]).abs().max() < 1e-4


# ----------------------------------------------------------------------------- topk
@pytest.mark.parametrize("temp,top_p,min_p", [(1.0, 0.9, 0.05), (0.7, 0.5, 0.0), (1.6, 1.0, 0.2)])
def test_topk_probabilities_and_cuts(tiny, temp, top_p, min_p):
    _, hf, model, tok = tiny
    ids = _ids(tok)
    ref = _hf(hf, ids).logits[0, -1]
    r = T.topk_report(model, tok, ids, k=30, temperature=temp, top_p=top_p, min_p=min_p)
    step = r.steps[0]
    ref_probs = torch.softmax(ref.double() / temp, dim=-1)
    probs = [c["prob"] for c in step.candidates]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
    for c in step.candidates:
        assert abs(c["prob"] - float(ref_probs[c["id"]])) < 1e-5
        assert abs(c["logprob"] - math.log(c["prob"])) < 1e-9
    assert [c["id"] for c in step.candidates] == torch.topk(ref_probs, 30).indices.tolist()
    cums = [c["cumulative"] for c in step.candidates]
    assert all(abs(a - b) < 1e-9 for a, b in zip(cums, itertools_accumulate(probs)))
    assert abs(step.entropy_bits - float(-(ref_probs * ref_probs.clamp_min(1e-300).log2()).sum())) < 1e-4
    # cut positions are what llmcli.sampling's filters keep
    logits = T.forward(model, ids)[0][-1]
    scaled = logits / temp
    assert step.top_p_keep == int(torch.isfinite(apply_top_p(scaled, top_p)).sum())
    assert step.min_p_keep == int(torch.isfinite(apply_min_p(scaled, min_p)).sum())
    kept = filter_logits(logits, SamplingParams(temperature=temp, top_k=0, top_p=top_p, min_p=min_p))
    assert step.kept == int(torch.isfinite(kept).sum()) == min(step.top_p_keep, step.min_p_keep)
    if top_p < 1:  # the cut is where the cumulative probability first reaches p
        n = step.top_p_keep
        if n <= len(cums):
            assert cums[n - 1] >= top_p - 1e-6 and (n == 1 or cums[n - 2] < top_p)
    assert step.chosen["id"] == step.candidates[0]["id"]  # greedy without a seed


def itertools_accumulate(xs):
    import itertools

    return list(itertools.accumulate(xs))


def test_topk_steps_use_cache_and_seeded_sampling(tiny, cli):
    model_dir, hf, model, tok = tiny
    ids = _ids(tok, "Once upon")
    r = T.topk_report(model, tok, ids, k=5, steps=4, eos_ids=[])
    assert len(r.steps) == 4
    seq = list(ids)
    for step in r.steps:  # each step equals a fresh full forward of the sequence so far
        ref = torch.softmax(_hf(hf, seq).logits[0, -1].double(), dim=-1)
        assert all(abs(c["prob"] - float(ref[c["id"]])) < 1e-5 for c in step.candidates)
        assert step.chosen["id"] == int(ref.argmax())
        seq.append(step.chosen["id"])
    a = T.topk_report(model, tok, ids, k=5, steps=4, temperature=1.5, top_p=0.99, min_p=0.0, seed=7, eos_ids=[])
    b = T.topk_report(model, tok, ids, k=5, steps=4, temperature=1.5, top_p=0.99, min_p=0.0, seed=7, eos_ids=[])
    assert [s.chosen["id"] for s in a.steps] == [s.chosen["id"] for s in b.steps]
    assert all(s.chosen["rank"] < s.kept for s in a.steps)
    code, out, err = cli("topk", "-m", model_dir, "Once upon", "--steps", "3", "-k", "4", "--json", "-s", "3")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["steps"]) <= 3 and doc["mode"] == "sampled"
    for s in doc["steps"]:
        assert len(s["candidates"]) == 4 and {"id", "piece", "logit", "prob", "logprob"} <= set(s["candidates"][0])
        assert "chosen" in s and s["entropy_bits"] >= 0
    code, out, _ = cli("topk", "-m", model_dir, "Once upon", "-k", "6", "--top-p", "0.3", "--min-p", "0.5")
    assert code == 0 and "entropy" in out and "chosen (greedy)" in out
    assert any(ch in out for ch in "▏▎▍▌▋▊▉█") and "min-p 0.5 cuts here" in out


# ----------------------------------------------------------------------------- trace
def test_trace_lens_and_attention_match_transformers(tiny, hf_eager, cli):
    model_dir, _, model, tok = tiny
    ids = _ids(tok)
    ref = _hf(hf_eager, ids, output_attentions=True)
    r = T.trace_report(model, tok, ids, k=5, attention_layer=1, head=0)
    top = int(ref.logits[0, -1].argmax())
    assert r.layers[-1]["lens"][0]["id"] == top == r.chosen["id"] == r.candidates[0]["id"]
    assert len(r.layers) == model.config.num_hidden_layers
    assert len(r.embedding_norms) == len(ids)
    _, cap = T.forward(model, ids, attentions=True)
    assert len(cap.attentions) == len(ref.attentions)
    for mine, theirs in zip(cap.attentions, ref.attentions):
        assert mine.shape == theirs.shape
        assert (mine - theirs).abs().max() < 1e-5
        assert torch.allclose(mine.sum(-1), torch.ones(mine.shape[:-1]), atol=1e-5)
    w = torch.tensor(r.attention["weights"])
    assert (w - ref.attentions[1][0, 0]).abs().max() < 1e-5
    for layer, info in enumerate(r.layers):  # most-attended token = arg-max of the last row
        last = ref.attentions[layer][0, :, -1]
        assert [h["position"] for h in info["heads"]] == last.argmax(-1).tolist()
    code, out, err = cli("trace", "-m", model_dir, TEXT, "--json", "--attention", "0")
    assert code == 0, err
    doc = json.loads(out)
    mean = ref.attentions[0][0].mean(0)
    assert (torch.tensor(doc["attention"]["weights"]) - mean).abs().max() < 1e-5
    assert doc["chosen"]["id"] == top and doc["layers"][-1]["lens"][0]["id"] == top
    code, out, _ = cli("trace", "-m", model_dir, TEXT, "--attention", "1", "--head", "3")
    assert code == 0
    for heading in ("tokens", "embedding", "blocks", "final norm", "softmax", "chosen", "attention"):
        assert f"== {heading}" in out
    assert any(ch in out for ch in "░▒▓█")


# ----------------------------------------------------------------------------- info
def test_info(tiny, cli):
    model_dir, hf, _, _ = tiny
    code, out, err = cli("info", "-m", model_dir, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["parameters"]["total"] == sum(p.numel() for p in hf.parameters())
    assert doc["parameters"]["embedding"] == hf.model.embed_tokens.weight.numel()
    assert len(doc["parameters"]["per_block"]) == hf.config.num_hidden_layers
    assert {t["name"] for t in doc["tensors"]} == set(hf.state_dict())
    assert doc["context_length"] == hf.config.max_position_embeddings
    assert doc["tokenizer"]["vocab_size"] == hf.config.vocab_size
    assert doc["tokenizer"]["special"]["bos"] == {"id": 1, "piece": "<s>"}
    code, out, _ = cli("info", "-m", model_dir)
    assert code == 0 and "model.layers.1.mlp.up_proj.weight" in out and "grouped-query" in out


# ----------------------------------------------------------------------------- renderers
def test_rich_views_render(tiny):
    from rich.console import Console

    from llmcli import render

    _, _, model, tok = tiny
    ids = _ids(tok)
    trace = T.trace_report(model, tok, ids, attention_layer=0)
    results = {"tokenize": tokenize_text(tok, "a  b 😀"), "trace": trace,
               "topk": T.topk_report(model, tok, ids, k=4, steps=2),
               "logits": T.logits_report(tok, ids, T.forward(model, ids)[0], 3),
               "embeddings": T.embeddings_report(model, tok, ids, T.forward(model, ids)[1], 1, 2),
               "detokenize": detokenize_ids(tok, ids)}
    for kind, result in results.items():
        buf = io.StringIO()
        render.RICH[kind](result, Console(file=buf, width=140, force_terminal=True, color_system="truecolor"))
        assert buf.getvalue().strip(), kind
    buf = io.StringIO()
    render.heatmap_rich(trace.attention, trace.tokens,
                        Console(file=buf, force_terminal=True, color_system="truecolor", width=140))
    assert "\x1b[48;2;" in buf.getvalue()  # coloured cells
    buf = io.StringIO()
    render.heatmap_rich(trace.attention, trace.tokens, Console(file=buf, no_color=True, width=140))
    assert any(ch in buf.getvalue() for ch in "░▒▓█")  # NO_COLOR: shading characters


# ----------------------------------------------------------------------------- errors
def test_bad_input_one_line_errors(tiny, cli, tmp_path):
    model_dir, _, model, tok = tiny
    m = ("-m", model_dir)
    vocab, n_layers = model.config.vocab_size, model.config.num_hidden_layers
    # empty text: with BOS it is one token (the model's first-token distribution); without, an error
    for cmd in ("embeddings", "logits", "topk", "trace"):
        code, out, err = cli(cmd, *m, "", "--json")
        assert code == 0, (cmd, err)
        assert len(json.loads(out)["tokens"]) == 1
        _one_line_error(cli(cmd, *m, "", "--no-bos"), 2, "TEXT", "--no-bos")
    long_text = " ".join(["Once upon a time"] * 40)
    for cmd in ("embeddings", "logits", "topk", "trace"):
        _one_line_error(cli(cmd, *m, long_text), 1, "TEXT", "context of 64")
    _one_line_error(cli("topk", *m, TEXT, "-k", "0"), 2, "-k")
    _one_line_error(cli("topk", *m, TEXT, "-k", str(vocab + 1)), 2, "-k", str(vocab + 1))
    _one_line_error(cli("topk", *m, TEXT, "--temp", "0"), 2, "--temp")
    _one_line_error(cli("topk", *m, TEXT, "--top-p", "0"), 2, "--top-p")
    _one_line_error(cli("topk", *m, TEXT, "--steps", "60"), 2, "--steps")
    _one_line_error(cli("topk", *m, TEXT, "--steps", "0"), 2, "--steps")
    # tokenize never runs the model: a long text is fine, and flagged
    code, out, _ = cli("tokenize", *m, long_text, "--json")
    assert code == 0 and json.loads(out)["fits_context"] is False
    assert "longer than the model's context of 64" in cli("tokenize", *m, long_text)[1]
    _one_line_error(cli("trace", *m, TEXT, "-k", "0"), 2, "-k")
    _one_line_error(cli("logits", *m, TEXT, "--top", str(vocab + 1)), 2, "--top")
    _one_line_error(cli("embeddings", *m, TEXT, "--layer", str(n_layers + 1)), 2, "--layer")
    _one_line_error(cli("embeddings", *m, TEXT, "--layer", "-1"), 2, "--layer")
    _one_line_error(cli("embeddings", *m, TEXT, "--dims", "0"), 2, "--dims")
    _one_line_error(cli("trace", *m, TEXT, "--attention", str(n_layers)), 2, "--attention")
    _one_line_error(cli("trace", *m, TEXT, "--attention", "0", "--head", "4"), 2, "--head")
    _one_line_error(cli("trace", *m, TEXT, "--head", "0"), 2, "--head", "--attention")
    _one_line_error(cli("tokenize", *m, TEXT, "--ids", "--count"), 2, "--ids")
    _one_line_error(cli("logits", "-m", tmp_path / "nope", TEXT), 1, "nope")
    _one_line_error(cli("embeddings", *m, TEXT, "--dtype", "float8"), 2, "--dtype")
    # unwritable --save: a missing folder, a file used as a folder, a directory as the file
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target in (tmp_path / "missing" / "x.safetensors", blocker / "x.safetensors", tmp_path):
        for cmd in ("embeddings", "logits"):
            _one_line_error(cli(cmd, *m, TEXT, "--save", target), 1, "--save")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing half-written


def test_save_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(LLMCLIError, match="--save: cannot write .*No space left"):
        T.save_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(2)}, {})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- generate
def test_generate_top_logprobs_json_show_tokens(tiny, hf_eager, cli):
    model_dir, hf, _, tok = tiny
    base = ("generate", "-m", model_dir, "Once upon", "-n", "6", "--temp", "0")
    code, plain, err = cli(*base)
    assert code == 0, err
    code, out, err = cli(*base, "--json", "--top-logprobs", "3")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    if events and events[-1].get("done"):   # the final record (stop reason, seed, timings)
        events = events[:-1]
    assert 1 <= len(events) <= 6
    assert "".join(e["text"] for e in events) == plain  # same text as without the options
    seq = tok.encode("Once upon")
    for e in events:
        ref = torch.log_softmax(_hf(hf, seq).logits[0, -1].double(), dim=-1)
        assert set(e) >= {"id", "text", "logprob", "top_logprobs"}
        assert len(e["top_logprobs"]) == 3 and e["top_logprobs"][0]["id"] == e["id"]  # greedy
        assert abs(e["logprob"] - float(ref[e["id"]])) < 1e-4
        lps = [a["logprob"] for a in e["top_logprobs"]]
        assert lps == sorted(lps, reverse=True)
        assert [a["id"] for a in e["top_logprobs"]] == torch.topk(ref, 3).indices.tolist()
        seq.append(e["id"])
    code, out, _ = cli(*base, "--show-tokens")
    assert code == 0 and out.replace("|", "") == plain.replace("|", "")
    assert out.count("|") - plain.count("|") == sum(1 for e in events if e["text"]) - 1
    code, out, _ = cli(*base, "--top-logprobs", "2")
    assert code == 0 and out.startswith(plain.rstrip("\n")) and "alternatives" in out
    _one_line_error(cli(*base, "--top-logprobs", "-1"), 2, "--top-logprobs")
