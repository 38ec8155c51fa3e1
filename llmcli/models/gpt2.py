"""GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"), in one
readable file: the textbook decoder-only Transformer.

Reference implementation: Hugging Face ``transformers/models/gpt2/modeling_gpt2.py``
(``GPT2LMHeadModel``), whose parameter names are used here:

    input_ids (B, T)
      → transformer.wte(input_ids) + transformer.wpe(positions)   (B, T, D)   position ADDED
      → N × transformer.h.i (pre-norm, serial residual):
            h = x + attn(ln_1(x))            fused q/k/v projection c_attn, no RoPE
            x = h + mlp(ln_2(h))             c_proj(gelu(c_fc(h)))
      → transformer.ln_f (LayerNorm)                               (B, T, D)
      → lm_head (tied to transformer.wte)                          (B, T, V)

GPT-2 checkpoints store their four projection matrices as ``Conv1D`` weights, (in, out);
here they are ordinary ``nn.Linear`` weights, (out, in), transposed once when the checkpoint
is loaded (:data:`GPT2LMHeadModel.TRANSPOSED_IN_CHECKPOINT`), never in ``forward``. The
context is ``n_positions`` (the rows of ``wpe``).

Symbols in shape comments are listed in :mod:`llmcli.models.common`; here K = H (no
grouped-query attention), Dh = D / H, F = ``n_inner`` (4·D by default), P = ``n_positions``.
"""

from __future__ import annotations

import torch
from torch import nn

from llmcli.config import GPT2Config
from llmcli.models.common import ACTIVATIONS, Capture, CausalLM, KVCache, attend


class GPT2Attention(nn.Module):
    """Multi-head causal self-attention with one fused q/k/v projection.

    Weights: c_attn (3·D, D) and bias (3·D,) — q, k, v in that order —, c_proj (D, D) and
    bias (D,). Scores are scaled by 1/√Dh (``scale_attn_weights``), and further by
    1/(index + 1) with ``scale_attn_by_inverse_layer_idx``.
    """

    def __init__(self, config: GPT2Config, index: int) -> None:
        super().__init__()
        self.index = index
        self.n_heads, self.head_dim, D = config.n_head, config.head_dim, config.n_embd
        self.scale = self.head_dim ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= float(index + 1)
        self.c_attn = nn.Linear(D, 3 * D)
        self.c_proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor, cache: KVCache | None, start: int,
                capture: Capture | None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=-1)                                     # (B, T, D) ×3
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)                 # (B, H, T, Dh)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)                 # (B, H, T, Dh)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)                 # (B, H, T, Dh)
        if cache is not None:
            k, v = cache.update(self.index, start, k, v)                              # (B, H, S, Dh)
        out = attend(q, k, v, start, scale=self.scale, capture=capture)               # (B, H, T, Dh)
        return self.c_proj(out.transpose(1, 2).reshape(B, T, D))                      # (B, T, D)


class GPT2MLP(nn.Module):
    """``c_proj(act(c_fc(x)))``, act = ``activation_function`` (GELU, tanh approximation).

    Weights: c_fc (F, D) and bias (F,), c_proj (D, F) and bias (D,).
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        D, Fi = config.n_embd, config.intermediate_size
        self.c_fc = nn.Linear(D, Fi)
        self.c_proj = nn.Linear(Fi, D)
        self.act = ACTIVATIONS[config.activation_function]

    def forward(self, x: torch.Tensor) -> torch.Tensor:                      # (B, T, D) → (B, T, D)
        return self.c_proj(self.act(self.c_fc(x)))                           # inner (B, T, F)


class GPT2Block(nn.Module):
    """One pre-norm block: ``h = x + attn(ln_1(x))``, then ``h + mlp(ln_2(h))``."""

    def __init__(self, config: GPT2Config, index: int) -> None:
        super().__init__()
        self.name = f"transformer.h.{index}"
        D, eps = config.n_embd, config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(D, eps=eps)          # weight, bias (D,)
        self.attn = GPT2Attention(config, index)
        self.ln_2 = nn.LayerNorm(D, eps=eps)
        self.mlp = GPT2MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None, start: int,
                capture: Capture | None) -> torch.Tensor:
        a = self.attn(self.ln_1(x), cache, start, capture)                            # (B, T, D)
        h = x + a
        m = self.mlp(self.ln_2(h))                                                    # (B, T, D)
        if capture is not None:
            capture.stages[self.name + ".attn"] = a
            capture.stages[self.name + ".mlp"] = m
        return h + m


class GPT2Model(nn.Module):
    """Embeddings, blocks and final norm (parameter prefix ``transformer.``)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)             # (V, D) tokens
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)            # (P, D) positions
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class GPT2LMHeadModel(CausalLM):
    """A GPT-2 language model whose ``state_dict`` keys equal Hugging Face's (with the
    projection matrices transposed: see the module docstring)."""

    EMBEDDING_NAME = "transformer.wte.weight"
    OUTPUT_NAME = "lm_head.weight"
    TRANSPOSED_IN_CHECKPOINT = (".attn.c_attn.weight", ".attn.c_proj.weight",
                                ".mlp.c_fc.weight", ".mlp.c_proj.weight")
    #: the causal-mask buffers older checkpoints carry
    IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)          # (V, D)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.rotary = None   # position is learned (wpe), not rotary

    @classmethod
    def checkpoint_names(cls, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoints saved from ``GPT2Model`` (OpenAI's originals on the Hub) name the trunk
        without the ``transformer.`` prefix (``h.0.attn.c_attn.weight``): add it."""
        if any(n.startswith("transformer.") for n in tensors) or "wte.weight" not in tensors:
            return tensors
        return {(n if n.startswith("lm_head.") else "transformer." + n): t for n, t in tensors.items()}

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                capture: Capture | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits for ``input_ids`` (B, T) → ``(B, T, V)``, or ``(B, 1, V)`` if ``last_only``
        (see :class:`~llmcli.models.common.CausalLM`).

        Raises:
            ValueError: positions beyond the cache's ``max_len`` or beyond ``n_positions``.
        """
        B, T = input_ids.shape
        start = self.check_room(cache, T)
        if start + T > self.config.n_positions:
            raise ValueError(f"GPT-2 has {self.config.n_positions} positions; {start + T} needed")
        positions = torch.arange(start, start + T, device=input_ids.device)           # (T,)
        tok = self.transformer.wte(input_ids)                                          # (B, T, D)
        pos = self.transformer.wpe(positions)                                          # (T, D)
        x = tok + pos                                                                  # (B, T, D)
        if capture is not None:
            capture.hidden_states.append(x)
            capture.stages["transformer.wte"] = tok
            capture.stages["transformer.wpe"] = pos.expand_as(tok)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, start, capture)                                        # (B, T, D)
            if capture is not None:
                capture.block(x, last=i == len(self.transformer.h) - 1)
        if cache is not None:
            cache.length = start + T
        if last_only:
            x = x[:, -1:]
        x = self.transformer.ln_f(x)                                                   # (B, T, D)
        if capture is not None:
            capture.hidden_states.append(x)
        return self.lm_head(x)                                                         # (B, T, V)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer.ln_f(x)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(x)

    def input_embeddings(self) -> torch.Tensor:
        return self.transformer.wte.weight
