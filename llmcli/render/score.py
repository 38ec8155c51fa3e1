"""Renderers of ``perplexity`` and ``score``: terminal (rich), plain text (pipes), JSON.

``perplexity`` is one small result (:class:`llmcli.inspection.perplexity.PerplexityResult`).
``score`` is a stream of :class:`llmcli.inspection.score.TokenScore` (one per token of a text
that may be long), so its plain and JSON renderers write each token as it comes
(:class:`ScorePlainWriter`, :class:`ScoreJsonWriter`); the terminal view colours the text
once it is complete (:func:`score_rich`), from :class:`Span`, a few values per token.

Colours: by GLTR rank bucket (Gehrmann et al. 2019: top-1 green, top-10 yellow, top-100 red,
beyond purple) or by probability (red → green, the steps of
:func:`llmcli.render.prob_style`), as backgrounds the text reads on, with a legend. With
``NO_COLOR`` the terminal gets the plain annotated listing instead (colour is the view).
Never imports torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterable

from llmcli.render import clip, fmt, jsonable, text_width, visible

#: Background colours of GLTR's buckets (the palette of llmcli.render.pictures.rank_scale).
BUCKET_COLOURS = {"top-1": "#a6e3a1", "top-10": "#fbe38e", "top-100": "#f7b4a7",
                  "beyond": "#d8b4f8"}
#: Probability steps: (lower bound, background colour, legend label), the prob_style steps.
PROB_COLOURS = [(0.8, "#9dd4a8", "≥ 0.8"), (0.5, "#c6e6a0", "0.5–0.8"),
                (0.25, "#f0e094", "0.25–0.5"), (0.1, "#f6c39c", "0.1–0.25"),
                (0.0, "#f2a9a4", "< 0.1")]
COLOR_BY = ("rank", "prob")
_INK = "#1f2328"   # text on those backgrounds


def prob_background(p: float) -> str:
    for bound, colour, _ in PROB_COLOURS:
        if p >= bound:
            return colour
    return PROB_COLOURS[-1][1]


# ----------------------------------------------------------------------------- perplexity
def _rule_line(r) -> str:
    if r.rule == "llama.cpp":
        n = len(r.windows)
        bos = ", BOS first in each" if r.add_bos else ""
        return (f"llama.cpp: {n} chunks of {r.context} tokens{bos}, the last "
                f"{r.context - r.context // 2 - 1} of each scored")
    return (f"sliding window: {len(r.windows)} windows of ≤ {r.context} tokens, stride "
            f"{r.stride}, each token scored once with ≥ {r.context - r.stride} tokens of history")


def perplexity_lines(r) -> list[tuple[str, str]]:
    """(label, value) rows of the perplexity report."""
    return [
        ("perplexity", f"{fmt(r.perplexity)} ± {fmt(r.perplexity_stderr)}"),
        ("nats/token", f"{fmt(r.nats_per_token)} ± {fmt(r.nats_stderr)}"),
        ("bits/token", fmt(r.bits_per_token)),
        ("bits/char", f"{fmt(r.bits_per_character)}  ({r.characters:,} characters scored)"),
        ("bits/byte", f"{fmt(r.bits_per_byte)}  ({r.bytes:,} bytes scored)"),
        ("tokens", f"{r.scored:,} scored of {r.tokens:,}"),
        ("rule", _rule_line(r)),
    ]


def perplexity_plain(r) -> str:
    rows = perplexity_lines(r)
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows) + \
        "(± is the standard error of the mean, as llama-perplexity prints it)\n"


def perplexity_rich(r, con) -> None:
    from rich.text import Text

    rows = perplexity_lines(r)
    width = max(len(k) for k, _ in rows)
    for i, (k, v) in enumerate(rows):
        con.print(Text.assemble((f"{k:<{width}}  ", "bold"), (v, "bold" if i == 0 else "")))
    con.print("(± is the standard error of the mean, as llama-perplexity prints it)", style="dim",
              markup=False)


# ----------------------------------------------------------------------------- score: data
def token_text(t) -> str:
    """The text a token stands for (its bytes as UTF-8, U+FFFD for part of a character); a
    control token's piece (``<s>``) when it stands for no bytes."""
    return t.bytes.decode("utf-8", errors="replace") if t.bytes else t.piece


def token_dict(t) -> dict:
    """One token of ``score --json``, OpenAI-style: ``token`` (its text), ``logprob`` (nats),
    ``bytes`` (ints), ``top_logprobs`` ([{token, logprob, bytes, id}]), and ``id``,
    ``piece``, ``position``, ``rank``, ``bucket``, ``entropy`` (nats), ``entropy_bits``; the
    first token's ``logprob``/``rank``/``bucket``/``entropy`` are null and its
    ``top_logprobs`` empty (nothing predicts it)."""
    return {"position": t.position, "id": t.id, "token": token_text(t), "piece": t.piece,
            "bytes": list(t.bytes), "logprob": t.logprob, "rank": t.rank, "bucket": t.bucket,
            "entropy": t.entropy, "entropy_bits": t.entropy_bits,
            "top_logprobs": [{"token": (b.decode("utf-8", errors="replace") if b else p),
                              "logprob": lp, "bytes": list(b), "id": i}
                             for i, lp, p, b in t.top]}


@dataclass
class Span:
    """A run of text drawn in one colour: one token, or several when a character's UTF-8
    bytes are split across byte tokens (then the least likely of them colours the run).
    ``logprob``/``rank``/``bucket`` are None for a token nothing predicts."""

    text: str
    logprob: float | None
    rank: int | None
    bucket: str | None
    control: bool = False
    first: int = 0          # position of its first token
    count: int = 1          # tokens in it


class SpanCollector:
    """Turns the stream of :class:`TokenScore` into :class:`Span` (keeping only those)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._pending: list = []
        self._bytes = b""

    def add(self, t) -> None:
        if not t.bytes:
            self._flush(force=True)
            self.spans.append(Span(t.piece, t.logprob, t.rank, t.bucket, True, t.position))
            return
        self._pending.append(t)
        self._bytes += t.bytes
        self._flush(force=len(self._bytes) > 8)

    def _flush(self, force: bool = False) -> None:
        if not self._pending:
            return
        try:
            text = self._bytes.decode("utf-8")
        except UnicodeDecodeError:
            if not force:
                return
            text = self._bytes.decode("utf-8", errors="replace")
        scored = [p for p in self._pending if p.logprob is not None]
        worst = min(scored, key=lambda p: p.logprob) if scored else self._pending[0]
        self.spans.append(Span(text, worst.logprob, worst.rank, worst.bucket, False,
                               self._pending[0].position, len(self._pending)))
        self._pending, self._bytes = [], b""

    def close(self) -> list[Span]:
        self._flush(force=True)
        return self.spans


# ----------------------------------------------------------------------------- score: plain
_PLAIN_HEADER = (f"{'pos':>6}  {'id':>7}  {'token':<20}  {'logprob':>9}  {'prob':>7}  "
                 f"{'rank':>6}  {'H bits':>6}  bucket")


def plain_line(t) -> str:
    """One token as a fixed-width line (76 columns at most): position, id, the token's text
    (control characters escaped), logprob, probability, rank, entropy in bits, GLTR bucket;
    ``-`` where nothing predicts the token."""
    shown = clip(visible(token_text(t)), 20)
    shown = shown + " " * (20 - text_width(shown))
    if t.logprob is None:
        return f"{t.position:>6}  {t.id:>7}  {shown}  {'-':>9}  {'-':>7}  {'-':>6}  {'-':>6}  -"
    p = math.exp(t.logprob)
    prob = f"{p:>7.4f}" if p >= 1e-3 else f"{p:>7.1e}"
    return (f"{t.position:>6}  {t.id:>7}  {shown}  {t.logprob:>9.4f}  {prob}  "
            f"{t.rank:>6}  {t.entropy_bits:>6.3f}  {t.bucket}")


def summary_line(s) -> str:
    """``N tokens, M scored · perplexity P · mean logprob L · top-1 a% · top-10 b% ...``."""
    if not s.scored:
        return f"{s.tokens} tokens, none scored"
    buckets = " · ".join(f"{k} {100 * v / s.scored:.1f}%" for k, v in s.buckets.items())
    return (f"{s.tokens:,} tokens, {s.scored:,} scored · perplexity {fmt(s.perplexity, 3)} · "
            f"mean logprob {fmt(s.mean_logprob, 3)} · {buckets}")


class ScorePlainWriter:
    """Plain annotated text, written as tokens come: a header, one line per token, the
    summary line."""

    def __init__(self, file) -> None:
        self.file = file
        file.write(_PLAIN_HEADER + "\n")

    def add(self, t) -> None:
        self.file.write(plain_line(t) + "\n")

    def close(self, summary) -> None:
        self.file.write(summary_line(summary) + "\n")
        self.file.flush()


class ScoreJsonWriter:
    """One JSON document, written as tokens come: ``{...header, "content": [token, ...],
    "summary": {...}}`` (each token on its own line)."""

    def __init__(self, file, header: dict) -> None:
        self.file = file
        head = json.dumps(jsonable(header), ensure_ascii=False, allow_nan=False)
        file.write(head[:-1] + (", " if header else "") + '"content": [')
        self.n = 0

    def add(self, t) -> None:
        sep = "\n" if self.n == 0 else ",\n"
        self.file.write(sep + json.dumps(jsonable(token_dict(t)), ensure_ascii=False,
                                         allow_nan=False))
        self.n += 1

    def close(self, summary) -> None:
        self.file.write('\n], "summary": ' + json.dumps(jsonable(summary.to_dict()),
                                                       ensure_ascii=False, allow_nan=False) + "}\n")
        self.file.flush()


# ----------------------------------------------------------------------------- score: terminal
def span_colour(span: Span, color_by: str) -> str | None:
    """The background of a span (``None``: uncoloured, nothing predicts it)."""
    if span.logprob is None:
        return None
    if color_by == "prob":
        return prob_background(math.exp(span.logprob))
    return BUCKET_COLOURS[span.bucket]


def legend_items(color_by: str) -> list[tuple[str, str]]:
    """(colour, label) of the legend."""
    if color_by == "prob":
        return [(c, label) for _, c, label in reversed(PROB_COLOURS)]
    return [(BUCKET_COLOURS["top-1"], "top-1"), (BUCKET_COLOURS["top-10"], "top-10"),
            (BUCKET_COLOURS["top-100"], "top-100"), (BUCKET_COLOURS["beyond"], "beyond")]


def score_rich(spans: list[Span], summary, con, color_by: str = "rank") -> None:
    """The text coloured span by span, a legend before it and the summary after."""
    from rich.text import Text

    legend = Text("colour = " + ("probability of the token: " if color_by == "prob"
                                 else "rank of the token (GLTR buckets): "), style="dim")
    for colour, label in legend_items(color_by):
        legend.append(f" {label} ", style=f"{_INK} on {colour}")
        legend.append(" ")
    legend.append(" no prediction", style="dim")
    con.print(legend)
    body = Text()
    for span in spans:
        colour = span_colour(span, color_by)
        if span.control:
            body.append(span.text, style="dim magenta")
        elif colour is None:
            body.append(span.text, style="dim")
        else:
            body.append(span.text, style=f"{_INK} on {colour}")
    con.print(body, soft_wrap=True)
    con.print(summary_line(summary), style="bold", markup=False)


def write_plain(tokens: Iterable, summary, file) -> None:
    """The plain listing of already collected tokens (tests, ``NO_COLOR``)."""
    w = ScorePlainWriter(file)
    for t in tokens:
        w.add(t)
    w.close(summary)
