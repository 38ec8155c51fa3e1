"""Presentation of inspection results: rich views for a terminal, plain text for pipes, JSON.

Every command's result (see :mod:`llmcli.inspection`) is shown by :func:`emit` in one of three
modes (:func:`output_mode`): ``rich`` when stdout is a terminal (colours follow ``NO_COLOR``
through rich), ``plain`` when piped, ``json`` with ``--json`` (one JSON document). Plain-text
and JSON renderers never import rich; nothing here imports torch.

Terminal views fit the console's width (:func:`fit_table`: each column its natural width, a
bar column what is left, labels clipped only as a last resort; wide column sets split into
several tables), so they read at 80 columns and use more when there is more. Views that are
pictures at heart also have a :class:`llmcli.render.pictures.Figure` builder (:data:`FIGURES`)
for ``--save-svg``/``--save-html``.
"""

from __future__ import annotations

import json
import math
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

#: Shading characters for heat maps and bars, lightest first.
SHADES = " ░▒▓█"
_EIGHTHS = " ▏▎▍▌▋▊▉█"
_KIND_STYLE = {"normal": "", "control": "magenta", "special": "magenta", "byte": "yellow",
               "unknown": "bold red"}
#: Characters that pieces use for a space: sentencepiece's ``▁``, byte-level BPE's ``Ġ``
#: (shown dimmed; only a style, the piece is printed as stored).
_SPACE_MARKS = "\u2581\u0120"
HEATMAP_MAX = 40  # most positions drawn on each axis of an attention heat map


# ----------------------------------------------------------------------------- output plumbing
def output_mode(json_flag: bool, file=None) -> str:
    """``json`` with ``--json``, ``rich`` when ``file`` (stdout) is a terminal, else ``plain``."""
    if json_flag:
        return "json"
    file = file or sys.stdout
    try:
        return "rich" if file.isatty() else "plain"
    except (AttributeError, ValueError):
        return "plain"


def make_stdout_safe() -> None:
    """Never crash on a stdout that cannot encode the text (e.g. ``PYTHONIOENCODING=ascii``)."""
    try:
        enc = (sys.stdout.encoding or "").lower().replace("-", "")
        if enc != "utf8":
            sys.stdout.reconfigure(errors="replace")
    except (AttributeError, ValueError):
        pass


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``None`` (JSON has no NaN/Infinity) and
    bytes as lists of ints."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return list(value)
    return value


def write_json(doc: Any, file=None, indent: int | None = None) -> None:
    """One JSON document (UTF-8, not ASCII-escaped) and a newline."""
    file = file or sys.stdout
    file.write(json.dumps(jsonable(doc), ensure_ascii=False, indent=indent, allow_nan=False) + "\n")
    file.flush()


def console(file=None):
    """A rich Console for stdout (or ``file``); rich honours ``NO_COLOR`` and ``TERM=dumb``."""
    from rich.console import Console

    return Console(file=file, highlight=False, soft_wrap=False)


def emit(kind: str, result, mode: str, file=None, **options) -> None:
    """Show ``result`` of command ``kind`` in ``mode`` (``rich``, ``plain`` or ``json``)."""
    if mode == "json":
        write_json(result.to_dict(), file)
        return
    if mode == "rich":
        RICH[kind](result, console(file), **options)
        return
    file = file or sys.stdout
    file.write(PLAIN[kind](result, **options))
    file.flush()


# ----------------------------------------------------------------------------- text helpers
def visible(piece: str) -> str:
    """A piece or text with control characters escaped (``\\n``, ``\\t``, ``\\x1b``); ``▁`` kept."""
    out = []
    for ch in piece:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        elif unicodedata.combining(ch) and not out:
            out.append("\u25cc" + ch)  # a lone combining mark shown on a dotted circle
        else:
            out.append(ch)
    return "".join(out)


def hex_bytes(data: bytes | list[int]) -> str:
    return " ".join(f"{b:02x}" for b in data)


def text_width(s: str) -> int:
    """Terminal cells taken by ``s`` (wide East Asian characters count 2, combining marks 0)."""
    w = 0
    for ch in s:
        if unicodedata.combining(ch):
            continue
        w += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return w


def clip(s: str, width: int) -> str:
    """``s`` cut to ``width`` cells, with ``…`` when cut."""
    if text_width(s) <= width:
        return s
    out, w = [], 0
    for ch in s:
        cw = text_width(ch)
        if w + cw > width - 1:
            break
        out.append(ch)
        w += cw
    return "".join(out) + "…"


def plain_table(headers: list[str], rows: Iterable[list[Any]], right: Iterable[int] = ()) -> str:
    """Columns aligned with spaces (two between columns); ``right`` lists right-aligned columns."""
    right = set(right)
    rows = [[str(c) for c in row] for row in rows]
    widths = [text_width(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], text_width(cell))

    def line(cells: list[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            pad = " " * (widths[i] - text_width(cell))
            parts.append(pad + cell if i in right else cell + pad)
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows]) + "\n"


def bar(fraction: float, width: int = 20) -> str:
    """A horizontal bar of ``fraction`` (0–1) of ``width`` cells, in eighths of a cell."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = int(round(fraction * width * 8))
    full, rest = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[rest] if rest else "")).ljust(width)


def shade(value: float) -> str:
    """A shading character for ``value`` in [0, 1] (0 → space, 1 → █)."""
    value = min(max(value, 0.0), 1.0)
    return SHADES[min(len(SHADES) - 1, int(value * (len(SHADES) - 1) + 0.5))]


def prob_style(p: float) -> str:
    """A rich colour for a probability: green (sure) → yellow → red (unlikely)."""
    if p >= 0.8:
        return "green"
    if p >= 0.5:
        return "chartreuse3"
    if p >= 0.25:
        return "yellow"
    if p >= 0.1:
        return "dark_orange"
    return "red"


def fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if x is not None and math.isfinite(x) else str(x)


def _piece_text(piece: str, kind: str = "normal"):
    """A rich Text of a piece: the space marks ``▁``/``Ġ`` dimmed, coloured by kind."""
    from rich.text import Text

    text = Text(style=_KIND_STYLE.get(kind, ""))
    for ch in visible(piece):
        text.append(ch, style="dim" if ch in _SPACE_MARKS else None)
    return text


def _bar_width(con, reserved: int = 64) -> int:
    """Width of probability bars so that a table's numbers are never cut off: what is left of
    the console after ``reserved`` columns, between 4 and 24 cells."""
    return max(4, min(24, con.width - reserved))


def fixed4(x: float) -> str:
    """``x`` with 4 decimals, or in 4 significant digits when that would be wider than a
    column holds: a tiny ``--temp`` makes logprobs like -3.078e+38 (printed with 4 decimals
    they were 45 characters and pushed the table past the terminal's width)."""
    return f"{x:.4f}" if not math.isfinite(x) or abs(x) < 1e6 else f"{x:.4g}"


def _table(*columns: tuple[str, str], title: str | None = None):
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    return table


# ----------------------------------------------------------------------------- fitted tables
GAP = 2  # cells between the columns of a fitted table


@dataclass
class Col:
    """A column of :func:`fit_table`: ``header``; ``right`` = right-aligned; ``shrink`` = may be
    clipped with ``…`` as a last resort (labels); ``flex`` = ``(min, max)`` cells, takes what
    the other columns leave (bars; its cells are callables ``width -> Text``)."""

    header: str
    right: bool = False
    shrink: bool = False
    flex: tuple[int, int] | None = None
    min_width: int = 4


def _cell_len(cell) -> int:
    if callable(cell):
        return 0
    return cell.cell_len if hasattr(cell, "cell_len") else text_width(str(cell))


def fit_widths(cols: list[Col], rows: list[list], width: int) -> list[int]:
    """Column widths (cells) for ``rows`` in ``width`` terminal cells: every column its natural
    width, the flex column what is left (within its bounds), and only if that still does not fit,
    the ``shrink`` columns narrowed (widest first, never below ``min_width`` or the header)."""
    widths = []
    for i, col in enumerate(cols):
        natural = max([text_width(col.header)] + [_cell_len(r[i]) for r in rows if i < len(r)])
        widths.append(natural)
    gaps = GAP * (len(cols) - 1)
    flex = [i for i, c in enumerate(cols) if c.flex]
    fixed = sum(w for i, w in enumerate(widths) if i not in flex) + gaps
    for i in flex:
        lo, hi = cols[i].flex
        widths[i] = max(lo, min(hi, (width - fixed) // len(flex)))
    over = sum(widths) + gaps - width
    while over > 0:
        cands = [i for i, c in enumerate(cols)
                 if c.shrink and widths[i] > max(c.min_width, text_width(c.header))]
        if not cands:
            break
        i = max(cands, key=lambda j: widths[j])
        floor = max(cols[i].min_width, text_width(cols[i].header))
        cut = min(over, widths[i] - floor)
        widths[i] -= cut
        over -= cut
    return widths


def fit_table(cols: list[Col], rows: list[list], width: int, styles: list | None = None,
              after: dict[int, list] | None = None, header_style: str = "bold") -> list:
    """``rows`` (cells: str, rich Text, or for a flex column ``width -> Text``) laid out in
    ``width`` cells as rich Text lines: a bold header, a rule, the rows (``styles[r]`` over row
    r), and after row r the free lines ``after[r]`` (Text or str, clipped to the width).
    Cells wider than their column (only when a shrink column had to give) end in ``…``."""
    from rich.text import Text

    widths = fit_widths(cols, rows, width)
    total = sum(widths) + GAP * (len(cols) - 1)

    def line(cells: list, style=None) -> "Text":
        out = Text(no_wrap=True, overflow="crop")
        for i, (col, w) in enumerate(zip(cols, widths)):
            cell = cells[i] if i < len(cells) else ""
            if callable(cell):
                cell = cell(w)
            t = cell.copy() if isinstance(cell, Text) else Text(str(cell))
            if t.cell_len > w:
                t.truncate(w, overflow="ellipsis")
            pad = " " * (w - t.cell_len)
            if col.right:
                out.append(pad)
                out.append_text(t)
            else:
                out.append_text(t)
                if i < len(cols) - 1:
                    out.append(pad)
            if i < len(cols) - 1:
                out.append(" " * GAP)
        out.rstrip()
        if style:
            out.stylize(style)
        return out

    lines = [line([Text(c.header) for c in cols], header_style), Text("─" * min(total, width), style="dim")]
    for r, row in enumerate(rows):
        lines.append(line(row, styles[r] if styles else None))
        for extra in (after or {}).get(r, []):
            t = extra.copy() if isinstance(extra, Text) else Text(str(extra))
            t.truncate(width, overflow="ellipsis")
            lines.append(t)
    return lines


def print_lines(con, lines: list) -> None:
    """Print Text lines as they are (never wrapped or re-cut by rich)."""
    for line in lines:
        con.print(line, no_wrap=True, overflow="crop", soft_wrap=False, highlight=False)


def pack(entries: list, width: int, sep: int = 2) -> list:
    """Entries (rich Text) packed into lines of at most ``width`` cells, never split."""
    from rich.text import Text

    lines, cur = [], Text()
    for e in entries:
        if cur.cell_len and cur.cell_len + sep + e.cell_len > width:
            lines.append(cur)
            cur = Text()
        if cur.cell_len:
            cur.append(" " * sep)
        cur.append_text(e)
    if cur.cell_len or not lines:
        lines.append(cur)
    return lines


def column_chunks(fixed: int, cell: int, n: int, width: int, least: int = 1) -> int:
    """How many columns of ``cell`` cells fit beside ``fixed`` cells of other columns (at
    least ``least``, at most ``n``)."""
    return max(least, min(n, (width - fixed + GAP) // (cell + GAP)))


def balanced(n: int, per: int) -> int:
    """Columns per table when ``n`` columns go into tables of at most ``per``: as even as the
    number of tables allows (9 in tables of 4 → 3, 3, 3 rather than 4, 4, 1)."""
    tables = -(-n // max(1, per))
    return -(-n // tables) if tables else per


# ----------------------------------------------------------------------------- tokenize
def _roundtrip_lines(result) -> list[str]:
    if result.roundtrip_ok:
        return ["round-trip: ok (decode(encode(text)) == text)"]
    return ["round-trip: DIFFERS: decode(encode(text)) = " + repr(result.decoded)] + \
        ["  - " + n for n in result.roundtrip_notes]


def _totals_line(result) -> str:
    per = f" · {result.characters / result.count:.2f} characters/token" if result.count else ""
    ctx = ""
    if result.context_length is not None and result.count > result.context_length:
        ctx = f" · longer than the model's context of {result.context_length} tokens"
    return f"{result.count} tokens · {result.characters} characters · {result.num_bytes} bytes{per}{ctx}"


def tokenize_plain(result) -> str:
    table = plain_table(["pos", "id", "piece", "bytes", "kind"],
                        ([t.position, t.id, visible(t.piece), hex_bytes(t.bytes), t.kind]
                         for t in result.tokens), right=(0, 1))
    return table + _totals_line(result) + "\n" + "\n".join(_roundtrip_lines(result)) + "\n"


def _tokens_table(tokens, con, styled: bool = True) -> None:
    """pos, id, piece, kind and bytes of each token in the console's width: pieces whole, the
    bytes (last) continued on lines of their own under their column when a token has many."""
    from rich.text import Text

    cols = [Col("pos", right=True), Col("id", right=True), Col("piece", shrink=True, min_width=8),
            Col("kind"), Col("bytes", flex=(11, 400))]
    rows, styles, hexes = [], [], []
    for t in tokens:
        rows.append([str(t.position), str(t.id), _piece_text(t.piece, t.kind), t.kind, ""])
        styles.append((_KIND_STYLE.get(t.kind) or None) if styled else None)
        hexes.append([Text(f"{b:02x}") for b in t.bytes])
    widths = fit_widths(cols, rows, con.width)
    indent = sum(widths[:-1]) + GAP * (len(cols) - 1)
    after = {}
    for r, entries in enumerate(hexes):
        lines = pack(entries, max(11, con.width - indent), sep=1)
        rows[r][-1] = lines[0]
        if len(lines) > 1:
            after[r] = [Text(" " * indent).append_text(x) for x in lines[1:]]
    print_lines(con, fit_table(cols, rows, con.width, styles=styles, after=after))


def tokenize_rich(result, con) -> None:
    _tokens_table(result.tokens, con)
    con.print(_totals_line(result), style="bold")
    lines = _roundtrip_lines(result)
    con.print(lines[0], style="green" if result.roundtrip_ok else "yellow", markup=False)
    for line in lines[1:]:
        con.print(line, markup=False)


def detokenize_plain(result) -> str:
    return result.text  # exactly the text, so `tokenize --ids | detokenize` round-trips


def detokenize_rich(result, con) -> None:
    _tokens_table(result.tokens, con, styled=False)
    con.print(f"{len(result.ids)} tokens → {len(result.text)} characters:", style="bold")
    con.out(result.text, highlight=False)


# ----------------------------------------------------------------------------- embeddings
def _dims_header(dims: int) -> list[str]:
    return [f"d{i}" for i in range(dims)]


def _embedding_rows(result, components: list[dict], t: int) -> list[tuple[str, list, float]]:
    """For token ``t``: (label, vector, norm) of each component row, then of their sum."""
    rows = [(c["name"], c["vectors"][t], c["norms"][t]) for c in components]
    return rows + [("= sum", result.vectors[t], result.norms[t])]


def embeddings_plain(result, dims: int | None = None) -> str:
    dims = min(8 if dims is None else dims, result.hidden_size)
    out = [f"hidden_states[{result.layer}]: {result.layer_name} · hidden size {result.hidden_size}"]
    components = getattr(result, "components", None) or []
    if components:   # token row + position row = embedding output, for each token
        headers = ["pos", "id", "piece", "row", "norm"] + _dims_header(dims)
        rows = []
        for t, tok in enumerate(result.tokens):
            for i, (label, vec, norm) in enumerate(_embedding_rows(result, components, t)):
                first = i == 0
                rows.append([tok["position"] if first else "", tok["id"] if first else "",
                             visible(tok["piece"]) if first else "", label, f"{norm:.4f}"]
                            + [f"{v:+.4f}" for v in vec[:dims]])
        out.append(plain_table(headers, rows, right=[0, 1, 4] + list(range(5, 5 + dims))).rstrip("\n"))
    else:
        headers = ["pos", "id", "piece", "norm"] + _dims_header(dims)
        rows = []
        for tok, vec, norm in zip(result.tokens, result.vectors, result.norms):
            rows.append([tok["position"], tok["id"], visible(tok["piece"]), f"{norm:.4f}"]
                        + [f"{v:+.4f}" for v in vec[:dims]])
        out.append(plain_table(headers, rows, right=[0, 1, 3] + list(range(4, 4 + dims))).rstrip("\n"))
    if result.neighbors:
        out.append("")
        out.append("nearest vocabulary tokens (cosine similarity to the embedding matrix rows):")
        for tok, nbrs in zip(result.tokens, result.neighbors):
            out.append(f"{tok['position']:>4} {visible(tok['piece'])}: "
                       + "  ".join(f"{visible(n['piece'])} {n['cosine']:.3f}" for n in nbrs))
    out.append("")
    out.append("position: " + result.position_note)
    return "\n".join(out) + "\n"


def embeddings_rich(result, con, dims: int | None = None) -> None:
    """The vectors' first values in as many columns as the console's width holds (``dims``
    None), or the first ``dims`` values in as many tables as it takes, each as wide as the
    console (the token columns repeated); then the nearest tokens, packed to the width."""
    from rich.text import Text

    width = con.width
    total = result.hidden_size
    components = getattr(result, "components", None) or []
    con.print(f"[bold]hidden_states[{result.layer}][/]: {result.layer_name} · "
              f"hidden size {result.hidden_size}", highlight=False)
    # one row per token (and per component row with a learned position embedding)
    rows_meta = []
    for t, tok in enumerate(result.tokens):
        if components:
            for i, (label, vec, norm) in enumerate(_embedding_rows(result, components, t)):
                rows_meta.append((tok if i == 0 else None, label, vec, norm, i == len(components)))
        else:
            rows_meta.append((tok, None, result.vectors[t], result.norms[t], False))
    lead = [Col("pos", right=True), Col("id", right=True), Col("piece", shrink=True, min_width=6)]
    if components:
        lead.append(Col("row"))
    lead.append(Col("norm", right=True))
    lead_cells = []
    for tok, label, vec, norm, _ in rows_meta:
        cells = [str(tok["position"]) if tok else "", str(tok["id"]) if tok else "",
                 _piece_text(clip(tok["piece"], 20)) if tok else ""]
        if components:
            cells.append(label)
        cells.append(f"{norm:.4f}")
        lead_cells.append(cells)
    want = total if dims is None else min(dims, total)
    numbers = [[f"{v:+.4f}" for v in vec[:want]] for _, _, vec, _, _ in rows_meta]
    cell = max([text_width(f"d{want - 1}")] + [len(x) for row in numbers for x in row])
    fixed = sum(fit_widths(lead, lead_cells, width)) + GAP * len(lead)
    per_table = column_chunks(fixed, cell, want, width)
    shown = per_table if dims is None else want
    per_table = balanced(shown, per_table)
    for start in range(0, shown, per_table):
        stop = min(shown, start + per_table)
        cols = lead + [Col(f"d{j}", right=True) for j in range(start, stop)]
        rows = []
        for r, base in enumerate(lead_cells):
            rows.append(base + [Text(x, style="cyan" if not x.startswith("-") else "magenta")
                                for x in numbers[r][start:stop]])
        # with component rows, a blank line after each token's "= sum"
        gaps = {r: [Text("")] for r, meta in enumerate(rows_meta[:-1]) if meta[4]}
        if start:
            con.print()
        print_lines(con, fit_table(cols, rows, width, after=gaps))
    if shown < total:
        con.print(f"[dim]d0..d{shown - 1} of {total} values shown "
                  f"({'--dims N for more; ' if dims is None else ''}--json has them all)[/]",
                  highlight=False)
    if result.neighbors:
        con.print()
        con.print("[bold]nearest vocabulary tokens[/] (cosine similarity to the embedding matrix rows)",
                  highlight=False)
        labels = [Text(f"{tok['position']:>4} ").append_text(_piece_text(clip(tok["piece"], 20)))
                  for tok in result.tokens]
        lw = max(t.cell_len for t in labels) + GAP
        for label, nbrs in zip(labels, result.neighbors):
            entries = [_piece_text(clip(n["piece"], 24)).append(f" {n['cosine']:.3f}", style="dim")
                       for n in nbrs]
            for i, line in enumerate(pack(entries, max(12, width - lw))):
                head = label.copy() if i == 0 else Text("")
                head.append(" " * (lw - head.cell_len))
                print_lines(con, [head.append_text(line)])
    con.print(Text("position: " + result.position_note, style="dim"))


# ----------------------------------------------------------------------------- logits
def _stats_line(stats: dict) -> str:
    return (f"min {stats['min']:.4f} · max {stats['max']:.4f} · mean {stats['mean']:.4f} · "
            f"std {stats['std']:.4f}")


def logits_plain(result) -> str:
    out = []
    for pos in result.positions:
        out.append(f"next-token logits after position {pos.position} "
                   f"({visible(pos.token['piece'])!s}, id {pos.token['id']}) · vocab {result.vocab_size}")
        out.append(_stats_line(pos.stats))
        n = len(pos.top)
        rows = []
        for i in range(n):
            t, b = pos.top[i], pos.bottom[i]
            rows.append([i + 1, t["id"], visible(t["piece"]), f"{t['logit']:.4f}", "|",
                         b["id"], visible(b["piece"]), f"{b['logit']:.4f}"])
        out.append(plain_table(["rank", "top id", "piece", "logit", "|", "bottom id", "piece", "logit"],
                               rows, right=(0, 1, 3, 5, 7)).rstrip("\n"))
        out.append("")
    return "\n".join(out)


def logits_rich(result, con) -> None:
    from rich.columns import Columns

    for pos in result.positions:
        con.print(f"[bold]next-token logits after position {pos.position}[/] "
                  f"({visible(pos.token['piece'])}, id {pos.token['id']}) · vocab {result.vocab_size}",
                  highlight=False)
        con.print(_stats_line(pos.stats))
        tables = []
        for title, rows, style in (("top", pos.top, "green"), ("bottom", pos.bottom, "red")):
            t = _table(("#", "right"), ("id", "right"), ("piece", "left"), ("logit", "right"), title=title)
            for i, r in enumerate(rows):
                t.add_row(str(i + 1), str(r["id"]), _piece_text(r["piece"]), f"[{style}]{r['logit']:.4f}[/]")
            tables.append(t)
        con.print(Columns(tables, padding=(0, 4)))


# ----------------------------------------------------------------------------- topk
def _cut_marks(step, k_shown: int, top_p: float, min_p: float) -> dict[int, list[str]]:
    """Rank after which each filter cuts → labels (only cuts inside the shown rows)."""
    marks: dict[int, list[str]] = {}
    if top_p < 1.0 and step.top_p_keep < k_shown:
        marks.setdefault(step.top_p_keep - 1, []).append(f"top-p {top_p:g} cuts here")
    if min_p > 0.0 and step.min_p_keep < k_shown:
        marks.setdefault(step.min_p_keep - 1, []).append(f"min-p {min_p:g} cuts here")
    return marks


def _filters_line(result, step) -> str:
    parts = []
    if result.top_p < 1.0:
        parts.append(f"top-p {result.top_p:g} keeps {step.top_p_keep}")
    if result.min_p > 0.0:
        parts.append(f"min-p {result.min_p:g} keeps {step.min_p_keep}")
    parts.append(f"sampling would draw from {step.kept} token(s)")
    return " · ".join(parts)


def _chosen_line(result, step) -> str:
    c = step.chosen
    how = f"sampled (seed {result.seed})" if result.sampled else "greedy"
    return (f"chosen ({how}): {visible(c['piece'])} (id {c['id']}, p {c['prob']:.4f}, "
            f"rank {c['rank'] + 1})")


def _step_title(result, i, step) -> str:
    if step.position < len(result.tokens):
        where = f"after position {step.position} ({visible(result.tokens[step.position]['piece'])})"
    else:  # after the token chosen at the previous step
        where = f"after position {step.position} ({visible(result.steps[i - 1].chosen['piece'])}, generated)"
    head = f"step {i + 1}/{len(result.steps)}: " if len(result.steps) > 1 else ""
    return (f"{head}softmax(logits / {result.temperature:g}) {where} · "
            f"entropy {step.entropy_bits:.3f} bits")


def _generated_text(result) -> str:
    """The chosen tokens' text decoded as one sequence (as generate prints it)."""
    return getattr(result, "text", None) or "".join(s.chosen["text"] for s in result.steps)


def topk_plain(result) -> str:
    out = []
    for i, step in enumerate(result.steps):
        out.append(_step_title(result, i, step))
        marks = _cut_marks(step, len(step.candidates), result.top_p, result.min_p)
        rows = []
        for c in step.candidates:
            rows.append([c["rank"] + 1, c["id"], visible(c["piece"]), f"{c['logit']:.4f}",
                         bar(c["prob"], 20), f"{c['prob']:.4f}", fixed4(c['logprob']),
                         f"{c['cumulative']:.4f}"])
        table = plain_table(["rank", "id", "piece", "logit", "prob", "", "logprob", "cum"],
                            rows, right=(0, 1, 3, 5, 6, 7)).rstrip("\n").split("\n")
        lines = [table[0]]
        for rank, line in enumerate(table[1:]):
            lines.append(line)
            for label in marks.get(rank, []):
                lines.append(f"  ---- {label} ----")
        out.extend(lines)
        out.append(_filters_line(result, step))
        out.append(_chosen_line(result, step))
        out.append("")
    if len(result.steps) > 1 or result.stop_reason == "eos":
        out.append("generated: " + repr(_generated_text(result))
                   + (" (stopped at end-of-sequence)" if result.stop_reason == "eos" else ""))
    return "\n".join(out) + ("\n" if out and out[-1] else "")


def _candidate_table(con, cands: list[dict], chosen_id: int | None = None,
                     marks: dict[int, list[str]] | None = None, logit: bool = True) -> list:
    """Fitted lines of a candidates table (rank, id, piece, logit, bar, prob, logprob, cum):
    the bar takes the width the numbers and pieces leave (4..60 cells), so that at 80 columns
    nothing is cut; ``marks[rank]`` are lines drawn after that rank (a filter's cut)."""
    from rich.text import Text

    cols = [Col("#", right=True), Col("id", right=True), Col("piece", shrink=True, min_width=8)]
    if logit:
        cols.append(Col("logit", right=True))
    cols += [Col("prob", flex=(4, 60)), Col("", right=True), Col("logprob", right=True),
             Col("cum", right=True)]
    rows, styles = [], []
    for c in cands:
        style = prob_style(c["prob"])
        row = [str(c["rank"] + 1), str(c["id"]), _piece_text(c["piece"])]
        if logit:
            row.append(f"{c['logit']:.4f}")
        row += [lambda w, p=c["prob"], st=style: Text(bar(p, w), style=st), f"{c['prob']:.4f}",
                fixed4(c['logprob']), f"{c['cumulative']:.4f}"]
        rows.append(row)
        styles.append("bold reverse" if chosen_id is not None and c["id"] == chosen_id else None)
    after = {}
    if marks:
        widths = fit_widths(cols, rows, con.width)
        indent = " " * (widths[0] + widths[1] + 2 * GAP)
        after = {r: [Text(f"{indent}── {label} ──", style="dim italic") for label in labels]
                 for r, labels in marks.items()}
    return fit_table(cols, rows, con.width, styles=styles, after=after)


def topk_rich(result, con) -> None:
    from rich.text import Text

    for i, step in enumerate(result.steps):
        con.print(_step_title(result, i, step), style="bold", highlight=False, markup=False)
        marks = _cut_marks(step, len(step.candidates), result.top_p, result.min_p)
        print_lines(con, _candidate_table(con, step.candidates, step.chosen.get("id"), marks))
        con.print(_filters_line(result, step), style="dim", markup=False, highlight=False)
        con.print(_chosen_line(result, step), markup=False, highlight=False)
        con.print()
    if len(result.steps) > 1 or result.stop_reason == "eos":
        text = Text("generated: ", style="bold")
        for s in result.steps:
            text.append(s.chosen["text"], style=prob_style(s.chosen["prob"]))
        if result.stop_reason == "eos":
            text.append("  (stopped at end-of-sequence)", style="dim")
        con.print(text)


# ----------------------------------------------------------------------------- info
def _n(x: int) -> str:
    return f"{x:,}"


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return str(nbytes)  # pragma: no cover


def _info_sections(info) -> list[tuple[str, list[tuple[str, str]]]]:
    d, p = info.derived, info.parameters
    per = p["per_block"]
    per_s = (_n(per[0]) + " each" if per and len(set(per)) == 1 else ", ".join(_n(x) for x in per)) if per else "-"
    bd = p["block_breakdown"]
    model = [("directory", info.model_dir), ("architecture", f"{info.architecture} ({info.model_type})"),
             ("context length", f"{_n(info.context_length)} tokens "
                                f"({d.get('context_length_field', 'max_position_embeddings')})"),
             ("layers", str(d["num_hidden_layers"])), ("hidden size", str(d["hidden_size"])),
             ("family", d["architecture"]["family"]),
             ("attention", d["architecture"]["attention"]),
             ("MLP", d["architecture"]["mlp"]),
             ("position", d["architecture"]["position"]),
             ("norm", d["architecture"]["norm"]),
             ("residual", d["architecture"]["residual"]),
             ("vocab size", str(d["vocab_size"])),
             ("tied embeddings", "yes" if d["tie_word_embeddings"] else "no"),
             ("storage dtype", str(d["storage_dtype"]))]
    if getattr(info, "source", None):
        types = ", ".join(f"{ty} × {n}" for ty, n in sorted(info.source["types"].items(),
                                                          key=lambda kv: (-kv[1], kv[0])))
        model.append(("converted from", f"{info.source['format']}: {types}"))
    params = [("total", _n(p["total"])), ("embedding", _n(p["embedding"]))]
    if p.get("position_embedding"):
        params.append(("position embedding", _n(p["position_embedding"])))
    params += [(d["architecture"]["lm_head"], "tied to the embedding" if p["lm_head_tied"] else _n(p["lm_head"])),
              ("per block", per_s),
              ("  of which", f"attention {_n(bd['attention'])} · MLP {_n(bd['mlp'])} · norms {_n(bd['norms'])}"),
              ("final norm", _n(p["final_norm"])),
              ("weights size", f"{_n(info.weights_bytes)} bytes ({_size(info.weights_bytes)})")]
    tok = []
    if info.tokenizer:
        t = info.tokenizer
        specials = ", ".join(f"{name} {v['piece']} = {v['id']}" for name, v in t["special"].items() if v)
        controls = t["control_tokens"]
        shown = ", ".join(f"{c['piece']} = {c['id']}" for c in controls[:8])
        if len(controls) > 8:
            shown += f", ... ({len(controls)} in all; --json lists them)"
        kind = t.get("kind", "sentencepiece") + (f" ({t['model']})" if t.get("model") else "")
        tok = [("kind", kind), ("file", Path(t["path"]).name), ("vocab size", str(t["vocab_size"])),
               ("special tokens", specials or "none"),
               ("adds BOS", "yes" if t.get("add_bos") else "no"),
               ("EOS ids", " ".join(map(str, t.get("eos_ids", []))) or "none"),
               ("control tokens" if kind == "sentencepiece" else "special tokens (all)", shown or "none"),
               ("pieces by kind", ", ".join(f"{k} {v}" for k, v in t["kinds"].items() if v)),
               ("byte fallback", "yes" if t["byte_fallback"] else "no")]
    else:
        tok = [("tokenizer", "missing")]
    return [("model", model), ("parameters", params), ("tokenizer", tok)]


def info_plain(info) -> str:
    out = []
    for title, rows in _info_sections(info):
        out.append(f"[{title}]")
        width = max(len(k) for k, _ in rows)
        out.extend(f"{k.ljust(width)}  {v}" for k, v in rows)
        out.append("")
    out.append("[tensors]")
    src = any(t.source_type for t in info.tensors)
    out.append(plain_table(["name", "shape", "dtype", "parameters", "bytes"] + (["from"] if src else []),
                           ([t.name, "×".join(map(str, t.shape)) or "scalar", t.dtype, _n(t.numel), _n(t.nbytes)]
                            + ([t.source_type or "-"] if src else []) for t in info.tensors),
                           right=(3, 4)).rstrip("\n"))
    out.append("")
    out.append("[files]")
    out.extend(f"{f['name']}  {_n(f['bytes'])} bytes" for f in info.files)
    out.extend(f"note: {n}" for n in info.notes)
    return "\n".join(out) + "\n"


_BLOCK_NAME = re.compile(r"^(?P<prefix>.+?)\.(?P<index>\d+)\.(?P<rest>.+)$")


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0–2, 5, 7–8"``."""
    out, run = [], []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        out.append(f"{run[0]}–{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def _tensor_tables(info, con) -> None:
    """The tensors in the console's width: the tensors outside the blocks one per row, then the
    blocks' tensors once per name (``model.layers.N.…``) with the blocks that have that shape,
    dtype and source type, so 30 blocks are 9 rows, not 270 (``--json`` and the piped table
    list every tensor). The parameters column goes first when the width is short (the shape
    gives it), then names are clipped as a last resort."""
    width = con.width
    src = any(x.source_type for x in info.tensors)
    top, groups, n_blocks = [], {}, {}
    for x in info.tensors:
        m = _BLOCK_NAME.match(x.name)
        if m is None:
            top.append(x)
            continue
        key = (m["prefix"], m["rest"], tuple(x.shape), x.dtype, x.source_type)
        groups.setdefault(key, []).append((int(m["index"]), x))
        n_blocks.setdefault(m["prefix"], set()).add(int(m["index"]))

    def cells(name, x, blocks=None):
        row = ([blocks] if blocks is not None else []) + [
            name, "×".join(map(str, x.shape)) or "scalar", x.dtype, _n(x.numel), _n(x.nbytes)]
        return row + ([x.source_type or "-"] if src else [])

    def show(cols, rows):
        if sum(fit_widths([Col(c.header, c.right) for c in cols], rows, 10 ** 6)) \
                + GAP * (len(cols) - 1) > width:   # drop "parameters" before cutting names
            i = [c.header for c in cols].index("parameters")
            cols = cols[:i] + cols[i + 1:]
            rows = [r[:i] + r[i + 1:] for r in rows]
        print_lines(con, fit_table(cols, rows, width))

    tail = [Col("shape"), Col("dtype"), Col("parameters", right=True), Col("bytes", right=True)] + \
        ([Col("from")] if src else [])
    if top:
        show([Col("name", shrink=True, min_width=16)] + tail, [cells(x.name, x) for x in top])
    for prefix in n_blocks:
        keys = [k for k in groups if k[0] == prefix]
        total = len(n_blocks[prefix])
        every = all(len(groups[k]) == total for k in keys)
        con.print()
        con.print(f"[bold]{prefix}.N[/], " + (f"each of the {total} blocks (N = 0–{max(n_blocks[prefix])})"
                                               if every else f"{total} blocks; N = the blocks listed"),
                  highlight=False)
        rows = [cells(k[1], groups[k][0][1], None if every else _ranges([i for i, _ in groups[k]]))
                for k in keys]
        lead = [] if every else [Col("N")]
        show(lead + [Col("name", shrink=True, min_width=16)] + tail, rows)


def info_rich(info, con) -> None:
    from rich.table import Table

    for title, rows in _info_sections(info):
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        for k, v in rows:
            grid.add_row(k, v)
        con.rule(f"[bold]{title}", align="left")
        con.print(grid)
    con.rule("[bold]tensors", align="left")
    _tensor_tables(info, con)
    con.rule("[bold]files", align="left")
    for f in info.files:
        con.print(f"{f['name']}  [dim]{_n(f['bytes'])} bytes[/]", highlight=False)
    for n in info.notes:
        con.print(f"[yellow]note:[/] {n}", highlight=False)


# ----------------------------------------------------------------------------- trace
def _heads_summary(heads: list[dict]) -> str:
    return "  ".join(f"h{h['head']}→{h['position']}:{visible(h['piece'])} {h['weight']:.2f}" for h in heads)


def _lens_summary(lens: list[dict], n: int = 3) -> str:
    return "  ".join(f"{visible(c['piece'])} {c['prob']:.2f}" for c in lens[:n])


def heatmap_window(weights: list[list[float]], most: int = HEATMAP_MAX) -> tuple[int, list[list[float]]]:
    """The positions drawn (the last ``most``, :data:`HEATMAP_MAX` by default): ``(first
    position, rows)``."""
    n = len(weights)
    start = max(0, n - max(1, most))
    return start, [row[start:] for row in weights[start:]]


def _heatmap_label(tokens: list[dict], i: int) -> str:
    return f"{tokens[i]['position']:>4} {clip(visible(tokens[i]['piece']), 10)}"


def _heatmap_most(attention: dict, tokens: list[dict], width: int) -> int:
    """Most positions whose two-cell columns fit ``width`` beside the row labels."""
    n = len(attention["weights"])
    lw = max(text_width(_heatmap_label(tokens, i)) for i in range(max(0, n - HEATMAP_MAX), n))
    return max(4, min(HEATMAP_MAX, (width - lw - 1) // 2))


def heatmap_plain(attention: dict, tokens: list[dict], most: int = HEATMAP_MAX) -> str:
    """The attention pattern as shading characters: rows are query positions, columns keys;
    shading is relative to the largest weight drawn; ``·`` marks future (masked) positions;
    the last ``most`` positions are drawn."""
    start, rows = heatmap_window(attention["weights"], most)
    peak = max((max(r[: i + 1]) for i, r in enumerate(rows)), default=1.0) or 1.0
    who = f"head {attention['head']}" if attention["head"] is not None else "mean of all heads"
    name = attention.get("name", f"model.layers.{attention['layer']}")
    out = [f"attention of block {attention['layer']} ({name}), {who}: "
           f"rows = query positions, columns = key positions; shading {SHADES!r} relative to the "
           f"largest weight shown ({peak:.3f}); '·' = masked (future)"]
    if start:
        out.append(f"(showing positions {start}..{start + len(rows) - 1} of {len(attention['weights'])})")
    labels = [_heatmap_label(tokens, start + i) for i in range(len(rows))]
    lw = max(text_width(lab) for lab in labels)
    out.append(" " * lw + " " + "".join(f"{(start + j) % 100:<2}"[:2] if (start + j) % 5 == 0 else "  "
                                        for j in range(len(rows))).rstrip())
    for i, row in enumerate(rows):
        cells = "".join(shade(v / peak) * 2 if j <= i else "· " for j, v in enumerate(row))
        out.append(labels[i] + " " * (lw - text_width(labels[i])) + " " + cells.rstrip())
    return "\n".join(out) + "\n"


def heatmap_rich(attention: dict, tokens: list[dict], con) -> None:
    """Coloured cells (or shading characters when the console has no colour)."""
    from rich.color import Color
    from rich.style import Style
    from rich.text import Text

    if con.no_color or con.color_system is None:
        text = heatmap_plain(attention, tokens, most=_heatmap_most(attention, tokens, con.width))
        first, rest = text.split("\n", 1)
        con.print(first, markup=False, highlight=False)        # the caption may wrap
        print_lines(con, rest.rstrip("\n").split("\n"))
        return
    start, rows = heatmap_window(attention["weights"], _heatmap_most(attention, tokens, con.width))
    peak = max((max(r[: i + 1]) for i, r in enumerate(rows)), default=1.0) or 1.0
    who = f"head {attention['head']}" if attention["head"] is not None else "mean of all heads"
    name = attention.get("name", f"model.layers.{attention['layer']}")
    con.print(f"[bold]attention of block {attention['layer']}[/] ({name}), {who}: "
              f"rows = queries, columns = keys; brightest = {peak:.3f}", highlight=False)
    if start:
        con.print(f"[dim](showing positions {start}..{start + len(rows) - 1} of {len(attention['weights'])})[/]")
    labels = [_heatmap_label(tokens, start + i) for i in range(len(rows))]
    lw = max(text_width(lab) for lab in labels)
    con.print(" " * lw + " " + "".join(f"{(start + j) % 100:<2}"[:2] if (start + j) % 5 == 0 else "  "
                                       for j in range(len(rows))).rstrip(), style="dim", highlight=False)
    for i, row in enumerate(rows):
        line = Text(labels[i] + " " * (lw - text_width(labels[i])) + " ")
        for j, v in enumerate(row):
            if j > i:
                line.append("  ")
                continue
            x = min(max(v / peak, 0.0), 1.0)
            # dark blue → orange → light yellow
            r, g, b = int(20 + 235 * x), int(20 + 200 * x ** 1.5), int(60 + 80 * (1 - x) * x * 2)
            line.append("  ", style=Style(bgcolor=Color.from_rgb(r, g, b)))
        con.print(line)


def _trace_names(result) -> dict[str, str]:
    """Module names of the traced model's stages (Llama's when the result has none)."""
    a = getattr(result, "architecture", None) or {}
    embed = a.get("token_embedding", "model.embed_tokens")
    if a.get("position_embedding"):
        embed += " + " + a["position_embedding"]
    return {"embedding": embed, "final_norm": a.get("final_norm", "model.norm"),
            "lm_head": a.get("lm_head", "lm_head")}


def _model_lines(result) -> list[str]:
    """What the traced model computes: a header and one line each for norm, position,
    attention, MLP and residual (empty without an architecture)."""
    a = getattr(result, "architecture", None) or {}
    if not a:
        return []
    return ([f"== model ({a['family']}) =="]
            + [f"{k:<9}  {a[k]}" for k in ("norm", "position", "attention", "mlp", "residual")]
            + [""])


def trace_plain(result) -> str:
    names = _trace_names(result)
    out = ["== tokens =="]
    out.append(" ".join(f"{t['position']}:{visible(t['piece'])}({t['id']})" for t in result.tokens))
    out.append("")
    out.extend(_model_lines(result))
    out.append(f"== embedding ({names['embedding']}) ==")
    out.append(plain_table(["pos", "piece", "norm"],
                           ([t["position"], visible(t["piece"]), f"{n:.4f}"]
                            for t, n in zip(result.tokens, result.embedding_norms)), right=(0, 2)).rstrip("\n"))
    out.append("position: " + result.position_note)
    out.append("")
    last = result.tokens[-1]
    out.append(f"== blocks (last position {last['position']}: {visible(last['piece'])}) ==")
    out.append(plain_table(["block", "residual norm", "logit lens top", "most-attended token per head"],
                           ([L["layer"], f"{L['residual_norm']:.4f}", _lens_summary(L["lens"]),
                             _heads_summary(L["heads"])] for L in result.layers), right=(0, 1)).rstrip("\n"))
    out.append("")
    out.append(f"== final norm and logits ({names['final_norm']}, {names['lm_head']}) ==")
    out.append(f"final norm output: norm {result.final_norm:.4f}")
    out.append(_stats_line(result.stats))
    out.append("top logits: " + "  ".join(f"{visible(c['piece'])} {c['logit']:.3f}" for c in result.top_logits))
    out.append("")
    out.append(f"== softmax (entropy {result.entropy_bits:.3f} bits) ==")
    out.append(plain_table(["rank", "id", "piece", "prob", "", "logprob"],
                           ([c["rank"] + 1, c["id"], visible(c["piece"]), bar(c["prob"], 20), f"{c['prob']:.4f}",
                             fixed4(c['logprob'])] for c in result.candidates), right=(0, 1, 4, 5)).rstrip("\n"))
    out.append("")
    c = result.chosen
    out.append(f"== chosen ({c['rule']}) ==")
    out.append(f"{visible(c['piece'])} (id {c['id']}, p {c['prob']:.4f}) → text {c['text']!r}")
    if result.attention is not None:
        out.append("")
        out.append("== attention ==")
        out.append(heatmap_plain(result.attention, result.tokens).rstrip("\n"))
    return "\n".join(out) + "\n"


def _lens_cell(lens: list[dict]):
    """A flex cell: as many of the logit lens's top tokens as its width holds (whole)."""
    from rich.text import Text

    def draw(width: int) -> "Text":
        out = Text()
        for c in lens:
            entry = Text(visible(c["piece"]), style=prob_style(c["prob"]))
            entry.append(f" {c['prob']:.2f}", style="dim")
            need = entry.cell_len + (GAP if out.cell_len else 0)
            if out.cell_len and out.cell_len + need > width:
                break
            if out.cell_len:
                out.append(" " * GAP)
            out.append_text(entry)
        return out

    return draw


def _heads_grid(result, width: int) -> list:
    """Rows = blocks, columns = heads: the position the last query attends to most, its piece
    and weight; the heads split over as many grids as the width needs."""
    from rich.text import Text

    layers = result.layers
    n_heads = max((len(L["heads"]) for L in layers), default=0)
    cells = [[f"{h['position']}:{clip(visible(h['piece']), 10)} {h['weight']:.2f}" for h in L["heads"]]
             for L in layers]
    cell = max([text_width(f"h{n_heads - 1}")] + [text_width(c) for row in cells for c in row])
    block_w = max(text_width("block"), max((len(str(L["layer"])) for L in layers), default=1))
    per = balanced(n_heads, column_chunks(block_w + GAP, cell, n_heads, width))
    lines = []
    for start in range(0, n_heads, per):
        stop = min(n_heads, start + per)
        cols = [Col("block", right=True)] + [Col(f"h{j}") for j in range(start, stop)]
        rows = []
        for L, row in zip(layers, cells):
            rows.append([str(L["layer"])] + [
                Text(c, style=prob_style(L["heads"][j]["weight"])) for j, c in
                zip(range(start, stop), row[start:stop])])
        if start:
            lines.append(Text(""))
        lines.extend(fit_table(cols, rows, width))
    return lines


def trace_rich(result, con) -> None:
    from rich.table import Table
    from rich.text import Text

    width = con.width
    con.rule("[bold]1. tokens", align="left")
    line = Text()
    for t in result.tokens:
        line.append_text(_piece_text(t["piece"]))
        line.append(f"({t['id']}) ", style="dim")
    con.print(line)
    names = _trace_names(result)
    a = getattr(result, "architecture", None) or {}
    if a:
        con.rule(f"[bold]model[/] ({a['family']})", align="left")
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True, style="bold")
        grid.add_column(overflow="fold")
        for k in ("norm", "position", "attention", "mlp", "residual"):
            grid.add_row(k, Text(str(a[k])))
        con.print(grid)
    con.rule(f"[bold]2. embedding[/] ({names['embedding']})", align="left")
    rows = [[str(tok["position"]), _piece_text(tok["piece"]), f"{n:.4f}"]
            for tok, n in zip(result.tokens, result.embedding_norms)]
    print_lines(con, fit_table([Col("pos", right=True), Col("piece", shrink=True, min_width=8),
                                Col("norm", right=True)], rows, width))
    con.print(Text(f"position: {result.position_note}", style="dim"))
    last = result.tokens[-1]
    con.rule(f"[bold]3. blocks[/] (last position {last['position']}: {visible(last['piece'])})", align="left")
    cols = [Col("block", right=True), Col("residual norm", right=True),
            Col("logit lens (top tokens, probability)", flex=(12, 200))]
    rows = [[str(L["layer"]), f"{L['residual_norm']:.4f}", _lens_cell(L["lens"])] for L in result.layers]
    print_lines(con, fit_table(cols, rows, width))
    con.print()
    con.print(f"[bold]most-attended token per head[/], query {last['position']}: position:piece weight",
              highlight=False)
    print_lines(con, _heads_grid(result, width))
    con.rule(f"[bold]4. final norm and logits[/] ({names['final_norm']}, {names['lm_head']})",
             align="left")
    con.print(f"final norm output: norm {result.final_norm:.4f}", highlight=False)
    con.print(_stats_line(result.stats), highlight=False)
    entries = [_piece_text(c["piece"]).append(f" {c['logit']:.3f}", style="dim") for c in result.top_logits]
    packed = pack(entries, width - len("top logits: "))
    print_lines(con, [Text("top logits: ").append_text(packed[0])]
                + [Text(" " * len("top logits: ")).append_text(x) for x in packed[1:]])
    con.rule(f"[bold]5. softmax[/] (entropy {result.entropy_bits:.3f} bits)", align="left")
    print_lines(con, _candidate_table(con, result.candidates, logit=False))
    c = result.chosen
    con.rule(f"[bold]6. chosen[/] ({c['rule']})", align="left")
    con.print(Text.assemble(_piece_text(c["piece"]), f" (id {c['id']}, p {c['prob']:.4f}) → text {c['text']!r}"))
    if result.attention is not None:
        con.rule("[bold]attention", align="left")
        heatmap_rich(result.attention, result.tokens, con)


# ----------------------------------------------------------------------------- generate
def logprobs_plain(events: list[dict]) -> str:
    """The per-token listing shown after ``generate --top-logprobs``: each generated token's
    logprob and the alternatives (``events``: dicts as written by ``generate --json``)."""
    rows = []
    for i, e in enumerate(events):
        p = math.exp(e["logprob"]) if e.get("logprob") is not None else float("nan")
        alts = "  ".join(f"{visible(a['piece'])} {a['logprob']:.3f}" for a in e.get("top_logprobs", []))
        rows.append([i, e["id"], visible(e["piece"]), f"{e['logprob']:.4f}", f"{p:.4f}", alts])
    return plain_table(["#", "id", "token", "logprob", "prob", "alternatives (logprob)"], rows,
                       right=(0, 1, 3, 4))


def logprobs_rich(events: list[dict], con) -> None:
    """The per-token listing in the console's width: each token whole, its logprob and
    probability, and the alternatives packed into the width that is left (continuing on
    lines of their own under that column rather than being cut)."""
    from rich.text import Text

    cols = [Col("#", right=True), Col("id", right=True), Col("token", shrink=True, min_width=8),
            Col("logprob", right=True), Col("prob", right=True),
            Col("alternatives (logprob)", flex=(12, 200))]
    rows, entries = [], []
    for i, e in enumerate(events):
        p = math.exp(e["logprob"])
        alts = []
        for a in e.get("top_logprobs", []):
            style = "bold" if a["id"] == e["id"] else prob_style(math.exp(a["logprob"]))
            alts.append(Text(visible(a["piece"]), style=style).append(f" {a['logprob']:.3f}", style="dim"))
        entries.append(alts)
        rows.append([str(i), str(e["id"]), _piece_text(e["piece"]), f"{e['logprob']:.4f}",
                     Text(f"{p:.4f}", style=prob_style(p)), ""])
    widths = fit_widths(cols, rows, con.width)
    indent = sum(widths[:-1]) + GAP * (len(cols) - 1)
    after = {}
    for r, alts in enumerate(entries):
        lines = pack(alts, max(12, con.width - indent))
        rows[r][-1] = lines[0]
        if len(lines) > 1:
            after[r] = [Text(" " * indent).append_text(x) for x in lines[1:]]
    print_lines(con, fit_table(cols, rows, con.width, after=after))


# ----------------------------------------------------------------------------- pictures
def _bars_of(cands: list[dict], chosen_id: int | None = None, marks: dict[int, list[str]] | None = None,
             logit: bool = True):
    """A candidates table as a :class:`llmcli.render.pictures.BarsPanel` (the terminal's columns)."""
    from llmcli.render import pictures as P

    rows, lead = [], []
    for c in cands:
        numbers = ([f"{c['logit']:.4f}"] if logit else []) + [
            f"{c['prob']:.4f}", fixed4(c['logprob']), f"{c['cumulative']:.4f}"]
        label = (marks or {}).get(c["rank"])
        rows.append(P.BarRow(visible(c["piece"]), c["prob"], numbers,
                             highlight=chosen_id is not None and c["id"] == chosen_id,
                             mark_after=" · ".join(label) if label else None,
                             tooltip=f"id {c['id']} · p {c['prob']:.6f} · logprob {c['logprob']:.6f}"))
        lead.append([str(c["rank"] + 1), str(c["id"])])
    return P.BarsPanel(rows, (["logit"] if logit else []) + ["prob", "logprob", "cum"],
                       lead_headers=["#", "id"], lead=lead)


def _figure_title(command: str, result, text: str | None) -> str:
    shown = text if text is not None else "".join(t["piece"] for t in result.tokens)
    return f"llmcli {command} · {clip(visible(shown), 72)}"


def topk_figure(result, text: str | None = None):
    """topk as a picture (``text``: the prompt, for the title): each step's probability bars (chosen row highlighted, the filters'
    cuts marked) and, with several steps, the generated text coloured by each token's
    probability."""
    from llmcli.render import pictures as P

    panels = []
    for i, step in enumerate(result.steps):
        panel = _bars_of(step.candidates, step.chosen.get("id"),
                         _cut_marks(step, len(step.candidates), result.top_p, result.min_p))
        panel.title = _step_title(result, i, step)
        panels += [panel, P.NotePanel(_filters_line(result, step) + "\n" + _chosen_line(result, step))]
    if len(result.steps) > 1 or result.stop_reason == "eos":
        tokens = [P.StripToken(s.chosen["text"], s.chosen["prob"],
                               f"{visible(s.chosen['piece'])} (id {s.chosen['id']}) p {s.chosen['prob']:.4f}")
                  for s in result.steps]
        panels.append(P.StripPanel(tokens, P.probability_scale("probability of the chosen token"),
                                   title="generated" + (" (stopped at end-of-sequence)"
                                                        if result.stop_reason == "eos" else "")))
    return P.Figure(_figure_title("topk", result, text), panels)


def trace_figure(result, text: str | None = None):
    """trace as a picture (``text``: the prompt, for the title): the logit-lens grid (blocks × positions, each cell the top token
    coloured by its probability), the attention heat map (with --attention) and the softmax
    bars of the prediction."""
    from llmcli.render import pictures as P

    tokens = result.tokens
    panels = []
    grid = getattr(result, "lens_grid", None)
    if grid:
        start = grid["first_position"]
        cols = [f"{t['position']} {visible(t['piece'])}" for t in tokens[start:]]
        rows = grid["layers"]
        panels.append(P.GridPanel(
            values=[[cell[0]["prob"] for cell in L["positions"]] for L in rows],
            row_labels=[L["name"] for L in rows], col_labels=cols,
            texts=[[f"{clip(visible(cell[0]['piece']), 8)} {cell[0]['prob']:.2f}" for cell in L["positions"]]
                   for L in rows],
            tooltips=[[f"{L['name']} after position {start + j} ({visible(tokens[start + j]['piece'])}): "
                       + "  ".join(f"{visible(c['piece'])} {c['prob']:.3f}" for c in cell)
                       for j, cell in enumerate(L["positions"])] for L in rows],
            scale=P.probability_scale("probability of the top token"), row_header="block",
            col_header="position (the token read); each cell: the logit lens's top next token and its "
                       "probability",
            title="logit lens: the next token each block's residual stream predicts"))
        if start:
            panels.append(P.NotePanel(f"positions {start}..{len(tokens) - 1} of {len(tokens)} shown"))
    att = result.attention
    if att is not None:
        first, rows = heatmap_window(att["weights"])
        peak = max((max(r[: i + 1]) for i, r in enumerate(rows)), default=1.0) or 1.0
        labels = [f"{tokens[first + i]['position']} {visible(tokens[first + i]['piece'])}" for i in range(len(rows))]
        who = f"head {att['head']}" if att["head"] is not None else "mean of all heads"
        panels.append(P.GridPanel(
            values=[[v if j <= i else None for j, v in enumerate(r)] for i, r in enumerate(rows)],
            row_labels=labels, col_labels=labels,
            tooltips=[[f"query {first + i} → key {first + j}: {v:.4f}" if j <= i else "masked (future)"
                       for j, v in enumerate(r)] for i, r in enumerate(rows)],
            scale=P.heat_scale(peak, "attention weight"), row_header="query", col_header="key",
            title=f"attention of block {att['layer']} ({att.get('name', '')}), {who}"))
    c = result.chosen
    bars = _bars_of(result.candidates, c["id"], logit=False)
    bars.title = f"softmax (entropy {result.entropy_bits:.3f} bits) after position {tokens[-1]['position']}"
    panels += [bars, P.NotePanel(f"chosen ({c['rule']}): {visible(c['piece'])} (id {c['id']}, "
                                 f"p {c['prob']:.4f}) → text {c['text']!r}")]
    return P.Figure(_figure_title("trace", result, text), panels)


#: Figure builders of the views that are pictures at heart (``--save-svg``/``--save-html``).
FIGURES: dict[str, Callable] = {"topk": topk_figure, "trace": trace_figure}


RICH: dict[str, Callable] = {"tokenize": tokenize_rich, "detokenize": detokenize_rich,
                             "embeddings": embeddings_rich, "logits": logits_rich, "topk": topk_rich,
                             "info": info_rich, "trace": trace_rich}
PLAIN: dict[str, Callable] = {"tokenize": tokenize_plain, "detokenize": detokenize_plain,
                              "embeddings": embeddings_plain, "logits": logits_plain, "topk": topk_plain,
                              "info": info_plain, "trace": trace_plain}
