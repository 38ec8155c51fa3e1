"""Moved: the Llama model is :mod:`llmcli.models.llama`, its shared pieces
:mod:`llmcli.models.common`, the decoding fast path :mod:`llmcli.fastpath` and the training
operations :mod:`llmcli.train.ops`. These names stay importable from here."""

from llmcli.models.common import (Capture, KVCache, apply_rope, rope_cos_sin,  # noqa: F401
                                  rope_inv_freq, rotate_half)
from llmcli.models.llama import (LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM,  # noqa: F401
                                 LlamaMLP, LlamaModel)
from llmcli.train.ops import causal_attention_bf16, dropout  # noqa: F401
