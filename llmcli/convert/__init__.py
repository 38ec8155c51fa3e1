"""Convert llama2.c checkpoints and GGUF files into Hugging Face model directories.

Pipeline: :func:`detect_format` (magic bytes and header) → a reader returning a
:class:`~llmcli.convert.checkpoint.Checkpoint` (:func:`~llmcli.convert.llama2c.read_llama2c`,
:func:`~llmcli.convert.gguf_reader.read_gguf`) → tokenizer (``--tokenizer`` or the GGUF's
vocabulary) → :func:`~llmcli.convert.writer.write_model_dir`. Entry point: :func:`convert`.

Nothing here unpickles: PyTorch ``.pt``/``.pth``/pickle ``.bin`` files are refused.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from llmcli.convert.checkpoint import OUTPUT_DTYPES, Checkpoint
from llmcli.convert.writer import Progress, check_out_dir
from llmcli.errors import LLMCLIError, UsageError

FORMATS = ("llama2c", "gguf")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle")

__all__ = ["FORMATS", "OUTPUT_DTYPES", "ConvertResult", "convert", "detect_format", "sha256_file"]


@dataclass
class ConvertResult:
    """What :func:`convert` wrote: the directory, source format, dtype and tensor count."""

    out_dir: Path
    format: str
    dtype: str
    num_tensors: int
    num_parameters: int
    notes: list[str]


def _pickle_error(path: Path) -> LLMCLIError:
    return LLMCLIError(
        f"{path}: is a pickled PyTorch checkpoint; llmcli never unpickles files (unpickling can "
        "run arbitrary code): convert it to safetensors where you trust it (e.g. transformers' "
        "save_pretrained(..., safe_serialization=True)) or export it with llama2.c's export.py")


def _looks_pickled(head: bytes, path: Path) -> bool:
    # torch.save writes a zip archive (PK\x03\x04); older files are a bare pickle whose first
    # bytes are PROTO (0x80) and a protocol number 2..5.
    return (head.startswith(_ZIP_MAGIC) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)
            or path.suffix.lower() in _PICKLE_SUFFIXES)


def detect_format(path: Path, forced: str | None = None) -> str:
    """``"llama2c"`` or ``"gguf"``, from the file's first bytes (``forced`` overrides).

    GGUF starts with ``b"GGUF"``; llama2.c version 1 with the uint32 0x616b3432 ("ak42");
    a legacy llama2.c file has no magic, so it is recognised by seven plausible header fields
    whose implied size equals the file's size.

    Raises:
        LLMCLIError: a pickled PyTorch file (zip or pickle), a safetensors file, an empty or
            unrecognised file, or ``forced="gguf"`` on a file without the GGUF magic.
        UsageError: ``forced`` is not one of :data:`FORMATS`.
    """
    from llmcli.convert import llama2c

    if forced is not None and forced not in FORMATS:
        raise UsageError(f"--from: {forced!r} is not one of {', '.join(FORMATS)}")
    size = path.stat().st_size
    if size == 0:
        raise LLMCLIError(f"{path}: is empty")
    with path.open("rb") as fh:
        head = fh.read(256)
    is_gguf = head.startswith(b"GGUF")
    legacy = llama2c.legacy_layout(head, size)
    legacy_exact = legacy is not None and legacy[1] == size
    if forced == "gguf":
        if is_gguf:
            return "gguf"
        if _looks_pickled(head, path) and not legacy_exact:
            raise _pickle_error(path)
        raise LLMCLIError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
    if forced == "llama2c":
        if not llama2c.is_v1(head) and not legacy_exact and _looks_pickled(head, path):
            raise _pickle_error(path)
        return "llama2c"
    if is_gguf:
        return "gguf"
    if llama2c.is_v1(head):
        return "llama2c"
    if head.startswith(_ZIP_MAGIC):
        raise _pickle_error(path)
    if legacy_exact:
        return "llama2c"
    if _looks_pickled(head, path):
        raise _pickle_error(path)
    if len(head) >= 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < size:
        raise LLMCLIError(f"{path}: is already a safetensors file; put it in a directory with "
                          "config.json and tokenizer.model instead of converting it")
    if legacy is not None:
        fields = ", ".join(f"{k}={v}" for k, v in legacy[0].items())
        raise LLMCLIError(f"{path}: unrecognised format: no GGUF or llama2.c v1 magic, and as a "
                          f"llama2.c legacy checkpoint its header ({fields}) implies {legacy[1]} bytes "
                          f"but the file has {size} (truncated, or not a llama2.c file)")
    raise LLMCLIError(f"{path}: unrecognised format: not GGUF (magic b'GGUF'), llama2.c version 1 "
                      "(magic 'ak42') or a llama2.c legacy checkpoint (header does not fit the file)")


def sha256_file(path: Path, on_progress: Progress | None = None) -> str:
    """Hex SHA-256 of ``path``, read in 4 MiB chunks (``on_progress("hashing", done, total)``)."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as fh:
        while chunk := fh.read(4 << 20):
            digest.update(chunk)
            done += len(chunk)
            if on_progress:
                on_progress("hashing", done, total)
    return digest.hexdigest()


def convert(src: Path | str, out_dir: Path | str, *, source_format: str | None = None,
            tokenizer: Path | str | None = None, dtype: str = "auto", force: bool = False,
            command: str | None = None, on_progress: Progress | None = None,
            quant: str = "none") -> ConvertResult:
    """Convert ``src`` (llama2.c ``.bin`` or ``.gguf``) into the HF model directory ``out_dir``.

    ``tokenizer``: a sentencepiece ``.model`` copied as is (required for llama2.c, whose
    files carry no vocabulary; for GGUF it replaces the embedded vocabulary). ``dtype``:
    ``auto`` (the source's: see the readers) or float32/float16/bfloat16. ``command`` is
    recorded in README.md. ``on_progress(phase, done, total)`` reports bytes per phase
    (``"hashing"``, ``"converting"``). ``quant``: ``none`` (every tensor as float) or ``keep``
    (a GGUF's Q8_0/Q4_0/Q4_1 matrices kept as blocks, :mod:`llmcli.quant`; other types refused).

    Raises:
        LLMCLIError: missing/unreadable source, bad or unsupported input (see
            :func:`detect_format` and the readers), a tokenizer that is missing or whose
            vocabulary size differs from the model's; an ``out_dir`` that may not be replaced
            (:func:`llmcli.outputs.check_output_dir`: an existing model directory without
            ``force``, a directory holding other files, the current directory or the source's).
        UsageError: a bad ``source_format`` or ``dtype``.
    """
    from llmcli import __version__
    from llmcli.convert.sp_model import load_tokenizer_file
    from llmcli.convert.writer import write_model_dir
    from llmcli.weights import expected_shapes

    src, out_dir = Path(src), Path(out_dir)
    if dtype not in OUTPUT_DTYPES:
        raise UsageError(f"--dtype: {dtype!r} is not one of {', '.join(OUTPUT_DTYPES)}")
    if quant not in ("none", "keep"):
        raise UsageError(f"--quant: {quant!r} is not one of none, keep")
    if not src.exists():
        raise LLMCLIError(f"{src}: no such file")
    if not src.is_file():
        raise LLMCLIError(f"{src}: is not a file")
    check_out_dir(out_dir, force, inputs=[src])
    tok_data = tok_size = None
    if tokenizer is not None:
        tok_data, tok_size = load_tokenizer_file(Path(tokenizer))

    fmt = detect_format(src, source_format)
    try:
        if fmt == "gguf":
            from llmcli.convert.gguf_reader import read_gguf

            ckpt = read_gguf(src, build_tokenizer=tok_data is None, keep_quant=quant == "keep")
        else:
            if quant == "keep":
                raise UsageError(f"--quant keep: {src} is a llama2.c checkpoint (float); only "
                                 "GGUF files hold quantized blocks to keep")
            from llmcli.convert.llama2c import read_llama2c

            ckpt = read_llama2c(src)
    except OSError as exc:
        raise LLMCLIError(f"{src}: cannot read ({exc.strerror or exc})") from None

    if tok_data is not None:
        if ckpt.config is not None and tok_size != ckpt.config.vocab_size:
            raise LLMCLIError(f"{tokenizer}: tokenizer has {tok_size} pieces but the model's "
                              f"vocab_size is {ckpt.config.vocab_size}; pass the tokenizer the model "
                              "was trained with")
        tok_files = {"tokenizer.model": tok_data}
        tok_note = f"tokenizer.model is a copy of {Path(tokenizer).name} (sha256 {hashlib.sha256(tok_data).hexdigest()})."
    elif ckpt.tokenizer_files:
        tok_files, tok_note = ckpt.tokenizer_files, None
    else:
        what = "llama2.c checkpoints carry" if fmt == "llama2c" else "this GGUF file carries"
        raise LLMCLIError(f"{src}: {what} no tokenizer; pass the sentencepiece model the model was "
                          "trained with, e.g. --tokenizer tokenizer.model")
    if fmt == "llama2c" and tokenizer is not None:
        _adopt_special_ids(ckpt, tok_data)

    if ckpt.config is not None:
        shapes = expected_shapes(ckpt.config)
        from llmcli.quant import BLOCK, stored_shape
        parts = set()
        for name, shape in shapes.items():
            if name not in ckpt.tensors:
                raise LLMCLIError(f"{src}: tensor {name} {list(shape)} is missing")
            got = ckpt.tensors[name].shape
            if name in ckpt.quantized:   # stored form: compare the matrix it holds
                sub = {k: v for k, v in stored_shape(ckpt.quantized[name], (shape[0], shape[-1])).items()}
                ok = len(shape) == 2 and shape[1] % BLOCK == 0 and got == sub[""]
                parts |= {name + sfx for sfx in sub if sfx}
                got = shape if ok else got
            if got != shape:
                raise LLMCLIError(f"{src}: tensor for {name} has shape {list(got)}, "
                                  f"expected {list(shape)} from the metadata")
        extra = sorted(set(ckpt.tensors) - set(shapes) - parts)
        if extra:
            raise LLMCLIError(f"{src}: unexpected tensor(s) {', '.join(extra)}")

    out_dtype = ckpt.default_dtype if dtype == "auto" else dtype
    digest = sha256_file(src, on_progress)
    notes = list(ckpt.notes) + ([tok_note] if tok_note else [])
    readme = _readme(src, out_dir, ckpt, digest, out_dtype, notes, command, __version__)
    metadata = None
    if ckpt.sources:  # where each tensor came from, for `llmcli info` (safetensors metadata: strings)
        metadata = {"source_format": ckpt.format.split(" (")[0], "source_file": src.name,
                    "gguf_tensor_types": json.dumps({k: v["type"] for k, v in ckpt.sources.items()},
                                                    separators=(",", ":"))}
    write_model_dir(ckpt, out_dir, dtype=out_dtype, tokenizer_files=tok_files, readme=readme,
                    force=force, on_progress=on_progress, inputs=[src], metadata=metadata)
    n_params = 0
    for name, t in ckpt.tensors.items():
        if t.dtype == "float16" and name.rsplit("_", 1)[0] in ckpt.quantized:
            continue   # a quantized matrix's scales or minimums
        n = 1
        for d in t.shape:
            n *= d
        n_params += n * (2 if t.dtype == "uint8" else 1)   # two 4-bit integers per byte
    if ckpt.quantized:
        from llmcli.quant import summary
        out_dtype = f"{out_dtype}, blocks kept: {summary(ckpt.quantized)}"
    return ConvertResult(out_dir, ckpt.format, out_dtype if ckpt.config is not None else "tokenizer only",
                         len(ckpt.tensors), n_params, notes)


def _adopt_special_ids(ckpt: Checkpoint, tok_data: bytes) -> None:
    """Take BOS/EOS ids from the tokenizer when it defines them (llama2.c files do not)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(tok_data)
    if sp.bos_id() >= 0:
        ckpt.config.bos_token_id = sp.bos_id()
    if sp.eos_id() >= 0:
        ckpt.config.eos_token_id = [sp.eos_id()]


def _readme(src: Path, out_dir: Path, ckpt: Checkpoint, digest: str, dtype: str,
            notes: list[str], command: str | None, version: str) -> str:
    cfg = ckpt.config
    lines = [
        f"# {out_dir.name}",
        "",
        f"Converted by `llmcli convert` (llmcli {version}) from a {ckpt.format} file.",
        "",
        "| | |",
        "|---|---|",
        f"| Source file | `{src.name}` |",
        f"| Source size | {src.stat().st_size} bytes |",
        f"| Source sha256 | `{digest}` |",
        f"| Source format | {ckpt.format} |",
    ]
    files = ", ".join(f"`{name}`" for name in sorted(ckpt.tokenizer_files or {"tokenizer.model": b""}))
    if cfg is None:
        lines.append(f"| Contents | the tokenizer only ({files}); the source has no weights |")
    else:
        lines += [
            f"| Weights | `model.safetensors`, {dtype} |",
            f"| Shape | {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, intermediate "
            f"{cfg.intermediate_size}, {cfg.num_attention_heads} heads ({cfg.num_key_value_heads} KV), "
            f"vocab {cfg.vocab_size}, context {cfg.max_position_embeddings} |",
            f"| Tokenizer | {files} |",
        ]
        if ckpt.sources:
            counts: dict[str, int] = {}
            for source in ckpt.sources.values():
                counts[source["type"]] = counts.get(source["type"], 0) + 1
            lines.append("| Source tensor types | " + ", ".join(
                f"{ty} × {n}" for ty, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) + " |")
    if command:
        lines.append(f"| Command | `{command}` |")
    lines += ["", "## Conversion", ""]
    if cfg is not None and cfg.family == "llama":
        lines.append("- q_proj and k_proj rows were permuted per head from interleaved-pair RoPE "
                     "(llama2.c / Meta / llama.cpp layout) to Hugging Face's rotate-half layout "
                     f"({cfg.num_attention_heads} query heads, {cfg.num_key_value_heads} key/value heads).")
    lines += [f"- {note}" for note in notes]
    if cfg is not None:
        undone = {"gpt2": "GPT-2's Conv1D matrices (c_attn, c_proj, c_fc) transposed back to "
                          "(in, out); ",
                  "gpt_neox": "query_key_value rows regrouped per head (llama.cpp stores all "
                              "queries, then all keys, then all values); "}.get(cfg.family, "")
        loads = (f"with `llmcli` and with transformers' `{cfg.architectures[0]}.from_pretrained`"
                 if not ckpt.quantized else
                 f"with `llmcli` only: {len(ckpt.quantized)} matrices are kept quantized (their "
                 "integers in `X.weight`, float16 `X.weight_scale`/`X.weight_min`; config.json's "
                 "quantization_config, quant_method `llmcli`, names each one's scheme), which "
                 "transformers refuses")
        lines.append(f"- {undone}Tensors were renamed to Hugging Face {type(cfg).title} names; the "
                     f"result loads {loads}.")
    if ckpt.sources:
        lines += ["", "## Source tensors", "",
                  "Each tensor's name and type in the GGUF file (also in `model.safetensors`' "
                  "metadata, `gguf_tensor_types`, which `llmcli info` shows).", "",
                  "| tensor | GGUF tensor | GGUF type |", "|---|---|---|"]
        lines += [f"| `{name}` | `{s['gguf_name']}` | {s['type']} |" for name, s in ckpt.sources.items()]
    return "\n".join(lines) + "\n"
