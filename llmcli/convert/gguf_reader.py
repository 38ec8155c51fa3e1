"""Read GGUF files (versions 2 and 3) with the ``gguf`` package: ``llama``-architecture models
(here), ``qwen2``, ``gpt2`` and ``gptneox`` models (:mod:`llmcli.convert.gguf_families`), or
vocabulary-only files of any architecture.

Reader: ``gguf.GGUFReader`` (ggml-org's own, on PyPI, numpy memory maps) for metadata and
tensor data, and ``gguf.quants.dequantize`` for every quantized type. It was kept over a
hand-written reader because it is the reference implementation of the format and of each
type's block layout; its one measured cost is opening files with big vocabularies (it makes a
numpy view per string: about 3 s for SmolLM2's 49k tokens and 49k merges, 10 s for Llama 3's
128k tokens and 280k merges on the development machine), which is small next to a conversion.

Format reference: the GGUF specification (ggml ``docs/gguf.md``) and llama.cpp's
``convert_hf_to_gguf.py``. What matters here:

* Tensor dimensions are stored in ggml's ``ne`` order (fastest-varying first), the reverse of
  PyTorch's; ``gguf.GGUFReader`` exposes the data with numpy (PyTorch) order, so a matrix
  ``ne = [D, V]`` arrives as ``(V, D)`` = Hugging Face ``(out_features, in_features)``.
* llama.cpp's converter permutes q and k rows from HF rotate-half into interleaved pairs
  (``LlamaModel.permute``); :func:`~llmcli.convert.checkpoint.interleaved_to_half` undoes it.
* Tensor types (:data:`SUPPORTED_TYPES`): F32, F16 and BF16 are copied exactly; every
  quantized type (Q4_0 ... Q8_0, the K-quants Q2_K ... Q6_K, the IQ and TQ types) is expanded
  to float32 by ``gguf.quants.dequantize`` (each block's scale times its integers, as ggml's
  ``dequantize_row_*``), then cast to the output dtype. The type of every tensor is recorded
  (:attr:`Checkpoint.sources`; written to ``model.safetensors``' metadata and README.md).
* The vocabulary (``tokenizer.ggml.*``) becomes Hugging Face tokenizer files
  (:mod:`llmcli.convert.gguf_vocab`): ``tokenizer.model`` for ``llama`` (sentencepiece),
  ``tokenizer.json`` for ``gpt2`` (byte-level BPE) and ``bert`` (WordPiece), and
  ``tokenizer_config.json`` with the chat template.
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
#: Tensor types converted: copied (F32, F16, BF16) or dequantized with ``gguf.quants``.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
                   "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                   "IQ1_S", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0")
_EXACT_TYPES = ("F32", "F16", "BF16")

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


def read_gguf(path: Path, build_tokenizer: bool = True, keep_quant: bool = False) -> Checkpoint:
    """Read a GGUF file → :class:`Checkpoint` (tensors lazily dequantised).

    A file with tensors must be of the ``llama`` architecture. Config from metadata:
    ``llama.embedding_length`` → hidden_size, ``feed_forward_length`` → intermediate_size,
    ``block_count`` → num_hidden_layers, ``attention.head_count`` / ``head_count_kv`` →
    heads, ``attention.layer_norm_rms_epsilon`` → rms_norm_eps, ``rope.freq_base`` →
    rope_theta (10000 when absent), ``context_length`` → max_position_embeddings,
    ``rope.scaling.type`` ``linear`` → rope_scaling; vocab size from ``tokenizer.ggml.tokens``
    (else ``llama.vocab_size``, else ``token_embd``). ``output`` absent means tied embeddings.
    BOS/EOS from the vocabulary's special ids (EOS: ``eos``, then ``eot``/``eom`` when set).

    A file without tensors (a vocabulary-only GGUF, such as llama.cpp's tokenizer tests) of
    any architecture gives a Checkpoint with ``config=None`` and no tensors: only its
    tokenizer is converted.

    With ``build_tokenizer`` (default) the embedded vocabulary becomes
    ``Checkpoint.tokenizer_files`` (:func:`~llmcli.convert.gguf_vocab.build_vocab`); pass False
    when the caller brings its own tokenizer.

    ``--dtype auto`` for the result: float32, float16 or bfloat16 when every matrix has that
    type (F32, F16, BF16), else float32 (any quantized type, or mixed).

    With ``keep_quant`` (``convert --quant keep``; ``llama`` architecture) the Q8_0, Q4_0 and
    Q4_1 matrices are kept as they are, their blocks copied into llmcli's stored form
    (:func:`llmcli.quant.from_ggml_blocks`; q/k rows permuted as whole rows of blocks, which
    is exact), recorded in :attr:`Checkpoint.quantized`; other matrix types are refused.

    Raises:
        LLMCLIError: wrong magic, unsupported version, truncated or corrupt file, an
            architecture other than ``llama``, an unsupported tensor type (named), missing or
            unexpected tensors, metadata that does not match the tensors, RoPE features
            llmcli lacks (partial rotary, YaRN, per-frequency factors), mixture of experts, or
            a vocabulary that cannot be rebuilt (see :mod:`~llmcli.convert.gguf_vocab`).
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
    name = meta.get("general.name")
    fmt = f"GGUF version {version}" + (f" (general.name {name!r})" if name else "")
    arch = meta.get("general.architecture")
    notes: list[str] = []
    if not reader.tensors:  # vocabulary only
        if not build_tokenizer:
            raise LLMCLIError(f"{path}: has no tensors; there is nothing to convert but its "
                              "vocabulary, and --tokenizer replaces that")
        vocab = _vocab(path, meta, notes, None)
        notes.insert(0, f"The file has no tensors (a vocabulary-only GGUF, architecture {arch!r}): "
                        "only the tokenizer was converted.")
        return Checkpoint(config=None, tensors={}, format=fmt, tokenizer_files=vocab.files,
                          notes=notes)
    from llmcli.convert.gguf_families import ARCHITECTURES, read_family

    if arch != "llama" and arch not in ARCHITECTURES:
        raise LLMCLIError(f"{path}: GGUF architecture {arch!r} is not supported "
                          f"(llmcli converts {', '.join(('llama',) + ARCHITECTURES)})")
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise LLMCLIError(f"{path}: truncated GGUF file: tensor {t.name} ends at byte "
                              f"{t.data_offset + t.n_bytes}, the file has {size}")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    bad = {tname: ty for tname, ty in types.items() if ty not in SUPPORTED_TYPES}
    if bad:
        tname, ty = next(iter(bad.items()))
        kinds = ", ".join(sorted(set(bad.values())))
        raise LLMCLIError(f"{path}: tensor type {kinds} is not supported (e.g. {tname} is {ty}); "
                          f"llmcli converts {', '.join(SUPPORTED_TYPES)}")

    if getattr(reader, "byte_order", "I") == "S" and set(types.values()) - {"F32", "F16"}:
        raise LLMCLIError(f"{path}: big-endian GGUF files are supported with F32 and F16 tensors only")
    vocab = None
    if build_tokenizer and ("tokenizer.ggml.model" in meta or "tokenizer.ggml.tokens" in meta):
        vocab = _vocab(path, meta, notes, meta.get(f"{arch}.context_length"))
    if keep_quant and arch != "llama":
        raise LLMCLIError(f"{path}: --quant keep converts llama-architecture GGUFs only (this "
                          f"one is {arch!r}); convert it without --quant keep (dequantized)")
    quantized: dict[str, str] = {}
    if arch == "llama":
        config = _config(path, meta, reader, notes, vocab)
        tensors, sources = _tensors(path, reader, config, quantized if keep_quant else None)
    else:   # qwen2, gpt2, gptneox: llmcli.convert.gguf_families
        config, tensors, sources = read_family(path, arch, meta, reader, notes, vocab, _loader)
    matrix_types = {types[t.name] for t in reader.tensors if len(t.shape) > 1}
    default = {frozenset({"F32"}): "float32", frozenset({"F16"}): "float16",
               frozenset({"BF16"}): "bfloat16"}.get(frozenset(matrix_types), "float32")
    counts: dict[str, int] = {}
    for ty in types.values():
        counts[ty] = counts.get(ty, 0) + 1
    qtypes = sorted(set(counts) - set(_EXACT_TYPES))
    how = ("kept as they are (llmcli's stored form of Q8_0/Q4_0/Q4_1 blocks, listed in "
           "config.json's quantization_config)" if keep_quant
           else "dequantized to float32 with gguf.quants.dequantize")
    notes.insert(0, "Tensor types in the file: " + ", ".join(f"{n} × {ty}" for ty, n in sorted(counts.items()))
                 + (f" ({', '.join(qtypes)} {how}; README.md and model.safetensors' metadata list "
                    "each tensor's type)" if qtypes else "") + ".")
    return Checkpoint(config=config, tensors=tensors, format=fmt, default_dtype=default,
                      tokenizer_files=vocab.files if vocab else None, notes=notes, sources=sources,
                      quantized=quantized)


def _vocab(path: Path, meta: dict[str, Any], notes: list[str], context: int | None):
    from llmcli.convert.gguf_vocab import build_vocab

    vocab = build_vocab(path, meta, context)
    notes.extend(vocab.notes)
    return vocab


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


def _config(path: Path, meta: dict[str, Any], reader, notes: list[str], vocab_files=None):
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
    if vocab_files is not None:  # the ids the tokenizer rebuild settled on (llama.cpp's rules)
        bos = -1 if vocab_files.bos_token_id is None else vocab_files.bos_token_id
        eos_ids = vocab_files.eos_token_ids
    else:
        bos = meta.get("tokenizer.ggml.bos_token_id", 1)
        eos = meta.get("tokenizer.ggml.eos_token_id", 2)
        eos_ids = [eos]
    try:
        return LlamaConfig(
            vocab_size=vocab, hidden_size=D, intermediate_size=get("feed_forward_length", required=True),
            num_hidden_layers=get("block_count", required=True), num_attention_heads=H,
            num_key_value_heads=K, head_dim=head_dim, max_position_embeddings=context,
            rms_norm_eps=float(eps), rope_theta=float(theta), rope_scaling=scaling,
            tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
            bos_token_id=bos if 0 <= bos < vocab else None,
            eos_token_id=[i for i in eos_ids if 0 <= i < vocab])
    except LLMCLIError as exc:
        raise LLMCLIError(f"{path}: GGUF metadata gives an invalid model: {exc}") from None


def _tensors(path: Path, reader, config, quantized: dict[str, str] | None = None
             ) -> tuple[dict[str, LazyTensor], dict[str, dict]]:
    """HF name → LazyTensor, and HF name → ``{"gguf_name", "type", "shape"}`` (the source).
    With ``quantized`` (a dict to fill: HF name → scheme), matrices are kept quantized
    (:func:`_kept`)."""
    found: dict[str, LazyTensor] = {}
    sources: dict[str, dict] = {}
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
        if quantized is not None and len(shape) == 2:
            found.update(_kept(path, t, hf, shape, heads, quantized))
        else:
            found[hf] = LazyTensor(shape, _loader(path, t, heads), int(t.n_bytes))
        sources[hf] = {"gguf_name": t.name, "type": t.tensor_type.name, "shape": list(shape),
                       "bytes": int(t.n_bytes)}
    return found, sources


def _kept(path: Path, t, hf: str, shape: tuple[int, int], rope_heads: int,
          quantized: dict[str, str]) -> dict[str, LazyTensor]:
    """The stored-form tensors (:mod:`llmcli.quant`: ``hf`` = integers, ``hf_scale``,
    ``hf_min``) of the Q8_0/Q4_0/Q4_1 matrix ``t``, each a LazyTensor with its storage dtype;
    records ``quantized[hf]``. Raises LLMCLIError for any other matrix type."""
    from llmcli import quant

    kind = t.tensor_type.name
    if kind not in quant.GGUF_TYPES:
        raise LLMCLIError(f"{path}: tensor {t.name} is {kind}; --quant keep keeps "
                          f"{', '.join(quant.GGUF_TYPES)} matrices only (convert without "
                          "--quant keep to dequantize every type)")
    scheme = quant.GGUF_TYPES[kind]
    quantized[hf] = scheme

    def blocks():
        import numpy as np
        import torch

        qt = quant.from_ggml_blocks(np.array(t.data, dtype=np.uint8), scheme, shape)
        if rope_heads:   # the row order interleaved_to_half gives, applied to rows of blocks
            order = interleaved_to_half(torch.arange(shape[0]).view(-1, 1), rope_heads).view(-1)
            qt = qt.rows(order)
        if not (torch.isfinite(qt.scale).all() and (qt.min is None or torch.isfinite(qt.min).all())):
            raise LLMCLIError(f"{path}: tensor {t.name} ({kind}) has non-finite scales (corrupt)")
        return qt

    parts = quant.stored_shape(scheme, shape)
    dtypes = {"": "int8" if scheme == "q8_0" else "uint8", "_scale": "float16", "_min": "float16"}
    attr = {"": "codes", "_scale": "scale", "_min": "min"}
    return {hf + sfx: LazyTensor(sub, (lambda a=attr[sfx]: getattr(blocks(), a)),
                                 int(t.n_bytes) if sfx == "" else 0, dtype=dtypes[sfx])
            for sfx, sub in parts.items()}


def _loader(path: Path, t, rope_heads: int):
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
        else:  # blocks of integers with per-block scales → float32 (gguf's numpy dequantizers)
            values = quants.dequantize(np.asarray(t.data), kind)
            if not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                raise LLMCLIError(f"{path}: tensor {t.name} ({kind.name}) dequantizes to {bad} "
                                  "non-finite values (corrupt scales)")
            tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        tensor = tensor.reshape(shape)
        return interleaved_to_half(tensor, rope_heads) if rope_heads else tensor

    return load
