"""Qwen3 (Qwen team 2025), in one readable file: Llama with an RMSNorm over each query and
each key head before RoPE (``q_norm``, ``k_norm``, weights (Dh,) shared by the heads), an
explicit head size Dh (not D / H), biases on q/k/v/o only with ``attention_bias``, and
optional sliding windows in some blocks (``layer_types``; W positions).

Reference implementation: Hugging Face ``transformers/models/qwen3/modeling_qwen3.py``,
whose parameter names are used here so that checkpoints load as a straight copy:

    input_ids (B, T)
      → model.embed_tokens                               (B, T, D)   no position added here
      → N × model.layers.i (pre-norm, serial residual):
            h = x + self_attn(input_layernorm(x))          RoPE(q_norm(q)), RoPE(k_norm(k))
            x = h + mlp(post_attention_layernorm(h))       SwiGLU
      → model.norm (RMSNorm)                             (B, T, D)
      → lm_head                                          (B, T, V)   (tied: embed_tokens)

Shared pieces (RMSNorm, RoPE, attention, KV cache, capture) are in
:mod:`llmcli.models.common`; symbols in shape comments are listed there. The one-token
decoding fast path is not here: see :mod:`llmcli.fastpath`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmcli.config import Qwen3Config
from llmcli.models.common import (Capture, CausalLM, KVCache, RMSNorm, RotaryEmbedding,
                                  apply_rope, attend, rope_tables)


class Qwen3Attention(nn.Module):
    """Grouped-query self-attention, each query and key head RMS-normalised, then RoPE; a
    sliding window in "sliding_attention" blocks.

    Weights: q_proj (H·Dh, D), k_proj and v_proj (K·Dh, D), o_proj (D, H·Dh), with biases
    when ``attention_bias``; q_norm and k_norm (Dh,).
    """

    def __init__(self, config: Qwen3Config, index: int) -> None:
        super().__init__()
        self.index = index
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.sliding_window = config.layer_window(index)      # W, or None: every position
        D, H, K, Dh, bias = config.hidden_size, self.n_heads, self.n_kv, self.head_dim, config.attention_bias
        self.q_proj = nn.Linear(D, H * Dh, bias=bias)
        self.k_proj = nn.Linear(D, K * Dh, bias=bias)
        self.v_proj = nn.Linear(D, K * Dh, bias=bias)
        self.o_proj = nn.Linear(H * Dh, D, bias=bias)
        self.q_norm = RMSNorm(Dh, config.rms_norm_eps)          # over each head's Dh values
        self.k_norm = RMSNorm(Dh, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, start: int, capture: Capture | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)                   # (B, T, H, Dh)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)                      # (B, T, K, Dh)
        q = self.q_norm(q).transpose(1, 2)   # RMSNorm over each head's Dh    # (B, H, T, Dh)
        k = self.k_norm(k).transpose(1, 2)                                           # (B, K, T, Dh)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)      # (B, K, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.index, start, k, v)                              # (B, K, S, Dh)
        out = attend(q, k, v, start, window=self.sliding_window, capture=capture)   # (B, H, T, Dh)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class Qwen3MLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): ``down_proj(silu(gate_proj(x)) · up_proj(x))``.

    Weights: gate_proj and up_proj (F, D), down_proj (D, F).
    """

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        D, Fi = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(D, Fi, bias=False)
        self.up_proj = nn.Linear(D, Fi, bias=False)
        self.down_proj = nn.Linear(Fi, D, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                 # (B, T, D) → (B, T, D)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # inner (B, T, F)


class Qwen3DecoderLayer(nn.Module):
    """One pre-norm block: ``h = x + attn(norm(x))``, then ``h + mlp(norm(h))``."""

    def __init__(self, config: Qwen3Config, index: int) -> None:
        super().__init__()
        self.name = f"model.layers.{index}"
        self.self_attn = Qwen3Attention(config, index)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, start: int, capture: Capture | None) -> torch.Tensor:
        a = self.self_attn(self.input_layernorm(x), cos, sin, cache, start, capture)  # (B, T, D)
        h = x + a                                                                     # (B, T, D)
        m = self.mlp(self.post_attention_layernorm(h))
        if capture is not None:
            capture.stages[self.name + ".self_attn"] = a
            capture.stages[self.name + ".mlp"] = m
        return h + m                                                                  # (B, T, D)


class Qwen3Model(nn.Module):
    """Embedding, blocks and final norm (the "trunk"; parameter prefix ``model.``)."""

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)         # (V, D)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Qwen3ForCausalLM(CausalLM):
    """A Qwen3 language model whose ``state_dict`` keys equal Hugging Face's.

    Build one with :func:`llmcli.weights.load_model` (from a directory) or directly from a
    :class:`~llmcli.config.Qwen3Config` (random weights).
    """

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)      # (V, D)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling,
                                      config.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                capture: Capture | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits for ``input_ids`` (B, T) → ``(B, T, V)``, or ``(B, 1, V)`` if ``last_only``
        (see :class:`~llmcli.models.common.CausalLM`)."""
        B, T = input_ids.shape
        start = self.check_room(cache, T)
        x = self.model.embed_tokens(input_ids)                                     # (B, T, D)
        cos, sin = rope_tables(self.rotary, cache, start, T, x.dtype)              # (T, Dh) each
        if capture is not None:
            capture.hidden_states.append(x)
            capture.stages["model.embed_tokens"] = x
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, cache, start, capture)                          # (B, T, D)
            if capture is not None:
                capture.block(x, last=i == len(self.model.layers) - 1)
        if cache is not None:
            cache.length = start + T
        if last_only:
            x = x[:, -1:]
        x = self.model.norm(x)                                                     # (B, T, D)
        if capture is not None:
            capture.hidden_states.append(x)
        return self.lm_head(x)                                                     # (B, T, V)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)

    def input_embeddings(self) -> torch.Tensor:
        return self.model.embed_tokens.weight
