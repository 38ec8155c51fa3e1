"""Rendering of ``llmcli attribute``: a coloured line and a ranked table (terminal), the same
as annotated text (plain, when piped), JSON, and the same view as SVG/HTML pictures
(:mod:`llmcli.render.pictures`).

The line shows the text as it reads, each token on a background coloured by its signed
``value`` on a diverging scale (the pictures' :func:`~llmcli.render.pictures.signed_scale`,
so terminal and picture agree: red, the token raised the attributed function; blue, it
lowered it; white, no effect; full colour at the largest |value|); saliency has no sign and
uses the red half only. Never imports torch.
"""

from __future__ import annotations

import math
import textwrap

from llmcli.render import _table, bar, clip, console, visible, write_json

PIECE_WIDTH = 16   # most cells a piece takes in the table
WIDTH = 80         # plain text is wrapped to this many columns


def emit_attribution(result, mode: str, file=None) -> None:
    """Show ``result`` (:class:`llmcli.inspection.attribution.Attribution`) in ``mode``."""
    import sys

    if mode == "json":
        write_json(result.to_dict(), file)
    elif mode == "rich":
        attribution_rich(result, console(file))
    else:
        file = file or sys.stdout
        file.write(attribution_plain(result))
        file.flush()


def signed(result) -> bool:
    """Whether the result's values carry a sign (not saliency)."""
    return result.method != "saliency"


def token_label(tok: dict) -> str:
    """What a token shows in the line: the text it adds (a special token, which adds none,
    its piece)."""
    return tok.get("text") or tok["piece"]


def scale(result):
    """The colour scale of ``result``'s values (:func:`llmcli.render.pictures.signed_scale`
    on ±max |value|)."""
    from llmcli.render.pictures import signed_scale

    return signed_scale(_peak(result) or 1.0, name="value (red raises f, blue lowers it)")


def value_rgb(value: float, peak: float) -> tuple[int, int, int]:
    """The colour of ``value`` on a scale of ±``peak`` (as the pictures draw it)."""
    from llmcli.render.pictures import signed_scale

    c = signed_scale(peak).colour(value) or "#ffffff"
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def _peak(result) -> float:
    return max((abs(v) for v in result.values if math.isfinite(v)), default=0.0)


def header_lines(result) -> list[str]:
    t = result.target
    why = "the model's arg-max" if result.default_target else "chosen with --target"
    lines = [f"{result.method} · f = {result.f_label} = {result.f:.4f}"
             + (f" · baseline {result.baseline}" if result.baseline else ""),
             f"target {visible(t['piece'])!s} (id {t['id']}, p {t['prob']:.4f}, rank {t['rank']}; {why})"]
    if result.contrast is not None:
        c = result.contrast
        lines.append(f"contrast {visible(c['piece'])} (id {c['id']}, p {c['prob']:.4f}, rank {c['rank']})")
    return lines


def legend_text(result) -> str:
    peak = _peak(result)
    if signed(result):
        return (f"colour: red raises f, blue lowers f; full colour = ±{peak:.4g} "
                f"(the largest |value|)")
    return f"colour: red = more sensitive; full colour = {peak:.4g}"


def _explain_lines(result) -> list[str]:
    return [f"value: {result.value_meaning}", f"score: {result.aggregation}"] + \
        [f"note: {n}" for n in result.notes]


def annotated_line(result) -> str:
    """The text as ``piece[+value]`` pairs (the plain form of the coloured line)."""
    return " ".join(f"{visible(t['piece'])}[{t['value']:+.3g}]" for t in result.tokens)


def table_rows(result) -> list[list[str]]:
    rows = []
    for rank, t in enumerate(result.ranked(), 1):
        rows.append([str(rank), str(t["position"]), str(t["id"]), clip(visible(t["piece"]), PIECE_WIDTH),
                     f"{t['value']:+.4f}", f"{t['score']:.4f}"])
    return rows


def attribution_plain(result) -> str:
    from llmcli.render import plain_table

    out = header_lines(result)
    out.extend(textwrap.wrap(annotated_line(result), WIDTH, break_long_words=False,
                             break_on_hyphens=False))
    out.append(plain_table(["rank", "pos", "id", "piece", "value", "score"], table_rows(result),
                           right=(0, 1, 2, 4, 5)).rstrip("\n"))
    for line in _explain_lines(result):
        out.extend(textwrap.wrap(line, WIDTH, subsequent_indent="  ", break_on_hyphens=False))
    return "\n".join(out) + "\n"


def attribution_rich(result, con) -> None:
    from rich.color import Color
    from rich.style import Style
    from rich.text import Text

    for line in header_lines(result):
        con.print(line, markup=False, highlight=False)
    colour = not (con.no_color or con.color_system is None)
    if not colour:
        con.print(annotated_line(result), markup=False, highlight=False)
    else:
        peak = _peak(result)
        text = Text()
        for t in result.tokens:
            r, g, b = value_rgb(t["value"], peak)
            dark = (0.299 * r + 0.587 * g + 0.114 * b) < 140
            text.append(visible(token_label(t)), style=Style(bgcolor=Color.from_rgb(r, g, b),
                                                             color="white" if dark else "black"))
        con.print(text)
        legend = Text()
        steps = (-1.0, -0.5, 0.0, 0.5, 1.0) if signed(result) else (0.0, 0.5, 1.0)
        for s in steps:
            r, g, b = value_rgb(s * peak, peak)
            legend.append("  ", style=Style(bgcolor=Color.from_rgb(r, g, b)))
        legend.append(" " + legend_text(result), style="dim")
        con.print(legend)
    # A narrow terminal drops the bars, then the ids, before any number is cut to "…"
    # (at 40 columns every pos, id, value and score cell was "…").
    width = min(20, con.width - 52)
    with_bar, with_id = width >= 4, con.width >= 50
    columns = [("#", "right"), ("pos", "right"), ("id", "right"), ("piece", "left"),
               ("value", "right"), ("score", "right"), ("", "left")]
    keep = [True, True, with_id, True, True, True, with_bar]
    table = _table(*[c for c, k in zip(columns, keep) if k])
    top = max(result.scores, default=0.0) or 1.0
    for row, t in zip(table_rows(result), result.ranked()):
        style = "red" if t["value"] >= 0 or not signed(result) else "blue"
        cells = [*row[:4], Text(row[4], style=style), row[5],
                 Text(bar(t["score"] / top, max(width, 1)), style=style)]
        table.add_row(*[c for c, k in zip(cells, keep) if k])
    con.print(table)
    for line in _explain_lines(result):
        con.print(line, style="dim", markup=False, highlight=False)


# ----------------------------------------------------------------------------- pictures
def attribution_figure(result):
    """The view as a :class:`llmcli.render.pictures.Figure`: the header, the coloured text
    (a tooltip per token: piece, id, value, score), the ranked table with signed bars
    (value / max |value|), and how to read the numbers."""
    from llmcli.render import pictures as P

    peak = _peak(result) or 1.0
    head = header_lines(result)
    strip = P.StripPanel(
        tokens=[P.StripToken(token_label(t), t["value"],
                             f"{t['position']}: {t['piece']} (id {t['id']}) value {t['value']:+.4g} "
                             f"score {t['score']:.4f}") for t in result.tokens],
        scale=scale(result), title=legend_text(result))
    rows, lead = [], []
    for rank, t in enumerate(result.ranked(), 1):
        rows.append(P.BarRow(t["piece"], max(-1.0, min(1.0, t["value"] / peak)),
                             [f"{t['value']:+.4f}", f"{t['score']:.4f}"],
                             colour=None if signed(result) else "#d93f3f",
                             tooltip=f"id {t['id']}"))
        lead.append([str(rank), str(t["position"])])
    bars = P.BarsPanel(rows=rows, number_headers=["value", "score"], bar_header="value",
                       lead_headers=["#", "pos"], lead=lead, title="tokens ranked by score")
    return P.Figure(" · ".join(head[:1]), panels=[P.NotePanel(line) for line in head[1:]]
                    + [strip, bars] + [P.NotePanel(line) for line in _explain_lines(result)])


def save_attribution_pictures(result, svg=None, html=None, force: bool = False):
    """Write the SVG and/or HTML picture of ``result`` → the paths written."""
    from llmcli.render.pictures import save_pictures

    return save_pictures(attribution_figure(result), svg, html, force=force)
