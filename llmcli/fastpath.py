"""The one-token decoding fast path: the same logits as a family's readable ``forward``, in
fewer operations. Generation spends nearly all its time here, one token per step.

:func:`install` (called by :func:`llmcli.weights.load_model`) does two things:

* It lays the weights out for fast inference, values and ``state_dict()`` names unchanged:
  every matrix is stored transposed, (in, out) row-major, and exposed as an (out, in) view,
  so ``F.linear(x, W)`` multiplies ``x @ Wᵀ`` with ``Wᵀ`` contiguous: on CPU this BLAS
  layout is about 2× faster for one-token decoding than the (out, in) layout checkpoints
  store (measured in ``benchmarks/bench_generate.py``). A family's q/k/v weights and its
  gate/up weights are concatenated into one matrix each, the original parameters becoming
  views of it (one matmul instead of three, and two). Memory does not grow.
* For the families in :data:`SERVED` (pre-norm RMSNorm, RoPE on the whole head, SwiGLU:
  Llama, Mistral, Qwen2, Qwen3) it sets ``model.fast_decoder`` to a :class:`LlamaStyleDecoder`,
  which :class:`~llmcli.models.common.CausalLM` calls for every one-token, cached,
  uncaptured inference step. Other families run their readable ``forward``.

Training keeps the separate, checkpoint-layout matrices (it never calls :func:`install`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llmcli.models.common import SDPA_GQA, rms_norm

#: Families whose one-token step :class:`LlamaStyleDecoder` computes.
SERVED = {"llama", "mistral", "qwen2", "qwen3"}


def install(model) -> None:
    """Relayout ``model``'s weights and attach its fast decoder when its family is served
    (see the module docstring). Call it on a loaded model in eval mode, and again after
    replacing parameters (``load_state_dict`` copies into these tensors and keeps them valid)."""
    relayout_linears(model)
    onednn_linears(model)
    model.fast_decoder = LlamaStyleDecoder(model) if model.config.family in SERVED else None


# ----------------------------------------------------------------------------- many rows
#: From this many rows (tokens × batch) a float32 CPU ``nn.Linear`` runs through oneDNN's
#: matmul instead of the BLAS sgemm torch calls: on the AMD EPYC of the benchmarks MKL takes
#: a slower code path (87 vs 196 GFLOP/s at 512 rows, one thread; 1.4× at 16 rows; no gain
#: at 1-4 rows, where the decoder's one-row matmuls stay on BLAS). Prefill and chunks gain.
ONEDNN_MIN_ROWS = 16


def _onednn_op():
    """oneDNN's ``mkldnn::_linear_pointwise`` if this torch has it and it runs, else None."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        w = torch.ones(3, 2)
        if not torch.equal(op(torch.ones(ONEDNN_MIN_ROWS, 2), w, None, "none", [], ""),
                           torch.full((ONEDNN_MIN_ROWS, 3), 2.0)):
            return None
    except (RuntimeError, NotImplementedError):
        return None
    return op


def onednn_linears(model) -> None:
    """Make every plain float32 CPU ``nn.Linear`` of ``model`` compute inputs of at least
    :data:`ONEDNN_MIN_ROWS` rows with oneDNN (same maths, rounding of a different
    summation order), unless autograd needs the graph (gradients through the inputs, as
    ``attribute`` takes them, use ``F.linear``)."""
    if model.dtype != torch.float32 or model.device.type != "cpu":
        return
    op = _onednn_op()
    if op is None:
        return
    for module in model.modules():
        # a dense (in, out) matrix only: oneDNN runs a slow reference kernel on the
        # strided slices of the fused q/k/v and gate/up storage
        if type(module) is nn.Linear and module.weight.t().is_contiguous():
            module.forward = _OneDNNForward(module, op)


class _OneDNNForward:
    """``nn.Linear.forward`` for :func:`onednn_linears` (x (…, in) → (…, out))."""

    def __init__(self, module: nn.Linear, op) -> None:
        self.module, self.op = module, op

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if (x.numel() < ONEDNN_MIN_ROWS * x.shape[-1] or x.dtype != torch.float32
                or (torch.is_grad_enabled() and (x.requires_grad or m.weight.requires_grad))):
            return F.linear(x, m.weight, m.bias)
        return self.op(x.contiguous(), m.weight, m.bias, "none", [], "")


# ----------------------------------------------------------------------------- relayout
def _relayout(weight: torch.Tensor) -> nn.Parameter:
    """An (out, in) view of (in, out) row-major storage holding ``weight``'s values."""
    return nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=False)


@torch.no_grad()
def fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate ``linears``' weights (each (n_i, D)) into one (Σn, D) matrix in the fast
    layout, and their biases into one (Σn,) vector; each Linear's weight and bias become
    views of them. Returns ``(weight (Σn, D), bias or None)``."""
    first = linears[0].weight
    rows = sum(m.weight.shape[0] for m in linears)
    # the (in, out) storage filled in place: no concatenated copy beside it (peak memory)
    weight = torch.empty(first.shape[1], rows, dtype=first.dtype, device=first.device).t()
    bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
    row = 0
    for m in linears:
        n = m.weight.shape[0]
        weight[row:row + n].copy_(m.weight)
        m.weight = nn.Parameter(weight[row:row + n], requires_grad=False)
        if bias is not None:
            m.bias = nn.Parameter(bias[row:row + n], requires_grad=False)
        row += n
    return weight, bias


@torch.no_grad()
def relayout_linears(model) -> None:
    """Store every ``nn.Linear`` weight of ``model`` in the fast layout (see the module
    docstring); a tied embedding follows its output matrix. The q/k/v and gate/up
    projections of the served families are fused (:func:`fuse`) and the fused matrices kept
    on the modules as ``qkv_weight``, ``qkv_bias``, ``gate_up_weight``, ``gate_up_bias``."""
    embed_module = next(m for m in model.modules()
                        if isinstance(m, nn.Embedding) and m.weight is model.input_embeddings())
    tied = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight is embed_module.weight]
    if model.config.family in SERVED:
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            if getattr(model, "quantization", None):    # QuantLinear modules (llmcli.quant)
                a.qkv_weight, a.qkv_bias = _fuse_quant([a.q_proj, a.k_proj, a.v_proj]), None
                m.gate_up_weight, m.gate_up_bias = _fuse_quant([m.gate_proj, m.up_proj]), None
                continue
            a.qkv_weight, a.qkv_bias = fuse([a.q_proj, a.k_proj, a.v_proj])
            m.gate_up_weight, m.gate_up_bias = fuse([m.gate_proj, m.up_proj])
    for module in model.modules():
        # contiguous = the checkpoint's (out, in) layout; views made above are not
        if isinstance(module, nn.Linear) and module.weight.is_contiguous():
            module.weight = _relayout(module.weight)
    if tied:
        embed_module.weight = tied[0].weight


def _fuse_quant(linears):
    """The fused matrix of quantized ``linears`` (:func:`llmcli.quant.fuse`: one kernel
    call, parts become views, bias included), or, when they cannot share packed rows or some
    are float, a :class:`_Concat` of them. Either has ``mm(x)`` (B, in) → (B, Σout) with the
    biases added."""
    from llmcli.quant import QuantLinear, fuse as fuse_quant

    fused = fuse_quant(linears) if all(isinstance(m, QuantLinear) for m in linears) else None
    return _Biased(fused) if fused is not None else _Concat(linears)


class _Biased:
    """A linear module seen by the decoder as ``mm(x)`` = ``x @ Wᵀ + b`` on (B, in) rows."""

    def __init__(self, module) -> None:
        self.module = module

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        out = m.mm(x) if hasattr(m, "mm") else F.linear(x, m.weight)
        return out if m.bias is None else out.add_(m.bias)


class _Concat:
    """Linear modules applied to the same rows, outputs concatenated: ``mm(x)`` (B, Σout)."""

    def __init__(self, modules) -> None:
        self.parts = [_Biased(m) for m in modules]

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.mm(x) for p in self.parts], dim=-1)


def _operand(module):
    """What :func:`_matmul` takes for a linear ``module``: its (in, out) matrix (a view of
    the fast layout), or a :class:`_Biased` wrapper when it is quantized."""
    return _Biased(module) if hasattr(module, "mm") else module.weight.data.t()


# ----------------------------------------------------------------------------- decoder
def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` (…, Dh) with its first half negated, so that ``rotate_half(x)·sin`` equals
    ``roll(x, Dh/2)·signed_sin(sin)`` exactly (negation is exact): one roll replaces
    rotate_half's chunk, neg and cat."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


class _Layer(NamedTuple):
    """One block's tensors as :class:`LlamaStyleDecoder` reads them: norms' weights and eps,
    the (in, out) matrices with their biases (None when absent), the per-head q/k norm
    weights (Qwen3) and the sliding window (Mistral, Qwen2), or None."""

    norm1_weight: torch.Tensor
    norm1_eps: float
    qkv_t: torch.Tensor           # (D, (H+2K)·Dh)
    qkv_bias: torch.Tensor | None
    q_norm_weight: torch.Tensor | None    # (Dh,)
    k_norm_weight: torch.Tensor | None    # (Dh,)
    qk_norm_eps: float
    window: int | None
    o_t: torch.Tensor             # (H·Dh, D)
    o_bias: torch.Tensor | None
    norm2_weight: torch.Tensor
    norm2_eps: float
    gate_up_t: torch.Tensor       # (D, 2F)
    gate_up_bias: torch.Tensor | None
    down_t: torch.Tensor          # (F, D)
    down_bias: torch.Tensor | None


def _matmul(x: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor | None = None,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + x @ w_t + bias`` for 2-D ``x`` (B, in) and ``w_t`` (in, out), in as few
    operations as possible (``addmm`` adds the residual inside the matrix multiply). A
    quantized ``w_t`` (an object with ``mm``, bias included) is called instead."""
    if not isinstance(w_t, torch.Tensor):
        out = w_t.mm(x)
        return out if residual is None else out.add_(residual)
    if residual is None:
        return torch.mm(x, w_t) if bias is None else torch.addmm(bias, x, w_t)
    out = torch.addmm(residual, x, w_t)
    return out if bias is None else out.add_(bias)


def _data(p):
    return None if p is None else p.data


def _t(w):
    """A fused float matrix's (in, out) view, or a quantized one as it is."""
    return w.t() if isinstance(w, torch.Tensor) else w


def _bias(module):
    """A float module's bias (added by :func:`_matmul`); None for a quantized one, whose
    ``mm`` adds it."""
    return None if hasattr(module, "mm") else _data(module.bias)


class LlamaStyleDecoder:
    """``model(input_ids (B, 1), cache)`` → logits (B, 1, V) for Llama-style families.

    The decoding step written as straight-line tensor code on (B, D) rows: the same
    arithmetic as the readable path (so the same logits to rounding), in fewer operations:
    fused q/k/v and gate/up matmuls straight on the (in, out) storage (``torch.mm``/``addmm``,
    the residual added inside the matmul), RoPE applied to the q, k and v heads together
    with one ``roll`` and one ``addcmul`` (the v rows have cos 1 and sin 0), a position's
    keys and values stored with one copy (:class:`~llmcli.models.common.KVCache` keeps them
    in one tensor), no per-step tables (made once per cache, :meth:`rope_rows`), and no
    module calls or attribute look-ups (each layer's tensors are gathered once here). Built
    by :func:`install` after :func:`relayout_linears`.
    """

    def __init__(self, model) -> None:
        self.model = model
        a0 = model.model.layers[0].self_attn
        self.heads = (a0.n_heads, a0.n_kv, a0.head_dim)
        self.layers: list[_Layer] = []
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            n1, n2 = layer.input_layernorm, layer.post_attention_layernorm
            q_norm, k_norm = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
            self.layers.append(_Layer(
                n1.weight.data, n1.eps, _t(a.qkv_weight), a.qkv_bias,
                _data(getattr(q_norm, "weight", None)), _data(getattr(k_norm, "weight", None)),
                q_norm.eps if q_norm is not None else 0.0,
                getattr(a, "sliding_window", None), _operand(a.o_proj), _bias(a.o_proj),
                n2.weight.data, n2.eps, _t(m.gate_up_weight), m.gate_up_bias,
                _operand(m.down_proj), _bias(m.down_proj)))
        self.embed = model.input_embeddings().data
        self.lm_head_t = _operand(model.lm_head)
        self.final_norm_weight, self.final_norm_eps = model.model.norm.weight.data, model.model.norm.eps

    def rope_rows(self, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE's tables for one cache, made on its first step: every position's cos and
        signed sin (:func:`signed_sin`) ``(L, 2, 1, 1, Dh)``, and the (2, H+2K, 1, Dh) rows a
        step multiplies its q, k and v heads by (each step writes its position's values into
        the q and k rows; the v rows stay cos 1, sin 0)."""
        H, K, Dh = self.heads
        table = torch.stack((cache.cos, signed_sin(cache.sin)), dim=1)[:, :, None, None]
        rows = torch.zeros(2, H + 2 * K, 1, Dh, dtype=table.dtype, device=table.device)
        rows[0, H + K:] = 1
        return table, rows

    def __call__(self, input_ids: torch.Tensor, cache) -> torch.Tensor:
        B = input_ids.shape[0]
        pos = cache.length
        if pos + 1 > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; {pos + 1} needed")
        H, K, Dh = self.heads
        tables = getattr(cache, "rope_rows", None)
        if tables is None:
            tables = cache.rope_rows = self.rope_rows(cache)
        cos_sin, rows = tables                              # (L, 2, 1, 1, Dh), (2, H+2K, 1, Dh)
        rows[:, :H + K].copy_(cos_sin[pos])                 # this position's cos, signed sin
        cos, sin = rows[0], rows[1]                         # (H+2K, 1, Dh) each
        x = F.embedding(input_ids[:, 0], self.embed)                               # (B, D)
        for i, layer in enumerate(self.layers):
            qkv = _matmul(rms_norm(x, layer.norm1_weight, layer.norm1_eps), layer.qkv_t,
                          layer.qkv_bias).view(B, H + 2 * K, 1, Dh)                # (B, H+2K, 1, Dh)
            if layer.q_norm_weight is not None:                                    # Qwen3
                qkv = torch.cat((rms_norm(qkv[:, :H], layer.q_norm_weight, layer.qk_norm_eps),
                                 rms_norm(qkv[:, H:H + K], layer.k_norm_weight, layer.qk_norm_eps),
                                 qkv[:, H + K:]), dim=1)
            # RoPE on q and k; the value rows have cos 1 and sin 0, so they pass unchanged
            qkv = torch.addcmul(qkv * cos, qkv.roll(Dh // 2, dims=-1), sin)
            kv_cache = cache.kv[i]                                                  # (B, 2K, L, Dh)
            kv_cache.narrow(2, pos, 1).copy_(qkv[:, H:])                            # k and v at once
            first = 0 if layer.window is None else max(0, pos + 1 - layer.window)
            kv = kv_cache.narrow(2, first, pos + 1 - first)                         # (B, 2K, S, Dh)
            q, keys, values = qkv[:, :H], kv[:, :K], kv[:, K:]                      # (B, H, 1, Dh)...
            if K == H:
                out = F.scaled_dot_product_attention(q, keys, values)
            elif SDPA_GQA:
                out = F.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
            else:
                out = F.scaled_dot_product_attention(
                    q, keys.repeat_interleave(H // K, dim=1), values.repeat_interleave(H // K, dim=1))
            x = _matmul(out.view(B, H * Dh), layer.o_t, layer.o_bias, x)                 # (B, D)
            gate, up = _matmul(rms_norm(x, layer.norm2_weight, layer.norm2_eps), layer.gate_up_t,
                               layer.gate_up_bias).chunk(2, dim=-1)                  # (B, F) ×2
            x = _matmul(F.silu(gate) * up, layer.down_t, layer.down_bias, x)             # (B, D)
        cache.length = pos + 1
        logits = _matmul(rms_norm(x, self.final_norm_weight, self.final_norm_eps), self.lm_head_t)
        return logits.unsqueeze(1)                                                 # (B, 1, V)
