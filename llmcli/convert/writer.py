"""Write a converted model as a Hugging Face directory, atomically.

``model.safetensors`` is streamed one tensor at a time (format: 8-byte little-endian header
length, a JSON header of ``{name: {dtype, shape, data_offsets}}`` padded with spaces to a
multiple of 8, then the raw little-endian tensor bytes), so converting a model needs memory
for one tensor, not the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from llmcli.convert.checkpoint import Checkpoint
from llmcli.errors import LLMCLIError

#: torch dtype name → safetensors dtype tag and bytes per element.
_ST_DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2),
              "int8": ("I8", 1), "uint8": ("U8", 1)}   # the integers of quantized blocks

Progress = Callable[[str, int, int], None]


def write_safetensors(path: Path, ckpt: Checkpoint, dtype: str,
                      on_progress: Progress | None = None, metadata: dict[str, str] | None = None) -> int:
    """Stream ``ckpt.tensors`` (HF names) into a safetensors file in ``dtype``; return its size.

    ``on_progress("converting", done, total)`` is called after each tensor, counting source
    bytes. ``metadata`` (strings → strings) joins ``{"format": "pt"}`` in the header's
    ``__metadata__``.
    """
    import numpy as np
    import torch

    tag, itemsize = _ST_DTYPES[dtype]
    torch_dtype = getattr(torch, dtype)
    header: dict[str, object] = {"__metadata__": {**(metadata or {}), "format": "pt"}}
    offset = 0
    for name, lazy in ckpt.tensors.items():
        n = 1
        for d in lazy.shape:
            n *= d
        tag, itemsize = _ST_DTYPES[lazy.dtype or dtype]   # lazy.dtype: stored as it is
        header[name] = {"dtype": tag, "shape": list(lazy.shape), "data_offsets": [offset, offset + n * itemsize]}
        offset += n * itemsize
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    total = sum(t.nbytes_source for t in ckpt.tensors.values())
    done = 0
    with path.open("wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        for name, lazy in ckpt.tensors.items():
            tensor = lazy.load()
            if tuple(tensor.shape) != lazy.shape:  # a reader bug, not a user error
                raise AssertionError(f"{name}: loaded {tuple(tensor.shape)}, declared {lazy.shape}")
            want = getattr(torch, lazy.dtype) if lazy.dtype else torch_dtype
            if lazy.dtype and tensor.dtype != want:   # a reader bug, not a user error
                raise AssertionError(f"{name}: loaded {tensor.dtype}, declared {lazy.dtype}")
            tensor = tensor.to(want).contiguous()
            if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: write its bits
                tensor = tensor.view(torch.int16)
            arr = tensor.numpy()
            if arr.dtype.byteorder == ">":  # pragma: no cover - big-endian hosts
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            fh.write(np.ascontiguousarray(arr).data)
            done += lazy.nbytes_source
            if on_progress:
                on_progress("converting", done, total)
    return 8 + len(blob) + offset


def write_model_dir(ckpt: Checkpoint, out_dir: Path, *, dtype: str, tokenizer_files: dict[str, bytes],
                    readme: str, force: bool = False, on_progress: Progress | None = None,
                    inputs=(), metadata: dict[str, str] | None = None) -> Path:
    """Write ``config.json``, ``generation_config.json``, ``model.safetensors`` (with
    ``metadata``), the ``tokenizer_files`` (name → bytes: ``tokenizer.model`` or
    ``tokenizer.json``, ``tokenizer_config.json``) and ``README.md`` into ``out_dir``; for a
    Checkpoint without a config (a vocabulary-only GGUF) only the tokenizer files and README.md.

    Everything goes to a hidden temporary directory beside ``out_dir`` that is renamed into
    place at the end, so an error or interruption leaves no output; an existing directory is
    replaced only under :mod:`llmcli.outputs`' rule (empty, or with ``force`` a model directory
    holding only files llmcli writes; never the current directory or one holding ``inputs``),
    and only once the new one is complete.

    Raises:
        LLMCLIError: ``out_dir`` may not be replaced (see :func:`check_out_dir`); it cannot be
            written.
    """
    from llmcli.outputs import building_dir

    out_dir = Path(out_dir)
    try:
        with building_dir(out_dir, None, force, inputs) as tmp:
            if ckpt.config is not None:
                write_safetensors(tmp / "model.safetensors", ckpt, dtype, on_progress, metadata)
                cfg = ckpt.config.to_dict()
                cfg["torch_dtype"] = dtype
                if ckpt.quantized:   # matrices kept quantized (llmcli.quant's stored form)
                    from llmcli.quant import quantization_config

                    cfg["quantization_config"] = quantization_config(ckpt.quantized)
                (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
                gen = {"bos_token_id": ckpt.config.bos_token_id}
                eos = ckpt.config.eos_token_id
                gen["eos_token_id"] = eos[0] if len(eos) == 1 else eos
                (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n",
                                                            encoding="utf-8")
            for name, data in tokenizer_files.items():
                (tmp / name).write_bytes(data)
            (tmp / "README.md").write_text(readme, encoding="utf-8")
    except OSError as exc:
        raise LLMCLIError(f"{out_dir}: cannot write the converted model ({exc})") from None
    return out_dir


def check_out_dir(out_dir: Path, force: bool, inputs=()) -> None:
    """Check ``out_dir`` before converting: :func:`llmcli.outputs.check_output_dir` (absent,
    empty, or with ``force`` a model directory llmcli wrote; not the current directory, not
    one holding ``inputs``, not a file or a symbolic link).

    Raises:
        LLMCLIError: as described.
    """
    from llmcli.outputs import check_output_dir

    check_output_dir(out_dir, None, force, inputs)
