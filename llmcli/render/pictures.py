"""Pictures of the views: self-contained SVG and HTML files (``--save-svg`` / ``--save-html``).

Dependency-free (the standard library only; never rich, never torch). A file holds everything
it needs: inline CSS, no scripts, no fonts or images fetched from anywhere, UTF-8, every text
escaped (control characters shown as ``\\n``, ``\\x1b``... as in the terminal). Layout uses a
monospace font and counts terminal cells (:func:`llmcli.render.text_width`), so the picture
lines up as the terminal view does.

API
---
A :class:`Figure` is a title and a list of panels, drawn top to bottom::

    from llmcli.render import pictures as P

    fig = P.Figure("topk · ROMEO:", panels=[
        P.BarsPanel(rows=[P.BarRow("\\n", 0.88, ["9.0123", "0.8848"]), ...],
                    number_headers=["logit", "prob"], title="softmax(logits / 1)"),
    ])
    svg_text = fig.svg()          # str: one <svg> document
    html_text = fig.html()        # str: one HTML5 document
    P.save_figure(fig, "out.svg", "svg", option="--save-svg", force=False)

Panels (dataclasses; every field is plain data):

- :class:`StripPanel` (``tokens``: [:class:`StripToken`], ``scale``: :class:`Scale`, ``title``,
  ``legend``=True, ``wrap``=96 cells): a line of text pieces, each on a background coloured by
  its ``value`` through ``scale`` (``None`` = no colour), a ``tooltip`` per piece (SVG
  ``<title>``, HTML ``title=``). A piece's ``"\\n"`` is shown as ``↵`` and breaks the line. Use
  for score (probability / rank bucket) and attribute (signed value).
- :class:`BarsPanel` (``rows``: [:class:`BarRow`], ``label_header``="piece", ``number_headers``,
  ``bar_header``="prob", ``title``, ``scale``=None): rows of label + bar + numbers (strings,
  right-aligned). ``BarRow.fraction`` is in [0, 1], or in [-1, 1] for signed bars (drawn left
  of a centre line when negative); ``colour`` (``"#rrggbb"``) overrides the scale (default:
  :func:`probability_scale`, or :func:`signed_scale` when a fraction is negative);
  ``highlight`` draws the row bold on a tinted band; ``mark_after`` draws a dashed line with
  that text after the row (topk's "top-p 0.95 cuts here").
- :class:`GridPanel` (``values``: rows × columns of float or ``None``, ``row_labels``,
  ``col_labels``, ``scale``, ``texts``=None (a string per cell, e.g. the logit lens's top
  token), ``tooltips``=None, ``row_header``, ``col_header``, ``title``, ``legend``=True): a heat
  map; ``None`` cells (masked future positions) are drawn empty.
- :class:`NotePanel` (``text``): a line of small text (units, how to read the picture).

Colour scales (:class:`Scale`: ``colour(value) -> "#rrggbb"``, ``legend() -> [(colour, label)]``):
:func:`probability_scale` (0 → red, 1 → green, the terminal's :func:`llmcli.render.prob_style`
steps), :func:`rank_scale` (GLTR's buckets: rank 1, 2-10, 11-100, beyond; ``value`` = 1-based
rank), :func:`signed_scale` (``limit``: blue < 0 < red, white at 0), :func:`heat_scale`
(``peak``: the terminal heat map's dark blue → orange → light yellow).

Saving: :func:`save_figure` writes through :func:`llmcli.outputs.write_file_atomically` (a
temporary file, then ``os.replace``; an existing file only with ``force``; directories,
devices, pipes and links refused); :func:`check_picture_path` checks the path before any work
(call it when the options are read, so a bad ``--save-svg`` fails before the model loads).
Both raise :class:`llmcli.errors.LLMCLIError` naming the option.

Units: SVG coordinates are CSS pixels; :data:`FONT_PX` 13 px monospace, one cell
:data:`CELL_PX` (0.6 em) wide.
"""

from __future__ import annotations

import html
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llmcli.render import clip as _clip
from llmcli.render import text_width as cells  # terminal cells: the same count as the terminal views

__all__ = ["BarRow", "BarsPanel", "CELL_PX", "FONT_PX", "Figure", "GridPanel", "NotePanel",
           "Scale", "StripPanel", "StripToken", "check_picture_path", "heat_rgb", "heat_scale",
           "picture_text", "probability_scale", "rank_scale", "save_figure", "save_pictures",
           "signed_scale"]

FONT_PX = 13
CELL_PX = FONT_PX * 0.6          # width of one terminal cell in a monospace font
LINE_PX = 20                     # height of one text row
PAD = 16                         # margin around the figure and between panels
FONT = "'DejaVu Sans Mono', Menlo, Consolas, 'Liberation Mono', ui-monospace, monospace"
BAR_PX = 240                     # width of a full bar
MAX_LABEL_CELLS = 24             # labels longer than this are clipped (full text in a tooltip)
MAX_CELL_CELLS = 14              # grid cell texts longer than this are clipped
INK, MUTED, RULE, PAPER = "#1f2328", "#656d76", "#d0d7de", "#ffffff"

FORMATS = ("svg", "html")


# ----------------------------------------------------------------------------- text
def picture_text(s: str, newline: str = "\\n") -> str:
    """``s`` safe for XML 1.0 and readable: control and format characters shown as escapes
    (``\\t``, ``\\x1b``, ``\\u200b``), ``"\\n"`` as ``newline``, lone surrogates as ``\\udXXX``
    (they cannot be written as UTF-8); spaces kept."""
    out = []
    for ch in s:
        if ch == "\n":
            out.append(newline)
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        elif unicodedata.combining(ch) and not out:
            out.append("\u25cc" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _esc(s: str) -> str:
    """Escaped for XML/HTML text and attribute values (after :func:`picture_text`)."""
    return html.escape(s, quote=True)


def _num(x: float) -> str:
    """An SVG coordinate: at most 2 decimals, no trailing zeros."""
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return s if s not in ("-0", "") else "0"


# ----------------------------------------------------------------------------- colours
def _hex(r: float, g: float, b: float) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(max(0, min(255, int(round(v)))) for v in (r, g, b)))


def _rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _mix(a: str, b: str, t: float) -> str:
    t = min(max(t, 0.0), 1.0)
    (r1, g1, b1), (r2, g2, b2) = _rgb(a), _rgb(b)
    return _hex(r1 + (r2 - r1) * t, g1 + (g2 - g1) * t, b1 + (b2 - b1) * t)


def ink_on(background: str) -> str:
    """Black or white text, whichever reads better on ``background`` (WCAG relative luminance)."""
    def lin(c: int) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = _rgb(background)
    lum = 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    return INK if lum > 0.22 else "#ffffff"


def heat_rgb(x: float) -> tuple[int, int, int]:
    """The terminal heat map's colour for ``x`` in [0, 1]: dark blue → orange → light yellow
    (the same formula as :func:`llmcli.render.heatmap_rich`)."""
    x = min(max(x, 0.0), 1.0)
    return int(20 + 235 * x), int(20 + 200 * x ** 1.5), int(60 + 80 * (1 - x) * x * 2)


@dataclass
class Scale:
    """A value → colour map with a legend.

    ``fn(value) -> "#rrggbb"``; ``ticks``: ``[(value, label)]`` shown as the legend's swatches;
    ``name``: the legend's caption (e.g. "probability").
    """

    name: str
    fn: Callable[[float], str]
    ticks: list[tuple[float, str]] = field(default_factory=list)

    def colour(self, value: float | None) -> str | None:
        """The colour of ``value``; ``None`` for ``None`` or a non-finite value."""
        if value is None or not math.isfinite(value):
            return None
        return self.fn(value)

    def legend(self) -> list[tuple[str, str]]:
        return [(self.fn(v), label) for v, label in self.ticks]


#: The terminal's probability colours (``prob_style``), as hex: (lower bound, colour).
PROB_STEPS = [(0.8, "#2da44e"), (0.5, "#8ccf3f"), (0.25, "#e3c325"), (0.1, "#f0883e"), (0.0, "#e5534b")]


def prob_colour(p: float) -> str:
    """Foreground colour of a probability, the steps of :func:`llmcli.render.prob_style`."""
    for bound, colour in PROB_STEPS:
        if p >= bound:
            return colour
    return PROB_STEPS[-1][1]


def probability_scale(name: str = "probability") -> Scale:
    """0 → light red, 1 → light green, in the terminal's five steps (backgrounds a text reads on)."""
    def fn(p: float) -> str:
        return _mix(prob_colour(p), PAPER, 0.45)

    return Scale(name, fn, [(0.05, "< 0.1"), (0.15, "0.1–0.25"), (0.3, "0.25–0.5"),
                            (0.6, "0.5–0.8"), (0.9, "≥ 0.8")])


#: GLTR's rank buckets (Gehrmann et al. 2019): (highest 1-based rank, colour, label).
RANK_BUCKETS = [(1, "#a6e3a1", "top 1"), (10, "#fbe38e", "top 10"), (100, "#f7b4a7", "top 100"),
                (math.inf, "#d8b4f8", "beyond 100")]


def rank_scale(name: str = "rank") -> Scale:
    """GLTR's buckets for a 1-based rank: 1 green, 2-10 yellow, 11-100 red, beyond purple."""
    def fn(rank: float) -> str:
        for top, colour, _ in RANK_BUCKETS:
            if rank <= top:
                return colour
        return RANK_BUCKETS[-1][1]

    return Scale(name, fn, [(1, "top 1"), (10, "2–10"), (100, "11–100"), (101, "beyond 100")])


def signed_scale(limit: float, name: str = "value") -> Scale:
    """Signed values in [-limit, limit]: blue (negative) ← white (0) → red (positive),
    saturating beyond ``limit`` (``limit`` ≤ 0 is taken as 1)."""
    limit = limit if limit > 0 and math.isfinite(limit) else 1.0

    def fn(v: float) -> str:
        t = min(abs(v) / limit, 1.0)
        return _mix(PAPER, "#2f6fdb" if v < 0 else "#d93f3f", t * 0.85)

    ticks = [(-limit, f"{-limit:.3g}"), (-limit / 2, f"{-limit / 2:.3g}"), (0.0, "0"),
             (limit / 2, f"{limit / 2:.3g}"), (limit, f"{limit:.3g}")]
    return Scale(name, fn, ticks)


def heat_scale(peak: float = 1.0, name: str = "weight") -> Scale:
    """``0..peak`` through :func:`heat_rgb` (the terminal heat map's colours)."""
    peak = peak if peak > 0 and math.isfinite(peak) else 1.0
    return Scale(name, lambda v: _hex(*heat_rgb(v / peak)),
                 [(peak * t, f"{peak * t:.3g}") for t in (0.0, 0.25, 0.5, 0.75, 1.0)])


# ----------------------------------------------------------------------------- panels
@dataclass
class StripToken:
    """One piece of a token strip: its ``text`` (as it reads in the text, spaces included),
    the ``value`` the scale colours (``None`` = uncoloured) and a ``tooltip``."""

    text: str
    value: float | None = None
    tooltip: str = ""


@dataclass
class StripPanel:
    tokens: list[StripToken]
    scale: Scale
    title: str = ""
    legend: bool = True
    wrap: int = 96              # most cells on one line of the SVG


@dataclass
class BarRow:
    label: str
    fraction: float                       # [0, 1], or [-1, 1] for signed bars
    numbers: list[str] = field(default_factory=list)
    colour: str | None = None
    highlight: bool = False
    mark_after: str | None = None
    tooltip: str = ""


@dataclass
class BarsPanel:
    rows: list[BarRow]
    number_headers: list[str] = field(default_factory=list)
    label_header: str = "piece"
    bar_header: str = "prob"
    title: str = ""
    scale: Scale | None = None
    lead_headers: list[str] = field(default_factory=list)   # columns before the label (e.g. "#")
    lead: list[list[str]] = field(default_factory=list)     # their cells, one list per row


@dataclass
class GridPanel:
    values: list[list[float | None]]
    row_labels: list[str]
    col_labels: list[str]
    scale: Scale
    texts: list[list[str | None]] | None = None
    tooltips: list[list[str]] | None = None
    row_header: str = ""
    col_header: str = ""
    title: str = ""
    legend: bool = True


@dataclass
class NotePanel:
    text: str


Panel = StripPanel | BarsPanel | GridPanel | NotePanel


def _signed(panel: BarsPanel) -> bool:
    return any(r.fraction < 0 for r in panel.rows)


def _bar_colour(panel: BarsPanel, row: BarRow) -> str:
    if row.colour:
        return row.colour
    if panel.scale is not None:
        return panel.scale.colour(row.fraction) or MUTED
    if _signed(panel):
        return "#2f6fdb" if row.fraction < 0 else "#d93f3f"
    return prob_colour(row.fraction)


# ----------------------------------------------------------------------------- SVG
class _Svg:
    """Accumulates SVG elements and the drawing's extent."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.width = 0.0

    def text(self, x: float, y: float, s: str, *, cls: str = "", anchor: str = "start",
             fill: str | None = None, bold: bool = False, extra: str = "") -> None:
        attrs = [f'x="{_num(x)}"', f'y="{_num(y)}"']
        if cls:
            attrs.append(f'class="{cls}"')
        if anchor != "start":
            attrs.append(f'text-anchor="{anchor}"')
        if fill:
            attrs.append(f'fill="{fill}"')
        if bold:
            attrs.append('font-weight="bold"')
        if extra:
            attrs.append(extra)
        self.parts.append(f"<text {' '.join(attrs)}>{_esc(s)}</text>")
        right = x if anchor == "end" else x + cells(s) * CELL_PX
        self.width = max(self.width, right)

    def rect(self, x: float, y: float, w: float, h: float, fill: str, extra: str = "") -> None:
        self.parts.append(f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" height="{_num(h)}" '
                          f'fill="{fill}"{" " + extra if extra else ""}/>')
        self.width = max(self.width, x + w)

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str = RULE,
             dashed: bool = False) -> None:
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        self.parts.append(f'<line x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" y2="{_num(y2)}" '
                          f'stroke="{stroke}"{dash}/>')
        self.width = max(self.width, x1, x2)

    def open_group(self, tooltip: str = "") -> None:
        self.parts.append("<g>" + (f"<title>{_esc(picture_text(tooltip))}</title>" if tooltip else ""))

    def close_group(self) -> None:
        self.parts.append("</g>")


def _svg_legend(svg: _Svg, scale: Scale, y: float) -> float:
    x = PAD
    svg.text(x, y + 13, scale.name + ":", cls="muted")
    x += (cells(scale.name) + 2) * CELL_PX
    for colour, label in scale.legend():
        svg.rect(x, y + 2, 14, 14, colour, 'stroke="#8c959f" stroke-width="0.5"')
        svg.text(x + 18, y + 13, label, cls="muted")
        x += 18 + (cells(label) + 2) * CELL_PX
    return y + LINE_PX + 4


def _svg_title(svg: _Svg, title: str, y: float) -> float:
    if not title:
        return y
    svg.text(PAD, y + 14, picture_text(title), bold=True)
    return y + LINE_PX + 4


def _svg_strip(svg: _Svg, p: StripPanel, y: float) -> float:
    y = _svg_title(svg, p.title, y)
    x, limit = PAD, PAD + p.wrap * CELL_PX
    for tok in p.tokens:
        shown = picture_text(tok.text, newline="↵")
        w = max(cells(shown), 1) * CELL_PX
        if x + w > limit and x > PAD:
            x, y = PAD, y + LINE_PX + 2
        colour = p.scale.colour(tok.value)
        svg.open_group(tok.tooltip)
        svg.rect(x, y + 1, w, LINE_PX - 2, colour or PAPER,
                 "" if colour else f'stroke="{RULE}" stroke-width="0.5"')
        svg.text(x, y + 14, shown, fill=ink_on(colour) if colour else None, extra='xml:space="preserve"')
        svg.close_group()
        x += w + 1
        if "\n" in tok.text:
            x, y = PAD, y + (LINE_PX + 2) * tok.text.count("\n")
    y += LINE_PX + 8
    if p.legend:
        y = _svg_legend(svg, p.scale, y)
    return y


def _bars_layout(p: BarsPanel) -> dict:
    labels = [_clip(picture_text(r.label), MAX_LABEL_CELLS) for r in p.rows]
    n_num = max([len(p.number_headers)] + [len(r.numbers) for r in p.rows])
    n_lead = max([len(p.lead_headers)] + [len(c) for c in p.lead])
    lead_w = [max([cells(p.lead_headers[i]) if i < len(p.lead_headers) else 0]
                  + [cells(c[i]) for c in p.lead if i < len(c)]) for i in range(n_lead)]
    label_w = max([cells(p.label_header)] + [cells(s) for s in labels])
    num_w = [max([cells(p.number_headers[i]) if i < len(p.number_headers) else 0]
                 + [cells(r.numbers[i]) for r in p.rows if i < len(r.numbers)]) for i in range(n_num)]
    return {"labels": labels, "lead_w": lead_w, "label_w": label_w, "num_w": num_w}


def _svg_bars(svg: _Svg, p: BarsPanel, y: float) -> float:
    y = _svg_title(svg, p.title, y)
    lay = _bars_layout(p)
    gap = 2 * CELL_PX
    # column x positions
    x = PAD
    lead_x = []
    for w in lay["lead_w"]:
        lead_x.append(x + w * CELL_PX)     # right-aligned
        x += w * CELL_PX + gap
    label_x = x
    x += lay["label_w"] * CELL_PX + gap
    bar_x = x
    x += BAR_PX + gap
    num_x = []
    for w in lay["num_w"]:
        num_x.append(x + w * CELL_PX)
        x += w * CELL_PX + gap
    right = x - gap
    # header
    for i, h in enumerate(p.lead_headers):
        svg.text(lead_x[i], y + 14, h, anchor="end", bold=True)
    svg.text(label_x, y + 14, picture_text(p.label_header), bold=True)
    svg.text(bar_x, y + 14, picture_text(p.bar_header), bold=True)
    for i, h in enumerate(p.number_headers):
        svg.text(num_x[i], y + 14, h, anchor="end", bold=True)
    y += LINE_PX
    svg.line(PAD, y, right, y)
    y += 3
    signed = _signed(p)
    centre = bar_x + BAR_PX / 2
    for r, row in enumerate(p.rows):
        svg.open_group(row.tooltip)
        if row.highlight:
            svg.rect(PAD - 4, y, right - PAD + 8, LINE_PX, "#eef2f7")
        lead = p.lead[r] if r < len(p.lead) else []
        for i, c in enumerate(lead):
            svg.text(lead_x[i], y + 14, c, anchor="end", bold=row.highlight)
        svg.text(label_x, y + 14, lay["labels"][r], bold=row.highlight, extra='xml:space="preserve"')
        frac = row.fraction if math.isfinite(row.fraction) else 0.0
        colour = _bar_colour(p, row)
        if signed:
            w = min(abs(frac), 1.0) * BAR_PX / 2
            svg.rect(centre - w if frac < 0 else centre, y + 4, w, LINE_PX - 8, colour)
        else:
            svg.rect(bar_x, y + 4, min(max(frac, 0.0), 1.0) * BAR_PX, LINE_PX - 8, colour)
        for i, c in enumerate(row.numbers):
            svg.text(num_x[i], y + 14, c, anchor="end", bold=row.highlight)
        svg.close_group()
        y += LINE_PX
        if row.mark_after:
            svg.line(PAD, y + 4, right, y + 4, stroke=MUTED, dashed=True)
            svg.text(label_x, y + 17, f"── {picture_text(row.mark_after)} ──", cls="muted")
            y += LINE_PX + 2
    if signed:
        svg.line(centre, y - LINE_PX * len(p.rows) - 2, centre, y, stroke=MUTED)
    return y + 8


def _svg_grid(svg: _Svg, p: GridPanel, y: float) -> float:
    y = _svg_title(svg, p.title, y)
    rows, cols = len(p.values), max((len(r) for r in p.values), default=0)
    row_labels = [_clip(picture_text(s), MAX_LABEL_CELLS) for s in p.row_labels]
    col_labels = [_clip(picture_text(s), MAX_LABEL_CELLS) for s in p.col_labels]
    texts = [[_clip(picture_text(t), MAX_CELL_CELLS) if t is not None else None for t in row]
             for row in p.texts] if p.texts else None
    text_cells = max((cells(t) for row in texts or [] for t in row if t), default=0)
    cw = max(18.0, text_cells * CELL_PX + 8) if texts else 18.0
    ch = LINE_PX if texts else 18.0
    label_w = max([cells(p.row_header)] + [cells(s) for s in row_labels]) * CELL_PX
    x0 = PAD + label_w + 8
    # column labels: rotated when cells are narrow, horizontal otherwise
    head_cells = max((cells(s) for s in col_labels), default=0)
    rotate = head_cells * CELL_PX > cw - 2
    # narrow cells: labels upright (-90°), one per column; wider ones at -45°
    angle = -90 if cw < 2 * LINE_PX else -45
    head_h = (head_cells * CELL_PX * (1.0 if angle == -90 else 0.75) + 12) if rotate else LINE_PX
    if p.col_header:
        svg.text(x0, y + 14, picture_text(p.col_header), cls="muted")
        y += LINE_PX
    top = y + head_h
    for j, lab in enumerate(col_labels):
        cx = x0 + j * cw + cw / 2
        if rotate:
            ax = cx + 4 if angle == -90 else cx
            svg.text(ax, top - 4, lab, extra=f'transform="rotate({angle} {_num(ax)} {_num(top - 4)})" '
                                             'xml:space="preserve"')
        else:
            svg.text(cx, top - 5, lab, anchor="middle", extra='xml:space="preserve"')
    if p.row_header:
        svg.text(PAD, top - 5, picture_text(p.row_header), cls="muted")
    y = top
    for i in range(rows):
        svg.text(PAD, y + ch / 2 + 4.5, row_labels[i] if i < len(row_labels) else "",
                 extra='xml:space="preserve"')
        for j in range(cols):
            v = p.values[i][j] if j < len(p.values[i]) else None
            colour = p.scale.colour(v)
            tip = p.tooltips[i][j] if p.tooltips and j < len(p.tooltips[i]) else ""
            svg.open_group(tip)
            svg.rect(x0 + j * cw, y, cw - 1, ch - 1, colour or "#f6f8fa")
            t = texts[i][j] if texts and j < len(texts[i]) else None
            if t:
                svg.text(x0 + j * cw + cw / 2, y + ch / 2 + 4.5, t, anchor="middle",
                         fill=ink_on(colour) if colour else MUTED, extra='xml:space="preserve"')
            svg.close_group()
        y += ch
    svg.width = max(svg.width, x0 + cols * cw)
    y += 8
    if p.legend:
        y = _svg_legend(svg, p.scale, y)
    return y


def _svg_note(svg: _Svg, p: NotePanel, y: float) -> float:
    for line in p.text.split("\n"):
        svg.text(PAD, y + 13, picture_text(line), cls="muted")
        y += LINE_PX - 2
    return y + 4


_SVG_DRAW = {StripPanel: _svg_strip, BarsPanel: _svg_bars, GridPanel: _svg_grid, NotePanel: _svg_note}

_SVG_STYLE = (f"text{{font-family:{FONT};font-size:{FONT_PX}px;fill:{INK};white-space:pre}}"
              f".muted{{fill:{MUTED};font-size:{FONT_PX - 1}px}}")


# ----------------------------------------------------------------------------- HTML
_HTML_STYLE = f"""
body{{font-family:{FONT};font-size:{FONT_PX}px;color:{INK};background:{PAPER};margin:{PAD}px}}
h1{{font-size:15px;margin:0 0 12px 0}}
h2{{font-size:{FONT_PX}px;margin:16px 0 6px 0}}
.muted{{color:{MUTED};font-size:{FONT_PX - 1}px}}
.strip{{white-space:pre-wrap;line-height:1.7;max-width:{int(96 * CELL_PX)}px}}
.strip span{{border-radius:2px;padding:1px 0}}
table{{border-collapse:collapse}}
th{{text-align:left;border-bottom:1px solid {RULE};padding:2px 8px}}
td{{padding:1px 8px;white-space:pre}}
td.num,th.num{{text-align:right}}
tr.hl td{{font-weight:bold;background:#eef2f7}}
tr.mark td{{color:{MUTED};border-top:1px dashed {MUTED};font-size:{FONT_PX - 1}px}}
.bar{{width:{BAR_PX}px;height:{LINE_PX - 8}px;position:relative}}
.bar div{{position:absolute;top:0;height:100%}}
.bar .axis{{left:50%;width:1px;background:{MUTED}}}
table.grid td{{padding:0;text-align:center;min-width:18px;height:18px}}
table.grid td.rl{{text-align:left;padding-right:8px}}
table.grid th{{border:none;font-weight:normal;padding:0 2px;vertical-align:bottom}}
table.grid th.col{{writing-mode:vertical-rl;transform:rotate(180deg);white-space:pre;text-align:left;
  padding:2px 0}}
.legend span.sw{{display:inline-block;width:14px;height:14px;vertical-align:middle;
  border:0.5px solid #8c959f;margin:0 4px 0 10px}}
""".strip()


def _attr_title(tooltip: str) -> str:
    return f' title="{_esc(picture_text(tooltip))}"' if tooltip else ""


def _html_legend(scale: Scale) -> str:
    items = "".join(f'<span class="sw" style="background:{c}"></span>{_esc(label)}'
                    for c, label in scale.legend())
    return f'<p class="legend muted">{_esc(scale.name)}:{items}</p>'


def _html_title(title: str) -> str:
    return f"<h2>{_esc(picture_text(title))}</h2>" if title else ""


def _html_strip(p: StripPanel) -> str:
    spans = []
    for tok in p.tokens:
        colour = p.scale.colour(tok.value)
        style = f' style="background:{colour};color:{ink_on(colour)}"' if colour else ""
        shown = _esc(picture_text(tok.text, newline="↵"))
        brk = "<br>" * tok.text.count("\n")
        spans.append(f"<span{style}{_attr_title(tok.tooltip)}>{shown}</span>{brk}")
    out = _html_title(p.title) + f'<div class="strip">{"".join(spans)}</div>'
    return out + (_html_legend(p.scale) if p.legend else "")


def _html_bars(p: BarsPanel) -> str:
    lay = _bars_layout(p)
    signed = _signed(p)
    head = "".join(f'<th class="num">{_esc(h)}</th>' for h in p.lead_headers)
    head += f"<th>{_esc(picture_text(p.label_header))}</th><th>{_esc(picture_text(p.bar_header))}</th>"
    head += "".join(f'<th class="num">{_esc(h)}</th>' for h in p.number_headers)
    ncols = len(lay["lead_w"]) + 2 + len(lay["num_w"])
    rows = []
    for r, row in enumerate(p.rows):
        frac = row.fraction if math.isfinite(row.fraction) else 0.0
        colour = _bar_colour(p, row)
        if signed:
            w = min(abs(frac), 1.0) * 50
            pos = f"right:50%;width:{w:.2f}%" if frac < 0 else f"left:50%;width:{w:.2f}%"
            bar = f'<div class="axis"></div><div style="{pos};background:{colour}"></div>'
        else:
            bar = f'<div style="left:0;width:{min(max(frac, 0.0), 1.0) * 100:.2f}%;background:{colour}"></div>'
        lead = p.lead[r] if r < len(p.lead) else []
        cells_html = "".join(f'<td class="num">{_esc(c)}</td>' for c in lead)
        cells_html += (f"<td>{_esc(lay['labels'][r])}</td>"
                       f'<td><div class="bar">{bar}</div></td>')
        cells_html += "".join(f'<td class="num">{_esc(c)}</td>' for c in row.numbers)
        cls = ' class="hl"' if row.highlight else ""
        rows.append(f"<tr{cls}{_attr_title(row.tooltip)}>{cells_html}</tr>")
        if row.mark_after:
            rows.append(f'<tr class="mark"><td colspan="{ncols}">── {_esc(picture_text(row.mark_after))} ──'
                        "</td></tr>")
    return (_html_title(p.title) + f"<table class=\"bars\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _html_grid(p: GridPanel) -> str:
    cols = max((len(r) for r in p.values), default=0)
    head = f"<th>{_esc(picture_text(p.row_header))}</th>" + "".join(
        f'<th class="col"{_attr_title(p.col_labels[j])}>'
        f"{_esc(_clip(picture_text(p.col_labels[j]), MAX_LABEL_CELLS))}</th>"
        for j in range(min(cols, len(p.col_labels))))
    body = []
    for i, row in enumerate(p.values):
        label = p.row_labels[i] if i < len(p.row_labels) else ""
        tds = [f'<td class="rl">{_esc(_clip(picture_text(label), MAX_LABEL_CELLS))}</td>']
        for j in range(cols):
            v = row[j] if j < len(row) else None
            colour = p.scale.colour(v)
            t = p.texts[i][j] if p.texts and j < len(p.texts[i]) else None
            tip = p.tooltips[i][j] if p.tooltips and j < len(p.tooltips[i]) else ""
            style = f' style="background:{colour};color:{ink_on(colour)}"' if colour else ""
            text = _esc(_clip(picture_text(t), MAX_CELL_CELLS)) if t else ""
            tds.append(f"<td{style}{_attr_title(tip)}>{text}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    caption = f'<p class="muted">{_esc(picture_text(p.col_header))}</p>' if p.col_header else ""
    out = (_html_title(p.title) + caption + f'<table class="grid"><thead><tr>{head}</tr></thead>'
           f"<tbody>{''.join(body)}</tbody></table>")
    return out + (_html_legend(p.scale) if p.legend else "")


def _html_note(p: NotePanel) -> str:
    return "".join(f'<p class="muted">{_esc(picture_text(line))}</p>' for line in p.text.split("\n"))


_HTML_DRAW = {StripPanel: _html_strip, BarsPanel: _html_bars, GridPanel: _html_grid, NotePanel: _html_note}


# ----------------------------------------------------------------------------- figure
@dataclass
class Figure:
    """A picture: ``title`` then ``panels`` top to bottom (see the module docstring)."""

    title: str
    panels: list[Panel] = field(default_factory=list)

    def svg(self) -> str:
        """One standalone SVG 1.1 document (UTF-8 text, inline CSS, no external references)."""
        svg = _Svg()
        y = float(PAD)
        if self.title:
            svg.text(PAD, y + 15, picture_text(self.title), bold=True, extra='font-size="15"')
            y += LINE_PX + 10
        for panel in self.panels:
            y = _SVG_DRAW[type(panel)](svg, panel, y) + PAD / 2
        width = math.ceil(svg.width + PAD)
        height = math.ceil(y + PAD / 2)
        head = (f'<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" '
                f'height="{height}" viewBox="0 0 {width} {height}">\n'
                f"<title>{_esc(picture_text(self.title))}</title>\n"
                f"<style>{_SVG_STYLE}</style>\n"
                f'<rect width="100%" height="100%" fill="{PAPER}"/>\n'
                # presentation attributes too: renderers without CSS support still use them
                f'<g font-family="{_esc(FONT)}" font-size="{FONT_PX}" fill="{INK}">\n')
        return head + "\n".join(svg.parts) + "\n</g>\n</svg>\n"

    def html(self) -> str:
        """One standalone HTML5 document (UTF-8, inline CSS, no scripts)."""
        body = "\n".join(_HTML_DRAW[type(p)](p) for p in self.panels)
        title = _esc(picture_text(self.title))
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                f"<title>{title}</title>\n<style>\n{_HTML_STYLE}\n</style>\n</head>\n<body>\n"
                f"<h1>{title}</h1>\n{body}\n</body>\n</html>\n")

    def render(self, fmt: str) -> str:
        """:meth:`svg` or :meth:`html` by ``fmt``."""
        if fmt not in FORMATS:
            raise ValueError(f"picture format must be one of {FORMATS}, got {fmt!r}")
        return self.svg() if fmt == "svg" else self.html()


# ----------------------------------------------------------------------------- files
def check_picture_path(path: Path | str, option: str = "--save-svg", force: bool = False) -> Path:
    """Fail before any work if ``path`` may not be written (:func:`llmcli.outputs.check_output_file`).

    Raises:
        LLMCLIError: a directory, device, pipe or link; an existing file without ``force``; a
            missing or unwritable folder (the message names ``option``).
    """
    from llmcli.outputs import check_output_file

    return check_output_file(path, option, force)


def save_figure(figure: Figure, path: Path | str, fmt: str, option: str | None = None,
                force: bool = False) -> Path:
    """Write ``figure`` as ``fmt`` (``"svg"`` or ``"html"``) to ``path`` atomically, UTF-8.

    ``option`` (default ``--save-svg`` / ``--save-html``) names the file in errors.

    Raises:
        LLMCLIError: as :func:`check_picture_path`, or the write failed (nothing left behind,
            an existing file unchanged).
    """
    from llmcli.outputs import write_file_atomically

    text = figure.render(fmt)
    data = text.encode("utf-8")
    return write_file_atomically(path, lambda tmp: Path(tmp).write_bytes(data),
                                 option=option or f"--save-{fmt}", force=force)


def save_pictures(figure: Figure, svg: Path | str | None, html_path: Path | str | None,
                  force: bool = False, note: Callable[[str], None] | None = None) -> list[Path]:
    """Write ``figure`` to the ``--save-svg`` and/or ``--save-html`` paths given (``None`` =
    not asked); ``note(message)`` is told each file written (for a stderr line)."""
    written = []
    for fmt, path in (("svg", svg), ("html", html_path)):
        if path is None:
            continue
        written.append(save_figure(figure, path, fmt, force=force))
        if note is not None:
            note(f"saved {fmt.upper()} picture to {path}")
    return written

