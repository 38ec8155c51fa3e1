"""Every token of a text scored by the model: logprob, rank, entropy, top alternatives.

For each token ``t[j]`` of the text (as fed: BOS first when the tokenizer adds one) the model's
distribution ``p = softmax(logits)`` predicting it from the tokens before it gives:

* ``logprob``: ``log p(t[j])`` (nats, natural log, as OpenAI's ``logprob``);
* ``rank``: 1 + the number of vocabulary entries whose logit is strictly larger than the
  token's (1 = the arg-max; ties share the better rank);
* ``entropy``: ``-Σ p log p`` of the whole distribution (nats; ``entropy_bits`` in bits);
* ``top``: the ``top_logprobs`` most likely ``(id, logprob, piece, bytes)``, most likely
  first;
* ``bucket``: the rank bucket of GLTR (Gehrmann, Strobelt, Rush 2019, "GLTR: Statistical
  Detection and Visualization of Generated Text"): ``top-1``, ``top-10``, ``top-100`` or
  ``beyond`` (:data:`BUCKETS`).

The first token has no prediction (nothing comes before it): its ``logprob``, ``rank``,
``entropy`` and ``top`` are ``None`` (JSON ``null``), as OpenAI's completions API gives
``null`` for the first echoed token. Texts longer than ``context`` are scored with the
sliding windows of :mod:`llmcli.inspection.perplexity` (each token given at least
``context - stride`` tokens of history); with ``stride == context`` the first token of each
later window has no history either and is ``None`` the same way.

:func:`score_tokens` is a generator: tokens come out as their window is computed, and
nothing but the current piece of logits (``batch × vocab``) is held, so a long text streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

from llmcli.inspection.perplexity import DEFAULT_BATCH, Progress, run_windows, sliding_windows

#: GLTR's rank buckets as ``(largest rank, name)``; ``None``: every larger rank.
BUCKETS: tuple[tuple[int | None, str], ...] = ((1, "top-1"), (10, "top-10"), (100, "top-100"),
                                               (None, "beyond"))
BUCKET_NAMES = tuple(name for _, name in BUCKETS)

_LN2 = math.log(2.0)


def bucket_of(rank: int | None) -> str | None:
    """GLTR's bucket name of a rank (``None`` for no rank)."""
    if rank is None:
        return None
    for limit, name in BUCKETS:
        if limit is None or rank <= limit:
            return name
    raise AssertionError("unreachable")


@dataclass
class TokenScore:
    """One token of the text and how the model scored it (see the module docstring).

    ``piece``: the vocabulary piece; ``bytes``: the exact bytes it stands for
    (:meth:`~llmcli.tokenizer.Tokenizer.token_bytes`: ``b""`` for BOS and other control
    tokens; a sentencepiece word piece's ``▁`` as a space); ``text``: what it adds to the
    decoded text (the tokenizer's streaming decoder: the normaliser undone, so no space
    that the text does not have; ``""`` for a control token, and for a token ending inside
    a character, which the token completing the character carries); ``top``: ``[(id, logprob, piece, bytes)]``,
    most likely first."""

    position: int
    id: int
    piece: str
    bytes: bytes
    text: str = ""
    logprob: float | None = None
    rank: int | None = None
    entropy: float | None = None
    top: list[tuple[int, float, str, bytes]] = field(default_factory=list)

    @property
    def prob(self) -> float | None:
        return None if self.logprob is None else math.exp(self.logprob)

    @property
    def bucket(self) -> str | None:
        return bucket_of(self.rank)

    @property
    def entropy_bits(self) -> float | None:
        return None if self.entropy is None else self.entropy / _LN2


@dataclass
class ScoreSummary:
    """Totals over the tokens that have a prediction: ``scored`` of ``tokens``, Σ logprob
    (nats), and how many fell in each GLTR bucket."""

    tokens: int = 0
    scored: int = 0
    logprob_sum: float = 0.0
    buckets: dict[str, int] = field(default_factory=lambda: {n: 0 for n in BUCKET_NAMES})

    def add(self, t: TokenScore) -> None:
        self.tokens += 1
        if t.logprob is not None:
            self.scored += 1
            self.logprob_sum += t.logprob
            self.buckets[t.bucket] += 1

    @property
    def mean_logprob(self) -> float:
        return self.logprob_sum / self.scored if self.scored else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(-self.mean_logprob) if self.scored else float("nan")

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "scored": self.scored, "mean_logprob": self.mean_logprob,
                "perplexity": self.perplexity, "buckets": dict(self.buckets),
                "bucket_fractions": {k: (v / self.scored if self.scored else None)
                                     for k, v in self.buckets.items()}}


def score_tokens(model, tokenizer, ids: list[int], *, context: int, stride: int | None = None,
                 top_logprobs: int = 5, batch: int = DEFAULT_BATCH,
                 on_progress: Progress | None = None) -> Iterator[TokenScore]:
    """A :class:`TokenScore` for every token of ``ids``, in order (a generator).

    Args:
        context: tokens per window (≤ the model's context); ``stride`` (default
            ``context // 2``) how far windows move (see :mod:`llmcli.inspection.perplexity`).
        top_logprobs: how many alternatives each scored token lists (0 = none).
        batch: tokens per forward call (memory: ``batch × vocab × 4`` bytes of logits).

    Raises:
        ValueError: fewer than 2 tokens, or an invalid context/stride.
        llmcli.checks.NonFiniteError: the model gives non-finite logits.
    """
    import torch

    n = len(ids)
    if n < 2:
        raise ValueError(f"need at least 2 tokens, got {n}")
    stride = max(1, context // 2) if stride is None else stride
    windows = sliding_windows(n, context, stride)
    vocab = tokenizer.vocab_size
    pieces: dict[int, tuple[str, bytes]] = {}

    def piece(t: int) -> tuple[str, bytes]:
        got = pieces.get(t)
        if got is None:
            got = pieces[t] = ((tokenizer.piece(t), tokenizer.token_bytes(t)) if 0 <= t < vocab
                               else (f"<id {t}>", b""))
        return got

    stream = tokenizer.stream()

    def row(j: int) -> TokenScore:
        t = int(ids[j])
        text = stream.push(t) if 0 <= t < vocab else ""
        if j == n - 1:
            text += stream.flush()
        return TokenScore(j, t, *piece(t), text=text)

    next_position = 0
    for positions, logits, targets in run_windows(model, ids, windows, batch, tokenizer.bos_id,
                                                  on_progress):
        while next_position < positions.start:   # no prediction: the first token (or a
            yield row(next_position)             # window start with stride == context)
            next_position += 1
        logp = torch.log_softmax(logits.double(), dim=-1)                      # (P, V)
        target_lp = logp.gather(1, targets[:, None])[:, 0]                      # (P,)
        ranks = (logits > logits.gather(1, targets[:, None])).sum(dim=-1) + 1   # (P,)
        entropy = -(logp.exp() * logp).sum(dim=-1)                              # (P,)
        if top_logprobs > 0:
            top_v, top_i = logp.topk(min(top_logprobs, logp.shape[-1]), dim=-1)
            tops = [[(i, v, *piece(i)) for i, v in zip(i_row, v_row)]
                    for i_row, v_row in zip(top_i.tolist(), top_v.tolist())]
        else:
            tops = [[] for _ in positions]
        for k, j in enumerate(positions):
            t = row(j)
            t.logprob = float(target_lp[k])
            t.rank = int(ranks[k])
            t.entropy = float(entropy[k])
            t.top = tops[k]
            yield t
        next_position = positions.stop
    while next_position < n:                      # unreachable with stride <= context
        yield row(next_position)
        next_position += 1
