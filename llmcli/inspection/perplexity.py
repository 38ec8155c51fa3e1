"""Perplexity of a whole text, window by window, with bounded memory.

Two scoring rules (``RULES``), both over the token ids ``t[0..N)`` of the text as the model
is fed (BOS first when the tokenizer adds one):

``sliding`` (the default; Hugging Face's "Perplexity of fixed-length models" guide,
    https://huggingface.co/docs/transformers/perplexity): windows ``[b, min(b + C, N))`` for
    ``b = 0, S, 2S, ...`` (C = ``context``, S = ``stride`` ≤ C) until one reaches the end.
    Each window scores the tokens that no earlier window scored, so every token ``t[j]``,
    ``j ≥ 1``, is scored exactly once, given the ``j - b`` tokens of its window before it:
    at least ``C - S`` and at most ``C - 1`` tokens of history. This is transformers' loss
    with the labels before the new tokens set to -100 (the guide's loop), token-weighted.
    With ``S == C`` the windows do not overlap and the first token of each window after the
    first has no history inside it, so it is not scored (as in the guide).

``llama.cpp`` (llama.cpp's ``llama-perplexity``, tools/perplexity/perplexity.cpp,
    ``perplexity()``): ``N // C`` non-overlapping chunks of exactly C tokens (the tail that
    does not fill a chunk is dropped; at least ``2 C`` tokens are needed); when the
    tokenizer adds BOS, the first token of every chunk is *replaced* by BOS (the first
    chunk's already is); only the second half of each chunk is scored: the tokens at chunk
    positions ``C//2 + 1 .. C-1``, i.e. ``C - C//2 - 1`` tokens per chunk, each given at
    least ``C//2`` tokens of history.

For both rules (with ``v_i = -log p(t_i | history)`` in nats over the n scored tokens):

* perplexity ``PPL = exp(mean v)``;
* its standard error as llama-perplexity prints it (``PPL = x +/- e``): ``e = PPL · σ /
  sqrt(n - 1)`` with ``σ² = mean(v²) - mean(v)²`` (the delta method: the standard error of
  the mean NLL, times ``d exp(m)/dm``). It treats tokens as independent, so it understates
  the uncertainty of a text whose tokens are correlated;
* nats/token ``mean v`` and its standard error ``σ / sqrt(n - 1)``;
* bits/character ``Σ v / ln 2 / characters``, where characters are those of the text that
  the scored tokens stand for (:func:`char_and_byte_counts`: the text each token adds when
  the ids are decoded in order; BOS and other control tokens stand for none). With the
  sliding rule and a tokenizer that adds BOS, every token of the text is scored and the
  characters are the whole text's. Tokenizers cut the same text into different numbers of
  tokens, but the characters (and bytes: bits/byte is given too) are the text's, so these
  compare across tokenizers.

Memory stays bounded whatever the length of the text: each window runs through the model in
pieces of at most ``batch`` tokens through the KV cache (the logits of one piece,
``batch × vocab`` float32, are alive at a time), and only one float per scored token is
kept. Pieces whose logits nothing needs (the history at the start of a window) are run with
``last_only``, so their output layer is skipped.

Family- and tokenizer-agnostic: only the model interface of :mod:`llmcli.models` (logits
through a KV cache) and the tokenizer interface of :mod:`llmcli.tokenizer` are used.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Callable, Iterator

#: The scoring rules ``llmcli perplexity --rule`` offers.
RULES = ("sliding", "llama.cpp")
#: Tokens run through the model at once (``-b``/``--batch-size``).
DEFAULT_BATCH = 512

_LN2 = math.log(2.0)

#: ``on_progress(done, total)``: scored tokens so far, scored tokens in all.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Window:
    """One forward pass over ``ids[start:end]`` that scores the tokens at absolute positions
    ``[first, end)`` (``start < first``); ``bos``: ``ids[start]`` is replaced by BOS (the
    llama.cpp rule)."""

    start: int
    end: int
    first: int
    bos: bool = False

    @property
    def scored(self) -> int:
        return self.end - self.first


def sliding_windows(n: int, context: int, stride: int) -> list[Window]:
    """The windows of the ``sliding`` rule over ``n`` tokens (see the module docstring).

    Raises:
        ValueError: ``stride`` is not in ``[1, context]`` or ``context < 2``.
    """
    if context < 2 or not 1 <= stride <= context:
        raise ValueError(f"need 2 <= context and 1 <= stride <= context (got {context}, {stride})")
    windows: list[Window] = []
    begin = prev_end = 0
    while True:
        end = min(begin + context, n)
        first = max(prev_end, begin + 1)
        if first < end:
            windows.append(Window(begin, end, first))
        prev_end = end
        if end >= n:
            return windows
        begin += stride


def llamacpp_windows(n: int, context: int, bos: bool) -> list[Window]:
    """The chunks of the ``llama.cpp`` rule over ``n`` tokens: ``n // context`` chunks, each
    scoring its positions ``context//2 + 1 ..  context-1``; ``bos``: BOS replaces each
    chunk's first token.

    Raises:
        ValueError: ``context < 4`` (no second half to score).
    """
    if context < 4:
        raise ValueError(f"the llama.cpp rule needs context >= 4 (got {context})")
    first = context // 2
    return [Window(i * context, (i + 1) * context, i * context + first + 1, bos)
            for i in range(n // context)]


def run_windows(model, ids: list[int], windows: list[Window], batch: int = DEFAULT_BATCH,
                bos_id: int | None = None, on_progress: Progress | None = None) -> Iterator[tuple]:
    """Run the model over each window and yield, piece by piece, what the scored tokens need.

    Yields ``(positions, logits, targets)``: ``positions`` a ``range`` of absolute positions
    of scored tokens, ``logits`` (P, V) float32 (row i: the model's logits predicting token
    ``positions[i]`` from its window's tokens before it), ``targets`` (P,) long, the token ids
    at those positions. Pieces come in order of position; at most ``batch`` rows at a time.

    Raises:
        llmcli.checks.NonFiniteError: non-finite logits (naming the position in the text).
        ValueError: ``batch < 1``, or a window that needs BOS when ``bos_id`` is None.
    """
    import torch

    from llmcli.checks import NonFiniteError, require_finite

    if batch < 1:
        raise ValueError(f"batch must be >= 1 (got {batch})")
    total = sum(w.scored for w in windows)
    done = 0
    device = model.device
    # inference mode around each forward, never held across a yield (a suspended generator
    # would leave it on for the caller's code, as compare once did)
    for w in windows:
        local = list(ids[w.start:w.end])
        if w.bos:
            if bos_id is None:
                raise ValueError("a window asks for BOS but the tokenizer has none")
            local[0] = bos_id
        x = torch.tensor([local], dtype=torch.long, device=device)
        a = w.first - w.start              # local index of the first scored token (>= 1)
        W = len(local)
        cache = model.new_cache(1, max_len=W)
        pos = 0
        while pos < a - 1:                 # history only: no logits needed
            stop = min(pos + batch, a - 1)
            with torch.inference_mode():
                model(x[:, pos:stop], cache=cache, last_only=True)
            pos = stop
        while pos < W - 1:                 # logits at local pos predict token pos + 1
            stop = min(pos + batch, W - 1)
            with torch.inference_mode():
                logits = model(x[:, pos:stop], cache=cache)[0].float()    # (P, V)
                try:
                    require_finite(model, local[:stop], logits, first_position=pos)
                except NonFiniteError as exc:
                    raise NonFiniteError(f"{exc} (in the window of text tokens "
                                         f"{w.start}..{w.end - 1})") from None
            yield (range(w.start + pos + 1, w.start + stop + 1), logits,
                   x[0, pos + 1:stop + 1])
            done += stop - pos
            if on_progress is not None:
                on_progress(done, total)
            pos = stop


def target_logprobs(logits, targets):
    """``log softmax(logits)[i, targets[i]]`` (P,) float64 for logits (P, V), targets (P,)."""
    import torch

    x = logits.double()
    return x.gather(1, targets[:, None])[:, 0] - torch.logsumexp(x, dim=-1)


# ----------------------------------------------------------------------------- the result
@dataclass
class PerplexityResult:
    """Totals of one perplexity run (plain data; see the module docstring for the formulas).

    ``nll_sum``/``nll2_sum``: Σ v and Σ v² over the ``scored`` tokens (nats, float64).
    ``logprobs``: each scored token's log-probability (nats, float32, in order of position;
    4 bytes per token). ``windows``: ``[{"start", "end", "first", "scored", "nll"}]``, one
    per forward pass (``nll``: that window's Σ v). ``characters``/``bytes``: what the scored
    tokens stand for; ``text_characters``: the whole text's length.
    """

    rule: str
    context: int
    stride: int | None
    tokens: int
    scored: int
    nll_sum: float
    nll2_sum: float
    characters: int
    bytes: int
    text_characters: int
    add_bos: bool
    model: str = ""
    windows: list[dict] = field(default_factory=list)
    logprobs: array = field(default_factory=lambda: array("f"))

    @property
    def nats_per_token(self) -> float:
        return self.nll_sum / self.scored

    @property
    def nats_stderr(self) -> float:
        """``σ / sqrt(n - 1)`` with σ the population standard deviation of v (llama.cpp)."""
        n = self.scored
        if n < 2:
            return float("nan")
        mean = self.nll_sum / n
        var = self.nll2_sum / n - mean * mean
        return math.sqrt(var / (n - 1)) if var > 0 else 0.0

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token)

    @property
    def perplexity_stderr(self) -> float:
        return self.perplexity * self.nats_stderr

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / _LN2

    @property
    def bits_per_character(self) -> float:
        return self.nll_sum / _LN2 / self.characters if self.characters else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll_sum / _LN2 / self.bytes if self.bytes else float("nan")

    def to_dict(self) -> dict:
        """The ``perplexity --json`` document."""
        return {"perplexity": self.perplexity, "perplexity_stderr": self.perplexity_stderr,
                "nats_per_token": self.nats_per_token, "nats_per_token_stderr": self.nats_stderr,
                "bits_per_token": self.bits_per_token,
                "bits_per_character": self.bits_per_character, "bits_per_byte": self.bits_per_byte,
                "tokens": self.tokens, "scored": self.scored, "characters": self.characters,
                "bytes": self.bytes, "text_characters": self.text_characters,
                "rule": self.rule, "context": self.context, "stride": self.stride,
                "add_bos": self.add_bos, "model": self.model, "windows": self.windows}


def char_and_byte_counts(tokenizer, ids: list[int], windows: list[Window]) -> tuple[int, int]:
    """(characters, UTF-8 bytes) of the text that the tokens the ``windows`` score stand for.

    The ids are decoded once, in order, by the tokenizer's streaming decoder
    (:meth:`~llmcli.tokenizer.Tokenizer.stream`, whose chunks add up to ``decode(ids)``
    exactly: the normaliser's changes undone, such as sentencepiece's space before each
    line, and nothing for BOS); each token is counted with the text its chunk adds (a
    character split over byte tokens counts with the token that completes it)."""
    scored = iter(windows)
    w = next(scored, None)
    stream = tokenizer.stream()
    chars = nbytes = 0
    for j, t in enumerate(ids):
        while w is not None and j >= w.end:
            w = next(scored, None)
        piece = stream.push(int(t)) if 0 <= int(t) < tokenizer.vocab_size else ""
        if w is not None and w.first <= j < w.end:
            chars += len(piece)
            nbytes += len(piece.encode("utf-8", errors="surrogatepass"))
    return chars, nbytes


def perplexity(model, tokenizer, ids: list[int], *, rule: str = "sliding", context: int,
               stride: int | None = None, batch: int = DEFAULT_BATCH, add_bos: bool = False,
               text_characters: int = 0, model_name: str = "", chunks: int | None = None,
               on_progress: Progress | None = None) -> PerplexityResult:
    """Perplexity of the token ids ``ids`` under ``model`` by ``rule`` (module docstring).

    Args:
        ids: the text's tokens as fed (BOS first when ``add_bos``).
        context: C, tokens per window (≤ the model's context).
        stride: S for ``sliding`` (default ``C // 2``); must be None for ``llama.cpp``.
        add_bos: the tokenizer adds BOS (the ``llama.cpp`` rule then puts BOS first in every
            chunk).
        batch: tokens per forward call (memory: ``batch × vocab × 4`` bytes of logits).
        chunks: ``llama.cpp`` only: score at most this many chunks, the first ones
            (llama-perplexity's ``--chunks``).

    Raises:
        ValueError: an unknown rule; fewer than 2 tokens; ``llama.cpp`` with fewer than
            ``2 × context`` tokens; invalid context/stride (the CLI checks these first and
            names the option).
    """
    n = len(ids)
    if n < 2:
        raise ValueError(f"need at least 2 tokens, got {n}")
    if rule == "sliding":
        stride = max(1, context // 2) if stride is None else stride
        windows = sliding_windows(n, context, stride)
    elif rule == "llama.cpp":
        if stride is not None:
            raise ValueError("the llama.cpp rule has no stride")
        if n < 2 * context:
            raise ValueError(f"the llama.cpp rule needs at least 2 × context = {2 * context} "
                             f"tokens, got {n}")
        windows = llamacpp_windows(n, context, add_bos and tokenizer.bos_id is not None)
        if chunks is not None:
            windows = windows[:max(1, chunks)]
    else:
        raise ValueError(f"unknown rule {rule!r} (one of {', '.join(RULES)})")
    logprobs = array("f")
    nll = nll2 = 0.0
    per_window = {w.start: 0.0 for w in windows}
    starts = iter(windows)
    current = next(starts)
    for positions, logits, targets in run_windows(model, ids, windows, batch, tokenizer.bos_id,
                                                  on_progress):
        lp = target_logprobs(logits, targets)
        v = -lp
        s, s2 = float(v.sum()), float((v * v).sum())
        nll += s
        nll2 += s2
        while positions.start >= current.end:
            current = next(starts)
        per_window[current.start] += s
        logprobs.extend(lp.float().tolist())
    chars, nbytes = char_and_byte_counts(tokenizer, ids, windows)
    return PerplexityResult(
        rule=rule, context=context, stride=stride if rule == "sliding" else None, tokens=n,
        scored=len(logprobs), nll_sum=nll, nll2_sum=nll2, characters=chars, bytes=nbytes,
        text_characters=text_characters, add_bos=add_bos, model=model_name,
        windows=[{"start": w.start, "end": w.end, "first": w.first, "scored": w.scored,
                  "nll": per_window[w.start]} for w in windows],
        logprobs=logprobs)
