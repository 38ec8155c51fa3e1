"""Feature attribution: how much each input token contributed to the next-token prediction.

Definitions follow inseq (Sarti et al. 2023, "Inseq: An Interpretability Toolkit for Sequence
Generation Models"), which runs captum's methods on the input embeddings of a Hugging Face
model; llmcli computes the same numbers with its own models (no captum, no inseq), through a
forward hook on the token-embedding module, so every family works alike.

Notation: ids ``(T,)`` the input tokens; ``x`` ``(T, D)`` their input embeddings (the token
embedding module's output: ``model.embed_tokens``, ``transformer.wte``, ``gpt_neox.embed_in``;
for GPT-2 the position embedding is added after it, as with transformers' ``inputs_embeds``);
``f(x)`` a scalar computed from the logits ``z`` ``(V,)`` at the last position (the prediction
of the token after the text):

* ``logprob`` (default): ``log softmax(z)[target]`` (inseq: ``attributed_fn="probability"``
  with ``logprob=True``); ``probability``: ``softmax(z)[target]`` (inseq's default
  ``"probability"``); ``logit``: ``z[target]`` (inseq's ``"logit"``).
* with a contrast token (contrastive attribution, Yin & Neubig 2022): ``g(target) -
  g(contrast)`` for the chosen ``g``; with ``logit`` (the default when there is a contrast)
  this is inseq's ``contrast_logits_diff``, the function of Yin & Neubig; with
  ``probability``/``logprob`` it is inseq's ``contrast_prob_diff`` (``logprob=True``).

Methods, each giving per input token a signed ``value`` and inseq's ``score``:

* ``input_x_gradient`` (Shrikumar et al. 2016; captum's ``InputXGradient``): the elementwise
  product ``a_i = x_i ⊙ ∂f/∂x_i`` ``(D,)``. ``value_i = Σ_d a_i,d`` (signed: its sum over
  tokens is the first-order Taylor estimate of ``f(x) - f(0)``). ``score_i`` is inseq's
  default aggregation of a "granular" attribution: the L2 norm over the embedding dimension
  (``vnorm``), then L1 normalisation over the input tokens (``F.normalize(p=1, dim=0)``):
  ``score_i = ‖a_i‖₂ / Σ_j ‖a_j‖₂``, ≥ 0, summing to 1 (so the sign is lost there).
* ``saliency`` (Simonyan et al. 2014; captum's ``Saliency``, ``abs=True``): ``|∂f/∂x_i|``,
  aggregated as above: ``score_i = ‖∂f/∂x_i‖₂ / Σ_j ‖∂f/∂x_j‖₂``; ``value_i = ‖∂f/∂x_i‖₂``
  (unsigned; there is no sign to keep).
* ``occlusion`` (Zeiler & Fergus 2014; captum's ``Occlusion`` with inseq's sliding window of
  one token × the whole embedding): "leave one token out" is ``value_i = f(x) - f(x with
  x_i replaced by the baseline b_i)``, signed (positive: the token raised ``f``); inseq's
  ``score_i = |value_i|`` (inseq takes the absolute value and does not normalise coarse
  attributions). Baselines: ``unk`` (inseq's: the embedding of the tokenizer's unknown
  token; an EOS token of the input is its own baseline, as inseq's default
  ``include_eos_baseline=False``, so its value is 0; a tokenizer without an unknown token
  falls back to ``zero``, with a note), ``zero`` (the zero vector, captum's default), or
  ``remove`` (the token is deleted from the sequence and the later tokens move up one
  position: what "leave one out" means literally; not an inseq option).

All numbers are computed in the model's dtype and reported in float32/float64. Everything
returned is plain Python data (:class:`Attribution`, ``to_dict()`` the JSON document).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from llmcli.checks import require_finite
from llmcli.errors import LLMCLIError, UsageError

#: Methods (inseq's identifiers).
METHODS = ("input_x_gradient", "occlusion", "saliency")
#: Attributed functions of the target (see the module docstring).
FUNCTIONS = ("logprob", "probability", "logit")
#: Occlusion baselines.
BASELINES = ("unk", "zero", "remove")
#: Occlusion variants run in one batched forward.
OCCLUSION_BATCH = 16


# ----------------------------------------------------------------------------- results
@dataclass
class Attribution:
    """The attribution of one prediction.

    tokens: one dict per input token ``{"position", "id", "piece", "text", "value", "score"}``
        (``text`` what the token adds to the text, ``""`` for special tokens; ``value``
        signed, ``score`` inseq's number; see the module docstring).
    target, contrast: ``{"id", "piece", "text", "logit", "prob", "logprob", "rank"}`` of the
        next-token distribution at the last position (``rank`` 1 = the arg-max); ``contrast``
        is ``None`` without one.
    f: the attributed function's value on the unchanged input.
    function: ``"logprob"``, ``"probability"`` or ``"logit"``; ``inseq_fn`` inseq's name
        of the same function (``"probability"``, ``"contrast_logits_diff"``...).
    aggregation: how ``score`` was made from the raw attribution, in words.
    notes: anything the reader should know (a fallback baseline...).
    """

    method: str
    function: str
    inseq_fn: str
    f: float
    f_label: str
    tokens: list[dict]
    target: dict
    contrast: dict | None
    aggregation: str
    value_meaning: str
    baseline: str | None = None
    default_target: bool = True
    notes: list[str] = field(default_factory=list)
    family: str = ""

    @property
    def values(self) -> list[float]:
        return [t["value"] for t in self.tokens]

    @property
    def scores(self) -> list[float]:
        return [t["score"] for t in self.tokens]

    def ranked(self) -> list[dict]:
        """The tokens by decreasing ``score``, then by decreasing ``|value|``, then position."""
        return sorted(self.tokens, key=lambda t: (-t["score"], -abs(t["value"]), t["position"]))

    def to_dict(self) -> dict:
        return {"method": self.method, "attributed_fn": self.function, "inseq_attributed_fn": self.inseq_fn,
                "f": self.f, "f_label": self.f_label, "target": self.target, "contrast": self.contrast,
                "default_target": self.default_target, "baseline": self.baseline,
                "aggregation": self.aggregation, "value_meaning": self.value_meaning,
                "tokens": self.tokens, "sum_values": math.fsum(self.values),
                "ranking": [t["position"] for t in self.ranked()], "notes": self.notes,
                "family": self.family}


# ----------------------------------------------------------------------------- target tokens
def resolve_token(tokenizer, ids: list[int], token: str, option: str, vocab_rows: int) -> int:
    """The id of ``token`` as the next token after ``ids``.

    Tried in order: the one token that ``token`` adds when appended to the text (``encode(text
    + token)`` is ``ids`` plus one id: so ``" Paris"`` finds ``▁Paris`` or ``ĠParis``); a
    vocabulary piece or special-token string as stored (``"▁Paris"``, ``"<0x0A>"``,
    ``"<|im_end|>"``); ``token`` encoded alone without special tokens, when that gives one id.

    Raises:
        UsageError: none of these gives exactly one token (one line naming ``option`` and
            what ``token`` splits into).
    """
    if token == "":
        raise UsageError(f"{option}: empty; give one token (e.g. {option} ' the')")
    found = None
    split = tokenizer.encode(token, add_bos=False)
    decoded = tokenizer.decode(ids, skip_special=False) if ids else ""
    try:
        base = tokenizer.encode(decoded, add_bos=False)
        with_token = tokenizer.encode(decoded + token, add_bos=False)
        if with_token[:len(base)] == base:
            split = with_token[len(base):]          # what the token adds after the text
            if len(split) == 1:
                found = split[0]
    except LLMCLIError:
        pass
    if found is None:
        found = tokenizer.token_to_id(token)
    if found is None:
        alone = tokenizer.encode(token, add_bos=False)
        if len(alone) == 1:
            found = alone[0]
    if found is None:
        pieces = ", ".join(repr(tokenizer.piece(i)) for i in split[:6]) + (", ..." if len(split) > 6 else "")
        raise UsageError(f"{option}: {token!r} is {len(split)} tokens after the text ({pieces}), not "
                         "one; give a single token (a vocabulary piece as stored also works)"
                         if split else f"{option}: {token!r} gives no token")
    text_ids = int(found)
    if not 0 <= text_ids < vocab_rows:
        raise UsageError(f"{option}: token id {text_ids} is outside the model's vocabulary")
    return int(text_ids)


# ----------------------------------------------------------------------------- the model
def embedding_module(model) -> torch.nn.Module:
    """The module whose output is the input embeddings ``(B, T, D)`` (named by the family's
    ``EMBEDDING_NAME``)."""
    return model.get_submodule(model.EMBEDDING_NAME.rsplit(".", 1)[0])


@contextmanager
def embeddings_replaced(model, embeds: torch.Tensor) -> Iterator[None]:
    """While active, the token embedding module returns ``embeds`` ``(B, T, D)`` instead of
    looking up the ids (a forward hook; the model's own code is unchanged): the ids given to
    the model then only set the shape. Autograd flows into ``embeds``."""
    handle = embedding_module(model).register_forward_hook(lambda module, args, out: embeds)
    try:
        yield
    finally:
        handle.remove()


def _last_logits(model, ids: torch.Tensor, embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Logits at the last position, ``(B, V)`` float32, of ids ``(B, T)`` (with ``embeds``
    ``(B, T, D)`` replacing their embeddings)."""
    if embeds is None:
        return model(ids, last_only=True)[:, -1].float()
    with embeddings_replaced(model, embeds):
        return model(ids, last_only=True)[:, -1].float()


def _fn(name: str) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``g(logits (B, V) float32, id) → (B,)``."""
    if name == "logprob":
        return lambda z, i: torch.log_softmax(z, dim=-1)[:, i]
    if name == "probability":
        return lambda z, i: torch.softmax(z, dim=-1)[:, i]
    return lambda z, i: z[:, i]


def _inseq_name(function: str, contrast: bool) -> str:
    if contrast:
        return {"logit": "contrast_logits_diff", "probability": "contrast_prob_diff",
                "logprob": "contrast_prob_diff (logprob=True)"}[function]
    return {"logit": "logit", "probability": "probability",
            "logprob": "probability (logprob=True)"}[function]


def _token_info(tokenizer, z: torch.Tensor, token_id: int) -> dict:
    from llmcli.inspection.tensors import piece_of, token_text

    z64 = z.double()
    logp = torch.log_softmax(z64, dim=-1)
    return {"id": token_id, "piece": piece_of(tokenizer, token_id), "text": token_text(tokenizer, token_id),
            "logit": float(z[token_id]), "prob": math.exp(float(logp[token_id])),
            "logprob": float(logp[token_id]), "rank": int((z64 > z64[token_id]).sum()) + 1}


# ----------------------------------------------------------------------------- attribute
def attribute(model, tokenizer, ids: list[int], *, method: str = "input_x_gradient",
              target: int | None = None, contrast: int | None = None, function: str | None = None,
              baseline: str = "unk", batch_size: int = OCCLUSION_BATCH) -> Attribution:
    """Attribute the prediction after ``ids`` to each token of ``ids``.

    Args:
        model: a :class:`llmcli.models.common.CausalLM`.
        tokenizer: its tokenizer (pieces, unknown/EOS ids).
        ids: the input tokens (T ≥ 1).
        method: one of :data:`METHODS`.
        target: the token id whose function is attributed; ``None``: the model's arg-max.
        contrast: a second token id for contrastive attribution (``g(target) - g(contrast)``).
        function: one of :data:`FUNCTIONS`; ``None``: ``logprob``, or ``logit`` with a contrast.
        baseline: occlusion's baseline, one of :data:`BASELINES`.
        batch_size: occluded variants per forward (memory: ``batch_size × T`` activations).

    Raises:
        UsageError: an unknown method, function or baseline; ``remove`` on a single token;
            a contrast equal to the target.
        llmcli.checks.NonFiniteError: the logits are NaN or infinite.
    """
    if method not in METHODS:
        raise UsageError(f"--method: {method!r} is not one of {', '.join(METHODS)}")
    function = function or ("logit" if contrast is not None else "logprob")
    if function not in FUNCTIONS:
        raise UsageError(f"--attributed-fn: {function!r} is not one of {', '.join(FUNCTIONS)}")
    if baseline not in BASELINES:
        raise UsageError(f"--baseline: {baseline!r} is not one of {', '.join(BASELINES)}")
    if not ids:
        raise UsageError("TEXT: gives no tokens: nothing to attribute")
    device = model.device
    x_ids = torch.tensor([ids], dtype=torch.long, device=device)                    # (1, T)
    with torch.inference_mode():
        z = _last_logits(model, x_ids)[0]                                          # (V,)
    require_finite(model, ids, z, first_position=len(ids) - 1)
    default_target = target is None
    if target is None:
        target = int(z.argmax())
    if contrast is not None and contrast == target:
        raise UsageError("--contrast: the same token as the target; contrastive attribution needs "
                         "two different tokens")
    g = _fn(function)

    def f_of(logits: torch.Tensor) -> torch.Tensor:                                 # (B, V) → (B,)
        out = g(logits, target)
        return out - g(logits, contrast) if contrast is not None else out

    f0 = float(f_of(z[None].float())[0])
    notes: list[str] = []
    used_baseline = None
    if method in ("input_x_gradient", "saliency"):
        values, scores, aggregation, meaning = _gradient_method(model, x_ids, f_of, method)
    else:
        used_baseline, values, scores, note = _occlusion(model, tokenizer, ids, x_ids, f_of, f0,
                                                         baseline, batch_size)
        if note:
            notes.append(note)
        aggregation = "inseq: |value| (absolute value, not normalised)"
        meaning = ("f(x) - f(x with the token left out): > 0 the token raised f, < 0 it lowered f"
                   + (" (the token removed, later tokens moved up)" if used_baseline == "remove"
                      else f" (its embedding replaced by the {used_baseline} baseline)"))
    from llmcli.inspection.tensors import piece_of, token_text

    tokens = [{"position": i, "id": t, "piece": piece_of(tokenizer, t), "text": token_text(tokenizer, t),
               "value": float(v), "score": float(s)}
              for i, (t, v, s) in enumerate(zip(ids, values, scores))]
    label = _f_label(function, contrast is not None)
    return Attribution(method=method, function=function, inseq_fn=_inseq_name(function, contrast is not None),
                       f=f0, f_label=label, tokens=tokens, target=_token_info(tokenizer, z, target),
                       contrast=None if contrast is None else _token_info(tokenizer, z, contrast),
                       aggregation=aggregation, value_meaning=meaning, baseline=used_baseline,
                       default_target=default_target, notes=notes,
                       family=getattr(model.config, "family", ""))


def _f_label(function: str, contrastive: bool) -> str:
    g = {"logprob": "log p({})", "probability": "p({})", "logit": "logit({})"}[function]
    return f"{g.format('target')} - {g.format('contrast')}" if contrastive else g.format("target")


def _gradient_method(model, x_ids: torch.Tensor, f_of, method: str):
    """``(values, scores, aggregation, meaning)`` of input × gradient or saliency."""
    with torch.inference_mode(False), torch.enable_grad():
        base = embedding_module(model)(x_ids).detach()                             # (1, T, D)
        embeds = base.clone().requires_grad_(True)
        out = f_of(_last_logits(model, x_ids, embeds))                             # (1,)
        (grad,) = torch.autograd.grad(out.sum(), embeds)                           # (1, T, D)
    grad = grad[0].double()
    if method == "input_x_gradient":
        attr = base[0].double() * grad                                             # (T, D)
        values = attr.sum(dim=-1)
        aggregation = ("inseq: L2 norm of x_i ⊙ ∂f/∂x_i over the embedding dimension, "
                       "divided by the sum over tokens (the scores sum to 1)")
        meaning = ("Σ_d x_i,d · ∂f/∂x_i,d: > 0 the token's embedding pushes f up, < 0 down "
                   "(first-order estimate)")
    else:
        attr = grad.abs()
        values = attr.norm(dim=-1)
        aggregation = ("inseq: L2 norm of |∂f/∂x_i| over the embedding dimension, divided by "
                       "the sum over tokens (the scores sum to 1)")
        meaning = "‖∂f/∂x_i‖₂: how sensitive f is to the token's embedding (unsigned)"
    norms = attr.norm(dim=-1)                                                       # (T,)
    total = float(norms.sum())
    scores = (norms / total) if total > 0 else norms
    return values.tolist(), scores.tolist(), aggregation, meaning


def _occlusion(model, tokenizer, ids: list[int], x_ids: torch.Tensor, f_of, f0: float,
               baseline: str, batch_size: int):
    """``(baseline used, values, scores, note)`` of leaving each token out."""
    T = len(ids)
    note = None
    if baseline == "remove" and T < 2:
        raise UsageError("--baseline remove: the text has one token; removing it leaves nothing "
                         "to run the model on (use --baseline unk or zero)")
    if baseline == "unk" and tokenizer.unk_id is None:
        baseline = "zero"
        note = "the tokenizer has no unknown token: occlusion used the zero vector as baseline"
    values: list[float] = []
    with torch.inference_mode():
        embeds = embedding_module(model)(x_ids)                                    # (1, T, D)
        if baseline == "unk":
            unk = embedding_module(model)(torch.tensor([tokenizer.unk_id], device=x_ids.device))[0]
        for start in range(0, T, batch_size):
            rows = list(range(start, min(T, start + batch_size)))
            if baseline == "remove":
                keep = [[j for j in range(T) if j != i] for i in rows]
                batch_ids = torch.tensor([[ids[j] for j in k] for k in keep], device=x_ids.device)
                logits = _last_logits(model, batch_ids)
            else:
                batch = embeds.expand(len(rows), T, embeds.shape[-1]).clone()     # (B, T, D)
                for b, i in enumerate(rows):
                    if baseline == "zero":
                        batch[b, i] = 0
                    elif ids[i] != tokenizer.eos_id:     # inseq: EOS is its own baseline
                        batch[b, i] = unk
                logits = _last_logits(model, x_ids.expand(len(rows), T), batch)
            if not bool(torch.isfinite(logits).all()):
                raise LLMCLIError(f"occlusion: non-finite logits with token {rows[0]}.. left out")
            values.extend((f0 - f_of(logits).double()).tolist())
    return baseline, values, [abs(v) for v in values], note
