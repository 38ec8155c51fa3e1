"""Readable where people read it (issue 12): embeddings, topk and trace at 80 and 120 columns.

At 80 columns no line is wider than the terminal and no piece or probability is cut to ``…``;
at 120 the views use the width (more dimensions, wider bars). Checked in-process with rich
Consoles of a fixed width, and once per width under a real pseudo-terminal (openpty +
``setsid -c``, the window size set on the terminal and in COLUMNS) where llmcli decides by
itself that stdout is a terminal and how wide it is. The bundled model (models/shakespeare).

Also: topk --steps and trace show the text decoded as one sequence, as generate prints it.
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time

import pytest

from test_cli_generate import DEFAULT_MODEL, env_for

torch = pytest.importorskip("torch")

from llmcli import render  # noqa: E402
from llmcli.inspection import tensors as T  # noqa: E402
from llmcli.render import text_width, visible  # noqa: E402

PROMPT = "ROMEO: What light through yonder window breaks?"
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
WIDTHS = (80, 120)


@pytest.fixture(scope="module")
def bundled():
    from llmcli.tokenizer import load_tokenizer
    from llmcli.weights import load_model

    model, _ = load_model(DEFAULT_MODEL)
    tok = load_tokenizer(DEFAULT_MODEL)
    ids = tok.encode(PROMPT)
    capture = T.forward(model, ids)[1]
    return {"model": model, "tok": tok, "ids": ids,
            "topk": T.topk_report(model, tok, ids, 10, top_p=0.95, min_p=0.05, steps=2),
            "trace": T.trace_report(model, tok, ids, k=5, attention_layer=1),
            "embeddings": T.embeddings_report(model, tok, ids, capture, 1, neighbors=5)}


def _render(kind: str, result, width: int, colour: bool = True, **options) -> list[str]:
    from rich.console import Console

    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=True,
                  color_system="truecolor" if colour else None, highlight=False)
    render.RICH[kind](result, con, **options)
    return ANSI.sub("", buf.getvalue()).split("\n")


def _assert_fits(lines: list[str], width: int, kind: str) -> None:
    wide = [(text_width(line), line) for line in lines if text_width(line) > width]
    assert not wide, f"{kind} at {width} columns: {wide[:3]}"


def _assert_key_cells(kind: str, result, lines: list[str]) -> None:
    """The pieces and probabilities of the view are all there, whole; nothing cut to '…'."""
    text = "\n".join(lines)
    assert "…" not in text, [line for line in lines if "…" in line][:3]
    if kind == "topk":
        for step in result.steps:
            for c in step.candidates:
                assert any(visible(c["piece"]) in line and f"{c['prob']:.4f}" in line
                           and f"{c['cumulative']:.4f}" in line for line in lines), c
        assert "── top-p 0.95 cuts here ──" in text and "── min-p 0.05 cuts here ──" in text
    elif kind == "trace":
        for c in result.candidates:
            assert any(visible(c["piece"]) in line and f"{c['prob']:.4f}" in line for line in lines), c
        for L in result.layers:
            top = L["lens"][0]
            assert any(line.lstrip().startswith(f"{L['layer']} ") and visible(top["piece"]) in line
                       and f"{top['prob']:.2f}" in line for line in lines), L["layer"]
            for h in L["heads"]:   # every head's cell, whole, on one line
                assert f"{h['position']}:{visible(h['piece'])} {h['weight']:.2f}" in text, h
    elif kind == "embeddings":
        for tok, vec in zip(result.tokens, result.vectors):
            assert any(visible(tok["piece"]) in line and f"{vec[0]:+.4f}" in line for line in lines), tok
        for nbrs in result.neighbors:
            for n in nbrs:
                assert f"{visible(n['piece'])} {n['cosine']:.3f}" in text, n


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", ["topk", "trace", "embeddings"])
def test_views_fit_the_width(bundled, kind, width):
    for colour in (True, False):   # NO_COLOR: the heat map is drawn with shading characters
        lines = _render(kind, bundled[kind], width, colour=colour)
        _assert_fits(lines, width, kind)
        _assert_key_cells(kind, bundled[kind], lines)


def test_views_use_more_width(bundled):
    emb80, emb120 = (_render("embeddings", bundled["embeddings"], w) for w in WIDTHS)
    header80 = next(line for line in emb80 if line.startswith("pos"))
    header120 = next(line for line in emb120 if line.startswith("pos"))
    n80, n120 = header80.count(" d"), header120.count(" d")
    assert n80 >= 4 and n120 >= n80 + 4, (header80, header120)
    # topk's bar of the most probable token is longer at 120
    top = bundled["topk"].steps[0].candidates[0]
    bar80, bar120 = (max(line.count("█") for line in _render("topk", bundled["topk"], w)
                         if f"{top['prob']:.4f}" in line) for w in WIDTHS)
    assert bar120 >= bar80 + 15
    # an explicit --dims wider than the terminal: every value shown, in tables that fit
    lines = _render("embeddings", bundled["embeddings"], 80, dims=16)
    _assert_fits(lines, 80, "embeddings --dims 16")
    text = "\n".join(lines)
    assert all(f" d{j}" in text for j in range(16)) and " d16" not in text
    vec = bundled["embeddings"].vectors[3]
    assert all(f"{v:+.4f}" in text for v in vec[:16])


def test_long_pieces_and_many_heads_still_fit():
    """A 30-cell piece and 12 heads: pieces clipped only as a last resort, heads in chunks."""
    tokens = [{"position": i, "id": i, "piece": p} for i, p in
              enumerate(["<s>", "▁" + "x" * 30, "▁the"])]
    heads = [{"head": h, "position": 1, "id": 1, "piece": "▁the", "weight": 0.5} for h in range(12)]
    lens = [{"rank": 0, "id": 2, "piece": "▁the", "prob": 0.5, "logprob": -0.69, "logit": 1.0,
             "cumulative": 0.5}]
    layers = [{"layer": i, "name": f"model.layers.{i}", "residual_norm": 1.0, "heads": heads,
               "lens": lens} for i in range(2)]
    result = T.TraceResult(tokens=tokens, embedding_norms=[1.0, 1.0, 1.0], layers=layers,
                           final_norm=1.0, stats={"min": 0.0, "max": 1.0, "mean": 0.5, "std": 0.1},
                           top_logits=[{"id": 2, "piece": "▁the", "logit": 1.0}], candidates=lens,
                           entropy_bits=1.0, chosen={"id": 2, "piece": "▁the", "text": " the",
                                                     "prob": 0.5, "rule": "greedy (arg-max)"},
                           attention={"layer": 0, "name": "model.layers.0", "head": None,
                                      "weights": [[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]]})
    for width in WIDTHS:
        lines = _render("trace", result, width)
        _assert_fits(lines, width, "trace")
        text = "\n".join(lines)
        assert all(f"h{h}" in text for h in range(12))
        assert text.count("1:▁the 0.50") == 24


# ----------------------------------------------------------------------------- decoded text
def test_topk_steps_text_is_what_generate_prints(bundled, monkeypatch, capsys):
    """The bundled model's greedy continuation: topk --steps's text equals generate's output
    (sentencepiece's byte pieces and spaces decoded as one sequence, not piece by piece)."""
    from llmcli.cli.app import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["llmcli", *args, "-m", str(DEFAULT_MODEL)])
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr().err
        return capsys.readouterr().out

    steps = 16
    printed = run("generate", "ROMEO:", "-n", str(steps), "--temp", "0", "--ignore-eos")
    doc = json.loads(run("topk", "ROMEO:", "--steps", str(steps), "--json"))
    assert doc["text"] == printed
    assert "".join(s["chosen"]["text"] for s in doc["steps"]) == printed
    pieces = "".join(T.token_text(bundled["tok"], s["chosen"]["id"]) for s in doc["steps"])
    assert pieces != printed    # the case the issue is about: piece by piece gives other spaces
    plain = run("topk", "ROMEO:", "--steps", str(steps))
    assert f"generated: {printed!r}" in plain
    # trace's chosen token: the text it adds after the prompt
    tok, ids = bundled["tok"], bundled["ids"]
    chosen = bundled["trace"].chosen
    assert chosen["text"] == tok.decode(ids + [chosen["id"]])[len(tok.decode(ids)):]


# ----------------------------------------------------------------------------- pseudo-terminal
_DRIVER = """
import sys
from llmcli.cli.app import main
for args in {commands!r}:
    sys.argv = ["llmcli", *args]
    try:
        main()
    except SystemExit as exc:
        if exc.code:
            raise
    sys.stdout.write("\\n@@END@@\\n")
    sys.stdout.flush()
"""


def _on_terminal(commands: list[list[str]], width: int, timeout: float = 180) -> list[str]:
    """Run llmcli's commands one after another in one process whose stdin, stdout and stderr
    are a pseudo-terminal of ``width`` columns → each command's output, escapes removed."""
    if shutil.which("setsid") is None:
        pytest.skip("needs util-linux setsid")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, width, 0, 0))
    env = env_for(TERM="xterm-256color", COLUMNS=str(width))
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(["setsid", "-c", sys.executable, "-c", _DRIVER.format(commands=commands)],
                            env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    text = ANSI.sub("", out.decode("utf-8", "replace").replace("\r\n", "\n"))
    assert proc.returncode == 0, text[-2000:]
    parts = text.split("\n@@END@@\n")
    assert len(parts) == len(commands) + 1, text[-2000:]
    return parts[:-1]


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
@pytest.mark.parametrize("width", WIDTHS)
def test_views_on_a_terminal(bundled, width):
    m = ["-m", str(DEFAULT_MODEL)]
    commands = [["topk", PROMPT, "--steps", "2", *m], ["trace", PROMPT, "--attention", "1", *m],
                ["embeddings", PROMPT, "--layer", "1", "--neighbors", "5", *m]]
    outputs = _on_terminal(commands, width)
    for kind, out in zip(["topk", "trace", "embeddings"], outputs):
        lines = out.split("\n")
        assert any("─" in line for line in lines), (kind, out[:500])   # the rich view, not plain
        _assert_fits(lines, width, kind)
        _assert_key_cells(kind, bundled[kind], lines)
    # the terminal's width was seen: the same columns as a Console of that width
    header = next(line for line in outputs[2].split("\n") if line.startswith("pos"))
    assert header == next(line for line in _render("embeddings", bundled["embeddings"], width)
                          if line.startswith("pos"))


def test_generate_logprobs_listing_fits(bundled):
    """generate --top-logprobs's listing on a terminal: alternatives continue on lines of
    their own under their column instead of every cell being cut to '…'."""
    from rich.console import Console

    events = []
    for step in bundled["topk"].steps:
        c = step.chosen
        events.append({"id": c["id"], "piece": c["piece"], "logprob": c["logprob"],
                       "top_logprobs": [{"id": a["id"], "piece": a["piece"], "logprob": a["logprob"]}
                                        for a in step.candidates[:8]]})
    for width in WIDTHS:
        buf = io.StringIO()
        render.logprobs_rich(events, Console(file=buf, width=width, force_terminal=True,
                                             color_system="truecolor"))
        lines = ANSI.sub("", buf.getvalue()).split("\n")
        _assert_fits(lines, width, "logprobs")
        text = "\n".join(lines)
        assert "…" not in text
        for e in events:
            assert f"{e['logprob']:.4f}" in text and f"{math.exp(e['logprob']):.4f}" in text
            for a in e["top_logprobs"]:
                assert f"{visible(a['piece'])} {a['logprob']:.3f}" in text, a


def test_info_tensors_fit():
    """info's tensors at 80 columns: the blocks' tensors once per name (with the blocks they
    are in), every shape whole; the piped table still lists every tensor."""
    from llmcli.inspection.info import model_info

    info = model_info(DEFAULT_MODEL)
    for width in WIDTHS:
        lines = _render("info", info, width)
        _assert_fits(lines, width, "info")
        text = "\n".join(lines)
        assert "…" not in text
        n = max(int(x.name.split(".")[2]) for x in info.tensors if x.name.startswith("model.layers."))
        assert f"model.layers.N, each of the {n + 1} blocks (N = 0–{n})" in text
        for x in info.tensors:
            name = x.name.split(".", 3)[3] if x.name.startswith("model.layers.") else x.name
            shape = "×".join(map(str, x.shape))
            assert any(line.startswith(name + " ") and shape in line for line in lines), x.name
    assert all(x.name in render.info_plain(info) for x in info.tensors)
    assert render._ranges([8, 0, 1, 2, 5, 7]) == "0–2, 5, 7–8" and render._ranges([3]) == "3"


def test_tokenize_table_fits(bundled):
    """tokenize at 80 columns: pieces whole, a long token's bytes continued under its column."""
    from llmcli.inspection.tokens import TokenRow, detokenize_ids, tokenize_text

    result = tokenize_text(bundled["tok"], "ROMEO: 中文 😀 wherefore")
    long = TokenRow(position=len(result.tokens), id=7, piece="▁" + "x" * 40, bytes=b" " + b"x" * 40,
                    kind="normal")
    result.tokens.append(long)
    for width in WIDTHS:
        lines = _render("tokenize", result, width)
        _assert_fits(lines, width, "tokenize")
        assert "…" not in "\n".join(lines)
        for t in result.tokens[:-1]:
            assert any(line.lstrip().startswith(f"{t.position} ") and visible(t.piece) in line
                       and render.hex_bytes(t.bytes) in line for line in lines), t
        at = next(i for i, line in enumerate(lines) if visible(long.piece) in line)
        shown = [lines[at].split("normal")[-1].strip()]
        for line in lines[at + 1:]:
            if not line.startswith("   "):
                break
            shown.append(line.strip())
        assert " ".join(shown) == render.hex_bytes(long.bytes), shown
    lines = _render("detokenize", detokenize_ids(bundled["tok"], bundled["ids"]), 80)
    _assert_fits(lines, 80, "detokenize")
