"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, repeat penalty.

One implementation, used by ``generate`` to sample and by ``topk`` to show where each filter
would cut. Filters apply in this order (the order of Hugging Face transformers'
``LogitsProcessorList`` for ``generate``):

1. repeat penalty on the raw logits of tokens already in the context (CTRL, Keskar et al.
   2019, as transformers' ``RepetitionPenaltyLogitsProcessor``: a positive logit is divided by
   the penalty, a negative one multiplied);
2. temperature (logits / T); T = 0 means greedy: the arg-max of the penalised logits;
3. top-k: keep the k highest logits (k larger than the vocabulary keeps all);
4. top-p (nucleus, Holtzman et al. 2019): keep the smallest set of most probable tokens whose
   probability mass reaches p (always at least one token);
5. min-p (Nguyen et al. 2024): keep tokens whose probability is at least ``min_p`` times the
   top token's probability;
6. sample from the softmax of what is left.

Every function takes and returns 1-D logits ``(vocab,)``; removed tokens get ``-inf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmcli.errors import UsageError

# Tolerance when comparing cumulative mass with top_p, so that a set whose mass reaches p
# exactly (0.5 + 0.3 = 0.8) is recognised despite float rounding.
_TOP_P_EPS = 1e-6


@dataclass
class SamplingParams:
    """Sampler settings; defaults as llama.cpp's (temperature 0.8, top-k 40, top-p 0.95,
    min-p 0.05, no repeat penalty). ``top_k = 0``, ``top_p = 1`` and ``min_p = 0`` disable
    their filter. ``seed = None`` draws a random seed."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None

    def validate(self) -> None:
        """Raises :class:`~llmcli.errors.UsageError` naming the option with a bad value."""
        for option, value in (("--temp", self.temperature), ("--top-p", self.top_p),
                              ("--min-p", self.min_p), ("--repeat-penalty", self.repeat_penalty)):
            if not math.isfinite(value):
                raise UsageError(f"{option}: must be a finite number, got {value}")
        if not self.temperature >= 0:
            raise UsageError(f"--temp: must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"--top-k: must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p: must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise UsageError(f"--min-p: must be in [0, 1], got {self.min_p}")
        if not self.repeat_penalty > 0:
            raise UsageError(f"--repeat-penalty: must be > 0 (1 = off), got {self.repeat_penalty}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed: must be in [0, 2^63), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repeat_penalty(logits: torch.Tensor, context_ids: list[int] | torch.Tensor,
                         penalty: float) -> torch.Tensor:
    """Penalise tokens in ``context_ids``: positive logits / penalty, negative × penalty."""
    if penalty == 1.0 or len(context_ids) == 0:
        return logits
    ids = torch.as_tensor(context_ids, dtype=torch.long, device=logits.device).unique()
    picked = logits[ids]
    out = logits.clone()
    out[ids] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return out


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` (temperature > 0).

    A tiny temperature (``1e-38``) makes ``logits / T`` overflow to ±inf (or T itself round to
    0 in the logits' dtype), and ``softmax`` of that is NaN. Then ``(logits - max) / T`` is
    returned instead, computed in float64: the same distribution (softmax is unchanged by a
    shift), with the maximum at 0 and every other logit at a large negative value or -inf,
    i.e. the greedy limit T → 0+ (all the mass on the arg-max, shared among exact ties).
    """
    if temperature == 1.0:
        return logits
    scaled = logits / temperature
    if temperature < 1.0 and not bool(torch.isfinite(scaled.max())):
        top = logits.max()
        if bool(torch.isfinite(top)):  # non-finite logits themselves are not ours to fix
            scaled = ((logits.double() - float(top)) / temperature).to(logits.dtype)
    return scaled


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits (ties at the k-th value are kept); ``k = 0`` keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_keep_count(sorted_probs: torch.Tensor, p: float) -> int:
    """How many of ``sorted_probs`` (descending, (n,)) the top-p filter keeps: the smallest
    prefix whose mass reaches ``p``, at least 1."""
    if p >= 1.0:
        return int(sorted_probs.shape[-1])
    before = torch.cumsum(sorted_probs.double(), dim=-1) - sorted_probs.double()  # mass before i
    return max(1, int((before < p - _TOP_P_EPS).sum().item()))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of top tokens whose probability reaches ``p``."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    keep = top_p_keep_count(torch.softmax(sorted_logits.float(), dim=-1), p)
    out = torch.full_like(logits, float("-inf"))
    out[order[:keep]] = logits[order[:keep]]
    return out


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens with probability ≥ ``min_p`` × the top probability (``min_p = 0``: all)."""
    if min_p <= 0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    return logits.masked_fill(probs < min_p * probs.max(), float("-inf"))


def filter_logits(logits: torch.Tensor, params: SamplingParams,
                  context_ids: list[int] | torch.Tensor = ()) -> torch.Tensor:
    """Apply steps 1–5 of the module docstring to ``logits`` (vocab,) → filtered (vocab,).

    With temperature 0 only the repeat penalty is applied (greedy takes the arg-max).
    """
    logits = apply_repeat_penalty(logits.float(), context_ids, params.repeat_penalty)
    if params.greedy:
        return logits
    logits = apply_temperature(logits, params.temperature)
    logits = apply_top_k(logits, params.top_k)
    logits = apply_top_p(logits, params.top_p)
    return apply_min_p(logits, params.min_p)


class Sampler:
    """Picks next tokens with one seeded generator (same seed and options → same tokens)."""

    def __init__(self, params: SamplingParams, device: str | torch.device = "cpu") -> None:
        params.validate()
        self.params = params
        self.seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self.generator = torch.Generator(device="cpu").manual_seed(self.seed)

    def __call__(self, logits: torch.Tensor, context_ids: list[int] | torch.Tensor = ()) -> int:
        """Next token id from ``logits`` (vocab,) given the ids already in the context."""
        filtered = filter_logits(logits, self.params, context_ids)
        if self.params.greedy:
            return int(torch.argmax(filtered).item())
        probs = torch.softmax(filtered, dim=-1).cpu()
        return int(torch.multinomial(probs, 1, generator=self.generator).item())
