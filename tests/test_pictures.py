"""Pictures (llmcli.render.pictures): well-formed, self-contained SVG and HTML with the view's
text and numbers, written under the output rule (atomic, --force, no directories or devices).

The SVG is parsed with xml.etree.ElementTree, the HTML with html.parser (every non-void element
closed in order). A screenshot through a headless browser runs only where `chromium` is on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llmcli.errors import LLMCLIError
from llmcli.render import pictures as P

SVG_NS = "{http://www.w3.org/2000/svg}"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# ----------------------------------------------------------------------------- checkers
def parse_svg(text: str) -> ET.Element:
    """The SVG's root element; asserts it is a standalone SVG with no external reference."""
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == SVG_NS + "svg"
    assert float(root.get("width")) > 0 and float(root.get("height")) > 0
    for el in root.iter():
        assert el.tag not in (SVG_NS + "script", SVG_NS + "image", SVG_NS + "foreignObject"), el.tag
        for name, value in el.attrib.items():
            assert "href" not in name, (el.tag, name, value)
            assert "url(" not in value, (el.tag, name, value)
    return root


def svg_texts(root: ET.Element) -> list[str]:
    return ["".join(el.itertext()) for el in root.iter(SVG_NS + "text")]


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.errors: list[str] = []
        self.in_title = False
        self.title = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "title":
            self.in_title = True
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        elif self.stack and self.stack[-1] != "style":
            self.text.append(data)


def parse_html(text: str) -> _Html:
    """Parsed HTML; asserts a complete, self-contained document (doctype, charset, inline style,
    no scripts, no external resources, every element closed in order)."""
    assert text.startswith("<!DOCTYPE html>")
    p = _Html()
    p.feed(text)
    p.close()
    assert not p.errors, p.errors
    assert not p.stack, f"unclosed: {p.stack}"
    names = [t for t, _ in p.tags]
    assert names[:2] == ["html", "head"] and "body" in names and "style" in names
    assert ("meta", {"charset": "utf-8"}) in p.tags
    for tag, attrs in p.tags:
        assert tag not in ("script", "link", "img", "iframe", "object"), tag
        assert not {"src", "href"} & set(attrs), (tag, attrs)
    return p


def html_text(p: _Html) -> str:
    return "".join(p.text)


# ----------------------------------------------------------------------------- a figure
def _figure() -> P.Figure:
    return P.Figure("ROMEO: <&> \x1b", [
        P.StripPanel([P.StripToken("Hello", 0.9, "p 0.9000"), P.StripToken(" wörld", 0.2),
                      P.StripToken("\n", 0.5), P.StripToken(" 中文", None)],
                     P.probability_scale(), title="strip"),
        P.StripPanel([P.StripToken("a", 1), P.StripToken(" b", 40), P.StripToken(" c", 1000)],
                     P.rank_scale()),
        P.BarsPanel([P.BarRow("\n", 0.8848, ["9.0123", "0.8848"], highlight=True,
                              mark_after="min-p 0.05 cuts here"),
                     P.BarRow("▁the", 0.0512, ["4.0001", "0.0512"])],
                    ["logit", "prob"], lead_headers=["#"], lead=[["1"], ["2"]], title="bars"),
        P.BarsPanel([P.BarRow("x", -0.5, ["-0.5000"]), P.BarRow("y", 1.0, ["1.0000"])], ["value"],
                    bar_header="attribution"),
        P.GridPanel([[1.0, None], [0.3, 0.7]], ["0 a", "1 b"], ["a", "b"], P.heat_scale(1.0),
                    row_header="query", title="heat"),
        P.GridPanel([[0.9, 0.2], [0.3, 0.7]], ["L0", "L1"], ["ROMEO", ":"], P.probability_scale(),
                    texts=[["x", "yy"], ["zzz", "\n"]], tooltips=[["1", "2"], ["3", "4"]]),
        P.NotePanel("a note"),
    ])


def test_svg_is_well_formed_and_holds_the_text():
    fig = _figure()
    root = parse_svg(fig.svg())
    texts = svg_texts(root)
    assert "ROMEO: <&> \\x1b" in texts          # escaped for XML, control character shown
    for s in ("Hello", " wörld", "↵", " 中文", "\\n", "▁the", "0.8848", "9.0123", "-0.5000",
              "── min-p 0.05 cuts here ──", "zzz", "a note", "top 1", "beyond 100"):
        assert s in texts, s
    # one coloured rectangle per strip piece, coloured by the scale
    fills = {el.get("fill") for el in root.iter(SVG_NS + "rect")}
    assert P.probability_scale().colour(0.9) in fills and P.rank_scale().colour(1000) in fills
    # tooltips as <title>
    assert "p 0.9000" in ["".join(el.itertext()) for el in root.iter(SVG_NS + "title")]


def test_html_is_well_formed_and_holds_the_text():
    p = parse_html(_figure().html())
    assert p.title == "ROMEO: <&> \\x1b"
    text = html_text(p)
    for s in ("Hello", " wörld", "↵", "▁the", "0.8848", "-0.5000", "min-p 0.05 cuts here", "zzz"):
        assert s in text, s
    assert sum(1 for t, _ in p.tags if t == "table") == 4
    assert any(a.get("title") == "p 0.9000" for _, a in p.tags)
    assert any(t == "tr" and a.get("class") == "hl" for t, a in p.tags)   # the highlighted row


def test_scales():
    assert P.rank_scale().colour(1) != P.rank_scale().colour(2) == P.rank_scale().colour(10)
    assert P.rank_scale().colour(11) == P.rank_scale().colour(100) != P.rank_scale().colour(101)
    s = P.signed_scale(2.0)
    assert s.colour(0) == "#ffffff" and s.colour(-5) == s.colour(-2) and s.colour(1) != s.colour(-1)
    assert P.probability_scale().colour(float("nan")) is None and P.probability_scale().colour(None) is None
    assert P.heat_scale(0.5).colour(0.5) == "#{:02x}{:02x}{:02x}".format(*P.heat_rgb(1.0))
    assert P.ink_on("#000000") == "#ffffff" and P.ink_on("#ffffff") == P.INK


def test_text_is_safe():
    # lone surrogates and C0 controls are not valid XML; they are shown as escapes
    fig = P.Figure("x", [P.StripPanel([P.StripToken("\ud800\x00\x07<b>")], P.probability_scale())])
    texts = svg_texts(parse_svg(fig.svg()))
    assert "\\ud800\\x00\\x07<b>" in texts
    assert "&lt;b&gt;" in fig.html() and "<b>" not in fig.html().split("<body>")[1]
    fig.svg().encode("utf-8")


# ----------------------------------------------------------------------------- files
def test_save_atomically_and_refuse(tmp_path, monkeypatch):
    fig = _figure()
    out = tmp_path / "v.svg"
    P.save_figure(fig, out, "svg")
    assert out.read_text(encoding="utf-8") == fig.svg()
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(LLMCLIError, match=r"^--save-svg: .*already exists; use --force"):
        P.save_figure(fig, out, "svg")
    P.save_figure(P.Figure("other"), out, "svg", force=True)
    assert "other" in out.read_text(encoding="utf-8")
    with pytest.raises(LLMCLIError, match="--save-html: .*is a directory"):
        P.save_figure(fig, tmp_path, "html", force=True)
    if os.path.exists("/dev/null"):
        with pytest.raises(LLMCLIError, match="not a regular file"):
            P.save_figure(fig, "/dev/null", "html", force=True)
    link = tmp_path / "link.html"
    link.symlink_to(out)
    with pytest.raises(LLMCLIError, match="symbolic link"):
        P.check_picture_path(link, "--save-html", force=True)
    with pytest.raises(LLMCLIError, match="folder .* does not exist"):
        P.check_picture_path(tmp_path / "no" / "x.svg")

    # an interrupted write leaves the old file as it was and no temporary file
    before = out.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(LLMCLIError, match="--save-svg: cannot write .*No space left"):
        P.save_figure(fig, out, "svg", force=True)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.html", "v.svg"]


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless browser (Debian's chromium)")
def test_html_screenshot_shows_the_view(tmp_path):
    """A headless screenshot of the HTML is not blank and shows the bar's colour."""
    Image = pytest.importorskip("PIL.Image")

    page = tmp_path / "v.html"
    P.save_figure(_figure(), page, "html")
    png = tmp_path / "v.png"
    subprocess.run(["chromium", "--headless", "--disable-gpu", "--no-sandbox",
                    f"--screenshot={png}", "--window-size=900,1200", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = Image.open(png).convert("RGB")
    colours = set(img.getdata())
    assert len(colours) > 20
    bar = tuple(int(P.prob_colour(0.8848)[i:i + 2], 16) for i in (1, 3, 5))
    assert any(all(abs(a - b) <= 8 for a, b in zip(c, bar)) for c in colours)


# ----------------------------------------------------------------------------- topk and trace
@pytest.fixture
def cli(monkeypatch, capsys):
    """``llmcli ARGS`` in-process on the bundled model → ``(exit code, stdout, stderr)``."""
    import io
    import sys

    from llmcli.cli.app import main
    from test_cli_generate import DEFAULT_MODEL

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["llmcli", *map(str, args), "-m", str(DEFAULT_MODEL)])
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _one_line_error(result, code: int, *needles: str) -> None:
    got, out, err = result
    assert got == code, (got, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, err)


def test_topk_pictures(cli, tmp_path):
    import json

    from llmcli.render import visible

    svg, page = tmp_path / "topk.svg", tmp_path / "topk.html"
    code, out, err = cli("topk", "ROMEO:", "--steps", "3", "--json", "--save-svg", svg, "--save-html", page)
    assert code == 0, err
    assert f"saved SVG picture to {svg}" in err and f"saved HTML picture to {page}" in err
    doc = json.loads(out)
    texts = svg_texts(parse_svg(svg.read_text(encoding="utf-8")))
    html_doc = parse_html(page.read_text(encoding="utf-8"))
    body = html_text(html_doc)
    for step in doc["steps"]:
        for c in step["candidates"]:
            for s in (visible(c["piece"]), f"{c['prob']:.4f}", f"{c['logprob']:.4f}", f"{c['cumulative']:.4f}"):
                assert s in texts and s in body, s
    # every step's bars: one table each in the HTML, rows = candidates (+ the cut marks)
    tables = [t for t, a in html_doc.tags if t == "table"]
    assert len(tables) == 3
    assert sum(1 for t, a in html_doc.tags if t == "tr" and a.get("class") == "hl") == 3   # chosen rows
    assert any("top-p 0.95 cuts here" in t for t in texts) or any("min-p 0.05 cuts here" in t for t in texts)
    # the generated text, coloured per token, reads as generate prints it
    for step in doc["steps"]:
        assert step["chosen"]["text"].replace("\n", "↵") in texts
    assert "".join(s["chosen"]["text"] for s in doc["steps"]) == doc["text"]
    # an existing file is refused before any work (nothing changed); --force replaces it
    before = svg.read_bytes()
    _one_line_error(cli("topk", "ROMEO:", "--save-svg", svg), 1, "--save-svg", "already exists", "--force")
    assert svg.read_bytes() == before
    code, _, err = cli("topk", "ROMEO:", "--save-svg", svg, "--force")
    assert code == 0, err
    assert svg.read_bytes() != before and len(svg_texts(parse_svg(svg.read_text(encoding="utf-8")))) > 10
    _one_line_error(cli("topk", "ROMEO:", "--save-html", tmp_path), 1, "--save-html", "is a directory")
    _one_line_error(cli("topk", "ROMEO:", "--save-svg", tmp_path / "x", "--save-html", tmp_path / "x"), 2,
                    "--save-html", "--save-svg")
    _one_line_error(cli("topk", "ROMEO:", "--save-svg", tmp_path / "none" / "x.svg"), 1,
                    "--save-svg", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["topk.html", "topk.svg"]


def test_trace_pictures(cli, tmp_path):
    import json

    import torch

    from llmcli import render
    from llmcli.inspection import tensors as T
    from llmcli.render import visible
    from llmcli.tokenizer import load_tokenizer
    from llmcli.weights import load_model
    from test_cli_generate import DEFAULT_MODEL

    text = "ROMEO: What light through yonder window"
    svg, page = tmp_path / "trace.svg", tmp_path / "trace.html"
    code, out, err = cli("trace", text, "--attention", "1", "--json", "--save-svg", svg, "--save-html", page)
    assert code == 0, err
    doc = json.loads(out)
    grid = doc["lens_grid"]
    n_tok = len(doc["tokens"])
    assert grid["first_position"] == 0 and len(grid["layers"]) == len(doc["layers"])
    # the grid's last position is the per-block logit lens trace shows; its last block is the
    # model's own prediction at every position
    model, _ = load_model(DEFAULT_MODEL)
    tok = load_tokenizer(DEFAULT_MODEL)
    logits, _ = T.forward(model, tok.encode(text))
    for L, row in zip(doc["layers"], grid["layers"]):
        assert len(row["positions"]) == n_tok
        assert row["positions"][-1][0]["id"] == L["lens"][0]["id"]
        assert abs(row["positions"][-1][0]["prob"] - L["lens"][0]["prob"]) < 1e-6
    assert [cell[0]["id"] for cell in grid["layers"][-1]["positions"]] == logits.argmax(-1).tolist()
    probs = torch.softmax(logits.double(), -1).max(-1).values.tolist()
    assert all(abs(c[0]["prob"] - p) < 1e-5 for c, p in zip(grid["layers"][-1]["positions"], probs))

    root = parse_svg(svg.read_text(encoding="utf-8"))
    texts = svg_texts(root)
    html_doc = parse_html(page.read_text(encoding="utf-8"))
    body = html_text(html_doc)
    for row in grid["layers"]:
        for cell in row["positions"]:
            shown = f"{render.clip(visible(cell[0]['piece']), 8)} {cell[0]['prob']:.2f}"
            assert shown in texts and shown in body
    for c in doc["top"]:
        assert f"{c['prob']:.4f}" in texts and f"{c['prob']:.4f}" in body
    # the heat map: a coloured cell for each query/key pair at or before the query, the rest empty
    titles = ["".join(el.itertext()) for el in root.iter(SVG_NS + "title")]
    assert sum(t.startswith("query ") for t in titles) == n_tok * (n_tok + 1) // 2
    assert sum(t == "masked (future)" for t in titles) == n_tok * (n_tok - 1) // 2
    w = doc["attention"]["weights"]
    assert f"query {n_tok - 1} → key 0: {w[-1][0]:.4f}" in titles
    grids = [a for t, a in html_doc.tags if t == "table" and a.get("class") == "grid"]
    assert len(grids) == 2
    fills = {el.get("fill") for el in root.iter(SVG_NS + "rect")}
    peak = max(max(r[: i + 1]) for i, r in enumerate(w))
    assert P.heat_scale(peak).colour(w[-1][0]) in fills
