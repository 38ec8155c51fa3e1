"""Two next-token distributions, position by position: two models on one text, or one model
after two prompts.

At each compared position both sides give a next-token distribution (softmax of the logits,
temperature 1) over the same ids; for each position this module reports each side's top-k,
the KL divergence ``KL(A ‖ B) = Σ_v p_A(v) · (log p_A(v) − log p_B(v))`` in nats (A is the
reference: put the original model, e.g. float32, first, as llama.cpp's ``--kl-divergence``
measures a quantized model against its base), whether the two arg-maxes agree, and each
side's log-probability of the text's actual next token. :class:`Summary` accumulates the
mean KL, the largest KL, the top-1 agreement and each side's perplexity on the text.

Sides (:class:`Side`): a model, its tokenizer, the token ids it reads and the first compared
position ``first`` (the position whose logits predict the first compared token).

* Two models: both read the same ids (their tokenizers must agree on the text: checked by
  the command); every position of the text is compared (position t's distribution predicts
  token t+1; the last one predicts past the text). Texts longer than ``window`` tokens are
  read in consecutive windows of ``window`` tokens, each from an empty cache (the first
  positions of a window see only that window).
* Two prompts: side X reads ``prompt_X`` then the text's tokens (the text tokenized once,
  without BOS, and appended to each prompt's tokens, so both sides predict the same
  tokens); compared are the prediction of the text's first token (after the prompt) through
  the prediction after its last token. Each side must fit in ``window``.

Memory is bounded: the sides advance together through their KV caches ``chunk`` positions at
a time, holding ``chunk × V`` logits per side; :func:`compare` yields one
:class:`PositionDiff` at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from llmcli.errors import LLMCLIError

CHUNK = 64      # positions per forward (memory: CHUNK × V float32 logits per side)


@dataclass
class Side:
    """One side of a comparison: ``model`` reads ``ids``; compared positions are
    ``first .. len(ids) - 1``. ``label`` names it in the output (a directory or a prompt)."""

    label: str
    model: object
    tokenizer: object
    ids: list[int]
    first: int = 0

    @property
    def count(self) -> int:
        return len(self.ids) - self.first


@dataclass
class PositionDiff:
    """One compared position.

    index: 0-based index among the compared positions (text order).
    position: the position on side A (in ``a.ids``) whose distribution is compared.
    next: the text's token that both distributions predict, ``{"id", "piece"}``, or ``None``
        after the text's last token.
    kl: ``KL(A ‖ B)`` in nats (rounding below 0 shown as 0).
    top_a, top_b: each side's ``k`` most probable tokens ``[{"id", "piece", "prob",
        "logprob"}]``.
    logprob_next_a, logprob_next_b: each side's log-probability of ``next`` (``None`` at
        the end).
    """

    index: int
    position: int
    next: dict | None
    kl: float
    top_a: list[dict]
    top_b: list[dict]
    logprob_next_a: float | None
    logprob_next_b: float | None

    @property
    def argmax_a(self) -> int:
        return self.top_a[0]["id"]

    @property
    def argmax_b(self) -> int:
        return self.top_b[0]["id"]

    @property
    def same_argmax(self) -> bool:
        return self.argmax_a == self.argmax_b

    def to_dict(self) -> dict:
        return {"index": self.index, "position": self.position, "next": self.next, "kl": self.kl,
                "argmax_same": self.same_argmax,
                "a": {"top": self.top_a, "logprob_next": self.logprob_next_a},
                "b": {"top": self.top_b, "logprob_next": self.logprob_next_b}}


@dataclass
class Summary:
    """Totals over the compared positions (fed one :class:`PositionDiff` at a time with
    :meth:`add`; constant memory apart from the list of positions where the arg-max differs)."""

    mode: str = "models"          # "models" or "prompts"
    label_a: str = "A"
    label_b: str = "B"
    positions: int = 0
    kl_sum: float = 0.0
    kl_max: float = 0.0
    kl_max_index: int | None = None
    agree: int = 0
    differ: list[int] = field(default_factory=list)
    nll_a: float = 0.0
    nll_b: float = 0.0
    scored: int = 0               # positions with a next token (for perplexity)
    notes: list[str] = field(default_factory=list)
    window: int | None = None
    windows: int = 1

    def add(self, d: PositionDiff) -> None:
        self.positions += 1
        self.kl_sum += d.kl
        if self.kl_max_index is None or d.kl > self.kl_max:
            self.kl_max, self.kl_max_index = d.kl, d.index
        if d.same_argmax:
            self.agree += 1
        else:
            self.differ.append(d.index)
        if d.logprob_next_a is not None:
            self.scored += 1
            self.nll_a -= d.logprob_next_a
            self.nll_b -= d.logprob_next_b

    @property
    def mean_kl(self) -> float:
        return self.kl_sum / self.positions if self.positions else float("nan")

    @property
    def top1_agreement(self) -> float:
        return self.agree / self.positions if self.positions else float("nan")

    @property
    def perplexity_a(self) -> float:
        return math.exp(self.nll_a / self.scored) if self.scored else float("nan")

    @property
    def perplexity_b(self) -> float:
        return math.exp(self.nll_b / self.scored) if self.scored else float("nan")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "a": self.label_a, "b": self.label_b, "positions": self.positions,
                "kl_direction": "KL(A || B) = sum p_A (log p_A - log p_B)", "kl_unit": "nats",
                "mean_kl": self.mean_kl, "max_kl": self.kl_max, "max_kl_index": self.kl_max_index,
                "top1_agreement": self.top1_agreement, "argmax_same": self.agree,
                "argmax_differs_at": self.differ, "perplexity_a": self.perplexity_a,
                "perplexity_b": self.perplexity_b, "scored_tokens": self.scored,
                "window": self.window, "windows": self.windows, "notes": self.notes}


# ----------------------------------------------------------------------------- checks
def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where two id lists differ (or where the shorter ends), ``None`` if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def vocabulary_note(tok_a, tok_b, rows_a: int, rows_b: int) -> str | None:
    """A line saying how the two vocabularies differ (size, pieces of the shared ids), or
    ``None`` when they are the same."""
    shared = min(rows_a, rows_b)
    n = min(tok_a.vocab_size, tok_b.vocab_size, shared)
    same_file = False
    try:
        same_file = tok_a.path.read_bytes() == tok_b.path.read_bytes()
    except (OSError, AttributeError):
        pass
    differ = 0 if same_file else sum(tok_a.piece(i) != tok_b.piece(i) for i in range(n))
    if rows_a == rows_b and tok_a.vocab_size == tok_b.vocab_size and differ == 0:
        return None
    parts = []
    if rows_a != rows_b:
        parts.append(f"the models have {rows_a} and {rows_b} vocabulary rows: distributions are "
                     f"compared over the {shared} shared ids, each renormalised over them")
    if differ:
        parts.append(f"{differ} of the {n} shared ids are different pieces in the two tokenizers")
    if not parts:
        parts.append(f"the tokenizers have {tok_a.vocab_size} and {tok_b.vocab_size} pieces")
    return "vocabularies differ: " + "; ".join(parts) + " (the tokenizers agree on this text)"


# ----------------------------------------------------------------------------- computing
def _logit_chunks(side: Side, window: int, chunk: int) -> Iterator[torch.Tensor]:
    """Logits ``(n, V)`` float32 of positions ``side.first ..`` in order, ``n ≤ chunk`` rows at
    a time (windows of ``window`` positions, each from an empty KV cache)."""
    model, ids = side.model, side.ids
    device = model.device
    starts = range(0, len(ids), window) if side.first == 0 else [0]
    # inference mode is entered and left around each forward, never held across a yield (a
    # suspended generator would leave it on for the caller's code)
    for w0 in starts:
        w_ids = ids[w0:w0 + window]
        cache = model.new_cache(max_len=len(w_ids))
        pos = 0
        if w0 == 0 and side.first > 0:
            with torch.inference_mode():
                model(torch.tensor([w_ids[:side.first]], device=device), cache=cache, last_only=True)
            pos = side.first
        while pos < len(w_ids):
            piece = w_ids[pos:pos + chunk]
            with torch.inference_mode():
                logits = model(torch.tensor([piece], device=device), cache=cache)[0].float()
            yield logits
            pos += len(piece)


def _top(tokenizer, logp: torch.Tensor, k: int) -> list[dict]:
    from llmcli.inspection.tensors import piece_of

    values, ids = torch.topk(logp, k)
    return [{"id": int(i), "piece": piece_of(tokenizer, int(i)), "prob": math.exp(float(v)),
             "logprob": float(v)} for v, i in zip(values.tolist(), ids.tolist())]


def compare(a: Side, b: Side, k: int = 5, window: int | None = None, chunk: int = CHUNK,
            next_ids: list[int | None] | None = None,
            progress: Callable[[int], None] | None = None) -> Iterator[PositionDiff]:
    """Yield one :class:`PositionDiff` per compared position, in order.

    Args:
        a, b: the sides; ``a.count == b.count`` compared positions.
        k: top-k shown per side.
        window: longest stretch read from one cache (default: the whole sequence); in the
            prompts mode (``first > 0``) each side must fit in one window.
        chunk: positions per forward.
        next_ids: the token each compared position predicts (``None`` at the end); default
            ``a.ids[p + 1]``.
        progress: called with the number of positions done after each chunk.

    Raises:
        LLMCLIError: the sides compare different numbers of positions, a side in the
            prompts mode does not fit in ``window``, or the logits are not finite.
    """
    if a.count != b.count:
        raise LLMCLIError(f"compare: the sides have {a.count} and {b.count} positions to compare")
    window = window or max(len(a.ids), len(b.ids))
    for side in (a, b):
        if side.first > 0 and len(side.ids) > window:
            raise LLMCLIError(f"{side.label}: {len(side.ids)} tokens (prompt and text) do not fit in "
                              f"the context of {window} tokens")
    if next_ids is None:
        next_ids = [a.ids[p + 1] if p + 1 < len(a.ids) else None for p in range(a.first, len(a.ids))]
    from llmcli.inspection.tensors import piece_of

    index = 0
    for za, zb in zip(_logit_chunks(a, window, chunk), _logit_chunks(b, window, chunk)):
        n = min(za.shape[0], zb.shape[0])
        za, zb = za[:n], zb[:n]
        if not (bool(torch.isfinite(za).all()) and bool(torch.isfinite(zb).all())):
            bad = "A" if not bool(torch.isfinite(za).all()) else "B"
            raise LLMCLIError(f"compare: non-finite logits from {bad} near position {a.first + index}")
        V = min(za.shape[-1], zb.shape[-1])
        la = torch.log_softmax(za[:, :V], dim=-1)                                  # (n, V)
        lb = torch.log_softmax(zb[:, :V], dim=-1)
        kl = (la.exp() * (la - lb)).sum(dim=-1).clamp_min(0.0)                     # (n,)
        kk = min(k, V)
        for r in range(n):
            nxt = next_ids[index] if index < len(next_ids) else None
            lpa = lpb = None
            if nxt is not None and nxt < V:
                lpa, lpb = float(la[r, nxt]), float(lb[r, nxt])
            yield PositionDiff(index=index, position=a.first + index,
                               next=None if nxt is None else {"id": nxt, "piece": piece_of(a.tokenizer, nxt)},
                               kl=float(kl[r]), top_a=_top(a.tokenizer, la[r], kk),
                               top_b=_top(b.tokenizer, lb[r], kk),
                               logprob_next_a=lpa, logprob_next_b=lpb)
            index += 1
        if progress is not None:
            progress(index)
