"""Rendering of ``llmcli attribute``: a coloured line and a ranked table (terminal), the same
as annotated text (plain, when piped), or JSON.

The line colours each input token by its signed ``value`` on a diverging scale (red: the
token lowered the attributed function, blue: it raised it; intensity ∝ |value| / max |value|);
methods without a sign (saliency) use the blue half only. Never imports torch.
"""

from __future__ import annotations

import math
import textwrap

from llmcli.render import _table, bar, clip, console, visible, write_json

#: The diverging scale's ends (ColorBrewer RdBu): negative, neutral, positive.
NEGATIVE_RGB = (178, 24, 43)
NEUTRAL_RGB = (247, 247, 247)
POSITIVE_RGB = (33, 102, 172)
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
    """What a token shows in the line: its piece with control characters escaped."""
    return visible(tok["piece"])


def value_rgb(value: float, peak: float) -> tuple[int, int, int]:
    """The diverging colour of ``value`` on a scale of ±``peak``."""
    x = 0.0 if peak <= 0 or not math.isfinite(value) else max(-1.0, min(1.0, value / peak))
    end = POSITIVE_RGB if x >= 0 else NEGATIVE_RGB
    a = abs(x)
    return tuple(int(round(n + (e - n) * a)) for n, e in zip(NEUTRAL_RGB, end))


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
        return (f"colour: red lowers f, blue raises f; full colour = ±{peak:.4g} "
                f"(the largest |value|)")
    return f"colour: blue = more sensitive; full colour = {peak:.4g}"


def _explain_lines(result) -> list[str]:
    return [f"value: {result.value_meaning}", f"score: {result.aggregation}"] + \
        [f"note: {n}" for n in result.notes]


def annotated_line(result) -> str:
    """The text as ``piece[+value]`` pairs (the plain form of the coloured line)."""
    return " ".join(f"{token_label(t)}[{t['value']:+.3g}]" for t in result.tokens)


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
        for i, t in enumerate(result.tokens):
            r, g, b = value_rgb(t["value"], peak)
            dark = (0.299 * r + 0.587 * g + 0.114 * b) < 140
            text.append(token_label(t), style=Style(bgcolor=Color.from_rgb(r, g, b),
                                                    color="white" if dark else "black"))
            if i + 1 < len(result.tokens):
                text.append(" ")
        con.print(text)
        legend = Text()
        steps = (-1.0, -0.5, 0.0, 0.5, 1.0) if signed(result) else (0.0, 0.5, 1.0)
        for s in steps:
            r, g, b = value_rgb(s * peak, peak)
            legend.append("  ", style=Style(bgcolor=Color.from_rgb(r, g, b)))
        legend.append(" " + legend_text(result), style="dim")
        con.print(legend)
    width = max(4, min(20, con.width - 52))
    table = _table(("#", "right"), ("pos", "right"), ("id", "right"), ("piece", "left"),
                   ("value", "right"), ("score", "right"), ("", "left"))
    top = max(result.scores, default=0.0) or 1.0
    for row, t in zip(table_rows(result), result.ranked()):
        style = "blue" if t["value"] >= 0 or not signed(result) else "red"
        table.add_row(*row[:4], Text(row[4], style=style), row[5],
                      Text(bar(t["score"] / top, width), style=style))
    con.print(table)
    for line in _explain_lines(result):
        con.print(line, style="dim", markup=False, highlight=False)

