"""GGUF vocabularies → Hugging Face tokenizer files (``llmcli convert``).

* llama.cpp's tokenizer test suite (``../shared/fixtures/vocab-tests``: a vocabulary-only GGUF
  per model family, test strings, and the ids the original Hugging Face tokenizer gives with
  ``add_special_tokens=False``): every family is converted once per session, then checked
  with the reference library on the written file (``tokenizers`` on ``tokenizer.json``,
  sentencepiece on ``tokenizer.model``) and through ``llmcli tokenize --ids --no-bos``.
* Without the fixtures: a byte-level BPE trained here with ``tokenizers`` is written to a GGUF
  as llama.cpp's converter does, converted back, and must encode exactly as the original;
  every pre-tokenizer name llama.cpp knows builds a working tokenizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

from llmcli.convert import convert  # noqa: E402
from llmcli.convert.bpe_pretokenizers import PRE_TOKENIZERS, PRE_TYPES  # noqa: E402
from llmcli.errors import LLMCLIError  # noqa: E402

from conftest import SHARED  # noqa: E402

VOCAB_TESTS = SHARED / "fixtures" / "vocab-tests"
FAMILIES = ["gpt-2", "llama-bpe", "qwen2", "starcoder", "deepseek-coder", "phi-3", "llama-spm",
            "bert-bge"]
SEP = "\n__ggml_vocab_test__\n"

TRICKY = ["", " ", "  ", "Hello world", " Hello World!", "    indented\n\tcode()", "\n\n\n",
          "emoji 🦙😶\u200d🌫️ family 👨\u200d👩\u200d👧", "日本語 中文 한국어 нещо", "3.14159 1234567 33",
          "I've been 'told he's there, 'RE you sure?", "e\u0301 combining", "<|endoftext|> as text",
          "trailing   ", "a\r\nb"]


def vocab_cases(family: str) -> list[tuple[str, list[int]]]:
    """The (text, expected ids) pairs of one family, split as llama.cpp's test-tokenizer-0 does."""
    raw = (VOCAB_TESTS / f"ggml-vocab-{family}.gguf.inp").read_text(encoding="utf-8")
    texts = raw.split(SEP)
    if raw.endswith(SEP):
        texts = texts[:-1] if texts[-1] == "" else texts
    lines = (VOCAB_TESTS / f"ggml-vocab-{family}.gguf.out").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(lines) == 46, family
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """family → converted directory, each converted at most once per session."""
    if not VOCAB_TESTS.is_dir():
        pytest.skip(f"{VOCAB_TESTS} not present")
    base = tmp_path_factory.mktemp("vocab")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = convert(VOCAB_TESTS / f"ggml-vocab-{family}.gguf", base / family).out_dir
        return cache[family]

    return get


def _reference_encoder(out: Path):
    if (out / "tokenizer.json").is_file():
        tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
        return lambda s: tok.encode(s, add_special_tokens=False).ids
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    return sp.encode


@pytest.mark.parametrize("family", FAMILIES)
def test_vocab_family_matches_reference_ids(converted, family):
    out = converted(family)
    names = {p.name for p in out.iterdir()}
    assert names == {"README.md", "tokenizer_config.json",
                     "tokenizer.model" if family in ("llama-spm", "phi-3") else "tokenizer.json"}, names
    encode = _reference_encoder(out)
    cases = vocab_cases(family)
    failed = [(text, ids, encode(text)) for text, ids in cases if encode(text) != ids]
    print(f"{family}: {len(cases) - len(failed)}/{len(cases)} through the written tokenizer file")
    assert not failed, "\n".join(f"{t!r}: want {i}, got {g}" for t, i, g in failed[:5])


@pytest.mark.parametrize("family", FAMILIES)
def test_vocab_family_through_llmcli_tokenizer(converted, family):
    """llmcli's own tokenizer (``load_tokenizer``, what every command uses) on all 46 strings,
    in process: the same ids as the original Hugging Face tokenizer."""
    from llmcli.tokenizer import load_tokenizer

    tok = load_tokenizer(converted(family))
    cases = vocab_cases(family)
    failed = [(t, ids, tok.encode(t, add_bos=False)) for t, ids in cases if tok.encode(t, add_bos=False) != ids]
    print(f"{family}: {len(cases) - len(failed)}/{len(cases)} through llmcli's tokenizer")
    assert not failed, "\n".join(f"{t!r}: want {i}, got {g}" for t, i, g in failed[:5])


_DRIVER = r"""
import contextlib, io, json, sys
from llmcli.cli.app import main
results = []
for argv in json.load(sys.stdin):
    buf = io.StringIO()
    sys.argv = ["llmcli", *argv]
    with contextlib.redirect_stdout(buf):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    results.append([code, buf.getvalue()])
print(json.dumps(results))
"""

CLI_CASES = 6  # per family through the command line (all 46 are checked in process above)


def test_vocab_families_through_llmcli_tokenize(converted):
    """``llmcli tokenize -m DIR --ids --no-bos -- TEXT``: the command line's option parsing,
    stdin/argument handling and output give the reference ids. One Python process runs the
    CLI's entry point for every (family, string); the strings are those with spaces, newlines,
    digits and non-ASCII text (each call reloads the tokenizer, so not all 46)."""
    picked = []
    for family in FAMILIES:
        cases = vocab_cases(family)
        tricky = [c for c in cases if c[0].strip() != c[0] or not c[0].isascii() or "\n" in c[0]]
        picked += [(family, t, ids) for t, ids in (tricky + cases)[:CLI_CASES]]
    argv = [["tokenize", "-m", str(converted(f)), "--ids", "--no-bos", "--", t] for f, t, _ in picked]
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(argv), capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    failed = []
    for (family, text, ids), (code, stdout) in zip(picked, results):
        got = [int(x) for x in stdout.split()] if code == 0 else f"exit {code}"
        if got != ids:
            failed.append((family, text, ids, got))
    assert len(results) == len(picked) == CLI_CASES * len(FAMILIES)
    assert not failed, "\n".join(f"{f} {t!r}: want {i}, got {g}" for f, t, i, g in failed[:5])


def test_vocab_only_dir_loads_in_transformers(converted):
    transformers = pytest.importorskip("transformers")
    for family in ("gpt-2", "llama-bpe", "llama-spm", "phi-3"):
        tok = transformers.AutoTokenizer.from_pretrained(str(converted(family)))
        for text, ids in vocab_cases(family):
            assert tok.encode(text, add_special_tokens=False) == ids, (family, text)
    cfg = json.loads((converted("llama-bpe") / "tokenizer_config.json").read_text())
    # Llama 3: llama.cpp's rule for the llama-bpe pre-tokenizer adds <|begin_of_text|>
    assert (cfg["bos_token"], cfg["eos_token"], cfg["add_bos_token"]) == ("<|begin_of_text|>", "<|end_of_text|>", True)
    tok = transformers.AutoTokenizer.from_pretrained(str(converted("llama-bpe")))
    assert tok.encode("Hello")[0] == 128000
    spm_tok = transformers.AutoTokenizer.from_pretrained(str(converted("llama-spm")))
    assert spm_tok.encode("Hello")[0] == 1 and spm_tok.decode(spm_tok.encode(" a  b\n c"),
                                                               skip_special_tokens=True) == " a  b\n c"
    qwen = json.loads((converted("qwen2") / "tokenizer_config.json").read_text())
    assert qwen["chat_template"].startswith("{% for message in messages %}")


# ----------------------------------------------------------------------------- no fixtures
def _trained_bpe(pre_regex: str):
    """A byte-level BPE trained here (tokenizers' BpeTrainer), Llama-3-style pre-tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pre_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = [line for _ in range(20) for line in TRICKY] + [
        "the quick brown fox jumps over the lazy dog", "def main():\n    return 0\n",
        "Once upon a time there was a little girl named Lily who loved 1234 flowers."] * 20
    trainer = trainers.BpeTrainer(vocab_size=420, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([AddedToken("<sep>", special=False, normalized=True)])
    return tok


def _gguf_from_tokenizer(path: Path, tok, pre: str, with_model: bool = False, extra=None) -> Path:
    """Write ``tok`` as llama.cpp's convert_hf_to_gguf does for a gpt2 vocabulary."""
    data = json.loads(tok.to_str())
    vocab = tok.get_vocab(with_added_tokens=True)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    assert [i for _, i in by_id] == list(range(len(by_id)))
    added = {a["content"]: a for a in data["added_tokens"]}
    types = [(3 if added[t]["special"] else 4) if t in added else 1 for t, _ in by_id]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    wr = gguf.GGUFWriter(str(path), "llama")
    if with_model:
        extra_model(wr, len(by_id))
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre(pre)
    wr.add_token_list([t for t, _ in by_id])
    wr.add_token_types(types)
    wr.add_token_merges(merges)
    wr.add_bos_token_id(0)
    wr.add_eos_token_id(2)
    wr.add_add_bos_token(False)
    wr.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    if extra:
        extra(wr)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def extra_model(wr, vocab: int) -> None:
    """A one-layer Llama with random F32 weights (the vocabulary is what is tested)."""
    import numpy as np

    D, F = 32, 64
    rng = np.random.default_rng(0)
    for key, value in (("context_length", 64), ("embedding_length", D), ("feed_forward_length", F),
                       ("block_count", 1), ("head_count", 4), ("head_count_kv", 2)):
        getattr(wr, f"add_{key}")(value)
    wr.add_layer_norm_rms_eps(1e-5)
    shapes = {"token_embd": (vocab, D), "blk.0.attn_q": (D, D), "blk.0.attn_k": (D // 2, D),
              "blk.0.attn_v": (D // 2, D), "blk.0.attn_output": (D, D), "blk.0.ffn_gate": (F, D),
              "blk.0.ffn_up": (F, D), "blk.0.ffn_down": (D, F)}
    for name, shape in shapes.items():
        wr.add_tensor(f"{name}.weight", (rng.standard_normal(shape) * 0.1).astype(np.float32))
    for name in ("blk.0.attn_norm", "blk.0.ffn_norm", "output_norm"):
        wr.add_tensor(f"{name}.weight", np.ones(D, np.float32))


def test_trained_bpe_roundtrips_through_gguf(tmp_path):
    from llmcli.convert.bpe_pretokenizers import PRE_TYPES

    regex = PRE_TYPES["LLAMA3"].regexes[0]
    orig = _trained_bpe(regex)
    src = _gguf_from_tokenizer(tmp_path / "bpe.gguf", orig, "llama-bpe", with_model=True)
    out = tmp_path / "out"
    result = convert(src, out)
    assert result.num_tensors == 11  # 8 matrices, 3 norms
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "README.md"} <= {p.name for p in out.iterdir()}
    built = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in TRICKY + ["x<sep>y <|im_end|>"]:
        want = orig.encode(text, add_special_tokens=False)
        got = built.encode(text, add_special_tokens=False)
        assert got.ids == want.ids, text
        assert built.decode(got.ids, skip_special_tokens=False) == orig.decode(want.ids, skip_special_tokens=False)
    # control tokens are special added tokens, user-defined ones ordinary added tokens
    added = {a.content: a for a in built.get_added_tokens_decoder().values()}
    assert added["<|im_end|>"].special and not added["<sep>"].special
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["add_bos_token"] is False and cfg["eos_token"] == "<|im_end|>" and "chat_template" in cfg
    assert built.encode("hi").ids == orig.encode("hi").ids  # add_bos_token false: nothing added
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (0, 2)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in TRICKY:
        assert hf.encode(text, add_special_tokens=False) == orig.encode(text, add_special_tokens=False).ids
    assert hf.eos_token == "<|im_end|>"


def test_add_bos_and_eos_rules(tmp_path):
    orig = _trained_bpe(PRE_TYPES["LLAMA3"].regexes[0])
    src = _gguf_from_tokenizer(tmp_path / "b.gguf", orig, "llama-bpe",
                               extra=lambda wr: wr.add_add_eos_token(True))
    # add_add_bos_token(False) is written first; the file's own flags win over the pre's default
    convert(src, tmp_path / "out")
    built = tokenizers.Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    plain = built.encode("hi", add_special_tokens=False).ids
    assert built.encode("hi").ids == plain + [2]


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_every_llama_cpp_pre_tokenizer_name_builds(tmp_path, name):
    """Each name gives a tokenizer that encodes and decodes back (byte-level) tricky text."""
    from llmcli.convert.gguf_vocab import build_vocab

    orig = _trained_bpe(PRE_TYPES["GPT2"].regexes[0])
    data = json.loads(orig.to_str())
    vocab = orig.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    pre = PRE_TYPES[PRE_TOKENIZERS[name].pre_type]
    if not pre.byte_level:  # raw UTF-8 vocabularies: byte tokens instead of the byte alphabet
        tokens += [f"<0x{b:02X}>" for b in range(256)] + ["\u2581"]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": name, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3 if t.startswith("<|") else 1 for t in tokens],
            "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]],
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 2}
    files = build_vocab(name, meta).files
    tok = tokenizers.Tokenizer.from_str(files["tokenizer.json"].decode())
    for text in TRICKY:
        ids = tok.encode(text, add_special_tokens=False).ids
        if pre.byte_level:
            want = unicodedata.normalize("NFC", text) if PRE_TOKENIZERS[name].normalizer else text
            assert tok.decode(ids, skip_special_tokens=False) == want, (name, text)
        else:
            assert ids or not text.strip(), (name, text)


def test_custom_splitters_follow_llama_cpp():
    """The two regexes that stand in for llama.cpp's hand-written splitters."""
    from tokenizers import Regex, pre_tokenizers

    def split(regex, text):
        return [p for p, _ in pre_tokenizers.Split(Regex(regex), "isolated").pre_tokenize_str(text)]

    afmoe = PRE_TYPES["AFMOE"].regexes[0]  # digit runs: leading len % 3 digits, then threes
    assert split(afmoe, "1234567") == ["1", "234", "567"]
    assert split(afmoe, "x12 123456") == ["x", "12", " ", "123", "456"]
    kimi = PRE_TYPES["KIMI_K2"].regexes[0]  # Han runs apart from other letters
    assert split(kimi, "我想在apple工作 I'M") == ["我想在", "apple", "工作", " I'M"]


@pytest.mark.parametrize("meta,part", [
    ({"tokenizer.ggml.model": "t5"}, "'t5'"),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "klingon"}, "'klingon'"),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2"}, "merges"),
    ({"tokenizer.ggml.model": "bert", "tokenizer.ggml.unknown_token_id": 99}, "unknown token"),
])
def test_bad_vocabularies_are_named(meta, part):
    from llmcli.convert.gguf_vocab import build_vocab

    meta = {"tokenizer.ggml.tokens": ["a", "b", "a b"] if meta["tokenizer.ggml.model"] != "bert" else ["[UNK]", "▁a"],
            "tokenizer.ggml.token_type": [1, 1, 1][:2 if meta["tokenizer.ggml.model"] == "bert" else 3], **meta}
    with pytest.raises(LLMCLIError, match="f.gguf") as exc:
        build_vocab("f.gguf", meta)
    assert part in str(exc.value)


def test_gguf_without_scores_says_what_was_done(tmp_path, tiny_tokenizer_model):
    """A sentencepiece vocabulary without tokenizer.ggml.scores: pieces are scored by id (the
    order sentencepiece's BPE trainer writes merges in), which gives back the original BPE;
    README says so instead of claiming the type was inferred from scores."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    from llmcli.convert.gguf_vocab import build_vocab

    proto = pb.ModelProto()
    proto.ParseFromString(tiny_tokenizer_model.read_bytes())
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [p.piece for p in proto.pieces],
            "tokenizer.ggml.token_type": [int(p.type) for p in proto.pieces]}
    built = build_vocab("noscores.gguf", meta)
    note = " ".join(built.notes)
    assert "scores is absent" in note and "assumed" in note and "inferred from the scores" not in note
    orig = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_model))
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(built.files["tokenizer.model"])
    for text in TRICKY:
        assert sp.encode(text) == orig.encode(text), text
