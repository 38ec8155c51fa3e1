"""Renderers of ``perplexity`` and ``score``: terminal (rich), plain text (pipes), JSON.

``perplexity`` is one small result (:class:`llmcli.inspection.perplexity.PerplexityResult`).
``score`` is a stream of :class:`llmcli.inspection.score.TokenScore` (one per token of a text
that may be long), so its plain and JSON renderers write each token as it comes
(:class:`ScorePlainWriter`, :class:`ScoreJsonWriter`); the terminal view colours the text
once it is complete (:func:`score_rich`), from :class:`Span`, a few values per token.

Colours: by GLTR rank bucket (Gehrmann et al. 2019: top-1 green, top-10 yellow, top-100 red,
beyond purple) or by probability (red → green, the steps of
:func:`llmcli.render.prob_style`), as backgrounds the text reads on, with a legend: the
palettes of :mod:`llmcli.render.pictures` (24-bit or 256-colour terminals), named colours on
a 16-colour terminal, so the terminal and the saved pictures agree. With
``NO_COLOR`` the terminal gets the plain annotated listing instead (colour is the view).
Never imports torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from llmcli.render import clip, fmt, jsonable, text_width, visible

COLOR_BY = ("rank", "prob")
_INK = "#1f2328"   # text on those backgrounds


def scale(color_by: str):
    """The colour scale shared with the pictures (:mod:`llmcli.render.pictures`):
    :func:`~llmcli.render.pictures.rank_scale` (GLTR's buckets; value = rank) or
    :func:`~llmcli.render.pictures.probability_scale` (value = probability)."""
    from llmcli.render import pictures as P

    return P.probability_scale() if color_by == "prob" else P.rank_scale()


# ----------------------------------------------------------------------------- perplexity
def _rule_line(r) -> str:
    if r.rule == "llama.cpp":
        n = len(r.windows)
        bos = ", BOS first in each" if r.add_bos else ""
        return (f"llama.cpp: {n} chunks of {r.context} tokens{bos},\nthe last "
                f"{r.context - r.context // 2 - 1} of each scored")
    if r.stride >= r.context:
        return (f"sliding window: {len(r.windows)} windows of ≤ {r.context} tokens, stride "
                f"{r.stride} (no overlap),\nthe first token of each window not scored")
    return (f"sliding window: {len(r.windows)} windows of ≤ {r.context} tokens, stride "
            f"{r.stride},\neach token scored once with ≥ {r.context - r.stride} tokens of history")


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
    return "".join(f"{k:<{width}}  {v}\n".replace("\n", "\n" + " " * (width + 2), v.count("\n"))
                   for k, v in rows) + \
        "(± is the standard error of the mean, as llama-perplexity prints it)\n"


def perplexity_rich(r, con) -> None:
    from rich.text import Text

    rows = perplexity_lines(r)
    width = max(len(k) for k, _ in rows)
    for i, (k, v) in enumerate(rows):
        v = v.replace("\n", "\n" + " " * (width + 2))
        con.print(Text.assemble((f"{k:<{width}}  ", "bold"), (v, "bold" if i == 0 else "")))
    con.print("(± is the standard error of the mean, as llama-perplexity prints it)", style="dim",
              markup=False)


# ----------------------------------------------------------------------------- score: data
def token_text(t) -> str:
    """The token as a string (OpenAI's ``token``): its bytes as UTF-8 (U+FFFD for part of a
    character; a sentencepiece ``▁`` as a space); a control token's piece (``<s>``)."""
    return t.bytes.decode("utf-8", errors="replace") if t.bytes else t.piece


def shown_text(t) -> str:
    """What the listing shows for a token: the text it adds to the decoded text (spaces as
    ``␣`` when there is nothing else), else (a control token, part of a character) its
    piece."""
    if t.text and not t.text.strip(" "):
        return "␣" * len(t.text)
    return t.text or t.piece


def token_dict(t) -> dict:
    """One token of ``score --json``, OpenAI-style: ``token`` (its text), ``logprob`` (nats),
    ``bytes`` (ints), ``top_logprobs`` ([{token, logprob, bytes, id}]), and ``id``,
    ``piece``, ``text`` (what it adds to the decoded text), ``position``, ``rank``,
    ``bucket``, ``entropy`` (nats), ``entropy_bits``; the
    first token's ``logprob``/``rank``/``bucket``/``entropy`` are null and its
    ``top_logprobs`` empty (nothing predicts it)."""
    return {"position": t.position, "id": t.id, "token": token_text(t), "piece": t.piece,
            "text": t.text, "bytes": list(t.bytes), "logprob": t.logprob, "rank": t.rank, "bucket": t.bucket,
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
    """Turns the stream of :class:`TokenScore` into :class:`Span` (keeping only those): each
    token's decoded ``text``; a token that adds no text yet (it ends inside a character)
    joins the next one, and the least likely of them colours the run."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._pending: list = []

    def add(self, t) -> None:
        if not t.bytes:                       # BOS and other control tokens: their piece
            self._flush("")
            self.spans.append(Span(t.piece, t.logprob, t.rank, t.bucket, True, t.position))
            return
        self._pending.append(t)
        if t.text:
            self._flush(t.text)

    def _flush(self, text: str) -> None:
        if not self._pending:
            return
        group, self._pending = self._pending, []
        scored = [p for p in group if p.logprob is not None]
        worst = min(scored, key=lambda p: p.logprob) if scored else group[0]
        self.spans.append(Span(text, worst.logprob, worst.rank, worst.bucket, False,
                               group[0].position, len(group)))

    def close(self) -> list[Span]:
        self._flush("\ufffd" if self._pending else "")
        return self.spans


# ----------------------------------------------------------------------------- score: plain
_PLAIN_HEADER = (f"{'pos':>6}  {'id':>6}  {'token':<18}  {'logprob':>9}  {'prob':>7}  "
                 f"{'rank':>6}  {'H bits':>6}  bucket")


def plain_line(t) -> str:
    """One token as a fixed-width line (79 columns at most): position, id, the token's text
    (control characters escaped), logprob, probability, rank, entropy in bits, GLTR bucket;
    ``-`` where nothing predicts the token."""
    shown = clip(visible(shown_text(t)), 18)
    shown = shown + " " * (18 - text_width(shown))
    if t.logprob is None:
        return f"{t.position:>6}  {t.id:>6}  {shown}  {'-':>9}  {'-':>7}  {'-':>6}  {'-':>6}  -"
    p = math.exp(t.logprob)
    prob = f"{p:>7.4f}" if p >= 1e-3 else f"{p:>7.1e}"
    return (f"{t.position:>6}  {t.id:>6}  {shown}  {t.logprob:>9.4f}  {prob}  "
            f"{t.rank:>6}  {t.entropy_bits:>6.3f}  {t.bucket}")


def summary_parts(s) -> list[str]:
    """``["N tokens, M scored · perplexity P · mean logprob L", "top-1 a% · top-10 b% ..."]``."""
    if not s.scored:
        return [f"{s.tokens} tokens, none scored"]
    buckets = " · ".join(f"{k} {100 * v / s.scored:.1f}%" for k, v in s.buckets.items())
    return [f"{s.tokens:,} tokens, {s.scored:,} scored · perplexity {fmt(s.perplexity, 3)} · "
            f"mean logprob {fmt(s.mean_logprob, 3)}", buckets]


def summary_line(s) -> str:
    """The summary on one line (:func:`summary_parts` joined)."""
    return " · ".join(summary_parts(s))


class ScorePlainWriter:
    """Plain annotated text, written as tokens come: a header, one line per token, the
    summary line."""

    def __init__(self, file) -> None:
        self.file = file
        file.write(_PLAIN_HEADER + "\n")

    def add(self, t) -> None:
        self.file.write(plain_line(t) + "\n")

    def close(self, summary) -> None:
        self.file.write("\n".join(summary_parts(summary)) + "\n")
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

    def close(self, summary, interrupted: bool = False) -> None:
        """End the document; ``interrupted`` (Ctrl-C) adds ``"interrupted": true`` to the
        summary of the tokens written so far."""
        doc = summary.to_dict() | ({"interrupted": True} if interrupted else {})
        self.file.write('\n], "summary": ' + json.dumps(jsonable(doc), ensure_ascii=False,
                                                       allow_nan=False) + "}\n")
        self.file.flush()


# ----------------------------------------------------------------------------- score: terminal
def span_value(span: Span, color_by: str) -> float | None:
    """What colours a span: its probability or its rank (``None``: nothing predicts it)."""
    if span.logprob is None:
        return None
    return math.exp(span.logprob) if color_by == "prob" else float(span.rank)


def _tooltip(span: Span) -> str:
    if span.control:
        return f"{span.text} (control token)"
    if span.logprob is None:
        return "no prediction (first token)"
    return (f"logprob {span.logprob:.4f} · prob {math.exp(span.logprob):.4g} · rank {span.rank} "
            f"({span.bucket})" + (f" · {span.count} tokens" if span.count > 1 else ""))


def score_rich(spans: list[Span], summary, con, color_by: str = "rank") -> None:
    """The text coloured span by span, a legend before it and the summary after."""
    from rich.text import Text

    sc = scale(color_by)
    named = con.color_system in ("standard", "windows")   # 16 colours: the pastels all look grey

    def style(value: float | None) -> str | None:
        if value is None:
            return None
        if named:
            return f"black on {_named_colour(value, color_by)}"
        return f"{_INK} on {sc.colour(value)}"

    legend = Text()
    legend.append("probability: " if color_by == "prob" else "rank (GLTR): ", style="dim")
    for value, label in sc.ticks:
        legend.append(f" {label} ", style=style(value))
        legend.append(" ")
    legend.append("no prediction", style="dim")
    con.print(legend)
    body = Text()
    for span in spans:
        if span.control:
            body.append(span.text, style="dim magenta")
        else:
            body.append(span.text, style=style(span_value(span, color_by)) or "dim")
    con.print(body, soft_wrap=True)
    for part in summary_parts(summary):
        con.print(part, style="bold", markup=False)


#: Named colours for 16-colour terminals: GLTR's buckets, and probability steps.
_NAMED_RANK = ((1, "green"), (10, "yellow"), (100, "red"), (math.inf, "magenta"))
_NAMED_PROB = ((0.8, "green"), (0.5, "bright_green"), (0.25, "yellow"), (0.1, "bright_red"),
               (0.0, "red"))


def _named_colour(value: float, color_by: str) -> str:
    if color_by == "prob":
        return next((c for bound, c in _NAMED_PROB if value >= bound), "red")
    return next(c for top, c in _NAMED_RANK if value <= top)


def score_figure(spans: list[Span], summary, color_by: str = "rank", source: str = ""):
    """The coloured text as a :class:`llmcli.render.pictures.Figure` (``--save-svg``,
    ``--save-html``): a token strip with the terminal's colours, a legend and tooltips (each
    token's logprob, probability, rank), and the summary line."""
    from llmcli.render import pictures as P

    tokens = [P.StripToken(span.text, None if span.control else span_value(span, color_by),
                           _tooltip(span)) for span in spans]
    what = "probability" if color_by == "prob" else "rank (GLTR buckets)"
    return P.Figure(f"score · {source}" if source else "score", panels=[
        P.StripPanel(tokens, scale(color_by), title=f"each token coloured by its {what}"),
        P.NotePanel(summary_line(summary)),
    ])
