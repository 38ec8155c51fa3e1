"""``llmcli compare`` against transformers: KL(A‖B), arg-max agreement and top-k computed from
transformers' logits of the same checkpoints (float64 KL from float32 logits, full forwards
per window), for two models (the bundled model against a perturbed copy, every family
against a second random checkpoint, a vocabulary padded on one side) and for two prompts.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

from test_families import make_family_checkpoint

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "models" / "shakespeare"
TEXT = "ROMEO:\nWhat light through yonder window breaks? It is the east"
FAMILY_CASES = ["mistral_window", "qwen2_tied_window", "qwen3_bias_tied_window", "gpt2", "neox_parallel"]
PROMPT = "Once upon a time there was a little girl"
KL_ATOL = 2e-5


# ----------------------------------------------------------------------------- helpers


def hf_model(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@torch.no_grad()
def hf_logits(hf, ids, window=None):
    """(T, V) float64 logits of ``ids``, window by window (each from scratch)."""
    window = window or len(ids)
    rows = [hf(input_ids=torch.tensor([ids[w:w + window]])).logits[0] for w in range(0, len(ids), window)]
    return torch.cat(rows).double()


def reference(za, zb, shared=None):
    """Per-position KL(A‖B) (nats), arg-maxes and log-probabilities from logits (T, V)."""
    if shared is not None:
        za, zb = za[:, :shared], zb[:, :shared]
    la, lb = torch.log_softmax(za, -1), torch.log_softmax(zb, -1)
    kl = (la.exp() * (la - lb)).sum(-1)
    return kl, la.argmax(-1), lb.argmax(-1), la, lb


def parse(out):
    lines = [json.loads(line) for line in out.splitlines()]
    assert "summary" in lines[-1] and all("kl" in d for d in lines[:-1])
    return lines[:-1], lines[-1]["summary"]


def check(positions, summary, ref, next_ids, figures, name):
    kl, am_a, am_b, la, lb = ref
    assert len(positions) == len(kl) == summary["positions"]
    got = torch.tensor([d["kl"] for d in positions], dtype=torch.float64)
    worst = float((got - kl.clamp_min(0)).abs().max())
    assert worst < KL_ATOL, (name, worst)
    figures[name] = worst
    assert [d["a"]["top"][0]["id"] for d in positions] == am_a.tolist()
    assert [d["b"]["top"][0]["id"] for d in positions] == am_b.tolist()
    agree = (am_a == am_b).double().mean().item()
    assert abs(summary["top1_agreement"] - agree) < 1e-12
    assert summary["argmax_differs_at"] == (am_a != am_b).nonzero().flatten().tolist()
    assert abs(summary["mean_kl"] - kl.clamp_min(0).mean().item()) < KL_ATOL
    for d, nxt, ra, rb in zip(positions, next_ids, la, lb):
        assert (d["next"] or {}).get("id") == nxt
        if nxt is not None:
            assert abs(d["a"]["logprob_next"] - float(ra[nxt])) < 1e-4
            assert abs(d["b"]["logprob_next"] - float(rb[nxt])) < 1e-4
        top = torch.topk(ra, len(d["a"]["top"])).indices.tolist()
        assert [c["id"] for c in d["a"]["top"]] == top


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory):
    """A copy of the bundled model with every matrix nudged (a "quantized copy" stand-in)."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("cmp") / "shakespeare-noisy"
    shutil.copytree(BUNDLED, out)
    tensors = load_file(str(out / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    noisy = {k: (v + 0.02 * v.std() * torch.randn(v.shape, generator=g) if v.dim() == 2 else v).contiguous()
             for k, v in tensors.items()}
    save_file(noisy, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def figures():
    got = {}
    yield got
    print("\ncompare, max |ΔKL| vs transformers (nats): "
          + ", ".join(f"{k} {v:.1e}" for k, v in got.items()))


# ----------------------------------------------------------------------------- two models
def test_two_models_match_transformers(cli, perturbed, figures):
    from llmcli.tokenizer import load_tokenizer

    ids = load_tokenizer(BUNDLED).encode(TEXT)
    za, zb = hf_logits(hf_model(BUNDLED), ids), hf_logits(hf_model(perturbed), ids)
    code, out, err = cli("compare", BUNDLED, perturbed, TEXT, "--json", "-k", "4")
    assert code == 0, err
    positions, summary = parse(out)
    check(positions, summary, reference(za, zb), ids[1:] + [None], figures, "bundled vs noisy copy")
    assert summary["kl_unit"] == "nats" and summary["kl_direction"].startswith("KL(A || B)")
    assert 0 < summary["mean_kl"] and summary["perplexity_a"] > 1
    # the same model twice: KL exactly 0, full agreement
    code, out, err = cli("compare", BUNDLED, BUNDLED, TEXT, "--json")
    positions, summary = parse(out)
    assert summary["mean_kl"] == 0 and summary["top1_agreement"] == 1 and summary["argmax_differs_at"] == []
    # windows: each from an empty cache, as transformers on each window alone
    code, out, err = cli("compare", BUNDLED, perturbed, TEXT, "--json", "-c", "7")
    assert code == 0, err
    positions, summary = parse(out)
    assert summary["windows"] == -(-len(ids) // 7)
    ref = reference(hf_logits(hf_model(BUNDLED), ids, 7), hf_logits(hf_model(perturbed), ids, 7))
    check(positions, summary, ref, ids[1:] + [None], figures, "windows of 7")


def test_streaming_in_chunks_is_the_same(perturbed):
    """Small chunks through the KV caches give the numbers of one full forward."""
    from llmcli.inspection.compare import Side, compare
    from llmcli.tokenizer import load_tokenizer
    from llmcli.weights import load_model

    tok = load_tokenizer(BUNDLED)
    ids = tok.encode(TEXT * 3)
    ma, _ = load_model(BUNDLED)
    mb, _ = load_model(perturbed)
    one = list(compare(Side("a", ma, tok, ids), Side("b", mb, tok, ids), chunk=len(ids)))
    done = []
    small = list(compare(Side("a", ma, tok, ids), Side("b", mb, tok, ids), chunk=5, progress=done.append))
    assert done[:3] == [5, 10, 15] and done[-1] == len(ids)
    assert max(abs(x.kl - y.kl) for x, y in zip(one, small)) < 1e-5
    assert [x.argmax_a for x in one] == [y.argmax_a for y in small]


def test_plain_and_terminal_tables(cli, perturbed):
    from rich.console import Console

    from llmcli.inspection.compare import Side, Summary, compare
    from llmcli.render.compare import Kept, compare_plain, compare_rich
    from llmcli.tokenizer import load_tokenizer
    from llmcli.weights import load_model

    code, out, err = cli("compare", BUNDLED, perturbed, TEXT, "--rows", "5")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("A (model): ") and lines[1].startswith("B (model): ")
    assert lines[2].split()[:3] == ["pos", "next", "KL(A‖B)"]
    assert len(lines[3:13]) == 10 and lines[3].split()[3] in ("A", "≠")
    assert "showing the 5 positions of largest KL of" in out and "mean KL(A‖B)" in out
    assert max(len(line) for line in lines) <= 80 and "\x1b[" not in out
    tok = load_tokenizer(BUNDLED)
    ids = tok.encode(TEXT)
    ma, _ = load_model(BUNDLED)
    mb, _ = load_model(perturbed)
    summary, kept = Summary(), Kept(3)
    diffs = list(compare(Side("a", ma, tok, ids), Side("b", mb, tok, ids)))
    for d in diffs:
        summary.add(d)
        kept.add(d)
    largest = sorted(sorted(diffs, key=lambda d: -d.kl)[:3], key=lambda d: d.index)
    assert [d.index for d in kept.shown()] == [d.index for d in largest]
    for width in (80, 140):
        buf = io.StringIO()
        compare_rich(summary, kept, Console(file=buf, width=width, force_terminal=True))
        text = buf.getvalue()
        assert ("A top-k" in text) == (width >= 110) and "top-1 agreement" in text
    assert compare_plain(summary, kept).count("\n") > 6


# ----------------------------------------------------------------------------- families
@pytest.mark.parametrize("case", FAMILY_CASES)
def test_every_family(cli, case, tmp_path, tiny_tokenizer_model, figures):
    from llmcli.tokenizer import load_tokenizer

    dir_a, hf_a = make_family_checkpoint(tmp_path / "a", case, seed=0, vocab_size=320)
    dir_b, hf_b = make_family_checkpoint(tmp_path / "b", case, seed=1, vocab_size=320)
    for d in (dir_a, dir_b):
        shutil.copyfile(tiny_tokenizer_model, d / "tokenizer.model")
    ids = load_tokenizer(dir_a).encode(PROMPT)
    code, out, err = cli("compare", dir_a, dir_b, PROMPT, "--json")
    assert code == 0, err
    positions, summary = parse(out)
    with torch.no_grad():
        za, zb = hf_logits(hf_a, ids), hf_logits(hf_b, ids)
    check(positions, summary, reference(za, zb), ids[1:] + [None], figures, case)
    code, out, err = cli("compare", "-m", dir_a, "--prompt-a", "Once upon", "--prompt-b", "There was",
                         " a time", "--json")
    assert code == 0, err


def test_padded_vocabulary_is_compared_over_the_shared_ids(cli, tmp_path, tiny_tokenizer_model, figures):
    """B's embedding has 64 more rows than A's; the tokenizers (the same file) agree."""
    from llmcli.tokenizer import load_tokenizer

    dir_a, hf_a = make_family_checkpoint(tmp_path / "a", "qwen2_untied", seed=0, vocab_size=320)
    dir_b, hf_b = make_family_checkpoint(tmp_path / "b", "qwen2_untied", seed=1, vocab_size=384)
    for d in (dir_a, dir_b):
        shutil.copyfile(tiny_tokenizer_model, d / "tokenizer.model")
    ids = load_tokenizer(dir_a).encode(PROMPT)
    code, out, err = cli("compare", dir_a, dir_b, PROMPT, "--json")
    assert code == 0, err
    positions, summary = parse(out)
    check(positions, summary, reference(hf_logits(hf_a, ids), hf_logits(hf_b, ids), shared=320),
          ids[1:] + [None], figures, "padded vocabulary")
    assert any("320 and 384 vocabulary rows" in n for n in summary["notes"])


# ----------------------------------------------------------------------------- two prompts
def test_two_prompts_match_transformers(cli, figures):
    from llmcli.tokenizer import load_tokenizer

    tok = load_tokenizer(BUNDLED)
    pa, pb, text = "KING:", "FOOL:\nAy,", "My lord, the"
    ia, ib, it = tok.encode(pa), tok.encode(pb), tok.encode(text, add_bos=False)
    hf = hf_model(BUNDLED)
    za, zb = hf_logits(hf, ia + it)[len(ia) - 1:], hf_logits(hf, ib + it)[len(ib) - 1:]
    code, out, err = cli("compare", "--prompt-a", pa, "--prompt-b", pb, text, "--json", "-k", "2")
    assert code == 0, err
    positions, summary = parse(out)
    check(positions, summary, reference(za, zb), it + [None], figures, "two prompts")
    assert summary["mode"] == "prompts" and len(positions) == len(it) + 1
    # no TEXT: the next-token distributions right after each prompt
    code, out, err = cli("compare", "--prompt-a", pa, "--prompt-b", pb, "--json")
    assert code == 0, err
    positions, summary = parse(out)
    assert len(positions) == 1 and positions[0]["next"] is None
    assert abs(positions[0]["kl"] - float(reference(za[:1], zb[:1])[0][0])) < KL_ATOL


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line(cli, tmp_path, tiny_tokenizer_model, perturbed):
    def one_line(code, out, err, want_code, *needles):
        assert code == want_code, (code, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        for n in needles:
            assert n in err, (n, err)
        assert out == ""

    # different tokenizers that split the text differently
    other, _ = make_family_checkpoint(tmp_path, "qwen2_untied", vocab_size=320)
    shutil.copyfile(tiny_tokenizer_model, other / "tokenizer.model")
    one_line(*cli("compare", BUNDLED, other, TEXT), 1, "tokenize TEXT differently", "token ")
    one_line(*cli("compare", BUNDLED), 2, "A B")
    one_line(*cli("compare", BUNDLED, TEXT), 2, "B: no such model directory", "\\n")
    one_line(*cli("compare", "-m", BUNDLED, BUNDLED, BUNDLED, TEXT), 2, "-m")
    one_line(*cli("compare", "--prompt-b", "x", BUNDLED, TEXT), 2, "--prompt-b")
    one_line(*cli("compare", "--prompt-b", "x", "y", "--dtype-b", "bfloat16"), 2, "--dtype-b")
    one_line(*cli("compare", BUNDLED, BUNDLED, TEXT, "--dtype-b", "int8"), 2, "--dtype-b")
    one_line(*cli("compare", BUNDLED, BUNDLED, TEXT, "-c", "100000"), 2, "--ctx-size")
    one_line(*cli("compare", BUNDLED, BUNDLED, TEXT, "-k", "0"), 2, "-k")
    one_line(*cli("compare", tmp_path / "missing", BUNDLED, TEXT), 2, "A: no such model directory")
    one_line(*cli("compare", BUNDLED, tiny_tokenizer_model, TEXT), 1, "is a file")
    one_line(*cli("compare", BUNDLED, BUNDLED, "--no-bos", ""), 2, "TEXT")
    one_line(*cli("compare", BUNDLED, BUNDLED, TEXT, "--save-html", tmp_path / "no" / "x.html"), 1,
             "--save-html")


def test_pictures(cli, tmp_path, perturbed):
    import xml.etree.ElementTree as ET

    svg = tmp_path / "c.svg"
    code, out, err = cli("compare", BUNDLED, perturbed, TEXT, "--save-svg", svg, "--rows", "4")
    assert code == 0, err
    root = ET.parse(svg).getroot()
    text = "".join(root.itertext())
    assert "KL" in text and "top-1 agreement" in text
    # with --json the picture holds the same rows the table would show
    page = tmp_path / "c.html"
    code, out, err = cli("compare", BUNDLED, perturbed, TEXT, "--save-html", page, "--rows", "4", "--json")
    assert code == 0, err
    positions, summary = parse(out)
    html = page.read_text(encoding="utf-8")
    largest = sorted(positions, key=lambda d: -d["kl"])[:4]
    for d in largest:
        assert f"{d['kl']:.4g}" in html


def test_inference_mode_does_not_leak_to_the_caller():
    """compare's generator never leaves torch's inference mode on between positions, nor
    after a side's chunks end first (a later model must still be differentiable)."""
    from llmcli.inspection.compare import Side, compare
    from llmcli.tokenizer import load_tokenizer
    from llmcli.weights import load_model

    tok = load_tokenizer(BUNDLED)
    model, _ = load_model(BUNDLED)
    ids = tok.encode(TEXT)
    for d in compare(Side("a", model, tok, ids), Side("b", model, tok, ids), chunk=4):
        assert not torch.is_inference_mode_enabled()
        break
    assert not torch.is_inference_mode_enabled()
    again, _ = load_model(BUNDLED)
    assert not any(p.is_inference() for p in again.parameters())


def test_terminal_colours_and_no_color_under_a_pseudo_terminal(tmp_path):
    """Through the real CLI on an 80-column pseudo-terminal: attribute's coloured line
    (24-bit backgrounds) and legend, compare's table."""
    import os
    import re
    import subprocess

    script = ("import sys\nfrom llmcli.cli.app import main\n"
              "for args in (['attribute', 'To be, or not'], ['compare', sys.argv[1], sys.argv[1], 'To be']):\n"
              "    sys.argv = ['llmcli', *args]\n"
              "    print('=== ' + args[0], flush=True)\n"
              "    try:\n        main()\n    except SystemExit:\n        pass\n")

    def run(extra_env):
        main_fd, child_fd = os.openpty()
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
        env.update(COLUMNS="80", LINES="50", TERM="xterm-256color", COLORTERM="truecolor", **extra_env)
        proc = subprocess.Popen(["setsid", "-c", sys.executable, "-c", script, str(BUNDLED)],
                                stdin=child_fd, stdout=child_fd, stderr=child_fd, cwd=tmp_path, env=env)
        os.close(child_fd)
        chunks = []
        while True:
            try:
                data = os.read(main_fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=120)
        os.close(main_fd)
        return b"".join(chunks).decode("utf-8", "replace")

    text = run({})
    attribute, compare_out = text.split("=== compare")
    assert re.search(r"\x1b\[[0-9;]*48;2;\d+;\d+;\d+m", attribute), attribute[:500]
    assert "red raises f, blue lowers f" in attribute and "Traceback" not in text
    assert "top-1 agreement 100.0%" in re.sub(r"\x1b\[[0-9;]*m", "", compare_out)
    # NO_COLOR: rich drops the colours; attribute's renderer then prints piece[value] pairs
    # (tests/test_attribute.py::test_plain_and_coloured_output)
