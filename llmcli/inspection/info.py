"""What a model directory holds: config, tensors (from the safetensors headers), parameter
counts, tokenizer. Never imports torch and never reads tensor data, so it is instant even for
large checkpoints.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmcli.config import attention_kind
from llmcli.errors import LLMCLIError
from llmcli.weights import read_safetensors_header

#: safetensors dtype names → torch-style names (for display).
_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}

#: Buffers some exporters write beside the weights (RoPE frequencies, causal masks): not parameters.
_BUFFER_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias", ".attention.bias",
                    ".attention.masked_bias")


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    dtype: str
    nbytes: int
    file: str
    #: The tensor's type in the file it was converted from (GGUF: ``"Q4_K"``, ``"F32"``, ...;
    #: from the safetensors metadata ``gguf_tensor_types`` that ``llmcli convert`` writes), or None.
    source_type: str | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": self.shape, "dtype": self.dtype,
                "numel": self.numel, "bytes": self.nbytes, "file": self.file,
                "source_type": self.source_type}


@dataclass
class ModelInfo:
    """Everything ``llmcli info`` shows (plain data)."""

    model_dir: str
    architecture: str
    model_type: str
    config: dict                       # config.json as written
    derived: dict                      # head_dim, kv heads, rope type, ... as llmcli reads them
    context_length: int
    parameters: dict                   # total, embedding, lm_head, final_norm, per_block [...], block_breakdown
    tensors: list[TensorInfo]
    weights_bytes: int                 # sum of tensor sizes in the files
    files: list[dict]                  # [{"name", "bytes"}] of the directory
    tokenizer: dict | None             # vocab_size, special tokens, counts by kind; None if absent
    notes: list[str] = field(default_factory=list)
    #: where the weights were converted from: {"format", "types": {type: tensor count}}, or None
    source: dict | None = None

    def to_dict(self) -> dict:
        return {"model_dir": self.model_dir, "architecture": self.architecture,
                "model_type": self.model_type, "config": self.config, "derived": self.derived,
                "context_length": self.context_length, "parameters": self.parameters,
                "tensors": [t.to_dict() for t in self.tensors], "weights_bytes": self.weights_bytes,
                "files": self.files, "tokenizer": self.tokenizer, "notes": self.notes,
                "source": self.source}


def model_info(model_dir: Path | str) -> ModelInfo:
    """Describe ``model_dir`` (HF layout).

    Raises:
        LLMCLIError: no directory, a missing or invalid config.json, unreadable weights.
    """
    from llmcli.models import load_config
    from llmcli.weights import weight_files

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LLMCLIError(f"{model_dir}: no such model directory")
    config = load_config(model_dir / "config.json")
    arch = config.architecture()
    embed_name, head_name = arch.token_embedding + ".weight", arch.lm_head + ".weight"
    layer_re = re.compile(rf"^{re.escape(arch.layers)}\.(\d+)\.")
    raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    notes: list[str] = []

    tensors: list[TensorInfo] = []
    source: dict | None = None
    for path in weight_files(model_dir):
        header = read_safetensors_header(path)
        file_source = _conversion_source(path, notes)
        types = file_source["tensor_types"] if file_source else {}
        for name, meta in header.items():
            start, end = meta.get("data_offsets", [0, 0])
            tensors.append(TensorInfo(name=name, shape=list(meta.get("shape", [])),
                                      dtype=_DTYPE_NAMES.get(meta.get("dtype"), str(meta.get("dtype"))),
                                      nbytes=int(end) - int(start), file=path.name,
                                      source_type=types.get(name)))
        if file_source:
            source = source or {"format": file_source["format"], "types": {}}
            for ty in types.values():
                source["types"][ty] = source["types"].get(ty, 0) + 1
    qc = raw.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == "llmcli":   # llmcli.quant's blocks
        listed, by = qc.get("tensors") or {}, {t.name: t for t in tensors}
        for name, scheme in listed.items():
            t, parts = by.get(name), [by.get(name + sfx) for sfx in ("_scale", "_min")]
            if t is None or len(t.shape) != 2:
                continue      # the loader names the problem
            t.shape = [t.shape[0], t.shape[1] * (1 if scheme == "q8_0" else 2)]
            t.dtype, t.nbytes = scheme, t.nbytes + sum(p.nbytes for p in parts if p is not None)
        tensors = [t for t in tensors if t.name.rsplit("_", 1)[0] not in listed]
    tensors.sort(key=lambda t: _tensor_sort_key(t, arch, layer_re))
    by_name = {t.name: t for t in tensors}
    counted = [t for t in tensors if not t.name.endswith(_BUFFER_SUFFIXES)]
    if config.tie_word_embeddings and head_name in by_name:
        counted = [t for t in counted if t.name != head_name]
        notes.append(f"{head_name} is stored but tie_word_embeddings is true: the embedding is used")

    per_block = [0] * config.num_hidden_layers
    breakdown = {"attention": 0, "mlp": 0, "norms": 0}
    for t in counted:
        m = layer_re.match(t.name)
        if m and int(m.group(1)) < config.num_hidden_layers:
            per_block[int(m.group(1))] += t.numel
            if int(m.group(1)) == 0:
                part = ("attention" if f".{arch.attention_module}." in t.name else
                        "mlp" if f".{arch.mlp_module}." in t.name else "norms")
                breakdown[part] += t.numel
    embed = by_name.get(embed_name)
    lm_head = by_name.get(head_name)
    position = by_name.get(f"{arch.position_embedding}.weight") if arch.position_embedding else None
    parameters = {
        "total": sum(t.numel for t in counted),
        "embedding": embed.numel if embed else 0,
        "position_embedding": position.numel if position else 0,
        "lm_head": 0 if config.tie_word_embeddings or lm_head is None else lm_head.numel,
        "lm_head_tied": config.tie_word_embeddings,
        "final_norm": sum(t.numel for t in counted if t.name.startswith(arch.final_norm + ".")),
        "per_block": per_block,
        "block_breakdown": breakdown,  # of block 0 (every block has the same shapes)
    }
    derived = {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
               "num_attention_heads": config.num_attention_heads,
               "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim,
               "attention": attention_kind(config.num_attention_heads, config.num_key_value_heads),
               "intermediate_size": config.intermediate_size, "vocab_size": config.vocab_size,
               "tie_word_embeddings": config.tie_word_embeddings,
               "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
               "storage_dtype": embed.dtype if embed else None, "family": config.family,
               "context_length_field": config._field_name("max_position_embeddings"),
               "architecture": arch.to_dict()}
    for name in ("rope_theta", "rope_type", "rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps",
                 "rotary_dim", "sliding_window", "use_parallel_residual"):
        if hasattr(config, name):   # the family's own fields
            derived[name] = getattr(config, name)
    files = sorted(({"name": p.name, "bytes": p.stat().st_size} for p in model_dir.iterdir() if p.is_file()),
                   key=lambda f: f["name"])
    return ModelInfo(model_dir=str(model_dir), architecture=", ".join(raw.get("architectures") or [])
                     or config.architectures[0], model_type=config.model_type, config=raw, derived=derived,
                     context_length=config.max_position_embeddings, parameters=parameters,
                     tensors=tensors, weights_bytes=sum(t.nbytes for t in tensors), files=files,
                     tokenizer=tokenizer_info(model_dir, notes), notes=notes, source=source)


def _conversion_source(path: Path, notes: list[str]) -> dict | None:
    """``{"format", "tensor_types": {name: type}}`` from the safetensors metadata that
    ``llmcli convert`` writes for a GGUF source (keys ``source_format`` and the JSON object
    ``gguf_tensor_types``), or None. Read with the safetensors library's numpy side (no torch)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
    except Exception:  # the header was already validated; metadata is optional
        return None
    if "gguf_tensor_types" not in meta:
        return None
    try:
        types = json.loads(meta["gguf_tensor_types"])
        if not isinstance(types, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        notes.append(f"{path.name}: metadata gguf_tensor_types is not readable ({exc})")
        return None
    return {"format": meta.get("source_format", "GGUF"), "tensor_types": {str(k): str(v) for k, v in types.items()}}


def tokenizer_info(path: Path, notes: list[str] | None = None) -> dict | None:
    """The tokenizer of a model directory (or of one tokenizer file): its kind, file, vocabulary
    size, special tokens, BOS/EOS ids and whether BOS is added, and piece counts by kind;
    ``None`` (with a note) if there is none or it is unreadable. Either kind
    (:func:`llmcli.tokenizer.load_tokenizer` decides which a directory uses)."""
    from llmcli.tokenizer import Tokenizer, load_tokenizer

    path = Path(path)
    try:
        tok = load_tokenizer(path) if path.is_dir() else Tokenizer(path)
    except LLMCLIError as exc:
        if notes is not None:
            notes.append(str(exc))
        return None

    def special(token_id: int | None) -> dict | None:
        return None if token_id is None else {"id": token_id, "piece": tok.piece(token_id)}

    out = {"path": str(tok.path), "kind": tok.kind, "vocab_size": tok.vocab_size,
           "special": {"bos": special(tok.bos_id), "eos": special(tok.eos_id)},
           "eos_ids": list(tok.eos_ids), "add_bos": tok.add_bos}
    counts = tok.kind_counts()
    control = [{"id": i, "piece": tok.piece(i)} for i in tok.special_ids()]
    out["special"]["unk"] = special(tok.unk_id)
    out["special"]["pad"] = special(tok.pad_id)
    if tok.kind != "sentencepiece":
        out["model"] = tok.model_type
    out.update({"control_tokens": control, "kinds": counts, "byte_fallback": counts["byte"] == 256})
    return out


def _tensor_sort_key(t: TensorInfo, arch, layer_re: re.Pattern):
    """Embeddings first, then the blocks in order, the final norm, the output layer."""
    m = layer_re.match(t.name)
    if t.name.startswith((arch.token_embedding + ".", f"{arch.position_embedding}.")):
        return (0, 0, t.name)
    if m:
        return (1, int(m.group(1)), t.name)
    if t.name.startswith(arch.final_norm + "."):
        return (2, 0, t.name)
    return (3, 0, t.name)
