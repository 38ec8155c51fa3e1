"""GPT-NeoX (Black et al. 2022, "GPT-NeoX-20B"), the architecture of EleutherAI's Pythia
suite (Biderman et al. 2023), in one readable file.

Reference implementation: Hugging Face ``transformers/models/gpt_neox/modeling_gpt_neox.py``
(``GPTNeoXForCausalLM``), whose parameter names are used here so that checkpoints load as a
straight copy:

    input_ids (B, T)
      → gpt_neox.embed_in                                (B, T, D)   no position added here
      → N × gpt_neox.layers.i, pre-norm, with use_parallel_residual (the default):
            x = x + attention(input_layernorm(x)) + mlp(post_attention_layernorm(x))
        or, without it (serial, as Llama):
            h = x + attention(input_layernorm(x));  x = h + mlp(post_attention_layernorm(h))
        attention: fused query_key_value, RoPE on the first R = rotary_pct·Dh dims of each head
      → gpt_neox.final_layer_norm (LayerNorm)            (B, T, D)
      → embed_out (its own matrix unless tied)           (B, T, V)

Symbols in shape comments are listed in :mod:`llmcli.models.common`; here K = H,
Dh = D / H, R = ``rotary_dim``.
"""

from __future__ import annotations

import torch
from torch import nn

from llmcli.config import GPTNeoXConfig
from llmcli.models.common import (ACTIVATIONS, Capture, CausalLM, KVCache, RotaryEmbedding,
                                  apply_rope, attend, rope_tables)


class GPTNeoXAttention(nn.Module):
    """Multi-head causal self-attention with partial RoPE.

    Weights: query_key_value (3·D, D), laid out per head — rows [h·3Dh, (h+1)·3Dh) hold
    head h's query, key and value, in that order —, dense (D, D); biases (3·D,) and (D,)
    when ``attention_bias``.
    """

    def __init__(self, config: GPTNeoXConfig, index: int) -> None:
        super().__init__()
        self.index = index
        self.n_heads, self.head_dim, D = config.num_attention_heads, config.head_dim, config.hidden_size
        self.query_key_value = nn.Linear(D, 3 * D, bias=config.attention_bias)
        self.dense = nn.Linear(D, D, bias=config.attention_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, start: int, capture: Capture | None) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.query_key_value(x).view(B, T, self.n_heads, 3 * self.head_dim)     # (B, T, H, 3Dh)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)                                # (B, H, T, Dh) ×3
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)      # first R dims rotated
        if cache is not None:
            k, v = cache.update(self.index, start, k, v)                              # (B, H, S, Dh)
        out = attend(q, k, v, start, capture=capture)                                 # (B, H, T, Dh)
        return self.dense(out.transpose(1, 2).reshape(B, T, D))                       # (B, T, D)


class GPTNeoXMLP(nn.Module):
    """``dense_4h_to_h(act(dense_h_to_4h(x)))``, act = ``hidden_act`` (exact GELU for Pythia).

    Weights: dense_h_to_4h (F, D) and bias (F,), dense_4h_to_h (D, F) and bias (D,).
    """

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__()
        D, Fi = config.hidden_size, config.intermediate_size
        self.dense_h_to_4h = nn.Linear(D, Fi)
        self.dense_4h_to_h = nn.Linear(Fi, D)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:                      # (B, T, D) → (B, T, D)
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))           # inner (B, T, F)


class GPTNeoXLayer(nn.Module):
    """One pre-norm block, parallel (``x + attn(ln1(x)) + mlp(ln2(x))``) or serial."""

    def __init__(self, config: GPTNeoXConfig, index: int) -> None:
        super().__init__()
        self.name = f"gpt_neox.layers.{index}"
        self.parallel = config.use_parallel_residual
        D, eps = config.hidden_size, config.layer_norm_eps
        self.input_layernorm = nn.LayerNorm(D, eps=eps)            # weight, bias (D,)
        self.post_attention_layernorm = nn.LayerNorm(D, eps=eps)
        self.attention = GPTNeoXAttention(config, index)
        self.mlp = GPTNeoXMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, start: int, capture: Capture | None) -> torch.Tensor:
        a = self.attention(self.input_layernorm(x), cos, sin, cache, start, capture)  # (B, T, D)
        if self.parallel:   # both read x: the MLP does not see this block's attention
            m = self.mlp(self.post_attention_layernorm(x))                            # (B, T, D)
            out = m + a + x             # (transformers' order of the sum)
        else:
            h = a + x
            m = self.mlp(self.post_attention_layernorm(h))
            out = m + h
        if capture is not None:
            capture.stages[self.name + ".attention"] = a
            capture.stages[self.name + ".mlp"] = m
        return out                                                                    # (B, T, D)


class GPTNeoXModel(nn.Module):
    """Embedding, blocks and final norm (parameter prefix ``gpt_neox.``)."""

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__()
        self.embed_in = nn.Embedding(config.vocab_size, config.hidden_size)          # (V, D)
        self.layers = nn.ModuleList(GPTNeoXLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class GPTNeoXForCausalLM(CausalLM):
    """A GPT-NeoX language model whose ``state_dict`` keys equal Hugging Face's."""

    EMBEDDING_NAME = "gpt_neox.embed_in.weight"
    OUTPUT_NAME = "embed_out.weight"
    #: the causal-mask buffers and RoPE frequencies older checkpoints carry
    IGNORED_SUFFIXES = (".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq")

    def __init__(self, config: GPTNeoXConfig) -> None:
        super().__init__()
        self.config = config
        self.gpt_neox = GPTNeoXModel(config)
        self.embed_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)   # (V, D)
        if config.tie_word_embeddings:
            self.embed_out.weight = self.gpt_neox.embed_in.weight
        self.rotary = RotaryEmbedding(config.rotary_dim, config.rope_theta, config.rope_scaling,
                                      config.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                capture: Capture | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits for ``input_ids`` (B, T) → ``(B, T, V)``, or ``(B, 1, V)`` if ``last_only``
        (see :class:`~llmcli.models.common.CausalLM`)."""
        B, T = input_ids.shape
        start = self.check_room(cache, T)
        x = self.gpt_neox.embed_in(input_ids)                                          # (B, T, D)
        cos, sin = rope_tables(self.rotary, cache, start, T, x.dtype)                  # (T, R) each
        if capture is not None:
            capture.hidden_states.append(x)
            capture.stages["gpt_neox.embed_in"] = x
        for i, layer in enumerate(self.gpt_neox.layers):
            x = layer(x, cos, sin, cache, start, capture)                              # (B, T, D)
            if capture is not None:
                capture.block(x, last=i == len(self.gpt_neox.layers) - 1)
        if cache is not None:
            cache.length = start + T
        if last_only:
            x = x[:, -1:]
        x = self.gpt_neox.final_layer_norm(x)                                          # (B, T, D)
        if capture is not None:
            capture.hidden_states.append(x)
        return self.embed_out(x)                                                       # (B, T, V)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.gpt_neox.final_layer_norm(x)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_out(x)

    def input_embeddings(self) -> torch.Tensor:
        return self.gpt_neox.embed_in.weight
