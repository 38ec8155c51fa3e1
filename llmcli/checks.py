"""Checks that keep a wrong number from being shown quietly.

* :func:`require_finite`: logits (or hidden states) holding NaN or infinity — from NaN/inf
  weights, or activations overflowing float16's range (±65504) — are an error, one line
  naming the position and the first stage of the model whose output is non-finite, instead
  of ``⁇ ⁇ ⁇``, ``null`` in JSON or a ``ValueError`` from a table. The check on the normal
  path is one ``isfinite().all()`` over the values used; the search for the first non-finite
  stage (one extra forward pass over the prompt, with a
  :class:`~llmcli.models.common.Capture`) runs only on the error path.
* :func:`check_vocab_fit`: a tokenizer whose vocabulary does not fit the model's embedding.
  A tokenizer *larger* than the embedding is refused (its upper ids have no embedding row);
  a *smaller* one (checkpoints often pad the embedding to a round size) is one warning line:
  the extra rows have no text and are never generated.

Torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from llmcli.errors import LLMCLIError

_BLOCK = re.compile(r"\.(\d+)\.|\.(\d+)$")


class NonFiniteError(LLMCLIError):
    """The model computed NaN or infinity where a number is shown (exit 1)."""


def require_finite(model, ids: Sequence[int], values, first_position: int = 0,
                   what: str = "logits") -> None:
    """Raise unless every value of ``values`` is finite.

    ``values``: ``(T, X)`` rows for positions ``first_position ..`` of ``ids``, or one row
    ``(X,)`` for position ``first_position`` (``X`` the vocabulary for logits, the hidden size
    for hidden states). ``ids`` is the whole sequence up to the last of those positions.

    Raises:
        NonFiniteError: ``non-finite logits (nan) at position N (model.layers.L.mlp first);
            ...``: the first position whose row is non-finite, the first stage of the model
            (embedding, each block's attention and MLP output, the residual stream after each
            block, the final norm, the output layer) whose output is non-finite on the
            sequence up to N, and what is likely behind it: weights holding NaN/inf (the
            first such tensor named) or float16's range.
    """
    import torch

    if bool(torch.isfinite(values).all()):
        return
    rows = values if values.dim() > 1 else values[None]
    bad = (~torch.isfinite(rows)).any(dim=-1).nonzero()
    row = int(bad[0])
    position = first_position + row
    kind = "nan" if bool(torch.isnan(rows[row]).any()) else "inf"
    where = ""
    found = first_non_finite_stage(model, list(ids))
    if found is not None:
        stage, at = found
        where = f" ({stage} first" + (f", at position {at})" if at != position else ")")
    raise NonFiniteError(f"non-finite {what} ({kind}) at position {position}{where}"
                         f"{_likely_cause(model)}")


def first_non_finite_stage(model, ids: list[int]) -> tuple[str, int] | None:
    """The first stage, in the order the model computes them, whose output on ``ids`` holds
    NaN or infinity, and the first position where it does: the stage is a name from
    :attr:`Capture.stages` (``model.embed_tokens``, ``model.layers.1.mlp``, ...), ``the
    residual stream after block i``, ``the final norm`` or ``the output layer``. None when a
    full forward pass (without the KV cache or the decoding fast path) gives finite logits."""
    import torch

    from llmcli.models.common import Capture

    capture = Capture()
    with torch.inference_mode():
        x = torch.tensor([ids], dtype=torch.long, device=model.device)
        logits = model(x, capture=capture)

    def block_of(name: str) -> int:
        m = _BLOCK.search(name)
        return int(m.group(1) or m.group(2)) if m else -1

    order: list[tuple[tuple[int, int], str, torch.Tensor]] = []
    for n, (name, t) in enumerate(capture.stages.items()):
        order.append(((block_of(name), n), name, t))
    for i, t in enumerate(capture.residuals):
        order.append(((i, 1 << 30), f"the residual stream after block {i}", t))
    order.sort(key=lambda item: item[0])
    order.append(((1 << 30, 0), "the final norm", capture.hidden_states[-1]))
    order.append(((1 << 30, 1), "the output layer", logits))
    for _, name, t in order:
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            per_position = bad.reshape(-1, *bad.shape[-2:]).any(dim=0).any(dim=-1)  # (T,)
            return name, int(per_position.nonzero()[0])
    return None


def _likely_cause(model) -> str:
    """``; tensor X holds nan`` for the first non-finite parameter, and/or float16's range."""
    import torch

    parts = []
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            kind = "nan" if bool(torch.isnan(p).any()) else "inf"
            parts.append(f"tensor {name} holds {kind}")
            break
    if model.dtype == torch.float16:
        parts.append("float16 overflows beyond ±65504: try --dtype float32 or bfloat16")
    return "; " + "; ".join(parts) if parts else ""


def check_vocab_fit(tokenizer, config, warn: Callable[[str], None] | None = None) -> None:
    """Refuse a tokenizer with more pieces than the model's ``vocab_size`` (its upper ids
    have no embedding row); warn (one line, through ``warn``) when it has fewer (the extra
    rows have no text: they are never generated and show as ``<id N>``).

    Raises:
        LLMCLIError: the tokenizer is larger than the embedding (naming its file).
    """
    n, rows = tokenizer.vocab_size, config.vocab_size
    name = getattr(tokenizer, "path", None) or "the tokenizer"
    if n > rows:
        raise LLMCLIError(f"{name}: vocabulary of {n} pieces does not fit the model's "
                          f"vocab_size {rows}")
    if n < rows and warn is not None:
        warn(f"{name}: {n} pieces for a model with vocab_size {rows}: ids {n}-{rows - 1} have "
             "no text and are never generated")
