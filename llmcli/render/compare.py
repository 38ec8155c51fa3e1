"""Rendering of ``llmcli compare``: a table of positions (each side's top-k, the KL
divergence, ``≠`` where the arg-maxes differ) and a summary line; plain text when piped;
JSON Lines with ``--json`` (one object per position as it is computed, then the summary).

In a terminal of 110 columns or more the two sides' top-k stand side by side; narrower, and
in plain text, each position takes two lines (A above B). Never imports torch.
"""

from __future__ import annotations

import heapq
import sys

from llmcli.render import _table, clip, jsonable, prob_style, visible

PIECE = 10          # cells per candidate piece
WIDE = 110          # terminal width from which the sides stand side by side


class Kept:
    """The rows a terminal shows: every position when there are at most ``rows`` (0 = no
    limit), else the ``rows`` positions of largest KL (constant memory: a heap)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.heap: list[tuple[float, int, object]] = []
        self.seen = 0

    def add(self, d) -> None:
        self.seen += 1
        item = (d.kl, -d.index, d)
        if self.rows == 0 or len(self.heap) < self.rows:
            heapq.heappush(self.heap, item)
        elif item > self.heap[0]:
            heapq.heapreplace(self.heap, item)

    def shown(self) -> list:
        return sorted((d for _, _, d in self.heap), key=lambda d: d.index)

    @property
    def cut(self) -> bool:
        return self.rows != 0 and self.seen > self.rows


def json_line(doc: dict, file=None) -> None:
    import json

    file = file or sys.stdout
    file.write(json.dumps(jsonable(doc), ensure_ascii=False, allow_nan=False) + "\n")
    file.flush()


def _cand(c: dict) -> str:
    return f"{clip(visible(c['piece']), PIECE)} {c['prob']:.2f}"


def _next(d) -> str:
    return clip(visible(d.next["piece"]), PIECE) if d.next is not None else "(end)"


def summary_line(s) -> str:
    agree = (f"top-1 agreement {100 * s.top1_agreement:.1f}% ({s.agree}/{s.positions})"
             if s.positions else "no positions")
    text = (f"{s.positions} positions · mean KL(A‖B) {s.mean_kl:.4g} nats · max {s.kl_max:.4g} "
            f"at {s.kl_max_index} · {agree}")
    if s.scored:
        text += f" · perplexity A {s.perplexity_a:.3f}, B {s.perplexity_b:.3f}"
    return text


def differ_line(s, most: int = 20) -> str:
    if not s.differ:
        return "the arg-max is the same at every position"
    shown = ", ".join(str(i) for i in s.differ[:most]) + (", ..." if len(s.differ) > most else "")
    n = len(s.differ)
    return f"the arg-max differs at {n} position{'s' if n > 1 else ''}: {shown}"


def header_lines(s) -> list[str]:
    what = "models" if s.mode == "models" else "prompts"
    return [f"A ({what[:-1]}): {s.label_a}", f"B ({what[:-1]}): {s.label_b}"]


def footer_lines(s, kept: Kept) -> list[str]:
    out = []
    if kept.cut:
        out.append(f"showing the {kept.rows} positions of largest KL of {kept.seen} (--rows 0: all)")
    out += [summary_line(s), differ_line(s)]
    if s.windows > 1:
        out.append(f"read in {s.windows} windows of {s.window} tokens, each from an empty cache")
    out += [f"note: {n}" for n in s.notes]
    return out


def compare_plain(summary, kept: Kept) -> str:
    import textwrap

    out = header_lines(summary)
    out.append(f"{'pos':>5}  {'next':<{PIECE}}  {'KL(A‖B)':>9}     top-k (prob)")
    for d in kept.shown():
        mark = "≠" if not d.same_argmax else " "
        out.append(f"{d.index:>5}  {_next(d):<{PIECE}}  {d.kl:>9.4g} {mark} A  "
                   + "  ".join(_cand(c) for c in d.top_a))
        out.append(f"{'':>5}  {'':<{PIECE}}  {'':>9}   B  " + "  ".join(_cand(c) for c in d.top_b))
    for line in footer_lines(summary, kept):
        out.extend(textwrap.wrap(line, 80, subsequent_indent="  ", break_on_hyphens=False))
    return "\n".join(out) + "\n"


def compare_rich(summary, kept: Kept, con) -> None:
    from rich.text import Text

    for line in header_lines(summary):
        con.print(line, markup=False, highlight=False)
    wide = con.width >= WIDE

    def cands(top, other_argmax) -> Text:
        t = Text()
        for i, c in enumerate(top):
            style = prob_style(c["prob"]) + (" bold" if i == 0 and c["id"] != other_argmax else "")
            t.append(clip(visible(c["piece"]), PIECE), style=style)
            t.append(f" {c['prob']:.2f}" + ("  " if i + 1 < len(top) else ""), style="dim")
        return t

    if wide:
        table = _table(("pos", "right"), ("next", "left"), ("KL(A‖B)", "right"), ("", "left"),
                       ("A top-k", "left"), ("B top-k", "left"))
    else:
        table = _table(("pos", "right"), ("next", "left"), ("KL(A‖B)", "right"), ("", "left"),
                       ("", "left"), ("top-k (prob)", "left"))
    for column in table.columns[4 if wide else 5:]:
        column.no_wrap = False  # a narrow terminal wraps the candidates, never cuts pos or KL
    for d in kept.shown():
        mark = Text("≠", style="bold red") if not d.same_argmax else Text("")
        kl = Text(f"{d.kl:.4g}", style="red" if not d.same_argmax else "")
        if wide:
            table.add_row(str(d.index), visible(_next(d)), kl, mark, cands(d.top_a, d.argmax_b),
                          cands(d.top_b, d.argmax_a))
        else:
            table.add_row(str(d.index), visible(_next(d)), kl, mark, "A", cands(d.top_a, d.argmax_b))
            table.add_row("", "", "", "", "B", cands(d.top_b, d.argmax_a), end_section=True)
    con.print(table)
    lines = footer_lines(summary, kept)
    for line in lines:
        con.print(line, markup=False, highlight=False,
                  style="bold" if line.startswith(f"{summary.positions} positions") else "dim")


# ----------------------------------------------------------------------------- pictures
def compare_figure(result):
    """``result`` = ``(summary, kept)`` as a picture: KL per shown position as bars (A's and
    B's arg-max in the numbers, the row highlighted where they differ) and the summary."""
    from llmcli.render import pictures as P

    summary, kept = result
    shown = kept.shown()
    peak = max((d.kl for d in shown), default=0.0) or 1.0
    rows = [P.BarRow(d.next["piece"] if d.next else "(end)", min(1.0, d.kl / peak),
                     [f"{d.kl:.4g}", clip(visible(d.top_a[0]["piece"]), PIECE),
                      clip(visible(d.top_b[0]["piece"]), PIECE)],
                     colour="#d93f3f" if not d.same_argmax else "#2f6fdb", highlight=not d.same_argmax,
                     tooltip=f"A: {', '.join(_cand(c) for c in d.top_a)} | B: "
                             f"{', '.join(_cand(c) for c in d.top_b)}")
            for d in shown]
    bars = P.BarsPanel(rows=rows, number_headers=["KL", "A top-1", "B top-1"], label_header="next",
                       bar_header="KL(A‖B), nats", lead_headers=["pos"], lead=[[str(d.index)] for d in shown],
                       title="KL divergence per position (highlighted: the arg-max differs)")
    return P.Figure("compare · " + summary_line(summary),
                    panels=[P.NotePanel(line) for line in header_lines(summary)] + [bars]
                    + [P.NotePanel(line) for line in footer_lines(summary, kept)[1:]])

