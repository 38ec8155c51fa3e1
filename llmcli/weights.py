"""Loading and saving model directories in the Hugging Face layout.

A model directory holds ``config.json``, weights in ``model.safetensors`` or in shards listed by
``model.safetensors.index.json``, ``tokenizer.model`` (sentencepiece) and optionally
``generation_config.json``. Weights are read with the ``safetensors`` library (memory-mapped,
never unpickled).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from llmcli.errors import LLMCLIError, UsageError

DTYPES = ("auto", "float32", "bfloat16", "float16")
_LFS_MAGIC = b"version https://git-lfs"
_MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit on the JSON header


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of ``model_dir``: one file, or the shards named by the index.

    Raises:
        LLMCLIError: no weights, a pickled checkpoint only, or a bad/incomplete index.
    """
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise LLMCLIError(f"{index}: not a valid safetensors index ({exc})") from None
        files = []
        for name in dict.fromkeys(weight_map.values()):
            shard = model_dir / name
            if not shard.is_file():
                raise LLMCLIError(f"{shard}: shard listed in {index.name} is missing")
            files.append(shard)
        return files
    if single.is_file():
        return [single]
    for path in (index, single):
        if path.exists() or path.is_symlink():
            what = "a directory" if path.is_dir() else ("a broken link" if not path.exists()
                                                        else "not a regular file")
            raise LLMCLIError(f"{path}: {what}, not a safetensors file")
    pickled = [p.name for p in model_dir.glob("*.bin")] + [p.name for p in model_dir.glob("*.pt*")]
    if pickled:
        raise LLMCLIError(f"{model_dir}: only pickled weights ({', '.join(sorted(pickled))}); "
                          "llmcli reads safetensors only (never unpickles); convert them first")
    raise LLMCLIError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file: ``{name: {"dtype", "shape", "data_offsets"}}``
    (``__metadata__`` removed). Reads only the header, so it is cheap and needs no torch.

    Raises:
        LLMCLIError: a Git LFS pointer, not a safetensors file, a corrupt header, or a file
            shorter than its header says (truncated), each with the path and the sizes.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(64)
        if head.startswith(_LFS_MAGIC):
            raise LLMCLIError(f"{path}: is a Git LFS pointer, not the weights "
                              "(run `git lfs pull` in the model's repository)")
        if size < 8:
            raise LLMCLIError(f"{path}: truncated ({size} bytes), not a safetensors file")
        n = int.from_bytes(head[:8], "little")
        if not 0 < n <= _MAX_HEADER_BYTES or head[8:9] != b"{":
            raise LLMCLIError(f"{path}: not a safetensors file (bad header)")
        if 8 + n > size:
            raise LLMCLIError(f"{path}: truncated ({size} bytes; its header alone needs {8 + n})")
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LLMCLIError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise LLMCLIError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    try:
        data_end = max((int(meta["data_offsets"][1]) for meta in header.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise LLMCLIError(f"{path}: corrupt safetensors header (bad data_offsets)") from None
    if 8 + n + data_end > size:
        raise LLMCLIError(f"{path}: truncated ({size} bytes; its header describes {8 + n + data_end})")
    return header


def read_tensors(files: list[Path]) -> dict[str, Any]:
    """Memory-map every tensor of ``files`` → ``{name: torch.Tensor}`` (storage dtype).

    Raises:
        LLMCLIError: a file is corrupt, truncated or not safetensors; a tensor is duplicated.
    """
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, Any] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as fh:
                for name in fh.keys():
                    if name in tensors:
                        raise LLMCLIError(f"{path}: tensor {name} appears in more than one shard")
                    tensors[name] = fh.get_tensor(name)
        except SafetensorError as exc:
            read_safetensors_header(path)  # names the problem (LFS pointer, truncation, ...)
            raise LLMCLIError(f"{path}: corrupt or truncated safetensors file ({exc})") from None
        except (OSError, ValueError, RuntimeError) as exc:
            read_safetensors_header(path)
            raise LLMCLIError(f"{path}: cannot read safetensors file ({exc})") from None
    return tensors


def tensor_locations(files: list[Path]) -> dict[str, tuple[Path, int, int]]:
    """Where each tensor's bytes lie: ``{name: (file, first byte, end byte)}`` (offsets from
    the start of the file, from the safetensors header).

    Raises:
        LLMCLIError: as :func:`read_safetensors_header`.
    """
    where = {}
    for path in files:
        header = read_safetensors_header(path)
        with path.open("rb") as fh:
            data_start = 8 + int.from_bytes(fh.read(8), "little")
        for name, meta in header.items():
            first, end = (int(x) for x in meta["data_offsets"])
            where[name] = (path, data_start + first, data_start + end)
    return where


#: bytes read from a weights file at a time while loading (the only temporary buffer)
_CHUNK_BYTES = 16 << 20


def read_into(dest, path: Path, first: int, end: int, dtype) -> None:
    """Copy one stored tensor, ``dtype`` and ``dest``'s shape, C order, at bytes
    ``[first, end)`` of ``path``, into ``dest`` (any strides, dtype or device: converted).

    Read with plain file reads in chunks of about :data:`_CHUNK_BYTES` (whole rows), so
    the peak memory is ``dest`` plus one chunk: no memory map stays resident beside the
    model's copy of the weights, whatever layout ``dest`` has.

    Raises:
        LLMCLIError: the file is shorter than its header says.
    """
    import torch

    item = torch.empty((), dtype=dtype).element_size()
    shape = tuple(dest.shape)
    if end - first != item * math.prod(shape):
        raise LLMCLIError(f"{path}: tensor bytes [{first}, {end}) do not hold {list(shape)} {dtype}")
    rows = shape[0] if shape else 1
    row_bytes = (end - first) // rows if rows else 0
    step = max(1, _CHUNK_BYTES // row_bytes) if row_bytes else rows
    target = dest if shape else dest.view(1)
    transposed = len(shape) == 2 and not dest.is_contiguous() and dest.t().is_contiguous()
    with path.open("rb") as fh:
        fh.seek(first)
        for r0 in range(0, rows, step):
            r = min(step, rows - r0)
            buf = bytearray(r * row_bytes)
            if fh.readinto(buf) != len(buf):
                raise LLMCLIError(f"{path}: truncated (a tensor's data ends past the end of the file)")
            chunk = torch.frombuffer(buf, dtype=dtype).view(r, *shape[1:])
            if transposed:   # (out, in) view of (in, out) storage: columns r0.. of the storage
                # torch's blocked transpose (a contiguous destination), then whole rows
                target[r0:r0 + r].t().copy_(chunk.t().contiguous())
            else:
                target[r0:r0 + r].copy_(chunk)


def build_empty(cls, config):
    """``cls(config)`` on the meta device (shapes and dtypes, no memory), without running
    the modules' random initialisation: ``normal_`` on a meta tensor goes through torch's
    reference implementations, which import ``torch._dynamo`` (1-2 s of start-up)."""
    import torch

    with _no_init(), torch.device("meta"):
        return cls(config)


class _no_init:
    """Within: ``torch.nn.init``'s in-place initialisers return their tensor untouched (as
    transformers' ``no_init_weights``)."""

    NAMES = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
             "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
             "orthogonal_", "sparse_")

    def __enter__(self):
        from torch.nn import init

        self.saved = {n: getattr(init, n) for n in self.NAMES if hasattr(init, n)}
        for name in self.saved:
            setattr(init, name, _keep)
        return self

    def __exit__(self, *exc) -> None:
        from torch.nn import init

        for name, fn in self.saved.items():
            setattr(init, name, fn)


def _keep(tensor, *args, **kwargs):
    return tensor


class _mmap_allocations:
    """Within: glibc's malloc serves every block of 256 KiB or more with its own mmap, so a
    freed one goes back to the system at once (loading frees the chunk buffers and the
    unfused q/k/v, gate/up matrices: served from the heap they stayed resident, +150-200 MiB
    of peak RSS on SmolLM2). Afterwards the threshold is fixed at 32 MiB, the most glibc's
    own adaptive threshold reaches. Nothing happens without glibc."""

    M_MMAP_THRESHOLD = -3

    def __enter__(self):
        try:
            import ctypes

            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallopt(self.M_MMAP_THRESHOLD, 256 << 10)
        except (OSError, AttributeError):
            self.libc = None
        return self

    def __exit__(self, *exc) -> None:
        if self.libc is not None:
            self.libc.mallopt(self.M_MMAP_THRESHOLD, 32 << 20)


def fast_layout_names(model) -> set[str]:
    """The parameters :func:`llmcli.fastpath.relayout_linears` stores transposed, (in, out)
    row-major behind an (out, in) view: every ``nn.Linear`` weight, and the token embedding
    when it is tied to one. The loader writes them in that layout straight away (a view is
    left as it is by the relayout), so the weights are never held twice."""
    from torch import nn

    names = {f"{prefix}.weight" for prefix, m in model.named_modules() if isinstance(m, nn.Linear)}
    if model.config.tie_word_embeddings:
        names.add(type(model).EMBEDDING_NAME)
    return names


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every tensor name a checkpoint of ``config``'s family must hold → its shape, as stored
    (Hugging Face names and layout: GPT-2's Conv1D matrices (in, out)). A tied output matrix
    is left out (checkpoints written by transformers omit it). Read off the family's model
    built on the meta device, so it always matches the model."""
    import torch

    from llmcli.models import model_class

    cls = model_class(config)
    model = build_empty(cls, config)
    shapes = {}
    for name, tensor in model.state_dict().items():
        if config.tie_word_embeddings and name == cls.OUTPUT_NAME:
            continue
        shape = tuple(tensor.shape)
        shapes[name] = shape[::-1] if name.endswith(cls.TRANSPOSED_IN_CHECKPOINT) else shape
    return shapes


def resolve_dtype(dtype: str, device: str, storage_dtype) -> Any:
    """The torch dtype to compute in.

    ``auto`` picks float32 on CPU whatever the storage dtype: CPU matmuls in float16 are slow
    or unsupported and bfloat16 ones are slower than float32 on most CPUs, and float32 gives
    results closest to the reference. On CUDA/MPS ``auto`` keeps the checkpoint's dtype.

    Raises:
        UsageError: an unknown dtype name.
    """
    import torch

    if dtype not in DTYPES:
        raise UsageError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float32 if device == "cpu" else storage_dtype
    return getattr(torch, dtype)


def load_model(model_dir: Path | str, dtype: str = "auto", device: str = "cpu",
               warn=None, quant: str | None = None):
    """Load a model directory of any family in :data:`llmcli.models.FAMILIES` →
    ``(model, config)`` in eval mode, with the decoding fast path installed
    (:func:`llmcli.fastpath.install`).

    The checkpoint's tensors are copied as they are (same names), except the matrices a
    family stores transposed (GPT-2's Conv1D), which are transposed here, once.
    ``warn`` (callable taking one string) receives notices such as unknown extra tensors.

    Raises:
        LLMCLIError: missing directory/config/weights, unsupported architecture, a tensor
            missing or of the wrong shape (named), weights llmcli cannot use as stored
            (:func:`check_tensors`: quantised, integer or float8 tensors, scales, undeclared
            biases, extra blocks), or a corrupt weights file.
        UsageError: a bad ``dtype`` or unavailable ``device``.
    """
    import torch

    from llmcli.fastpath import install
    from llmcli.models import load_config, model_class

    model_dir = Path(model_dir)
    if model_dir.is_file():
        raise LLMCLIError(f"{model_dir}: is a file; give the model directory (the one holding "
                          "config.json and the weights)")
    if not model_dir.is_dir():
        raise LLMCLIError(f"{model_dir}: no such model directory")
    config = load_config(model_dir / "config.json")
    cls = model_class(config)
    files = weight_files(model_dir)
    raw = read_tensors(files)             # memory-mapped: names, shapes, dtypes; data untouched
    where = tensor_locations(files)
    location = {id(t): where[name] for name, t in raw.items()}    # survives renaming
    tensors = cls.checkpoint_names(raw)
    del raw
    from llmcli.quant import LoadPlan      # quantized weights (--quant; llmcli.quant)
    plan = LoadPlan.start(model_dir, tensors, cls, quant)
    shapes = expected_shapes(config)
    embed_name, output_name = cls.EMBEDDING_NAME, cls.OUTPUT_NAME

    if config.tie_word_embeddings:
        # A tied checkpoint may ship a copy of the embedding as its output matrix; the tie
        # wins (as in transformers 4; transformers 5 uses a shipped one that differs, so say so).
        head = tensors.pop(output_name, None)
        embed = tensors.get(embed_name)
        if (head is not None and embed is not None and warn is not None
                and (head.shape != embed.shape or not torch.equal(head.to(embed.dtype), embed))):
            warn(f"{model_dir}: config.json ties the embeddings, so {output_name} in the "
                 f"weights (which differs from {embed_name}) is ignored")
    for name, shape in shapes.items():
        if name not in tensors:
            raise LLMCLIError(f"{model_dir}: tensor {name} {list(shape)} is missing from the weights")
        if tuple(tensors[name].shape) != shape:
            raise LLMCLIError(f"{model_dir}: tensor {name} has shape {list(tensors[name].shape)}, "
                              f"expected {list(shape)} from config.json")
    check_tensors(model_dir, config, tensors, shapes, cls.IGNORED_SUFFIXES, warn)

    storage = tensors[embed_name].dtype
    torch_dtype = resolve_dtype(dtype, device, storage)
    _check_device(device)
    with _mmap_allocations():
        return _build_and_read(model_dir, cls, config, tensors, shapes, location, torch_dtype,
                               device, plan, warn)


def _build_and_read(model_dir, cls, config, tensors, shapes, location, torch_dtype, device,
                    plan, warn):
    """The second half of :func:`load_model`: build the model, read every tensor into it,
    install the fast path → ``(model, config)``."""
    import torch

    from llmcli.fastpath import install

    embed_name, output_name = cls.EMBEDDING_NAME, cls.OUTPUT_NAME
    model = build_empty(cls, config)
    fast = fast_layout_names(model)
    state = {}
    # Each tensor is read from the file into its final place (dtype, device, layout): the
    # peak memory is the model plus one chunk (read_into), not the file mapped beside a copy.
    for name, shape in shapes.items():
        if name in plan.stored:
            state[name] = plan.value(name, torch_dtype, device)
            continue
        stored = tensors[name]
        in_ckpt_t = name.endswith(cls.TRANSPOSED_IN_CHECKPOINT)
        model_shape = shape[::-1] if in_ckpt_t else shape
        if name in fast and len(model_shape) == 2:       # (in, out) storage, (out, in) view
            dest = torch.empty(model_shape[::-1], dtype=torch_dtype, device=device).t()
        else:
            dest = torch.empty(model_shape, dtype=torch_dtype, device=device)
        path, first, end = location[id(stored)]
        read_into(dest.t() if in_ckpt_t else dest, path, first, end, stored.dtype)
        state[name] = dest
    del tensors
    if config.tie_word_embeddings:
        state[output_name] = state[embed_name]
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.tie_weights()
    model.reset_buffers(device)
    model.eval()
    plan.finish(model, device, warn)
    install(model)
    return model, config


#: dtypes the model computes with as stored (float64 is a plain float too); anything else
#: (integers, float8, packed quantised data) needs a dequantisation llmcli does not implement.
USABLE_DTYPES = ("float32", "float16", "bfloat16", "float64")
_QUANT_HINTS = ("scale", "zero", "qweight", "qzeros", "g_idx", "absmax", "quant", "SCB")
_BLOCK_RE = re.compile(r"^(.*?\.)(\d+)\.")


def check_tensors(model_dir: Path, config, tensors: dict[str, Any], shapes: dict[str, tuple],
                  ignored_suffixes: tuple[str, ...] = (), warn=None) -> None:
    """Refuse weights that would load but compute something else; warn about the rest.

    Refused (one line naming the tensor): a ``quantization_config`` in ``config.json``
    (llmcli implements no quantisation); a needed tensor stored in a dtype other than
    :data:`USABLE_DTYPES` (int32, int8, float8_e4m3fn ...: casting the stored integers to
    float gives wrong values without their scales); an extra tensor of a module the model
    uses (``..._proj.weight_scale``, a bias ``config.json`` does not declare), which the
    module's maths would leave out; blocks beyond ``num_hidden_layers``. Warned (through
    ``warn``): extra tensors of modules the model does not have (an adapter, a vision tower).

    Raises:
        LLMCLIError: as above.
    """
    raw = _raw_config(model_dir / "config.json")
    quant = raw.get("quantization_config")
    if quant and not (isinstance(quant, dict) and quant.get("quant_method") == "llmcli"):
        method = quant.get("quant_method", "unnamed") if isinstance(quant, dict) else quant
        raise LLMCLIError(f"{model_dir / 'config.json'}: quantization_config (quant_method "
                          f"{method!r}) is not supported: llmcli computes with float weights "
                          "or its own quantized blocks (quant_method 'llmcli', see `llmcli "
                          "convert --quant`)")
    for name in shapes:
        dtype = str(tensors[name].dtype).replace("torch.", "")
        if dtype not in USABLE_DTYPES:
            kind = "8-bit float" if "float8" in dtype else "integer" if "int" in dtype else "this"
            raise LLMCLIError(f"{model_dir}: tensor {name} is stored as {dtype}; llmcli computes "
                              f"with float32, float16 or bfloat16 weights and implements no {kind} "
                              "weights or their scales (dequantise the checkpoint first)")
    used = {name.rsplit(".", 1)[0] for name in shapes}
    prefixes = {m.group(1) for m in map(_BLOCK_RE.match, shapes) if m}
    n_blocks = config.num_hidden_layers
    unknown = []
    for name in sorted(n for n in tensors if n not in shapes and not n.endswith(ignored_suffixes)):
        module, leaf = name.rsplit(".", 1) if "." in name else ("", name)
        m = _BLOCK_RE.match(name)
        if m and m.group(1) in prefixes and int(m.group(2)) >= n_blocks:
            raise LLMCLIError(f"{model_dir}: the weights hold block {m.group(2)} ({name}) but "
                              f"config.json has num_hidden_layers {n_blocks}")
        if module in used:
            if leaf == "bias":
                why = ("a bias config.json does not declare (attention_bias / mlp_bias is "
                       "false), which the model would leave out")
            elif any(h in leaf for h in _QUANT_HINTS):
                why = "a quantisation parameter; llmcli implements no quantisation"
            else:
                why = "a parameter llmcli's model of that module does not have"
            raise LLMCLIError(f"{model_dir}: tensor {name} belongs to {module} and is {why}")
        unknown.append(name)
    if unknown and warn is not None:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        warn(f"{model_dir}: ignoring {len(unknown)} unknown tensor(s): {', '.join(unknown[:5])}{more}")


def _raw_config(path: Path) -> dict:
    """``config.json`` as parsed JSON ({} when unreadable: the config loader names that)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _check_device(device: str) -> None:
    import torch

    kind = device.split(":")[0]
    if kind == "cpu":
        return
    if kind == "cuda" and torch.cuda.is_available():
        return
    if kind == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return
    raise UsageError(f"--device: {device!r} is not available here (torch sees: cpu"
                     + (", cuda" if torch.cuda.is_available() else "") + ")")


def save_model(model, config, out_dir: Path | str, tokenizer_model: Path | None = None,
               dtype=None, extra_files: dict[str, str] | None = None, force: bool = False,
               option: str | None = None, inputs=()) -> Path:
    """Write ``model`` as an HF-layout directory, atomically (temp dir, then rename).

    Writes ``config.json``, ``model.safetensors`` (without ``lm_head.weight`` when tied, as
    transformers does), ``generation_config.json``, a copy of ``tokenizer_model`` and any
    ``extra_files`` ({name: text}). ``out_dir`` follows :mod:`llmcli.outputs`' rule: absent
    or empty, or (with ``force``) a model directory holding only files llmcli writes; never the
    current directory or one holding ``inputs``.

    Returns the directory path.

    Raises:
        LLMCLIError: ``out_dir`` may not be replaced (naming ``option`` and the reason), or the
            system refused a write.
    """
    from safetensors.torch import save_file

    from llmcli.outputs import building_dir

    out_dir = Path(out_dir)
    try:
        with building_dir(out_dir, option, force, inputs) as tmp:
            state = {}
            for name, tensor in model.state_dict().items():
                if config.tie_word_embeddings and name == "lm_head.weight":
                    continue
                t = tensor.detach().to("cpu")
                if dtype is not None:
                    t = t.to(dtype)
                state[name] = t.contiguous().clone()
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            cfg = config.to_dict()
            if dtype is not None:
                cfg["torch_dtype"] = str(dtype).replace("torch.", "")
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
            gen = {"bos_token_id": config.bos_token_id,
                   "eos_token_id": config.eos_token_id[0] if len(config.eos_token_id) == 1 else config.eos_token_id}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
            if tokenizer_model is not None:
                shutil.copyfile(tokenizer_model, tmp / "tokenizer.model")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise LLMCLIError(f"{out_dir}: cannot write the model ({exc.strerror or exc})") from None
    return out_dir
