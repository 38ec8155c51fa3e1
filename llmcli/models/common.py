"""The pieces every family shares: the model interface, norms, activations, RoPE, attention
dispatch, the KV cache and the capture used by inspection.

Symbols used in shape comments: B batch, T new tokens in this call, S = start + T (positions
visible to attention), D hidden size, H attention heads, K key/value heads, Dh head size,
R rotary dims (≤ Dh), V vocabulary, L positions the cache holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

#: ``scaled_dot_product_attention(..., enable_gqa=True)`` (torch ≥ 2.5) attends with fewer K/V
#: heads directly; older versions repeat the K/V heads first.
SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)

#: ``torch.nn.functional.rms_norm`` (torch ≥ 2.4): one fused kernel instead of seven ops.
_HAS_RMS_NORM = hasattr(F, "rms_norm")


# ----------------------------------------------------------------------------- capture
@dataclass
class Capture:
    """What a model's ``forward`` records when given one (for inspection).

    hidden_states: ``num_hidden_layers + 1`` tensors ``(B, T, D)``, as transformers'
        ``output_hidden_states``: [0] the embedding output (for GPT-2, token plus position
        embedding), [i] the residual stream after block i for i < N, [N] the output of the
        final norm.
    residuals: ``N`` tensors ``(B, T, D)``: the residual stream after each block, before
        the final norm (the input to the "logit lens").
    attentions: when ``attentions_wanted``, ``N`` tensors ``(B, H, T, S)`` of softmax weights
        (computed eagerly instead of through ``scaled_dot_product_attention``).
    stages: named outputs ``(B, T, D)``, keyed by Hugging Face module name: the token
        embedding (``model.embed_tokens``, ``transformer.wte``...), a learned position
        embedding where the family has one (``transformer.wpe``), and each block's attention
        and MLP outputs, the two terms added to the residual stream
        (``model.layers.0.self_attn``, ``model.layers.0.mlp``...).
    """

    attentions_wanted: bool = False
    hidden_states: list[torch.Tensor] = field(default_factory=list)
    residuals: list[torch.Tensor] = field(default_factory=list)
    attentions: list[torch.Tensor] = field(default_factory=list)
    stages: dict[str, torch.Tensor] = field(default_factory=dict)

    def block(self, x: torch.Tensor, last: bool) -> None:
        """Record the residual stream ``x`` (B, T, D) after a block (``last``: the final one,
        whose output reaches ``hidden_states`` only after the final norm)."""
        self.residuals.append(x)
        if not last:
            self.hidden_states.append(x)


# ----------------------------------------------------------------------------- the interface
class CausalLM(nn.Module):
    """The model interface: what generation, inspection and rendering use, and nothing else.

    A family subclasses it and implements:

    * ``forward(input_ids (B, T), cache=None, capture=None, last_only=False)`` → logits
      ``(B, T, V)`` (``(B, 1, V)`` with ``last_only``). With a :class:`KVCache` the tokens sit
      at positions ``[cache.length, cache.length + T)``, attend to everything cached before
      them, and the cache advances by T; without one, positions are ``[0, T)``. A
      :class:`Capture` records hidden states, attention weights and named stages.
      Raises ``ValueError`` when the positions would exceed the cache's ``max_len``.
    * ``final_norm(x)`` and ``unembed(x)``: the last two steps, ``(…, D) → (…, D) → (…, V)``;
      the logit lens applies them to a residual stream taken mid-way.
    * ``input_embeddings()``: the token embedding matrix ``(V, D)``.

    ``self.config`` is the family's config (:mod:`llmcli.config`); its ``architecture()``
    says in words what the family computes. ``self.rotary`` is the
    :class:`RotaryEmbedding`, or ``None`` for a family without RoPE.

    Calling the model (``model(ids, cache=...)``) sends a one-token, cached, uncaptured
    inference step to ``fast_decoder`` when :mod:`llmcli.fastpath` has installed one (same
    logits, fewer operations); everything else runs the family's readable ``forward``.
    """

    config: Any
    rotary: "RotaryEmbedding | None"   # set by every family's __init__ (a submodule, or None)
    #: The one-token decoding step (``llmcli.fastpath``), or None: the readable path only.
    fast_decoder: Callable[[torch.Tensor, "KVCache"], torch.Tensor] | None = None

    # How checkpoints map onto the model (read by llmcli.weights.load_model):
    #: the token embedding and the output matrix (left out of a tied checkpoint)
    EMBEDDING_NAME = "model.embed_tokens.weight"
    OUTPUT_NAME = "lm_head.weight"
    #: name endings of matrices checkpoints store (in, out): transposed when loaded
    TRANSPOSED_IN_CHECKPOINT: tuple[str, ...] = ()
    #: name endings of tensors checkpoints may hold that carry nothing for inference
    IGNORED_SUFFIXES: tuple[str, ...] = ("rotary_emb.inv_freq",)

    @classmethod
    def checkpoint_names(cls, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors under this model's names (a family whose checkpoints
        come in more than one naming maps them here)."""
        return tensors

    def tie_weights(self) -> None:
        """Make the output matrix the token embedding's parameter when the config ties them."""
        if self.config.tie_word_embeddings:
            out = self.get_submodule(self.OUTPUT_NAME.rsplit(".", 1)[0])
            out.weight = self.get_submodule(self.EMBEDDING_NAME.rsplit(".", 1)[0]).weight

    def __call__(self, input_ids: torch.Tensor, cache: "KVCache | None" = None,
                 capture: Capture | None = None, last_only: bool = False) -> torch.Tensor:
        fast = self.fast_decoder
        if (fast is not None and cache is not None and capture is None
                and input_ids.shape[1] == 1 and not self.training):
            return fast(input_ids, cache)
        return super().__call__(input_ids, cache=cache, capture=capture, last_only=last_only)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def unembed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def input_embeddings(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def architecture(self):
        """What this family computes, in words (:class:`llmcli.config.Architecture`)."""
        return self.config.architecture()

    @property
    def dtype(self) -> torch.dtype:
        return self.input_embeddings().dtype

    @property
    def device(self) -> torch.device:
        return self.input_embeddings().device

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> "KVCache":
        """A :class:`KVCache` for ``max_len`` positions (default: the context length)."""
        c = self.config
        return KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim,
                       max_len or c.max_position_embeddings, self.dtype, self.device, self.rotary)

    def num_parameters(self) -> int:
        """Number of distinct parameters (a tied output matrix is counted once)."""
        return sum(p.numel() for p in self.parameters())

    def reset_buffers(self, device: torch.device | str) -> None:
        """Recompute the non-persistent buffers (RoPE frequencies) on ``device``: a model
        built on the meta device and loaded with ``load_state_dict(assign=True)`` has none."""
        for module in self.modules():
            if isinstance(module, RotaryEmbedding):
                module.reset(device)

    def check_room(self, cache: "KVCache | None", T: int) -> int:
        """The first position of T new tokens (``cache.length``, or 0 without a cache).

        Raises:
            ValueError: the positions would exceed the cache's ``max_len``.
        """
        if cache is None:
            return 0
        if cache.length + T > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; {cache.length + T} needed")
        return cache.length


# ----------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019): ``weight · x / √(mean(x²) + eps)``,
    computed in float32 and cast back before the weight, as transformers' ``LlamaRMSNorm``.

    ``weight``: (D,). Input and output: (..., D). In float32 it runs as one fused kernel
    (``F.rms_norm``, the same computation).
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """:class:`RMSNorm` of ``x`` (..., D) with ``weight`` (D,), as a function (the decoding
    fast path calls it with weights it holds)."""
    if _HAS_RMS_NORM and x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


# LayerNorm (Ba et al. 2016) is torch's own ``nn.LayerNorm``: ``(x - mean) / √(var + eps) ·
# weight + bias``, parameters ``weight`` and ``bias`` (D,), as GPT-2 and GPT-NeoX use it.


# ----------------------------------------------------------------------------- activations
def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (Hendrycks & Gimpel 2016), written out as transformers'
    ``NewGELUActivation`` (``gelu_new``, GPT-2's):
    ``0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))``."""
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))
    return 0.5 * x * (1.0 + torch.tanh(inner))


#: ``hidden_act`` / ``activation_function`` names (transformers' ``ACT2FN``) → functions.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,                                           # exact, erf-based
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


# ----------------------------------------------------------------------------- RoPE
def rope_inv_freq(dim: int, theta: float, scaling: dict | None = None,
                  max_position_embeddings: int = 2048) -> torch.Tensor:
    """Inverse frequencies θ_i = theta^(-2i/dim), shape ``(dim/2,)``, float32 (Su et al. 2021,
    RoFormer); ``dim`` is the number of rotated dims of a head (Dh, or fewer for partial RoPE).

    Applies ``scaling`` (a ``rope_scaling`` dict): ``linear`` (Chen et al. 2023, "position
    interpolation": divide by ``factor``) or ``llama3`` (Meta's Llama 3.1 frequency-dependent
    scaling, as in transformers' ``_compute_llama3_parameters``). Configs validate the type.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif rope_type == "llama3":
        factor = float(scaling["factor"])
        low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
        high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
        old_context_len = scaling.get("original_max_position_embeddings", max_position_embeddings)
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
    """cos and sin tables for ``positions`` (T,), each ``(T, R)`` in ``dtype``.

    Computed in float32 and cast, as transformers does, in the "rotate half" layout: the
    first and second halves of the rotated dims share frequencies (``cat(freqs, freqs)``).
    """
    freqs = positions.float()[:, None] * inv_freq[None, :]   # (T, R/2)
    emb = torch.cat((freqs, freqs), dim=-1)                   # (T, R)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) → (-x2, x1)`` on the last dimension (halves, not interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys ``x`` (B, heads, T, Dh) by position: ``x·cos + rotate_half(x)·sin``
    (transformers' ``apply_rotary_pos_emb``) on the first R dims, R = ``cos.shape[-1]``; the
    other Dh - R dims pass unchanged (partial RoPE, GPT-NeoX's ``rotary_pct``)."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


class RotaryEmbedding(nn.Module):
    """RoPE's frequencies for ``dim`` rotated dims per head (buffer ``inv_freq`` (dim/2,),
    not saved in checkpoints) and the cos/sin tables of given positions."""

    def __init__(self, dim: int, theta: float, scaling: dict | None = None,
                 max_position_embeddings: int = 2048) -> None:
        super().__init__()
        self.dim, self.theta, self.scaling = dim, theta, scaling
        self.max_position_embeddings = max_position_embeddings
        # computed on the CPU, then moved: on the meta device (the loader builds models
        # there) torch's reference arithmetic would import torch._dynamo (1-2 s of start-up)
        with torch.device("cpu"):
            inv_freq = self._inv_freq()
        self.register_buffer("inv_freq", inv_freq.to(torch.get_default_device()),
                             persistent=False)                                       # (R/2,)

    def _inv_freq(self) -> torch.Tensor:
        return rope_inv_freq(self.dim, self.theta, self.scaling, self.max_position_embeddings)

    def reset(self, device: torch.device | str) -> None:
        """Recompute ``inv_freq`` in float32 on ``device``."""
        with torch.device("cpu"):
            self.inv_freq = self._inv_freq().to(device)

    def cos_sin(self, start: int, T: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for positions ``[start, start + T)``: cos, sin ``(T, R)`` in ``dtype``."""
        positions = torch.arange(start, start + T, device=self.inv_freq.device)
        return rope_cos_sin(self.inv_freq, positions, dtype)


def rope_tables(rotary: RotaryEmbedding, cache: "KVCache | None", start: int, T: int,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin ``(T, R)`` for positions ``[start, start + T)``: sliced from the cache's
    tables (computed once per generation) or computed."""
    if cache is not None and cache.cos is not None:
        return cache.cos[start:start + T], cache.sin[start:start + T]
    return rotary.cos_sin(start, T, dtype)


# ----------------------------------------------------------------------------- KV cache
class KVCache:
    """Keys and values of every layer, allocated once per generation.

    ``k[layer]`` and ``v[layer]`` have shape ``(B, K, L, Dh)`` where L is ``max_len`` (views
    of ``kv[layer]``, (B, 2K, L, Dh));
    positions ``[0, length)`` are filled. Memory: ``2 × layers × B × K × L × Dh × itemsize`` bytes.
    A sliding-window family keeps every position too and masks the old ones.
    ``cos`` and ``sin`` (L, R) are the RoPE tables of those positions when ``rotary`` is
    given (computed once here rather than at every decoding step), else None.
    """

    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu",
                 rotary: RotaryEmbedding | None = None) -> None:
        shape = (batch, 2 * kv_heads, max_len, head_dim)
        #: per layer, keys then values in one tensor (B, 2K, L, Dh), so that the decoding
        #: fast path stores a position's keys and values with one copy
        self.kv = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.k = [kv[:, :kv_heads] for kv in self.kv]                              # (B, K, L, Dh)
        self.v = [kv[:, kv_heads:] for kv in self.kv]
        self.max_len = max_len
        self.length = 0  # positions filled so far (advanced by the model after each forward)
        self.cos = self.sin = None
        if rotary is not None:
            self.cos, self.sin = rotary.cos_sin(0, max_len, dtype)                   # (L, R)

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (B, K, T, Dh) at ``[start, start+T)``; return views ``(B, K, S, Dh)``."""
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


# ----------------------------------------------------------------------------- attention
def causal_mask(T: int, S: int, start: int, window: int | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Which keys each query may see, (T, S) bool: query i (position start + i) sees key j
    when ``j ≤ start + i`` and, with a sliding ``window``, ``j > start + i - window`` (the
    last ``window`` positions, itself included, as transformers' ``sliding_window_overlay``)."""
    i = torch.arange(start, start + T, device=device)[:, None]                     # (T, 1)
    j = torch.arange(S, device=device)[None, :]                                    # (1, S)
    allowed = j <= i
    if window is not None:
        allowed &= j > i - window
    return allowed                                                                 # (T, S)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, *,
           scale: float | None = None, window: int | None = None,
           capture: Capture | None = None,
           train_kernel: Callable[..., torch.Tensor | None] | None = None) -> torch.Tensor:
    """Causal self-attention ``softmax(q·kᵀ·scale + mask)·v`` → (B, H, T, Dh).

    q (B, H, T, Dh) holds the queries of positions ``[start, start + T)``; k, v (B, K, S, Dh)
    the keys and values of positions ``[0, S)``, S = start + T (cached and new). With
    K < H each key/value head serves H/K query heads (grouped-query attention, Ainslie et al.
    2023). ``scale`` defaults to 1/√Dh; ``window`` limits each query to its last ``window``
    positions (Mistral's sliding window).

    Runs ``scaled_dot_product_attention`` (with the cheapest mask: none for one query that
    sees every key, ``is_causal`` from position 0, an explicit one otherwise), or, when
    ``capture.attentions_wanted``, an eager computation that appends the softmax weights
    (B, H, T, S) in float32 to ``capture.attentions``. ``train_kernel(q, k, v)`` (training
    only; see :mod:`llmcli.train.ops`) replaces the kernel for a full causal pass from
    position 0 with H == K and no window when it returns a tensor.
    """
    H, K, T, S = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    if capture is not None and capture.attentions_wanted:
        return _eager_attention(q, k, v, start, scale, window, capture)
    if train_kernel is not None and start == 0 and window is None and H == K:
        out = train_kernel(q, k, v)
        if out is not None:
            return out
    gqa = {}
    if K != H:
        if SDPA_GQA:
            gqa = {"enable_gqa": True}
        else:
            k = k.repeat_interleave(H // K, dim=1)                                  # (B, H, S, Dh)
            v = v.repeat_interleave(H // K, dim=1)
    if T == 1 and (window is None or S <= window):  # one query that sees every key: no mask
        return F.scaled_dot_product_attention(q, k, v, scale=scale, **gqa)
    if T == 1:                                      # one query, the last `window` keys
        return F.scaled_dot_product_attention(q, k[:, :, S - window:], v[:, :, S - window:],
                                              scale=scale, **gqa)
    if start == 0 and (window is None or T <= window):   # prefill: plain causal mask
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **gqa)
    mask = causal_mask(T, S, start, window, q.device)                              # (T, S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, **gqa)


def _eager_attention(q, k, v, start, scale, window, capture: Capture) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask)·v, recording the weights (B, H, T, S) in float32."""
    H, K, T, S = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    if K != H:
        k = k.repeat_interleave(H // K, dim=1)                                      # (B, H, S, Dh)
        v = v.repeat_interleave(H // K, dim=1)
    scores = (q @ k.transpose(-2, -1)).float()                                      # (B, H, T, S)
    scores = scores / math.sqrt(q.shape[-1]) if scale is None else scores * scale
    mask = causal_mask(T, S, start, window, q.device)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)             # (B, H, T, S)
    capture.attentions.append(weights)
    return weights.to(v.dtype) @ v                                                  # (B, H, T, Dh)
