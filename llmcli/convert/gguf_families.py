"""GGUF models of the ``qwen2``, ``gpt2`` and ``gptneox`` architectures → Hugging Face
Qwen2, GPT-2 and GPT-NeoX checkpoints (the ``llama`` architecture is in
:mod:`llmcli.convert.gguf_reader`, which calls :func:`read_family` for these).

What llama.cpp's converter (``convert_hf_to_gguf.py``, ``conversion/{qwen,gpt2,gptneox}.py``)
changed, undone here tensor by tensor:

* every GGUF matrix is stored as ``nn.Linear``'s (out, in): GPT-2's Conv1D matrices (c_attn,
  c_proj, c_fc), which Hugging Face stores (in, out), are transposed back;
* GPT-NeoX's fused ``query_key_value`` rows, per head [q_h; k_h; v_h] in Hugging Face, were
  regrouped as [all q; all k; all v] (weight and bias): regrouped back per head;
* Qwen2's q and k rows are not permuted (llama.cpp runs Qwen2's RoPE in the rotate-half
  layout), so they are copied.

The config comes from the ``{arch}.*`` metadata, with the sizes checked against the tensors;
what GGUF does not record is assumed as noted (GPT-2's activation ``gelu_new``, GPT-NeoX's
``gelu``: the ones their Hugging Face configs default to and llama.cpp computes).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from llmcli.convert.checkpoint import LazyTensor
from llmcli.errors import LLMCLIError

#: GGUF architecture → the tensors of one block: GGUF name → Hugging Face name (``{i}`` = block).
_BLOCKS = {
    "qwen2": {
        "attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
        "attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
        "attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
        "attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
        "attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
        "attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
        "attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
        "attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
        "ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
        "ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
        "ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
        "ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
    },
    "gpt2": {
        "attn_norm.weight": "transformer.h.{i}.ln_1.weight",
        "attn_norm.bias": "transformer.h.{i}.ln_1.bias",
        "attn_qkv.weight": "transformer.h.{i}.attn.c_attn.weight",
        "attn_qkv.bias": "transformer.h.{i}.attn.c_attn.bias",
        "attn_output.weight": "transformer.h.{i}.attn.c_proj.weight",
        "attn_output.bias": "transformer.h.{i}.attn.c_proj.bias",
        "ffn_norm.weight": "transformer.h.{i}.ln_2.weight",
        "ffn_norm.bias": "transformer.h.{i}.ln_2.bias",
        "ffn_up.weight": "transformer.h.{i}.mlp.c_fc.weight",
        "ffn_up.bias": "transformer.h.{i}.mlp.c_fc.bias",
        "ffn_down.weight": "transformer.h.{i}.mlp.c_proj.weight",
        "ffn_down.bias": "transformer.h.{i}.mlp.c_proj.bias",
    },
    "gptneox": {
        "attn_norm.weight": "gpt_neox.layers.{i}.input_layernorm.weight",
        "attn_norm.bias": "gpt_neox.layers.{i}.input_layernorm.bias",
        "attn_qkv.weight": "gpt_neox.layers.{i}.attention.query_key_value.weight",
        "attn_qkv.bias": "gpt_neox.layers.{i}.attention.query_key_value.bias",
        "attn_output.weight": "gpt_neox.layers.{i}.attention.dense.weight",
        "attn_output.bias": "gpt_neox.layers.{i}.attention.dense.bias",
        "ffn_norm.weight": "gpt_neox.layers.{i}.post_attention_layernorm.weight",
        "ffn_norm.bias": "gpt_neox.layers.{i}.post_attention_layernorm.bias",
        "ffn_up.weight": "gpt_neox.layers.{i}.mlp.dense_h_to_4h.weight",
        "ffn_up.bias": "gpt_neox.layers.{i}.mlp.dense_h_to_4h.bias",
        "ffn_down.weight": "gpt_neox.layers.{i}.mlp.dense_4h_to_h.weight",
        "ffn_down.bias": "gpt_neox.layers.{i}.mlp.dense_4h_to_h.bias",
    },
}
#: GGUF architecture → tensors outside the blocks: GGUF name → Hugging Face name.
_GLOBALS = {
    "qwen2": {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"},
    "gpt2": {"token_embd.weight": "transformer.wte.weight", "position_embd.weight": "transformer.wpe.weight",
             "output_norm.weight": "transformer.ln_f.weight", "output_norm.bias": "transformer.ln_f.bias",
             "output.weight": "lm_head.weight"},
    "gptneox": {"token_embd.weight": "gpt_neox.embed_in.weight",
                "output_norm.weight": "gpt_neox.final_layer_norm.weight",
                "output_norm.bias": "gpt_neox.final_layer_norm.bias", "output.weight": "embed_out.weight"},
}
ARCHITECTURES = tuple(_BLOCKS)
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")
_GPT2_TRANSPOSED = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")


def read_family(path, arch: str, meta: dict[str, Any], reader, notes: list[str], vocab_files,
                loader: Callable) -> tuple[Any, dict[str, LazyTensor], dict[str, dict]]:
    """The config, tensors (Hugging Face name → :class:`LazyTensor` in Hugging Face's layout)
    and per-tensor sources of a GGUF file of architecture ``arch`` (one of
    :data:`ARCHITECTURES`). ``loader(path, t, 0)`` is gguf_reader's loader of one tensor
    (copy or dequantization), in GGUF's (out, in) layout.

    Raises:
        LLMCLIError: missing or inconsistent metadata, a tensor that is missing, unexpected or
            of the wrong shape for the config (named).
    """
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    config = _config(path, arch, meta, shapes, notes, vocab_files)
    found: dict[str, LazyTensor] = {}
    sources: dict[str, dict] = {}
    for t in reader.tensors:
        gguf_shape = shapes[t.name]
        m = _BLOCK_RE.match(t.name)
        if t.name in _GLOBALS[arch]:
            hf, part = _GLOBALS[arch][t.name], t.name
        elif m and m.group(2) in _BLOCKS[arch] and int(m.group(1)) < config.num_hidden_layers:
            hf, part = _BLOCKS[arch][m.group(2)].format(i=int(m.group(1))), m.group(2)
        else:
            raise LLMCLIError(f"{path}: unexpected tensor {t.name} (not part of the {arch} "
                              "architecture llmcli converts)")
        transform, shape = _transform(arch, part, gguf_shape, config)
        found[hf] = LazyTensor(shape, _transformed(loader(path, t, 0), transform), int(t.n_bytes))
        sources[hf] = {"gguf_name": t.name, "type": t.tensor_type.name, "shape": list(shape),
                       "bytes": int(t.n_bytes)}
    return config, found, sources


def _transformed(load: Callable, transform: Callable | None) -> Callable:
    return load if transform is None else (lambda: transform(load()))


def _transform(arch: str, part: str, shape: tuple[int, ...], config):
    """(function from the GGUF tensor to Hugging Face's, Hugging Face's shape)."""
    if arch == "gpt2" and part in _GPT2_TRANSPOSED:             # Conv1D: (in, out)
        return (lambda x: x.t().contiguous()), shape[::-1]
    if arch == "gptneox" and part in ("attn_qkv.weight", "attn_qkv.bias"):
        H, Dh = config.num_attention_heads, config.head_dim

        def per_head(x):   # [q (H·Dh); k; v] → per head [q_h; k_h; v_h]
            rest = x.shape[1:]
            return x.reshape(3, H, Dh, *rest).transpose(0, 1).reshape(3 * H * Dh, *rest).contiguous()
        return per_head, shape
    return None, shape


def _config(path, arch: str, meta: dict[str, Any], shapes: dict, notes: list[str], vocab_files):
    from llmcli.config import GPT2Config, GPTNeoXConfig, Qwen2Config

    def get(key: str, default: Any = None, required: bool = False) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if required and value is None:
            raise LLMCLIError(f"{path}: GGUF metadata {arch}.{key} is missing")
        if isinstance(value, list):   # per-layer values: must all be equal
            if len(set(value)) != 1:
                raise LLMCLIError(f"{path}: {arch}.{key} varies by layer ({value[:4]}...); not supported")
            value = value[0]
        return value

    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise LLMCLIError(f"{path}: tensor {name} is missing")
        return shapes[name]

    D, N = get("embedding_length", required=True), get("block_count", required=True)
    H = get("attention.head_count", required=True)
    tokens = meta.get("tokenizer.ggml.tokens")
    rows = shape("token_embd.weight")[0]
    vocab = len(tokens) if tokens is not None else rows
    if rows != vocab:
        raise LLMCLIError(f"{path}: token_embd.weight has {rows} rows but the vocabulary has "
                          f"{vocab} tokens")
    context = get("context_length")
    if context is None:
        context = 2048
        notes.append(f"{arch}.context_length is absent; a context of 2048 assumed.")
    if vocab_files is not None:
        bos, eos_ids = vocab_files.bos_token_id, list(vocab_files.eos_token_ids)
    else:
        bos = meta.get("tokenizer.ggml.bos_token_id")
        eos = meta.get("tokenizer.ggml.eos_token_id")
        eos_ids = [] if eos is None else [eos]
    common = dict(vocab_size=vocab, tie_word_embeddings="output.weight" not in shapes,
                  bos_token_id=bos if bos is not None and 0 <= bos < vocab else None,
                  eos_token_id=[i for i in eos_ids if 0 <= i < vocab])
    theta = get("rope.freq_base")
    if arch != "gpt2" and theta is None:
        theta = 10000.0
        notes.append(f"{arch}.rope.freq_base is absent; rope_theta 10000 assumed (llama.cpp's default).")
    if arch != "gpt2" and meta.get(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise LLMCLIError(f"{path}: RoPE scaling type {meta[f'{arch}.rope.scaling.type']!r} is not "
                          f"supported for {arch}")
    try:
        if arch == "qwen2":
            eps = get("attention.layer_norm_rms_epsilon")
            if eps is None:
                eps = 1e-6
                notes.append("qwen2.attention.layer_norm_rms_epsilon is absent; 1e-6 assumed.")
            K = get("attention.head_count_kv", H)
            if "rope_freqs.weight" in shapes:
                raise LLMCLIError(f"{path}: per-frequency RoPE factors (rope_freqs.weight) are not supported")
            notes.append("Qwen2 GGUF files record no sliding window: use_sliding_window is false "
                         "(as llama.cpp computes Qwen2).")
            return Qwen2Config(hidden_size=D, num_hidden_layers=N, num_attention_heads=H,
                               num_key_value_heads=K, head_dim=shape("blk.0.attn_q.weight")[0] // H,
                               intermediate_size=get("feed_forward_length", required=True),
                               max_position_embeddings=context, rms_norm_eps=float(eps),
                               rope_theta=float(theta), use_sliding_window=False, **common,
                               source=str(path))
        eps = get("attention.layer_norm_epsilon")
        if eps is None:
            eps = 1e-5
            notes.append(f"{arch}.attention.layer_norm_epsilon is absent; 1e-5 assumed.")
        if arch == "gpt2":
            notes.append("GPT-2 GGUF files record no activation: gelu_new (GPT-2's, and what "
                         "llama.cpp computes) assumed; n_inner is read off ffn_up's shape.")
            positions = shape("position_embd.weight")[0]
            if positions != context:
                notes.append(f"n_positions = {positions} (the rows of position_embd.weight; "
                             f"gpt2.context_length says {context}).")
            return GPT2Config(n_embd=D, n_layer=N, n_head=H, n_positions=positions,
                              n_inner=shape("blk.0.ffn_up.weight")[0],
                              layer_norm_epsilon=float(eps), **common, source=str(path))
        head = D // H
        rot = get("rope.dimension_count", head)
        notes.append("GPT-NeoX GGUF files record no activation: gelu (Pythia's, and what "
                     "llama.cpp computes) assumed.")
        return GPTNeoXConfig(hidden_size=D, num_hidden_layers=N, num_attention_heads=H,
                             intermediate_size=get("feed_forward_length", required=True),
                             max_position_embeddings=context, layer_norm_eps=float(eps),
                             rotary_pct=rot / head, rope_theta=float(theta),
                             use_parallel_residual=bool(get("use_parallel_residual", True)),
                             attention_bias="blk.0.attn_qkv.bias" in shapes, **common,
                             source=str(path))
    except LLMCLIError as exc:
        raise LLMCLIError(f"{path}: GGUF metadata gives an invalid model: {exc}") from None
