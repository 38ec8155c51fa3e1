"""The Llama decoder-only Transformer, in one readable file.

Architecture (Touvron et al. 2023, "LLaMA"; reference implementation: Hugging Face
``transformers/models/llama/modeling_llama.py``, whose parameter names are used here so that
checkpoints load as a straight copy):

    input_ids (B, T)
      → embed_tokens                                   (B, T, D)
      → N × LlamaDecoderLayer:
            h = x + o_proj(attention(RoPE(q), RoPE(k), v))   pre-norm: input_layernorm
            x = h + down_proj(silu(gate_proj(h)) * up_proj(h)) pre-norm: post_attention_layernorm
      → norm (RMSNorm)                                 (B, T, D)
      → lm_head                                        (B, T, V)

Symbols used in shape comments: B batch, T new tokens in this call, S = start_pos + T
(positions visible to attention), D hidden_size, H attention heads, K key/value heads,
Dh head_dim, F intermediate_size, V vocab_size, L max cached positions.

The one interface shared by generation and inspection is :meth:`LlamaForCausalLM.forward`
with an optional :class:`KVCache` and an optional :class:`Capture`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llmcli.config import LlamaConfig

#: ``scaled_dot_product_attention(..., enable_gqa=True)`` (torch ≥ 2.5) attends with fewer K/V
#: heads directly; older versions repeat the K/V heads first.
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


# ----------------------------------------------------------------------------- dropout
def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout (Srivastava et al. 2014) of ``x`` (any shape) with drop probability
    ``p`` rounded to a multiple of 1/256; used by training only.

    Same result in distribution as ``F.dropout``, about 5x cheaper on CPU (measured: 6.7 → 1.3
    ms forward+backward on a (8, 512, 256) bf16 tensor, 2 threads): the mask comes from one
    64-bit random draw per 8 elements (``random_`` over the full int64 range, read as 8 uniform
    bytes) instead of one ``bernoulli_`` draw per element, which took 11% of a training step
    (profile, 8×512 tokens, bf16 autocast). On other devices, ``F.dropout``.
    """
    if p <= 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p)
    cut = round(p * 256)                        # drop when the random byte < cut
    n = x.numel()
    bits = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-2**63, None)
    keep = bits.view(torch.uint8)[:n].view(x.shape) >= cut                  # same shape as x
    return x * keep.to(x.dtype).mul_(256 / (256 - cut))


# ----------------------------------------------------------------------------- training attention
#: Whether training under CPU bfloat16 autocast uses :func:`causal_attention_bf16` instead of
#: ``scaled_dot_product_attention`` (set False to compare the two).
TRAIN_BF16_EAGER_ATTENTION = True


def _bf16_cpu_autocast(x: torch.Tensor) -> bool:
    """True for a CPU tensor under bfloat16 autocast (``llmcli train --precision bfloat16``)."""
    return (TRAIN_BF16_EAGER_ATTENTION and x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def causal_attention_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q·kᵀ/√Dh + causal mask)·v`` in bfloat16: q, k, v (B, H, T, Dh) → (B, H, T, Dh).

    Used by training on CPU under bfloat16 autocast only, because there it is faster than
    ``scaled_dot_product_attention``'s CPU flash-attention kernel: forward+backward of one
    layer (B=8, H=4, T=512, Dh=64, 2 threads) takes 26 ms instead of 38 ms, and a whole
    training step of the default model 0.448 s instead of 0.518 s (A/B in one process). Its
    gradients are as close to float32 as the kernel's (relative error of all parameter
    gradients on bundled-model weights and Macbeth text: 0.0077 vs 0.0070). The cost is memory
    the kernel avoids: the (T, T) scores and probabilities, kept for the backward pass, are
    0.5 MB each per head and batch row at T=512 in bfloat16 (16 MB each per layer at 8 × 4).
    """
    q, k, v = q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16)
    T = q.shape[2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))          # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v         # (B, H, T, Dh)


# ----------------------------------------------------------------------------- RoPE
def rope_inv_freq(config: LlamaConfig) -> torch.Tensor:
    """Inverse frequencies θ_i = rope_theta^(-2i/Dh), shape ``(Dh/2,)``, float32.

    Applies ``rope_scaling``: ``linear`` (Chen et al. 2023, "position interpolation": divide
    by ``factor``) or ``llama3`` (Meta's Llama 3.1 frequency-dependent scaling, as in
    transformers' ``_compute_llama3_parameters``).
    """
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling or {}
    rope_type = config.rope_type
    if rope_type == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif rope_type == "llama3":
        factor = float(scaling["factor"])
        low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
        high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
        old_context_len = scaling.get("original_max_position_embeddings",
                                      config.max_position_embeddings)
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        # long wavelengths (low frequencies) are scaled, short ones kept, the middle smoothed
        inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(is_medium, smoothed, inv_freq_llama)
    return inv_freq


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for ``positions`` (T,), each ``(T, Dh)`` in ``dtype``.

    Computed in float32 and cast, as transformers does, in the "rotate half" layout: the
    first and second halves of a head share frequencies (``cat(freqs, freqs)``).
    """
    freqs = positions.float()[:, None] * inv_freq[None, :]   # (T, Dh/2)
    emb = torch.cat((freqs, freqs), dim=-1)                   # (T, Dh)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) → (-x2, x1)`` on the last dimension (halves, not interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys ``x`` (B, heads, T, Dh) by position (Su et al. 2021, RoFormer).

    ``x·cos + rotate_half(x)·sin`` as in transformers' ``apply_rotary_pos_emb``.
    """
    return x * cos + rotate_half(x) * sin


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` (…, Dh) with its first half negated, so that ``rotate_half(x)·sin`` equals
    ``roll(x, Dh/2)·signed_sin(sin)`` exactly (negation is exact): one roll replaces
    rotate_half's chunk, neg and cat in the decoding fast path."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


# ----------------------------------------------------------------------------- KV cache
class KVCache:
    """Keys and values of every layer, allocated once per generation.

    ``k[layer]`` and ``v[layer]`` have shape ``(B, K, L, Dh)`` where ``L`` is ``max_len``;
    positions ``[0, length)`` are filled. Memory: ``2 × layers × B × K × L × Dh × itemsize`` bytes.
    ``cos`` and ``sin`` (L, Dh) are the RoPE tables of those positions, when given (computed
    once here rather than at every decoding step).
    """

    def __init__(self, config: LlamaConfig, batch: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu",
                 inv_freq: torch.Tensor | None = None) -> None:
        shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.length = 0  # positions filled so far (advanced by the model after each forward)
        self.cos = self.sin = self.sin_signed = None
        if inv_freq is not None:
            positions = torch.arange(max_len, device=inv_freq.device)
            self.cos, self.sin = rope_cos_sin(inv_freq, positions, dtype)              # (L, Dh)
            self.sin_signed = signed_sin(self.sin)                                      # (L, Dh)

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (B, K, T, Dh) at ``[start, start+T)``; return views ``(B, K, S, Dh)``."""
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


@dataclass
class Capture:
    """What :meth:`LlamaForCausalLM.forward` records when asked (for inspection).

    hidden_states: ``num_hidden_layers + 1`` tensors ``(B, T, D)``, as transformers'
        ``output_hidden_states``: [0] the embedding output, [i] the residual stream after block
        i for i < N, [N] the output of the final norm.
    residuals: ``N`` tensors ``(B, T, D)``: the residual stream after each block, before
        the final norm (the input to the "logit lens").
    attentions: when ``attentions=True``, ``N`` tensors ``(B, H, T, S)`` of softmax weights
        (computed eagerly instead of through scaled_dot_product_attention).
    """

    attentions_wanted: bool = False
    hidden_states: list[torch.Tensor] = field(default_factory=list)
    residuals: list[torch.Tensor] = field(default_factory=list)
    attentions: list[torch.Tensor] = field(default_factory=list)


# ----------------------------------------------------------------------------- blocks
class LlamaRMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019), computed in float32.

    ``weight``: (D,). Input and output: (..., D).
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


#: ``torch.nn.functional.rms_norm`` (torch ≥ 2.4): one fused kernel instead of seven ops.
_HAS_RMS_NORM = hasattr(F, "rms_norm")


def rms_norm(x: torch.Tensor, norm: LlamaRMSNorm, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``norm(x)`` for (..., D), through the fused kernel when ``x`` is float32 (where it is
    the same computation; other dtypes keep transformers' float32-then-cast order).
    ``weight`` is ``norm.weight`` when the caller already holds it (the decoding hot path)."""
    weight = norm.weight if weight is None else weight
    if _HAS_RMS_NORM and x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, norm.eps)
    return norm(x)


class _DecodeLayer(NamedTuple):
    """One block's tensors as :meth:`LlamaForCausalLM._decode_one` reads them: the norms with
    their weights, and the (in, out) matrices with their biases (``None`` when absent)."""

    norm1: LlamaRMSNorm
    norm1_weight: torch.Tensor
    qkv_t: torch.Tensor           # (D, (H+2K)·Dh)
    qkv_bias: torch.Tensor | None
    o_t: torch.Tensor             # (H·Dh, D)
    o_bias: torch.Tensor | None
    norm2: LlamaRMSNorm
    norm2_weight: torch.Tensor
    gate_up_t: torch.Tensor       # (D, 2F)
    gate_up_bias: torch.Tensor | None
    down_t: torch.Tensor          # (F, D)
    down_bias: torch.Tensor | None


def _matmul(x: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor | None = None,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + x @ w_t + bias`` for 2-D ``x`` (B, in) and ``w_t`` (in, out), in as few
    operations as possible (``addmm`` adds the residual inside the matrix multiply)."""
    if residual is None:
        return torch.mm(x, w_t) if bias is None else torch.addmm(bias, x, w_t)
    out = torch.addmm(residual, x, w_t)
    return out if bias is None else out.add_(bias)


class LlamaAttention(nn.Module):
    """Grouped-query self-attention with RoPE.

    Weights: q_proj (H·Dh, D), k_proj and v_proj (K·Dh, D), o_proj (D, H·Dh).
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=bias)
        self.dropout = 0.0  # training only; set by llmcli.train
        # ((H+2K)·Dh, D) and ((H+2K)·Dh,): q, k, v weights in one matrix, set by
        # LlamaForCausalLM.fuse_projections (q_proj/k_proj/v_proj.weight are then views of it)
        self.qkv_weight: torch.Tensor | None = None
        self.qkv_bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
                cache: KVCache | None, start_pos: int, capture: Capture | None) -> torch.Tensor:
        B, T, _ = x.shape
        if self.qkv_weight is not None:  # one matmul, then split: (B, T, H·Dh), (B, T, K·Dh) ×2
            q, k, v = F.linear(x, self.qkv_weight, self.qkv_bias).split(
                (self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim), dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)               # (B, H, T, Dh)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)                  # (B, K, T, Dh)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)                  # (B, K, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, start_pos, k, v)                              # (B, K, S, Dh)
        S = k.shape[2]
        eager = capture is not None and capture.attentions_wanted
        gqa = {}
        if self.n_kv != self.n_heads:                     # GQA: each K/V head serves H/K queries
            if _SDPA_GQA and not eager:
                gqa = {"enable_gqa": True}
            else:
                k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)            # (B, H, S, Dh)
                v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        if eager:
            out = self._eager(q, k, v, S - T, capture)
        elif self.training and S == T and not self.dropout and not gqa and _bf16_cpu_autocast(x):
            out = causal_attention_bf16(q, k, v)                                     # (B, H, T, Dh)
        elif T == 1:  # one new token sees every cached position: no mask needed
            out = F.scaled_dot_product_attention(q, k, v, **gqa)
        elif S == T:  # prefill from position 0: plain causal mask
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0, **gqa)
        else:  # T new tokens after S-T cached ones: query i sees keys [0, S-T+i]
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)         # (B, T, H·Dh)
        return self.o_proj(out)

    def _eager(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int,
               capture: Capture) -> torch.Tensor:
        """softmax(q·kᵀ/√Dh + causal mask)·v, recording the weights (B, H, T, S) in float32."""
        T, S = q.shape[2], k.shape[2]
        scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(self.head_dim)       # (B, H, T, S)
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=offset)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)                                            # (B, H, T, S)
        capture.attentions.append(weights)
        return weights.to(v.dtype) @ v                                              # (B, H, T, Dh)


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): ``down(silu(gate(x)) * up(x))``.

    Weights: gate_proj and up_proj (F, D), down_proj (D, F).
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        D, Fi, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(D, Fi, bias=bias)
        self.up_proj = nn.Linear(D, Fi, bias=bias)
        self.down_proj = nn.Linear(Fi, D, bias=bias)
        # (2F, D) and (2F,): gate and up weights in one matrix, set by
        # LlamaForCausalLM.fuse_projections (gate_proj/up_proj.weight are then views of it)
        self.gate_up_weight: torch.Tensor | None = None
        self.gate_up_bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) → (B, T, D)
        if self.gate_up_weight is not None:
            gate, up = F.linear(x, self.gate_up_weight, self.gate_up_bias).chunk(2, dim=-1)  # (B, T, F) ×2
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """One pre-norm block: ``x + attn(norm(x))``, then ``h + mlp(norm(h))``."""

    def __init__(self, config: LlamaConfig, index: int) -> None:
        super().__init__()
        self.index = index
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.dropout = 0.0  # residual dropout, training only

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, start_pos: int, capture: Capture | None) -> torch.Tensor:
        a = self.self_attn(rms_norm(x, self.input_layernorm), cos, sin, self.index, cache, start_pos, capture)
        if self.training and self.dropout:
            a = dropout(a, self.dropout)
        h = x + a                                                                  # (B, T, D)
        m = self.mlp(rms_norm(h, self.post_attention_layernorm))
        if self.training and self.dropout:
            m = dropout(m, self.dropout)
        return h + m                                                               # (B, T, D)


# ----------------------------------------------------------------------------- model
class LlamaModel(nn.Module):
    """Embedding, blocks and final norm (the "trunk"; parameter prefix ``model.``)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)  # (V, D)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """A Llama language model whose ``state_dict`` keys equal Hugging Face's.

    Build one with :func:`llmcli.weights.load_model` (from a directory) or directly from a
    :class:`~llmcli.config.LlamaConfig` (random weights, for training).
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # (V, D)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)     # (Dh/2,)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        """A :class:`KVCache` for ``max_len`` positions (default: the context length)."""
        max_len = max_len or self.config.max_position_embeddings
        return KVCache(self.config, batch, max_len, self.dtype, self.device, inv_freq=self.inv_freq)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                capture: Capture | None = None, last_only: bool = False,
                embed_dropout: float = 0.0) -> torch.Tensor:
        """Logits for ``input_ids`` (B, T) → ``(B, T, V)``, or ``(B, 1, V)`` if ``last_only``.

        With a ``cache``, the tokens sit at positions ``[cache.length, cache.length + T)``
        and attend to everything cached before them; the cache is advanced by ``T``.
        Without one, positions are ``[0, T)`` (a full causal forward).

        Raises:
            ValueError: the positions would exceed the cache's ``max_len``.
        """
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; {start + T} needed")
        if (T == 1 and cache is not None and cache.sin_signed is not None and capture is None
                and not self.training and self._fused):
            return self._decode_one(input_ids, cache)
        x = self.model.embed_tokens(input_ids)                                   # (B, T, D)
        if embed_dropout and self.training:
            x = dropout(x, embed_dropout)
        if cache is not None and cache.cos is not None:
            cos, sin = cache.cos[start:start + T], cache.sin[start:start + T]    # (T, Dh) each
        else:
            positions = torch.arange(start, start + T, device=input_ids.device)
            cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)           # (T, Dh) each
        if capture is not None:
            capture.hidden_states.append(x)
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache, start, capture)                        # (B, T, D)
            if capture is not None:
                capture.residuals.append(x)
                if layer.index < len(self.model.layers) - 1:
                    capture.hidden_states.append(x)
        if cache is not None:
            cache.length = start + T
        if last_only:
            x = x[:, -1:]
        x = rms_norm(x, self.model.norm)                                         # (B, T, D)
        if capture is not None:
            capture.hidden_states.append(x)
        return self.lm_head(x)                                                   # (B, T, V)

    _fused = False

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Lay the weights out for fast inference; values and ``state_dict()`` names unchanged.

        * Each layer's q/k/v weights, and gate/up weights, are concatenated into one matrix
          each (one matmul instead of three, and two): ``qkv_weight`` ((H+2K)·Dh, D) and
          ``gate_up_weight`` (2F, D).
        * Every matrix is stored transposed, (in, out) row-major, and exposed as an (out, in)
          view, so ``F.linear(x, W)`` multiplies ``x @ Wᵀ`` with ``Wᵀ`` contiguous: on CPU this
          BLAS layout is about 2× faster for one-token decoding than the (out, in) layout
          checkpoints store (measured in ``benchmarks/bench_generate.py``). A tied
          embedding is stored the same way; looking up a row then gathers a strided column.

        The original parameters become views of the new storage, so memory does not grow.
        Call it on a loaded model before generating (``load_model`` does); training keeps
        the separate, checkpoint-layout matrices.
        """
        def relayout(weight: torch.Tensor) -> nn.Parameter:   # (out, in) view of (in, out) storage
            return nn.Parameter(weight.t().contiguous().t(), requires_grad=False)

        def fuse(linears):
            weight = relayout(torch.cat([m.weight for m in linears])).data       # (ΣN, D)
            bias = torch.cat([m.bias for m in linears]) if linears[0].bias is not None else None
            row = 0
            for m in linears:
                n = m.weight.shape[0]
                m.weight = nn.Parameter(weight[row:row + n], requires_grad=False)
                if bias is not None:
                    m.bias = nn.Parameter(bias[row:row + n], requires_grad=False)
                row += n
            return weight, bias

        def data(p):
            return None if p is None else p.data

        self._decode_layers: list[_DecodeLayer] = []   # what _decode_one reads, gathered once
        for layer in self.model.layers:
            a, m, n1, n2 = layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm
            a.qkv_weight, a.qkv_bias = fuse([a.q_proj, a.k_proj, a.v_proj])
            m.gate_up_weight, m.gate_up_bias = fuse([m.gate_proj, m.up_proj])
            a.o_proj.weight = relayout(a.o_proj.weight)
            m.down_proj.weight = relayout(m.down_proj.weight)
            self._decode_layers.append(_DecodeLayer(
                n1, n1.weight.data, a.qkv_weight.t(), a.qkv_bias, a.o_proj.weight.data.t(), data(a.o_proj.bias),
                n2, n2.weight.data, m.gate_up_weight.t(), m.gate_up_bias, m.down_proj.weight.data.t(),
                data(m.down_proj.bias)))
        tied = self.lm_head.weight is self.model.embed_tokens.weight
        self.lm_head.weight = relayout(self.lm_head.weight)
        if tied:
            self.model.embed_tokens.weight = self.lm_head.weight
        # (Call this method again after replacing parameters; load_state_dict copies into
        # these tensors and keeps them valid.)
        a0 = self.model.layers[0].self_attn
        self._heads = (a0.n_heads, a0.n_kv, a0.head_dim)
        self._embed = self.model.embed_tokens.weight.data
        self._lm_head_t = self.lm_head.weight.data.t()
        self._final_norm_weight = self.model.norm.weight.data
        self._fused = True

    def _decode_one(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """:meth:`forward` for one new token per sequence (B, 1) with a cache → logits (B, 1, V).

        The decoding step of generation, written as straight-line tensor code on (B, D)
        rows: the same arithmetic as the general path (so the same logits to rounding), in
        fewer operations: fused q/k/v and gate/up matmuls straight on the (in, out) storage
        (``torch.mm``/``addmm``, the residual added inside the matmul), RoPE applied to q and
        k together with one ``roll``, and no module calls or attribute look-ups (the tensors
        of each layer are gathered once by :meth:`fuse_projections`).
        """
        B = input_ids.shape[0]
        pos = cache.length
        H, K, Dh = self._heads
        cos, sin = cache.cos[pos], cache.sin_signed[pos]                         # (Dh,) each
        x = F.embedding(input_ids[:, 0], self._embed)                           # (B, D)
        for i, layer in enumerate(self._decode_layers):
            qkv = _matmul(rms_norm(x, layer.norm1, layer.norm1_weight), layer.qkv_t, layer.qkv_bias)  # (B, (H+2K)·Dh)
            qk = qkv[:, :(H + K) * Dh].view(B, H + K, Dh)                         # (B, H+K, Dh)
            qk = qk * cos + qk.roll(Dh // 2, dims=-1) * sin                       # RoPE, q and k
            k_cache, v_cache = cache.k[i], cache.v[i]                             # (B, K, L, Dh)
            k_cache.select(2, pos).copy_(qk[:, H:])
            v_cache.select(2, pos).copy_(qkv[:, (H + K) * Dh:].view(B, K, Dh))
            keys, values = k_cache.narrow(2, 0, pos + 1), v_cache.narrow(2, 0, pos + 1)  # (B, K, S, Dh)
            q = qk[:, :H].unsqueeze(2)                                             # (B, H, 1, Dh)
            if K == H:
                out = F.scaled_dot_product_attention(q, keys, values)
            elif _SDPA_GQA:
                out = F.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
            else:
                out = F.scaled_dot_product_attention(
                    q, keys.repeat_interleave(H // K, dim=1), values.repeat_interleave(H // K, dim=1))
            x = _matmul(out.reshape(B, H * Dh), layer.o_t, layer.o_bias, x)              # (B, D)
            gate, up = _matmul(rms_norm(x, layer.norm2, layer.norm2_weight), layer.gate_up_t,
                               layer.gate_up_bias).chunk(2, dim=-1)                  # (B, F) ×2
            x = _matmul(F.silu(gate) * up, layer.down_t, layer.down_bias, x)             # (B, D)
        cache.length = pos + 1
        logits = torch.mm(rms_norm(x, self.model.norm, self._final_norm_weight), self._lm_head_t)  # (B, V)
        return logits.unsqueeze(1)                                                # (B, 1, V)

    def num_parameters(self) -> int:
        """Number of distinct parameters (a tied ``lm_head`` is counted once)."""
        return sum(p.numel() for p in self.parameters())
