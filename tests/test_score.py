"""``llmcli score``: every token's logprob, rank, entropy and alternatives against transformers
(bundled model), long texts through sliding windows, the plain listing, the terminal colouring
(GLTR buckets / probability, NO_COLOR), the SVG/HTML pictures, and bad input.
(Every family is run in test_perplexity.py.)"""

from __future__ import annotations

import html.parser
import io
import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from conftest import load_hf

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "shakespeare"
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun."
LONG = (TEXT + "\nArise, fair sun, and kill the envious moon,\nWho is already sick and pale with "
        "grief,\nThat thou her maid art far more fair than she.\n")


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``llmcli ARGS`` in-process → ``(exit code, stdout, stderr)``; ``tty=True`` makes
    stdout a terminal (``env`` is set for the run)."""
    from llmcli.cli.app import main

    class TTY(io.StringIO):
        def isatty(self):
            return True

    def run(*args, stdin: str = "", tty: bool = False, env: dict | None = None):
        monkeypatch.setattr(sys, "argv", ["llmcli", *map(str, args)])
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        fake = TTY() if tty else None
        if fake is not None:
            monkeypatch.setattr(sys, "stdout", fake)
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        if fake is not None:
            monkeypatch.setattr(sys, "stdout", sys.__stdout__)
            out = fake.getvalue()
        for key in (env or {}):
            monkeypatch.delenv(key)
        return code, out, err

    return run


@pytest.fixture(scope="module")
def reference():
    """The bundled model's ids of TEXT and transformers' float64 log-softmax at every position."""
    from llmcli.tokenizer import load_tokenizer

    tok = load_tokenizer(BUNDLED)
    ids = tok.encode(TEXT)
    with torch.no_grad():
        logits = load_hf(BUNDLED)(input_ids=torch.tensor([ids])).logits[0]
    return tok, ids, logits, torch.log_softmax(logits.double(), dim=-1)


def test_json_equals_transformers(cli, reference):
    tok, ids, logits, logp = reference
    code, out, err = cli("score", TEXT, "--json", "--top-logprobs", 4)
    assert code == 0, err
    doc = json.loads(out)
    content = doc["content"]
    assert [t["id"] for t in content] == ids and ids[0] == tok.bos_id
    first = content[0]
    assert (first["logprob"], first["rank"], first["entropy"], first["top_logprobs"]) == (None, None, None, [])
    assert first["token"] == "<s>" and first["bytes"] == []
    for j in range(1, len(ids)):
        t, row = content[j], logp[j - 1]
        assert abs(t["logprob"] - float(row[ids[j]])) <= 1e-4
        assert t["rank"] == 1 + int((logits[j - 1] > logits[j - 1, ids[j]]).sum())
        assert abs(t["entropy"] - float(-(row.exp() * row).sum())) <= 1e-4
        assert abs(t["entropy_bits"] - t["entropy"] / math.log(2)) <= 1e-9
        want = row.topk(4)
        assert [a["id"] for a in t["top_logprobs"]] == want.indices.tolist()
        assert all(abs(a["logprob"] - v) <= 1e-4 for a, v in zip(t["top_logprobs"], want.values.tolist()))
        for a in t["top_logprobs"]:
            assert bytes(a["bytes"]) == tok.token_bytes(a["id"])
        assert bytes(t["bytes"]) == tok.token_bytes(ids[j]) and t["piece"] == tok.piece(ids[j])
        assert t["bucket"] == ("top-1" if t["rank"] == 1 else "top-10" if t["rank"] <= 10
                               else "top-100" if t["rank"] <= 100 else "beyond")
    assert "".join(t["text"] for t in content) == TEXT          # the decoded text, exactly
    assert first["text"] == "" and content[1]["text"] == tok.decode(ids[:2])
    summary = doc["summary"]
    mean = sum(t["logprob"] for t in content[1:]) / (len(ids) - 1)
    assert summary["scored"] == len(ids) - 1 and abs(summary["mean_logprob"] - mean) <= 1e-9
    assert abs(summary["perplexity"] - math.exp(-mean)) <= 1e-6
    assert sum(summary["buckets"].values()) == len(ids) - 1


def test_long_text_uses_the_perplexity_windows(cli):
    """Beyond -c tokens, each token's logprob is the sliding rule's (history ≥ C - S)."""
    from llmcli.inspection.perplexity import perplexity
    from llmcli.tokenizer import load_tokenizer
    from llmcli.weights import load_model

    code, out, err = cli("score", "-c", 24, "--stride", 8, "-b", 5, "--json", "--top-logprobs", 0,
                         stdin=LONG)
    assert code == 0, err
    content = json.loads(out)["content"]
    tok = load_tokenizer(BUNDLED)
    ids = tok.encode(LONG)
    model, _ = load_model(BUNDLED)
    ref = perplexity(model, tok, ids, context=24, stride=8)
    assert len(content) == len(ids) > 3 * 24 and all(t["top_logprobs"] == [] for t in content)
    assert max(abs(t["logprob"] - r) for t, r in zip(content[1:], ref.logprobs)) <= 1e-5


def test_plain_listing_when_piped(cli, reference):
    tok, ids, _, _ = reference
    code, out, err = cli("score", TEXT)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["pos", "id", "token", "logprob", "prob", "rank", "H", "bits", "bucket"]
    assert len(lines) == len(ids) + 3 and max(len(line) for line in lines) <= 80
    assert lines[1].split() == ["0", str(ids[0]), "<s>", "-", "-", "-", "-", "-"]
    assert lines[2].split()[:3] == ["1", str(ids[1]), tok.decode(ids[:2])]   # no ▁ space
    assert "\\n" in out                      # the newline token is escaped
    assert re.match(rf"{len(ids)} tokens, {len(ids) - 1} scored · perplexity \d", lines[-2])
    assert re.fullmatch(r"top-1 [\d.]+% · top-10 [\d.]+% · top-100 [\d.]+% · beyond [\d.]+%",
                        lines[-1])


def test_terminal_colours_by_bucket_and_probability(cli, reference, monkeypatch):
    tok, ids, _, _ = reference
    monkeypatch.delenv("NO_COLOR", raising=False)      # a CI that sets it for every job
    env = {"COLORTERM": "truecolor", "TERM": "xterm-256color", "COLUMNS": "80"}
    code, out, err = cli("score", TEXT, tty=True, env=env)
    assert code == 0, err
    from llmcli.render import pictures as P

    assert "rank (GLTR):" in out and "no prediction" in out
    for _, colour, _ in P.RANK_BUCKETS:       # the pictures' palette, as 24-bit backgrounds
        r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert f"48;2;{r};{g};{b}m" in out, colour
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert f"<s>{TEXT}\n" in plain                  # the text itself, coloured
    code, out, err = cli("score", TEXT, "--color-by", "prob", tty=True, env=env)
    assert code == 0 and "probability:" in out and "≥ 0.8" in out, err
    code, out, err = cli("score", TEXT, tty=True, env={**env, "NO_COLOR": "1"})
    assert code == 0 and "\x1b[" not in out, err
    assert out.splitlines()[0].split()[:3] == ["pos", "id", "token"]   # the listing instead


def test_sixteen_colour_terminal_gets_named_colours(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    from rich.console import Console

    from llmcli.inspection.score import ScoreSummary
    from llmcli.render.score import Span, score_rich

    spans = [Span("A", None, None, None), Span(" b", -0.1, 1, "top-1"), Span(" c", -2.0, 5, "top-10"),
             Span(" d", -5.0, 50, "top-100"), Span(" e", -9.0, 500, "beyond")]
    buf = io.StringIO()
    score_rich(spans, ScoreSummary(), Console(file=buf, force_terminal=True, color_system="standard",
                                              width=80), "rank")
    out = buf.getvalue()
    for code in ("42", "43", "41", "45"):      # green, yellow, red, magenta backgrounds
        assert f"30;{code}m" in out


def test_pictures_are_well_formed_and_show_the_tokens(cli, tmp_path):
    svg, page = tmp_path / "score.svg", tmp_path / "score.html"
    code, out, err = cli("score", TEXT, "--save-svg", svg, "--save-html", page)
    assert code == 0, err
    assert f"saved SVG picture to {svg}" in err and f"saved HTML picture to {page}" in err
    root = ET.fromstring(svg.read_text(encoding="utf-8"))
    ns = "{http://www.w3.org/2000/svg}"
    shown = "".join(el.text or "" for el in root.iter(ns + "text"))
    for words in ("ROMEO:↵But soft, what light through yonder window breaks?↵", "Juliet is the sun.",
                  "top 1", "beyond 100", "perplexity"):
        assert words in shown, words
    tooltips = [el.text for el in root.iter(ns + "title")]
    assert sum("logprob" in (t or "") for t in tooltips) == 35     # one per scored token
    body = page.read_text(encoding="utf-8")

    class Parser(html.parser.HTMLParser):
        text = ""

        def handle_data(self, data):
            self.text += data

    parser = Parser()
    parser.feed(body)
    assert "yonder" in parser.text and "<script" not in body
    before = svg.read_bytes()
    code, out, err = cli("score", "other text", "--save-svg", svg)
    assert code == 1 and "--save-svg" in err and "already exists" in err and out == ""
    assert svg.read_bytes() == before
    code, out, err = cli("score", TEXT, "--save-svg", svg, "--force", "--color-by", "prob")
    assert code == 0 and svg.read_bytes() != before, err


@pytest.mark.parametrize("args,needle,code", [
    (["", "--no-bos"], "TEXT: gives 0 tokens; score needs at least 2", 2),
    (["T", "--no-bos"], "TEXT: gives 1 token; score needs at least 2", 2),
    (["To be", "-c", "16", "--stride", "17"], "--stride: 17 is larger than --context 16", 2),
    (["-f", "EMPTY"], "FILE: {EMPTY} is empty", 1),
    (["To be", "-f", "EMPTY"], "TEXT and --file: give one", 2),
    (["To be", "--top-logprobs", "21"], "--top-logprobs: 21 is out of range [0, 20]", 2),
    (["To be", "--color-by", "entropy"], "--color-by: 'entropy' is not one of rank, prob", 2),
    (["To be", "--save-svg", "NOFOLDER"], "--save-svg: cannot write", 1),
    (["To be", "--save-html", "DIR"], "--save-html: {DIR}: is a directory", 1),
    (["To be", "--save-svg", "SAME", "--save-html", "SAME"], "give two different files", 2),
])
def test_bad_input_is_one_line(cli, tmp_path, args, needle, code):
    paths = {"EMPTY": tmp_path / "empty.txt", "NOFOLDER": tmp_path / "no" / "such" / "x.svg",
             "DIR": tmp_path, "SAME": tmp_path / "same.svg"}
    paths["EMPTY"].write_bytes(b"")
    got, out, err = cli("score", *[str(paths.get(a, a)) for a in args])
    assert got == code, (out, err)
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert needle.format(**{k: str(v) for k, v in paths.items()}) in err, err
    assert not (tmp_path / "no").exists() and not paths["SAME"].exists()


def test_file_and_stdin_give_the_same_listing(cli, tmp_path):
    path = tmp_path / "romeo.txt"
    path.write_text(TEXT, encoding="utf-8")
    code, from_file, err = cli("score", "-f", path)
    assert code == 0, err
    code, from_stdin, err = cli("score", "-", stdin=TEXT)
    assert code == 0 and from_file == from_stdin == cli("score", TEXT)[1], err
