"""``llmcli perplexity``: both scoring rules against independent computations.

* the sliding rule equals transformers' loss (``LlamaForCausalLM(labels=...)``, the labels
  before each window's new tokens set to -100, as Hugging Face's perplexity guide) on the
  bundled model, to 1e-4 in nats/token, whatever ``--batch-size`` cuts the windows into;
* the llama.cpp rule equals the same chunks computed by hand with transformers (BOS first in
  each chunk, the second half scored) and llama.cpp's standard-error formula;
* every family (the tiny random checkpoints of test_families) against its transformers model;
* SmolLM2 (converted from the shared GGUF, once for the module) against ``llama-perplexity``
  on the same GGUF and text, within 1% (skips without ../shared or the binary);
* bad input: one line naming the file or option, exit ≠ 0.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import SHARED, load_hf
from llmcli.inspection.perplexity import llamacpp_windows, sliding_windows

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "shakespeare"
TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet "
        "is the sun.\nArise, fair sun, and kill the envious moon,\nWho is already sick and pale "
        "with grief,\nThat thou her maid art far more fair than she.\n\nJULIET:\nO Romeo, Romeo! "
        "wherefore art thou Romeo?\nDeny thy father and refuse thy name;\nOr, if thou wilt not, "
        "be but sworn my love,\nAnd I'll no longer be a Capulet.\n")


@pytest.fixture(scope="module")
def bundled():
    """The bundled model's tokenizer, transformers model and the ids of TEXT."""
    from llmcli.tokenizer import load_tokenizer

    tok = load_tokenizer(BUNDLED)
    return tok, load_hf(BUNDLED), tok.encode(TEXT)


def hf_window_nll(hf, ids: list[int], start: int, end: int, first: int, bos: int | None = None):
    """Σ NLL (nats) and count of tokens ``[first, end)`` given ``ids[start:first)`` with
    transformers' own loss: labels before ``first`` are -100 (``bos`` replaces ids[start])."""
    window = list(ids[start:end])
    if bos is not None:
        window[0] = bos
    x = torch.tensor([window])
    labels = x.clone()
    labels[:, :first - start] = -100
    with torch.no_grad():
        loss = hf(input_ids=x, labels=labels).loss
    return float(loss) * (end - first), end - first


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize("n,c,s", [(10, 4, 2), (100, 16, 16), (101, 16, 5), (3, 8, 4), (64, 64, 1)])
def test_sliding_windows_score_every_token_once_with_bounded_history(n, c, s):
    windows = sliding_windows(n, c, s)
    scored = [j for w in windows for j in range(w.first, w.end)]
    if s < c:
        assert scored == list(range(1, n))          # every token but the first, once, in order
    else:   # non-overlapping: a window's first token has no history in it
        assert scored == [j for j in range(1, n) if j % c]
    for w in windows:
        assert w.end - w.start <= c and w.start % s == 0
        for j in range(w.first, w.end):
            assert 1 <= j - w.start <= c - 1
            assert j - w.start >= min(c - s, j)     # at least C-S tokens of history


def test_llamacpp_windows_are_llama_perplexity_chunks():
    windows = llamacpp_windows(1000, 256, bos=True)
    assert [(w.start, w.end, w.first, w.bos) for w in windows] == \
        [(0, 256, 129, True), (256, 512, 385, True), (512, 768, 641, True)]
    assert all(w.scored == 256 - 128 - 1 for w in windows)   # count += n_ctx - first - 1
    assert len(llamacpp_windows(511, 256, bos=False)) == 1


# ----------------------------------------------------------------------------- bundled model
@pytest.mark.parametrize("batch", [512, 7])
def test_sliding_rule_equals_transformers_loss(cli, tmp_path, bundled, batch):
    tok, hf, ids = bundled
    path = tmp_path / "romeo.txt"
    path.write_text(TEXT, encoding="utf-8")
    code, out, err = cli("perplexity", path, "-c", 48, "--stride", 20, "-b", batch, "--json")
    assert code == 0, err
    doc = json.loads(out)
    total = count = 0
    for w in sliding_windows(len(ids), 48, 20):
        s, k = hf_window_nll(hf, ids, w.start, w.end, w.first)
        total, count = total + s, count + k
    assert len(ids) > 3 * 48 and ids[0] == tok.bos_id
    assert doc["tokens"] == len(ids) and doc["scored"] == count == len(ids) - 1
    assert abs(doc["nats_per_token"] - total / count) <= 1e-4
    assert abs(doc["perplexity"] / math.exp(total / count) - 1) <= 1e-4
    assert doc["rule"] == "sliding" and (doc["context"], doc["stride"]) == (48, 20)
    # every token of the text is scored (BOS first): the characters are the whole text's
    assert doc["characters"] == len(TEXT) == doc["text_characters"]
    assert abs(doc["bits_per_character"] - total / math.log(2) / len(TEXT)) <= 1e-6
    assert sum(w["scored"] for w in doc["windows"]) == count


def test_llamacpp_rule_equals_chunks_by_hand_and_its_standard_error(cli, tmp_path, bundled):
    tok, hf, ids = bundled
    path = tmp_path / "romeo.txt"
    path.write_text(TEXT + "\n", encoding="utf-8")          # one trailing newline is dropped
    c = 40
    code, out, err = cli("perplexity", path, "-c", c, "--rule", "llama.cpp", "--json")
    assert code == 0, err
    doc = json.loads(out)
    want = tok.encode((TEXT + "\n")[:-1])
    assert doc["tokens"] == len(want)
    values = []
    for i in range(len(want) // c):
        window = list(want[i * c:(i + 1) * c])
        window[0] = tok.bos_id                                # BOS first in every chunk
        with torch.no_grad():
            logp = torch.log_softmax(hf(input_ids=torch.tensor([window])).logits[0].double(), -1)
        first = c // 2
        values += [-float(logp[p, window[p + 1]]) for p in range(first, c - 1)]
    n = len(values)
    mean = sum(values) / n
    sigma2 = sum(v * v for v in values) / n - mean * mean
    assert doc["scored"] == n == (len(want) // c) * (c - c // 2 - 1)
    assert abs(doc["nats_per_token"] - mean) <= 1e-4
    assert abs(doc["perplexity_stderr"] - math.exp(mean) * math.sqrt(sigma2 / (n - 1))) <= 1e-3
    code, out, err = cli("perplexity", path, "-c", c, "--rule", "llama.cpp", "--chunks", 1, "--json")
    assert code == 0 and json.loads(out)["scored"] == c - c // 2 - 1, err


def test_plain_report_and_stdin(cli):
    code, out, err = cli("perplexity", "-c", 64, stdin=TEXT)
    assert code == 0, err
    lines = out.splitlines()
    assert re.fullmatch(r"perplexity  \d+\.\d{4} ± \d+\.\d{4}", lines[0])
    for label in ("nats/token", "bits/token", "bits/char", "bits/byte", "tokens", "rule"):
        assert any(line.startswith(label) for line in lines), label
    assert "stride 32" in out and max(len(line) for line in lines) <= 80
    code, json_out, err = cli("perplexity", "-", "-c", 64, "--json", stdin=TEXT)
    doc = json.loads(json_out)
    assert f"{doc['perplexity']:.4f}" in lines[0] and doc["stride"] == 32


def test_only_a_batch_of_logits_at_a_time(bundled):
    """run_windows yields at most --batch-size rows of logits, covering each scored token once."""
    from llmcli.inspection.perplexity import run_windows
    from llmcli.weights import load_model

    tok, _, ids = bundled
    model, _ = load_model(BUNDLED)
    windows = sliding_windows(len(ids), 40, 30)
    seen = []
    for positions, logits, targets in run_windows(model, ids, windows, batch=9):
        assert logits.shape == (len(positions), tok.vocab_size) and len(positions) <= 9
        assert targets.tolist() == [ids[j] for j in positions]
        seen += list(positions)
    assert seen == list(range(1, len(ids)))


# ----------------------------------------------------------------------------- every family
@pytest.mark.parametrize("case", ["mistral_window", "qwen2_tied_window", "qwen3_bias_tied_window",
                                  "gpt2", "neox_parallel"])
def test_perplexity_and_score_on_every_family(tmp_path, tiny_tokenizer_model, cli, case):
    from test_families import make_family_checkpoint

    from llmcli.tokenizer import load_tokenizer

    model_dir, hf = make_family_checkpoint(tmp_path, case, vocab_size=320)
    shutil.copyfile(tiny_tokenizer_model, model_dir / "tokenizer.model")
    text = "Once upon a time there was a little girl named Lily. She liked to play in the park."
    ids = load_tokenizer(model_dir).encode(text)
    code, out, err = cli("perplexity", "-m", model_dir, "-c", 16, "--stride", 6, "--json",
                         stdin=text)
    assert code == 0, err
    total = count = 0
    for w in sliding_windows(len(ids), 16, 6):
        s, k = hf_window_nll(hf, ids, w.start, w.end, w.first)
        total, count = total + s, count + k
    assert abs(json.loads(out)["nats_per_token"] - total / count) <= 1e-4
    short = "Once upon a time there was a little girl."       # fits the context (64) whole
    ids = load_tokenizer(model_dir).encode(short)
    code, out, err = cli("score", "-m", model_dir, short, "--json", "--top-logprobs", 2)
    assert code == 0, err
    content = json.loads(out)["content"]
    with torch.no_grad():
        logp = torch.log_softmax(hf(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    assert [t["id"] for t in content] == ids and content[0]["logprob"] is None
    for j in range(1, len(ids)):
        assert abs(content[j]["logprob"] - float(logp[j - 1, ids[j]])) <= 1e-4
        assert content[j]["top_logprobs"][0]["id"] == int(logp[j - 1].argmax())


# ----------------------------------------------------------------------------- SmolLM2 vs llama.cpp
SMOL = SHARED / "fixtures" / "realmodels" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LICENCE = Path("/usr/share/common-licenses/Apache-2.0")


def _llama_perplexity() -> str | None:
    for candidate in (os.environ.get("LLAMA_PERPLEXITY"),
                      str(Path.home() / ".cache" / "llmcli-anchors" / "bin" / "llama-perplexity"),
                      shutil.which("llama-perplexity")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    if not SMOL.is_file():
        pytest.skip(f"{SMOL} not present")
    if not LICENCE.is_file():
        pytest.skip(f"{LICENCE} not present")
    pytest.importorskip("gguf")
    from llmcli.convert import convert

    out = tmp_path_factory.mktemp("smol-ppl") / "smol"
    convert(SMOL, out)
    return out


def test_smollm2_llamacpp_rule_matches_llama_perplexity(cli, smol):
    """-c 256 --rule llama.cpp on the converted Q4_1 GGUF: the number llama-perplexity prints on
    the GGUF itself, within 1%. SmolLM2 adds no BOS, so no chunk gets one; the tokens are
    llama.cpp's (checked with llama-completion --verbose-prompt). llama.cpp computes with the
    Q4_1 blocks, activations quantized to Q8 and a float16 KV cache, llmcli in float32 on the
    dequantized weights, so single chunks differ by up to 1.4% and the totals converge
    (measured, cumulative over chunks 1..8 of Apache-2.0: llmcli 16.2520, 16.5044, 16.4951,
    18.3029, 16.4405, 16.5386, 16.4904, 17.7348; llama-perplexity 16.4872, 16.6448, 16.5632,
    18.4355, 16.4777, 16.5657, 16.5296, 17.7438). Three chunks (0.4% apart) keep it fast."""
    code, out, err = cli("perplexity", "-m", smol, LICENCE, "-c", 256, "--rule", "llama.cpp",
                         "--chunks", 3, "--json")
    assert code == 0, err
    ours = json.loads(out)
    assert ours["scored"] == 3 * 127 and ours["add_bos"] is False
    binary = _llama_perplexity()
    if binary is None:
        pytest.skip("llama-perplexity not found (~/.cache/llmcli-anchors/bin, $LLAMA_PERPLEXITY, PATH)")
    run = subprocess.run([binary, "-m", str(SMOL), "-f", str(LICENCE), "-c", "256", "--chunks", "3",
                          "-t", "1"], capture_output=True, text=True, timeout=300)
    found = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", run.stdout + run.stderr)
    assert found, run.stderr[-2000:]
    theirs, their_err = float(found.group(1)), float(found.group(2))
    print(f"\nSmolLM2 Q4_1, Apache-2.0, -c 256 --chunks 3: llmcli {ours['perplexity']:.4f} ± "
          f"{ours['perplexity_stderr']:.4f}, llama-perplexity {theirs:.4f} ± {their_err:.4f}")
    assert abs(ours["perplexity"] / theirs - 1) <= 0.01
    assert abs(ours["perplexity_stderr"] / their_err - 1) <= 0.05


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,stdin,needle,code", [
    (["EMPTY"], "", "FILE: {EMPTY} is empty", 1),
    (["-"], "", "stdin: empty", 1),
    (["MISSING"], "", "FILE: {MISSING}: no such file", 1),
    (["LATIN1"], "", "not valid UTF-8 (byte 0xe9", 1),
    (["ONE", "--no-bos"], "", "gives 1 token; perplexity needs at least 2", 2),
    (["ROMEO", "-c", "32", "--stride", "33"], "", "--stride: 33 is larger than --context 32", 2),
    (["ROMEO", "-c", "4096"], "", "--context: 4096 is longer than the model's context of 512", 2),
    (["ROMEO", "--rule", "llama.cpp", "--stride", "8"], "", "--stride: the llama.cpp rule has no", 2),
    (["ROMEO", "--rule", "llama.cpp", "-c", "256"], "", "--rule llama.cpp needs at least 2 × --context = 512", 2),
    (["ROMEO", "--rule", "llama"], "", "--rule: 'llama' is not one of sliding, llama.cpp", 2),
    (["ROMEO", "--chunks", "2"], "", "--chunks: only with --rule llama.cpp", 2),
    (["ROMEO", "-b", "0"], "", "--batch-size: must be at least 1", 2),
])
def test_bad_input_is_one_line(cli, tmp_path, args, stdin, needle, code):
    files = {"EMPTY": tmp_path / "empty.txt", "MISSING": tmp_path / "missing.txt",
             "LATIN1": tmp_path / "latin1.txt", "ONE": tmp_path / "one.txt",
             "ROMEO": tmp_path / "romeo.txt"}
    files["EMPTY"].write_bytes(b"")
    files["LATIN1"].write_bytes("café".encode("latin-1"))
    files["ONE"].write_text("T", encoding="utf-8")
    files["ROMEO"].write_text(TEXT, encoding="utf-8")
    argv = [str(files.get(a, a)) for a in args]
    got, out, err = cli("perplexity", *argv, stdin=stdin)
    assert got == code, (out, err)
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert needle.format(**{k: str(v) for k, v in files.items()}) in err, err


def test_non_finite_logits_are_one_line_naming_the_window(cli, capsys, tmp_path, tiny_tokenizer_model):
    from safetensors.torch import load_file, save_file

    from conftest import make_checkpoint

    model_dir, _ = make_checkpoint(tmp_path, vocab_size=320)
    shutil.copyfile(tiny_tokenizer_model, model_dir / "tokenizer.model")
    tensors = load_file(str(model_dir / "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()                                  # save_pretrained's progress bar
    code, out, err = cli("perplexity", "-m", model_dir, "-c", 16, stdin=TEXT)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "non-finite logits (nan) at position" in err and "in the window of text tokens 0..15" in err
    code, out, err = cli("score", "-m", model_dir, "Once upon a time")
    assert code == 1 and "non-finite logits" in err and "Traceback" not in err


def test_progress_bar_on_a_terminal_only():
    from rich.console import Console

    from llmcli.cli.text import _Progress

    bar = _Progress(delay=0)
    bar.console = Console(file=io.StringIO(), force_terminal=True, width=80)
    bar(5, 10)
    bar(10, 10)
    bar.close()
    shown = bar.console.file.getvalue()
    assert "scoring" in shown and "10/10" in shown and "tokens" in shown
    quiet = _Progress(delay=0)
    quiet.console = Console(file=io.StringIO(), force_terminal=False)
    quiet(5, 10)
    quiet.close()
    assert quiet.console.file.getvalue() == "" and quiet.progress is None


@pytest.mark.parametrize("command", ["perplexity", "score"])
def test_help_has_examples_and_fits_80_columns(cli, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = cli(command, "--help")
    assert code == 0 and "Examples:" in out and f"llmcli {command} " in out, err
    assert max(len(line) for line in out.splitlines()) <= 80


def test_inference_mode_is_not_left_on_between_pieces(bundled):
    """run_windows is a generator: torch's inference mode must not stay on for the caller's
    code while it is suspended (compare once left it on, and a later attribute had no
    gradients)."""
    import torch

    from llmcli.inspection.perplexity import run_windows, sliding_windows
    from llmcli.weights import load_model

    ids = bundled[2][:40]
    model, _ = load_model(BUNDLED)
    states = [torch.is_inference_mode_enabled()
              for _ in run_windows(model, ids, sliding_windows(len(ids), 16, 8), batch=4)]
    assert len(states) > 1 and not any(states)
