"""The generation loop: prefill the prompt once, then one token per step with the KV cache.

Pure computation: it yields :class:`TokenEvent` objects and never prints. The CLI renders them.
Structure after gpt-fast's ``generate.py`` (prefill, then decode one token at a time).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from llmcli.checks import require_finite
from llmcli.errors import LLMCLIError
from llmcli.sampling import Sampler, SamplingParams
from llmcli.tokenizer import Tokenizer

#: Why generation ended.
STOP_EOS, STOP_MAX_TOKENS, STOP_STRING, STOP_CONTEXT = "eos", "max_tokens", "stop", "context"


@dataclass
class TokenEvent:
    """One generated token.

    ``text`` is the newly printable text (may be ``""`` while a UTF-8 character or a possible
    stop string is held back). ``logprob`` is the natural log of the token's probability under
    the model's distribution (softmax of the raw logits, temperature 1), and ``top_logprobs``
    the ``k`` most likely alternatives as ``(id, logprob)`` pairs, when requested.
    """

    id: int
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class GenerationStats:
    """Timings of one generation (seconds; rates in tokens/s)."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0       # prompt forward pass (the bulk of time to first token)
    first_token_seconds: float = 0.0   # time to first token: prefill + first sample
    decode_seconds: float = 0.0        # from the first token to the last
    stop_reason: str = ""
    seed: int | None = None

    @property
    def decode_tokens_per_second(self) -> float:
        n = self.generated_tokens - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else float("nan")


class Generation:
    """Iterate to generate: ``for event in Generation(...): print(event.text, end="")``.

    After the loop, :attr:`stats` holds the timings and :attr:`stats.stop_reason`. Text held
    back (a possible stop string, an incomplete UTF-8 character) is flushed into the last
    event, so the events' texts together are everything generated.

    When the model's vocabulary is larger than the tokenizer's (padded embeddings), the extra
    ids, which have no text, are never chosen: sampling and log-probabilities use the logits
    of the tokenizer's ids only.

    ``max_tokens``: the most tokens to generate; ``-1`` (any negative number) means no limit:
    until an end-of-sequence id or the context is full. ``context``: the context length to use
    (default: the model's ``max_position_embeddings``; at most that), and ``context_source``
    what to call it in the error (default: the config.json field of the model's family, e.g.
    ``n_positions`` for GPT-2; the CLI passes ``-c/--ctx-size`` when that set it).

    Raises (on construction):
        LLMCLIError: empty prompt, or a prompt longer than the context length.
        ValueError: ``context`` is not in ``[1, max_position_embeddings]``.
    Raises (while iterating):
        llmcli.checks.NonFiniteError: the logits of a step hold NaN or infinity (one line
            naming the position and the first non-finite stage of the model).
    """

    def __init__(self, model, tokenizer: Tokenizer, prompt_ids: list[int], params: SamplingParams,
                 max_tokens: int, stop: list[str] | tuple[str, ...] = (),
                 eos_ids: list[int] | None = None, top_logprobs: int = 0,
                 logprobs: bool = False, context: int | None = None,
                 context_source: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_ids = list(prompt_ids)
        self.sampler = Sampler(params)
        self.params = params
        self.max_tokens = max_tokens if max_tokens >= 0 else None   # None: no limit
        self.stop = [s for s in stop if s]
        self.eos_ids = set(eos_ids if eos_ids is not None else tokenizer.eos_ids)
        self.top_logprobs = top_logprobs
        self.want_logprobs = logprobs or top_logprobs > 0
        model_context = model.config.max_position_embeddings
        self.context = model_context if context is None else context
        if not 1 <= self.context <= model_context:
            raise ValueError(f"context {self.context} is not in [1, {model_context}]")
        field = getattr(model.config, "_field_name", lambda name: name)("max_position_embeddings")
        self.context_source = context_source or field
        self.vocab = min(model.config.vocab_size, tokenizer.vocab_size)
        self.stats = GenerationStats(prompt_tokens=len(self.prompt_ids), seed=self.sampler.seed)
        if not self.prompt_ids:
            raise LLMCLIError("the prompt is empty and no BOS token is added (--no-bos, or the "
                              "tokenizer adds none): nothing to continue")
        if len(self.prompt_ids) > self.context:
            whose = "the model's context" if self.context_source == field else "the context"
            raise LLMCLIError(f"the prompt is {len(self.prompt_ids)} tokens, longer than {whose} "
                              f"of {self.context} tokens ({self.context_source})")

    def __iter__(self) -> Iterator[TokenEvent]:
        return self._run()

    @torch.inference_mode()
    def _forward(self, ids: list[int], cache) -> torch.Tensor:
        """Logits ``(V,)`` after feeding ``ids`` at the cache's next positions."""
        x = torch.tensor([ids], device=self.model.device)                       # (1, T)
        return self.model(x, cache=cache, last_only=True)[0, -1, :self.vocab]   # (V,)

    @torch.inference_mode()
    def _choose(self, logits: torch.Tensor, context_ids: list[int]) -> TokenEvent:
        event = TokenEvent(self.sampler(logits, context_ids), "")
        if self.want_logprobs:
            self._logprobs(event, logits)
        return event

    # inference mode is entered per step, not around the loop: a generator suspended at
    # ``yield`` must not leave it switched on in the caller's code.
    def _run(self) -> Iterator[TokenEvent]:
        stats = self.stats
        if self.max_tokens == 0:
            stats.stop_reason = STOP_MAX_TOKENS
            return
        wanted = self.context if self.max_tokens is None else len(self.prompt_ids) + self.max_tokens
        with torch.inference_mode():
            cache = self.model.new_cache(batch=1, max_len=min(self.context, wanted))
        decoder = self.tokenizer.stream()
        decoder.prime(self.prompt_ids)
        context_ids = list(self.prompt_ids)
        pending = ""  # decoded text held back because it may start a stop string

        t0 = time.perf_counter()
        logits = self._forward(self.prompt_ids, cache)                          # prefill
        require_finite(self.model, context_ids, logits, len(context_ids) - 1)
        stats.prefill_seconds = time.perf_counter() - t0
        t_first = 0.0
        while True:
            event = self._choose(logits, context_ids)
            token = event.id
            stats.generated_tokens += 1
            if stats.generated_tokens == 1:
                t_first = time.perf_counter()
                stats.first_token_seconds = t_first - t0
            context_ids.append(token)
            if token in self.eos_ids:
                stats.stop_reason = STOP_EOS
                event.text = pending + decoder.flush()
                pending = ""
            else:
                pending += decoder.push(token)
                hit = self._find_stop(pending)
                if hit is not None:
                    event.text, pending = pending[:hit], ""
                    stats.stop_reason = STOP_STRING
                else:
                    keep = self._stop_prefix_len(pending)
                    event.text, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
                    if self.max_tokens is not None and stats.generated_tokens >= self.max_tokens:
                        stats.stop_reason = STOP_MAX_TOKENS
                    elif cache.length >= self.context:
                        stats.stop_reason = STOP_CONTEXT
                    if stats.stop_reason:
                        event.text += pending + decoder.flush()
                        pending = ""
            if stats.stop_reason:
                stats.decode_seconds = time.perf_counter() - t_first
                yield event
                return
            stats.decode_seconds = time.perf_counter() - t_first  # so far (read after a Ctrl-C)
            yield event
            logits = self._forward([token], cache)                              # decode one
            require_finite(self.model, context_ids, logits, len(context_ids) - 1)
    def _logprobs(self, event: TokenEvent, logits: torch.Tensor) -> None:
        logp = torch.log_softmax(logits.float(), dim=-1)                       # (V,)
        event.logprob = float(logp[event.id])
        if self.top_logprobs > 0:
            values, ids = torch.topk(logp, min(self.top_logprobs, logp.shape[-1]))
            event.top_logprobs = [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist())]

    def _find_stop(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


def perplexity(nats: float, tokens: int) -> float:
    """``exp(nats / tokens)``."""
    return math.exp(nats / tokens) if tokens else float("nan")
