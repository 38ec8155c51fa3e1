"""Read GGUF files (versions 2 and 3) of the ``llama`` architecture with the ``gguf`` package.

Format reference: the GGUF specification (ggml ``docs/gguf.md``) and llama.cpp's
``convert_hf_to_gguf.py``. What matters here:

* Tensor dimensions are stored in ggml's ``ne`` order (fastest-varying first), the reverse of
  PyTorch's; ``gguf.GGUFReader`` exposes the data with numpy (PyTorch) order, so a matrix
  ``ne = [D, V]`` arrives as ``(V, D)`` = Hugging Face ``(out_features, in_features)``.
* llama.cpp's converter permutes q and k rows from HF rotate-half into interleaved pairs
  (``LlamaModel.permute``); :func:`~llmcli.convert.checkpoint.interleaved_to_half` undoes it.
* Supported tensor types: F32, F16, BF16 and Q8_0 (dequantised with ``gguf.quants``).
* The vocabulary (``tokenizer.ggml.*``) of a ``"llama"`` (sentencepiece) tokenizer becomes a
  ``tokenizer.model`` (:mod:`llmcli.convert.sp_model`).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

from llmcli.convert.checkpoint import Checkpoint, LazyTensor, interleaved_to_half
from llmcli.errors import LLMCLIError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0")

#: GGUF tensor name (``{i}`` = layer) → (Hugging Face name, RoPE permutation: "q", "k" or None).
_LAYER_NAMES = {
    "attn_norm": ("input_layernorm", None),
    "attn_q": ("self_attn.q_proj", "q"),
    "attn_k": ("self_attn.k_proj", "k"),
    "attn_v": ("self_attn.v_proj", None),
    "attn_output": ("self_attn.o_proj", None),
    "ffn_norm": ("post_attention_layernorm", None),
    "ffn_gate": ("mlp.gate_proj", None),
    "ffn_up": ("mlp.up_proj", None),
    "ffn_down": ("mlp.down_proj", None),
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def field_value(field) -> Any:
    """The Python value of a ``gguf.ReaderField``: int, float, bool, str or a list of them.

    Written against the field's ``types``/``parts``/``data`` (present in every gguf release)
    rather than ``ReaderField.contents`` (newer releases only).
    """
    from gguf import GGUFValueType

    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        inner = field.types[-1] if len(field.types) > 1 else None
        if inner == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        if inner == GGUFValueType.ARRAY:
            raise ValueError("nested arrays are not supported")
        return [_scalar(field.parts[i], inner) for i in field.data]
    if kind == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return _scalar(field.parts[field.data[0]], kind)


def _scalar(part, kind) -> Any:
    from gguf import GGUFValueType

    value = part.tolist()[0]
    if kind == GGUFValueType.BOOL:
        return bool(value)
    return value


def read_gguf(path: Path, build_tokenizer: bool = True) -> Checkpoint:
    """Read a llama-architecture GGUF file → :class:`Checkpoint` (tensors lazily dequantised).

    Config from metadata: ``llama.embedding_length`` → hidden_size, ``feed_forward_length`` →
    intermediate_size, ``block_count`` → num_hidden_layers, ``attention.head_count`` /
    ``head_count_kv`` → heads, ``attention.layer_norm_rms_epsilon`` → rms_norm_eps,
    ``rope.freq_base`` → rope_theta (10000 when absent), ``context_length`` →
    max_position_embeddings, ``rope.scaling.type`` ``linear`` → rope_scaling; vocab size from
    ``tokenizer.ggml.tokens`` (else ``llama.vocab_size``, else ``token_embd``). ``output``
    absent means tied embeddings. BOS/EOS from ``tokenizer.ggml.bos/eos_token_id``.
    With ``build_tokenizer`` (default) the embedded vocabulary becomes
    ``Checkpoint.tokenizer_model``; pass False when the caller brings its own tokenizer.

    ``--dtype auto`` for the result: float32, float16 or bfloat16 when every matrix has that
    type (F32, F16, BF16), else float32 (Q8_0 or mixed).

    Raises:
        LLMCLIError: wrong magic, unsupported version, truncated or corrupt file, an
            architecture other than ``llama``, an unsupported tensor type (named), missing or
            unexpected tensors, metadata that does not match the tensors, RoPE features
            llmcli lacks (partial rotary, YaRN, per-frequency factors), mixture of experts, or
            a vocabulary that cannot become a sentencepiece model (see ``sp_model``).
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
    if head[:4] != GGUF_MAGIC:
        raise LLMCLIError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
    if len(head) < 8:
        raise LLMCLIError(f"{path}: truncated GGUF file ({size} bytes)")
    version = struct.unpack("<I", head[4:8])[0]
    if version & 0xFFFF == 0:  # a big-endian file reads as version << 24 in little-endian
        version = struct.unpack(">I", head[4:8])[0]
    if version not in SUPPORTED_VERSIONS:
        raise LLMCLIError(f"{path}: GGUF version {version} is not supported (supported: 2 and 3)")

    reader = _open_reader(path)
    meta = {name: _field(path, name, f) for name, f in reader.fields.items()
            if not name.startswith("GGUF.")}
    if (meta.get("split.count") or 1) > 1:
        raise LLMCLIError(f"{path}: is one part of a split GGUF ({meta['split.count']} files); merge "
                          "them first with llama.cpp's llama-gguf-split --merge")
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise LLMCLIError(f"{path}: GGUF architecture {arch!r} is not supported "
                          "(llmcli converts 'llama' only)")
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise LLMCLIError(f"{path}: truncated GGUF file: tensor {t.name} ends at byte "
                              f"{t.data_offset + t.n_bytes}, the file has {size}")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    bad = {name: ty for name, ty in types.items() if ty not in SUPPORTED_TYPES}
    if bad:
        name, ty = next(iter(bad.items()))
        kinds = ", ".join(sorted(set(bad.values())))
        raise LLMCLIError(f"{path}: tensor type {kinds} is not supported (e.g. {name} is {ty}); "
                          f"llmcli converts {', '.join(SUPPORTED_TYPES)} GGUF tensors only")

    if getattr(reader, "byte_order", "I") == "S" and set(types.values()) - {"F32", "F16"}:
        raise LLMCLIError(f"{path}: big-endian GGUF files are supported with F32 and F16 tensors only")
    notes: list[str] = []
    config = _config(path, meta, reader, notes)
    tensors = _tensors(path, reader, config)
    matrix_types = {types[t.name] for t in reader.tensors if len(t.shape) > 1}
    default = {frozenset({"F32"}): "float32", frozenset({"F16"}): "float16",
               frozenset({"BF16"}): "bfloat16"}.get(frozenset(matrix_types), "float32")
    counts = {}
    for ty in types.values():
        counts[ty] = counts.get(ty, 0) + 1
    notes.insert(0, "Tensor types in the file: " + ", ".join(f"{n} × {ty}" for ty, n in sorted(counts.items()))
                 + (" (Q8_0 dequantised with gguf.quants)" if "Q8_0" in counts else "") + ".")

    tokenizer_model = None
    if build_tokenizer and ("tokenizer.ggml.model" in meta or "tokenizer.ggml.tokens" in meta):
        tokenizer_model = _tokenizer(path, meta, notes)
    name = meta.get("general.name")
    fmt = f"GGUF version {version}" + (f" (general.name {name!r})" if name else "")
    return Checkpoint(config=config, tensors=tensors, format=fmt, default_dtype=default,
                      tokenizer_model=tokenizer_model, notes=notes)


def _open_reader(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(path, "r")
    except Exception as exc:  # a third-party parser of untrusted bytes: any failure = corrupt
        raise LLMCLIError(f"{path}: corrupt or truncated GGUF file ({type(exc).__name__}: {exc})") from None


def _field(path: Path, name: str, field) -> Any:
    try:
        return field_value(field)
    except Exception as exc:
        raise LLMCLIError(f"{path}: cannot read GGUF metadata {name} ({exc})") from None


def _config(path: Path, meta: dict[str, Any], reader, notes: list[str]):
    from llmcli.config import LlamaConfig

    def get(key: str, default: Any = None, required: bool = False) -> Any:
        value = meta.get(f"llama.{key}", default)
        if required and value is None:
            raise LLMCLIError(f"{path}: GGUF metadata llama.{key} is missing")
        if isinstance(value, list):  # per-layer values (e.g. head_count): must all be equal
            if len(set(value)) != 1:
                raise LLMCLIError(f"{path}: llama.{key} varies by layer ({value[:4]}...); not supported")
            value = value[0]
        return value

    if get("expert_count", 0):
        raise LLMCLIError(f"{path}: a mixture-of-experts model (llama.expert_count = "
                          f"{get('expert_count')}) is not supported")
    D = get("embedding_length", required=True)
    H = get("attention.head_count", required=True)
    K = get("attention.head_count_kv", H)
    head_dim = get("attention.key_length", D // H if H else 0)
    value_dim = get("attention.value_length", head_dim)
    if value_dim != head_dim:
        raise LLMCLIError(f"{path}: attention.key_length {head_dim} != value_length {value_dim}; not supported")
    rope_dims = get("rope.dimension_count", head_dim)
    if rope_dims != head_dim:
        raise LLMCLIError(f"{path}: partial rotary embeddings (rope.dimension_count {rope_dims} "
                          f"of head size {head_dim}) are not supported")
    tokens = meta.get("tokenizer.ggml.tokens")
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise LLMCLIError(f"{path}: tensor token_embd.weight is missing")
    if tokens is not None:
        vocab = len(tokens)
    elif get("vocab_size") is not None:
        vocab = get("vocab_size")
    else:
        vocab = int(embd.shape[-1])
    if int(embd.shape[-1]) != vocab:
        raise LLMCLIError(f"{path}: token_embd.weight has {int(embd.shape[-1])} rows but the "
                          f"vocabulary has {vocab} tokens")
    eps = get("attention.layer_norm_rms_epsilon")
    if eps is None:
        eps = 1e-5
        notes.append("llama.attention.layer_norm_rms_epsilon is absent; rms_norm_eps 1e-5 assumed.")
    theta = get("rope.freq_base")
    if theta is None:
        theta = 10000.0
        notes.append("llama.rope.freq_base is absent; rope_theta 10000 assumed (llama.cpp's default).")
    context = get("context_length")
    if context is None:
        context = 2048
        notes.append("llama.context_length is absent; max_position_embeddings 2048 assumed.")
    else:
        notes.append(f"max_position_embeddings = llama.context_length = {context}, as the GGUF "
                     "converter wrote it (some converters write a default, not the training context).")
    scaling = None
    rope_type = meta.get("llama.rope.scaling.type")
    if rope_type not in (None, "none"):
        if rope_type != "linear":
            raise LLMCLIError(f"{path}: RoPE scaling type {rope_type!r} is not supported "
                              "(supported: none, linear)")
        scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor", required=True))}
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise LLMCLIError(f"{path}: per-frequency RoPE factors (tensor rope_freqs.weight, Llama 3.1 "
                          "style) are not supported")
    bos = meta.get("tokenizer.ggml.bos_token_id", 1)
    eos = meta.get("tokenizer.ggml.eos_token_id", 2)
    try:
        return LlamaConfig(
            vocab_size=vocab, hidden_size=D, intermediate_size=get("feed_forward_length", required=True),
            num_hidden_layers=get("block_count", required=True), num_attention_heads=H,
            num_key_value_heads=K, head_dim=head_dim, max_position_embeddings=context,
            rms_norm_eps=float(eps), rope_theta=float(theta), rope_scaling=scaling,
            tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
            bos_token_id=bos if 0 <= bos < vocab else None,
            eos_token_id=[eos] if 0 <= eos < vocab else [])
    except LLMCLIError as exc:
        raise LLMCLIError(f"{path}: GGUF metadata gives an invalid model: {exc}") from None


def _tensors(path: Path, reader, config) -> dict[str, LazyTensor]:
    found: dict[str, LazyTensor] = {}
    for t in reader.tensors:
        if t.name in _GLOBAL_NAMES:
            hf, rope = _GLOBAL_NAMES[t.name], None
        else:
            m = _LAYER_RE.match(t.name)
            if not m or m.group(2) not in _LAYER_NAMES or int(m.group(1)) >= config.num_hidden_layers:
                raise LLMCLIError(f"{path}: unexpected tensor {t.name} (not part of the llama "
                                  "architecture llmcli converts)")
            base, rope = _LAYER_NAMES[m.group(2)]
            hf = f"model.layers.{int(m.group(1))}.{base}.weight"
        heads = {"q": config.num_attention_heads, "k": config.num_key_value_heads}.get(rope, 0)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        found[hf] = LazyTensor(shape, _loader(t, heads), int(t.n_bytes))
    return found


def _loader(t, rope_heads: int):
    def load():
        import numpy as np
        import torch
        from gguf import GGMLQuantizationType, quants

        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        kind = t.tensor_type
        if kind == GGMLQuantizationType.F32:
            tensor = torch.from_numpy(np.array(t.data, dtype=np.float32))
        elif kind == GGMLQuantizationType.F16:
            tensor = torch.from_numpy(np.array(t.data, dtype=np.float16))
        elif kind == GGMLQuantizationType.BF16:  # raw bytes: reinterpret as bfloat16, exactly
            raw = np.array(t.data, dtype=np.uint8).view(np.int16)
            tensor = torch.from_numpy(raw).view(torch.bfloat16)
        else:  # Q8_0: blocks of 32 int8 values with one float16 scale
            tensor = torch.from_numpy(np.ascontiguousarray(quants.dequantize(np.asarray(t.data), kind),
                                                           dtype=np.float32))
        tensor = tensor.reshape(shape)
        return interleaved_to_half(tensor, rope_heads) if rope_heads else tensor

    return load


def _tokenizer(path: Path, meta: dict[str, Any], notes: list[str]) -> bytes:
    from llmcli.convert.sp_model import build_sp_model

    model = meta.get("tokenizer.ggml.model")
    if model != "llama":
        kind = {"gpt2": "byte-level BPE (GPT-2 style)", "bert": "WordPiece", "t5": "T5 unigram",
                "rwkv": "RWKV"}.get(model, "non-sentencepiece")
        raise LLMCLIError(f"{path}: tokenizer.ggml.model is {model!r} ({kind}); only 'llama' "
                          "(sentencepiece) vocabularies can be written as tokenizer.model — "
                          "pass the original with --tokenizer if it is a sentencepiece model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise LLMCLIError(f"{path}: tokenizer.ggml.tokens is missing; pass --tokenizer")
    n = len(tokens)
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * n
    types = meta.get("tokenizer.ggml.token_type") or [1] * n
    if len(scores) != n or len(types) != n:
        raise LLMCLIError(f"{path}: tokenizer.ggml.scores/token_type lengths ({len(scores)}, "
                          f"{len(types)}) differ from the {n} tokens")

    def special(key: str, default: int) -> int:
        value = meta.get(f"tokenizer.ggml.{key}_token_id", default)
        return value if 0 <= value < n else -1

    add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    remove_ws = bool(meta.get("tokenizer.ggml.remove_extra_whitespaces", False))
    charsmap = meta.get("tokenizer.ggml.precompiled_charsmap")
    built = build_sp_model(
        tokens, scores, types, bos_id=special("bos", 1), eos_id=special("eos", 2),
        unk_id=special("unknown", 0), pad_id=special("padding", -1),
        add_dummy_prefix=add_prefix, remove_extra_whitespaces=remove_ws,
        precompiled_charsmap=bytes(charsmap) if charsmap else None, source=str(path))
    notes.append(
        f"tokenizer.model was built from the GGUF vocabulary ({n} pieces, sentencepiece "
        f"{built.model_type} inferred from the scores, byte_fallback {str(built.byte_fallback).lower()}, "
        f"add_dummy_prefix {str(add_prefix).lower()}, remove_extra_whitespaces {str(remove_ws).lower()}"
        + ("" if "tokenizer.ggml.remove_extra_whitespaces" in meta else
           " (not recorded in the file; llama.cpp's behaviour)") + ").")
    return built.data
