"""Quantized weights kept quantized: ggml's Q8_0, Q4_0 and Q4_1 blocks, computed on CPU.

Schemes (:data:`SCHEMES`; the block formats of ggml, ``ggml-common.h`` / ``ggml-quants.c``,
the types llama.cpp's ``llama-quantize`` writes, so a GGUF file's tensors of these types are
kept bit for bit). A matrix ``W`` (N, K), N outputs and K inputs, is cut along K into blocks
of :data:`BLOCK` = 32 weights; each block has a float16 scale ``d`` (and for Q4_1 a float16
minimum ``m``) and 32 integers ``q``:

======  ====================  ===========================  ===================  ========
scheme  integers              weight                       quantized as         bits/w
======  ====================  ===========================  ===================  ========
q8_0    int8, -127..127       ``d · q``                    d = max|w| / 127     8.5
q4_0    uint4, 0..15          ``d · (q − 8)``              d = w_absmax / −8    4.5
q4_1    uint4, 0..15          ``d · q + m``                d = (max − min)/15   5
======  ====================  ===========================  ===================  ========

``--quant int8`` means q8_0 and ``--quant int4`` q4_0 (:data:`ALIASES`). :func:`quantize`
reproduces ggml's reference quantizers (``quantize_row_q8_0_ref`` etc., as
``gguf.quants.quantize`` does in numpy) exactly.

Stored form (:class:`QuantTensor`, and in ``model.safetensors``): for a matrix named
``X.weight``, ``X.weight`` holds the integers (q8_0: int8 (N, K); q4_x: uint8 (N, K/2), two
per byte in ggml's order: in each block, byte j holds weight j in its low nibble and weight
j + 16 in its high nibble), ``X.weight_scale`` the float16 scales (N, K/32) and, for q4_1,
``X.weight_min`` the float16 minimums (N, K/32). ``config.json`` records the scheme of each
such tensor: ``"quantization_config": {"quant_method": "llmcli", "version": 1,
"block_size": 32, "tensors": {"X.weight": "q4_1", ...}}`` (transformers refuses an unknown
``quant_method``, so no other loader reads the integers as weights).

Compute form (:class:`QuantLinear`): torch's CPU kernel for 4-bit weights with per-group
scales and zero points, ``torch.ops.aten._weight_int4pack_mm_for_cpu`` (torch ≥ 2.6;
``out = x @ ((q − 8)·scale + zero)ᵀ`` per group of 32), with bfloat16 activations, scales
and output (its fast path; float32 inputs take a path ~50× slower). Q4_0 is scale d, zero 0;
Q4_1 scale d, zero m + 8d; Q8_0 runs as two 4-bit planes, ``q = 16·hi + lo`` with
hi = q >> 4 ∈ [−8, 7] and lo = q & 15, laid side by side along K (K' = 2K): scales 16d and d,
zeros 0 and 8d, the activations repeated, so one kernel call computes ``d · q`` exactly.
What the kernel computes differs from the stored weights only by the bfloat16 roundings
(scales and zeros to 8 significant bits, the activations and each output); measured in
``tests/test_quant.py`` and the README's "Quantized weights" section.
"""

from __future__ import annotations

from dataclasses import dataclass

import os
import subprocess

import torch
from torch import nn

from llmcli.errors import LLMCLIError, UsageError

BLOCK = 32
SCHEMES = ("q8_0", "q4_0", "q4_1")
ALIASES = {"int8": "q8_0", "int4": "q4_0"}
#: What ``--quant`` accepts (also in :mod:`llmcli.cli.quant_option`, which must not import torch).
CHOICES = ("none",) + SCHEMES + tuple(ALIASES)
#: The modes a benchmark may try (benchmarks/bench_llamacpp.py reads this).
MODES = SCHEMES
QUANT_METHOD = "llmcli"
FORMAT_VERSION = 1
#: The GGUF tensor types kept as they are by ``convert --quant keep``.
GGUF_TYPES = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1"}
#: Bytes per block in a GGUF file (ggml's block_q8_0, block_q4_0, block_q4_1).
_GGML_BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}



def resolve(name: str | None, option: str = "--quant") -> str | None:
    """The scheme ``name`` means (``int8`` → ``q8_0``, ``int4`` → ``q4_0``; ``none`` or None →
    None).

    Raises:
        UsageError: an unknown name (the message lists :data:`CHOICES`).
    """
    if name is None:
        return None
    key = name.strip().lower()
    if key == "none":
        return None
    key = ALIASES.get(key, key)
    if key not in SCHEMES:
        raise UsageError(f"{option}: {name!r} is not one of {', '.join(CHOICES)}")
    return key


def requested() -> str | None:
    """The ``--quant`` value of the command being run (set by :mod:`llmcli.cli.quant_option`
    for the duration of a command), unresolved, or None outside a command or when not given."""
    from llmcli.cli.quant_option import REQUESTED

    return REQUESTED.get()


# ----------------------------------------------------------------------------- stored form
@dataclass
class QuantTensor:
    """A quantized matrix (N, K) in the stored form (see the module docstring).

    codes: q8_0 int8 (N, K); q4_0/q4_1 uint8 (N, K/2) in ggml's nibble order.
    scale: float16 (N, K/32). min: float16 (N, K/32) for q4_1, else None.
    """

    scheme: str
    codes: torch.Tensor
    scale: torch.Tensor
    min: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        N, nb = self.scale.shape
        return (int(N), int(nb) * BLOCK)

    def integers(self) -> torch.Tensor:
        """The integers in weight order, int32 (N, K): q8_0 −128..127, q4_x 0..15."""
        N, K = self.shape
        if self.scheme == "q8_0":
            return self.codes.to(torch.int32)
        c = self.codes.view(N, K // BLOCK, BLOCK // 2).to(torch.int32)
        return torch.cat((c & 15, c >> 4), dim=-1).view(N, K)        # (N, K/32, 32) → (N, K)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weights (N, K) in ``dtype``: ``d·q``, ``d·(q − 8)`` or ``d·q + m`` per block,
        computed in float32 (as ``gguf.quants.dequantize``)."""
        N, K = self.shape
        q = self.integers().view(N, K // BLOCK, BLOCK).float()
        d = self.scale.float()[..., None]
        if self.scheme == "q8_0":
            w = d * q
        elif self.scheme == "q4_0":
            w = d * (q - 8)
        else:
            w = d * q + self.min.float()[..., None]
        return w.reshape(N, K).to(dtype)

    def state(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors to store for ``name`` (``X.weight``): codes, ``_scale``, ``_min``."""
        out = {name: self.codes, name + "_scale": self.scale}
        if self.min is not None:
            out[name + "_min"] = self.min
        return out

    def rows(self, index: torch.Tensor) -> "QuantTensor":
        """The same matrix with its rows reordered/selected by ``index`` (blocks run along K,
        so a row permutation, such as undoing llama.cpp's RoPE interleave, is exact)."""
        return QuantTensor(self.scheme, self.codes[index], self.scale[index],
                           None if self.min is None else self.min[index])


def quantize(weight: torch.Tensor, scheme: str) -> QuantTensor:
    """Quantize ``weight`` (N, K), K a multiple of 32, with ``scheme``, as ggml's reference
    quantizers do (bit-identical to ``gguf.quants.quantize``): computed in float32, the
    scales computed in float32 and stored in float16 (the integers use the float32 scale).

    Raises:
        ValueError: K is not a multiple of 32, or an unknown scheme.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}")
    N, K = weight.shape
    if K % BLOCK:
        raise ValueError(f"{K} inputs is not a multiple of the {BLOCK}-weight blocks")
    x = weight.detach().to(torch.float32).reshape(N, K // BLOCK, BLOCK)
    if scheme == "q8_0":
        d = x.abs().amax(-1, keepdim=True) / 127
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        v = x * inv
        a = v.abs()
        q = torch.sign(v) * (a.floor() + (2 * (a - a.floor())).floor())    # ggml's roundf
        return QuantTensor(scheme, q.to(torch.int8).reshape(N, K), d[..., 0].to(torch.float16))
    if scheme == "q4_0":
        imax = x.abs().argmax(-1, keepdim=True)
        d = torch.gather(x, -1, imax) / -8
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = torch.trunc(x * inv + 8.5).clamp(0, 15).to(torch.uint8)
        m = None
    else:
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        d = (hi - lo) / 15
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = torch.trunc((x - lo) * inv + 0.5).clamp(0, 15).to(torch.uint8)
        m = lo[..., 0].to(torch.float16)
    codes = (q[..., :BLOCK // 2] | (q[..., BLOCK // 2:] << 4)).reshape(N, K // 2)
    return QuantTensor(scheme, codes, d[..., 0].to(torch.float16), m)


def from_ggml_blocks(raw, scheme: str, shape: tuple[int, int]) -> QuantTensor:
    """A GGUF tensor's raw blocks (uint8, ``N·K/32·bytes_per_block`` bytes: numpy array or
    tensor) → :class:`QuantTensor` (N, K), a copy of its bytes (no arithmetic). Block layouts
    (ggml-common.h): block_q8_0 = {f16 d; int8 qs[32]}, block_q4_0 = {f16 d; uint8 qs[16]},
    block_q4_1 = {f16 d; f16 m; uint8 qs[16]}."""
    N, K = shape
    nb = K // BLOCK
    t = torch.as_tensor(raw).reshape(N, nb, _GGML_BLOCK_BYTES[scheme])
    d = t[..., 0:2].contiguous().view(torch.float16).reshape(N, nb)
    if scheme == "q8_0":
        return QuantTensor(scheme, t[..., 2:].contiguous().view(torch.int8).reshape(N, K), d)
    if scheme == "q4_0":
        return QuantTensor(scheme, t[..., 2:].contiguous().reshape(N, K // 2), d)
    m = t[..., 2:4].contiguous().view(torch.float16).reshape(N, nb)
    return QuantTensor(scheme, t[..., 4:].contiguous().reshape(N, K // 2), d, m)


def stored_shape(scheme: str, shape: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Suffix ('' for the integers, ``_scale``, ``_min``) → stored shape, for a (N, K) matrix."""
    N, K = shape
    out = {"": (N, K if scheme == "q8_0" else K // 2), "_scale": (N, K // BLOCK)}
    if scheme == "q4_1":
        out["_min"] = (N, K // BLOCK)
    return out


_STORED_DTYPES = {"": {"q8_0": torch.int8, "q4_0": torch.uint8, "q4_1": torch.uint8},
                  "_scale": torch.float16, "_min": torch.float16}


def quantization_config(schemes: dict[str, str]) -> dict:
    """The ``config.json`` entry recording ``schemes`` ({tensor name: scheme})."""
    return {"quant_method": QUANT_METHOD, "version": FORMAT_VERSION, "block_size": BLOCK,
            "tensors": dict(sorted(schemes.items()))}


def is_ours(quant_config) -> bool:
    """Whether a ``quantization_config`` value is one llmcli wrote (quant_method llmcli)."""
    return isinstance(quant_config, dict) and quant_config.get("quant_method") == QUANT_METHOD


def take_stored(config_path, quant_config: dict, tensors: dict) -> dict[str, QuantTensor]:
    """Read the quantized matrices a ``quantization_config`` of llmcli's lists out of
    ``tensors`` (name → stored tensor, memory-mapped): each listed ``X.weight`` and its
    ``X.weight_scale`` / ``X.weight_min`` are removed from ``tensors`` and returned as
    :class:`QuantTensor` (no copy, no float).

    Raises:
        LLMCLIError (one line naming ``config_path`` or the tensor): an unknown version,
            block size or scheme; a listed tensor missing, or its companions missing, of the
            wrong dtype or shape, or non-finite scales.
    """
    where = f"{config_path}: quantization_config"
    if quant_config.get("version") != FORMAT_VERSION:
        raise LLMCLIError(f"{where} version {quant_config.get('version')!r} is not supported "
                          f"(llmcli reads version {FORMAT_VERSION})")
    if quant_config.get("block_size") != BLOCK:
        raise LLMCLIError(f"{where} block_size {quant_config.get('block_size')!r} is not "
                          f"supported (llmcli computes blocks of {BLOCK})")
    listed = quant_config.get("tensors")
    if not isinstance(listed, dict) or not listed:
        raise LLMCLIError(f"{where} lists no tensors")
    out = {}
    for name, scheme in listed.items():
        if scheme not in SCHEMES:
            raise LLMCLIError(f"{where}: {name} has scheme {scheme!r}, which llmcli does not "
                              f"implement (it computes {', '.join(SCHEMES)})")
        if name not in tensors:
            raise LLMCLIError(f"{where} lists {name}, which is not in the weights")
        codes = tensors[name]
        if codes.dim() != 2:
            raise LLMCLIError(f"{config_path.parent}: tensor {name} ({scheme}) is not a matrix")
        N, width = codes.shape
        K = width if scheme == "q8_0" else 2 * width
        parts = {}
        for suffix, shape in stored_shape(scheme, (int(N), int(K))).items():
            part = tensors.get(name + suffix)
            want = _STORED_DTYPES[suffix]
            want = want[scheme] if isinstance(want, dict) else want
            if part is None:
                raise LLMCLIError(f"{config_path.parent}: tensor {name + suffix} is missing "
                                  f"({name} is {scheme})")
            if part.dtype != want or tuple(part.shape) != shape:
                raise LLMCLIError(f"{config_path.parent}: tensor {name + suffix} is "
                                  f"{str(part.dtype).replace('torch.', '')} {list(part.shape)}; "
                                  f"{scheme} needs {str(want).replace('torch.', '')} {list(shape)}")
            if suffix and not torch.isfinite(part).all():
                raise LLMCLIError(f"{config_path.parent}: tensor {name + suffix} holds "
                                  "non-finite values")
            parts[suffix] = part
        for suffix in parts:
            del tensors[name + suffix]
        out[name] = QuantTensor(scheme, parts[""], parts["_scale"], parts.get("_min"))
    return out


# ----------------------------------------------------------------------------- compute form
def kernel_available() -> bool:
    """Whether this torch has the CPU 4-bit kernel (torch ≥ 2.6)."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


_PACK_ROWS = 4096   # rows packed per call: bounds the int32 copy of the integers


def pack(qt: QuantTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's operands for ``qt`` (N, K): packed integers uint8 (N, K'/2) in the
    kernel's own layout (``_convert_weight_to_int4pack_for_cpu``) and scales-and-zeros
    bfloat16 (K'/32, N, 2), K' = K (4-bit) or 2K (q8_0 as two planes; module docstring).
    Works through the rows in chunks of 4096 (the kernel's layout is by blocks of 64 rows),
    so the transient int32 copy is at most 4096 × K' × 4 bytes. The kernel needs N to be a
    multiple of 16: other matrices get zero rows up to one (:class:`QuantLinear` drops their
    outputs)."""
    N, K = qt.shape
    d = qt.scale.float()                                                          # (N, K/32)
    if qt.scheme == "q8_0":
        scales = torch.cat((16 * d, d), dim=1)                                    # (N, 2K/32)
        zeros = torch.cat((torch.zeros_like(d), 8 * d), dim=1)
    elif qt.scheme == "q4_0":
        scales, zeros = d, torch.zeros_like(d)
    else:
        scales, zeros = d, qt.min.float() + 8 * d
    chunks = []
    for start in range(0, N, _PACK_ROWS):
        sub = QuantTensor(qt.scheme, qt.codes[start:start + _PACK_ROWS], qt.scale[start:start + _PACK_ROWS])
        q = sub.integers()                                                        # (n, K) int32
        if qt.scheme == "q8_0":
            q = torch.cat(((q >> 4) + 8, q & 15), dim=1)                          # (n, 2K) 0..15
        if start + _PACK_ROWS >= N and N % 16:                                   # the last chunk
            q = torch.cat((q, torch.zeros(-N % 16, q.shape[1], dtype=q.dtype)))
        chunks.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1))
    pad = -N % 16
    if pad:
        scales = torch.cat((scales, torch.zeros(pad, scales.shape[1])))
        zeros = torch.cat((zeros, torch.zeros(pad, zeros.shape[1])))
    packed = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    sz = torch.stack((scales, zeros), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return packed, sz


class QuantLinear(nn.Module):
    """``y = x @ Wᵀ + b`` with W (N, K) held quantized; replaces an ``nn.Linear`` of a loaded
    model. Input (..., K) in any float dtype; output (..., N) in the input's dtype; ``bias``
    (N,) stays float. Two kernels (:func:`kernel_name`), with the same interface:

    * :class:`BlockLinear`: llmcli's C kernel (``llmcli/quant_kernel.c``) on the stored
      blocks as they are, activations quantized to int8 per block of 32 as llama.cpp does,
      float32 output; used when a C compiler is found (built once into the cache);
    * :class:`Int4PackLinear`: torch's ``_weight_int4pack_mm_for_cpu`` (bfloat16
      activations and output); the fallback.

    Build one with :meth:`from_quant`.
    """

    scheme: str
    in_features: int
    out_features: int

    @classmethod
    def from_quant(cls, qt: QuantTensor, bias: torch.Tensor | None = None,
                   backend: str | None = None) -> "QuantLinear":
        """The kernel's module for ``qt`` (``backend``: ``"c"``, ``"torch"``, or None for
        :func:`kernel_name`'s choice)."""
        if (backend or kernel_name()) == "c":
            return BlockLinear(qt, bias)
        N, K = qt.shape
        packed, sz = pack(qt)
        return Int4PackLinear(qt.scheme, K, N, packed, sz, bias)

    def mm(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mm(x.reshape(-1, self.in_features)).view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The matrix the kernel multiplies, (N, K) float32, computed on each access (for
        inspection; costs N·K·4 bytes)."""
        raise NotImplementedError  # pragma: no cover

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scheme={self.scheme}, bias={self.bias is not None}, kernel={self.kernel}")


class BlockLinear(QuantLinear):
    """:class:`QuantLinear` on the stored blocks (:class:`QuantTensor`'s ``codes``,
    ``scale``, ``min``; row slices of a fused matrix's, :func:`fuse`), computed by the C
    kernel: for up to :data:`GEMV_ROWS` input rows (decoding) its integer dot products on
    int8-quantized activations, for more (prefill) each block of 1024 rows dequantized to
    float32 (exactly) and multiplied by torch's float32 matmul."""

    kernel = "c"

    def __init__(self, qt: QuantTensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.scheme = qt.scheme
        self.out_features, self.in_features = qt.shape
        self.register_buffer("codes", qt.codes.contiguous(), persistent=False)
        self.register_buffer("scale", qt.scale.contiguous(), persistent=False)
        self.register_buffer("min", None if qt.min is None else qt.min.contiguous(), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self._code = SCHEMES.index(qt.scheme)

    def quant(self) -> QuantTensor:
        return QuantTensor(self.scheme, self.codes, self.scale, self.min)

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (M, K) → ``x @ Wᵀ`` (M, N), bias not added, in x's dtype."""
        lib = _LIB if _LIB is not None else _kernel()
        M = x.shape[0]
        xf = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
        N, K = self.out_features, self.in_features
        mins = self.min.data_ptr() if self.min is not None else None
        if M <= GEMV_ROWS:
            y = torch.empty(M, N, dtype=torch.float32)
            if lib.llmcli_qgemm(self._code, self.codes.data_ptr(), self.scale.data_ptr(), mins,
                                xf.data_ptr(), y.data_ptr(), M, N, K):
                raise MemoryError("llmcli_qgemm: out of memory")
        else:
            y = torch.empty(M, N, dtype=torch.float32)
            w = torch.empty(min(N, _DEQUANT_ROWS), K, dtype=torch.float32)
            row_bytes = self.codes.shape[1] * self.codes.element_size()
            for r0 in range(0, N, _DEQUANT_ROWS):
                n = min(_DEQUANT_ROWS, N - r0)
                lib.llmcli_dequantize(self._code, self.codes.data_ptr() + r0 * row_bytes,
                                      self.scale.data_ptr() + r0 * (K // BLOCK) * 2,
                                      None if mins is None else mins + r0 * (K // BLOCK) * 2,
                                      w.data_ptr(), n, K)
                y[:, r0:r0 + n] = torch.mm(xf, w[:n].t())
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        return self.quant().dequantize()


class Int4PackLinear(QuantLinear):
    """:class:`QuantLinear` on torch's CPU 4-bit kernel: buffers ``packed`` (N, K'/2) uint8
    and ``scale_zeros`` (K'/32, N, 2) bfloat16 (:func:`pack`; views of a fused matrix's,
    :func:`fuse`)."""

    kernel = "torch"

    def __init__(self, scheme: str, in_features: int, out_features: int, packed: torch.Tensor,
                 scale_zeros: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.scheme, self.in_features, self.out_features = scheme, in_features, out_features
        self.planes = 2 if scheme == "q8_0" else 1
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scale_zeros", scale_zeros, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (M, K) → ``x @ Wᵀ`` (M, N), bias not added, in x's dtype."""
        xb = x.to(torch.bfloat16)
        if self.planes == 2:
            xb = torch.cat((xb, xb), dim=1)                                       # (M, 2K)
        sz = self.scale_zeros
        if not sz.is_contiguous():        # a view of a fused matrix's (the readable path)
            sz = sz.contiguous()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, self.packed, BLOCK, sz)
        if out.shape[1] != self.out_features:     # zero rows padding N to a multiple of 16
            out = out[:, :self.out_features]
        return out.to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """(It multiplies an identity matrix: slow.)"""
        eye = torch.eye(self.in_features, dtype=torch.float32)
        return self.mm(eye).float().t().contiguous()


#: Input rows up to which BlockLinear runs the C kernel's dot products (decoding, short
#: chunks); above, dequantize-and-matmul (prefill), which torch's BLAS does faster.
GEMV_ROWS = 8
_DEQUANT_ROWS = 1024


# ----------------------------------------------------------------------------- the C kernel
_LIB = None
_LIB_ERROR: str | None = None


def kernel_name() -> str:
    """``"c"`` when llmcli's C kernel is built (or can be: a C compiler on PATH, ``$CC`` or
    ``cc``), else ``"torch"``. ``$LLMCLI_QUANT_KERNEL`` = ``c`` or ``torch`` forces one
    (``c`` without a compiler is an error)."""
    want = os.environ.get("LLMCLI_QUANT_KERNEL", "auto").strip().lower()
    if want == "torch":
        return "torch"
    if _kernel(required=want == "c") is not None:
        return "c"
    return "torch"


def _kernel(required: bool = True):
    """The C kernel's ctypes library, compiled on first use into
    ``$XDG_CACHE_HOME/llmcli/kernels/`` (``cc -O3 -march=native -ffp-contract=off``; the
    file name hashes the source, the compiler and the CPU's flags, so another CPU or a new
    source builds anew). None when it cannot be built and not ``required``.

    Raises:
        LLMCLIError: ``required`` and the build failed (the compiler's last line).
    """
    global _LIB, _LIB_ERROR
    if _LIB is None and _LIB_ERROR is None:
        try:
            _LIB = _build_kernel()
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            _LIB_ERROR = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if _LIB is None and required:
        raise LLMCLIError(f"llmcli's quantized-weights C kernel could not be built: {_LIB_ERROR} "
                          "(unset LLMCLI_QUANT_KERNEL to use torch's kernel)")
    return _LIB


def _build_kernel():
    import ctypes
    import hashlib
    import shutil
    import tempfile
    from pathlib import Path

    src = Path(__file__).with_name("quant_kernel.c")
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or $CC) on PATH")
    try:
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("flags")), "")
    except OSError:
        import platform
        cpu = platform.processor()
    flags = ["-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC"]
    key = hashlib.sha256(src.read_bytes() + cc.encode() + cpu.encode() + " ".join(flags).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmcli" / "kernels"
    lib_path = cache / f"quant-{key.hexdigest()[:16]}.so"
    if not lib_path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            out = Path(tmp) / "k.so"
            r = subprocess.run([cc, *flags, "-o", str(out), str(src), "-lm"], capture_output=True,
                               text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"{cc}: {r.stderr.strip() or r.returncode}")
            os.replace(out, lib_path)
    lib = ctypes.CDLL(str(lib_path))
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.llmcli_qgemm.argtypes = [i, vp, vp, vp, vp, vp, i, i, i]
    lib.llmcli_qgemm.restype = i
    lib.llmcli_dequantize.argtypes = [i, vp, vp, vp, vp, i, i]
    lib.llmcli_dequantize.restype = None
    lib.llmcli_qgemm_isa.restype = ctypes.c_char_p
    return lib


def kernel_isa() -> str:
    """What the C kernel computes with (``avx512-vnni``, ``avx-vnni``, ``avx2``, ``c``), or
    ``torch`` when torch's kernel is used."""
    return _kernel().llmcli_qgemm_isa().decode() if kernel_name() == "c" else "torch"


_ROW_BLOCK: int | None = None


def _row_block() -> int:
    """The number of rows the kernel's packed layout groups (64 with AVX-512), found once by
    packing a small matrix whole and in two halves; 0 when slices of packed rows are never
    the packing of the same rows (then fused matrices are not shared, :func:`fuse`)."""
    global _ROW_BLOCK
    if _ROW_BLOCK is None:
        g = torch.Generator().manual_seed(0)
        q = torch.randint(0, 16, (256, 64), generator=g, dtype=torch.int32)
        whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        _ROW_BLOCK = 0
        for block in (16, 32, 64, 128):
            part = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q[block:].contiguous(), 1)
            if whole.shape[0] == 256 and torch.equal(whole[block:], part):
                _ROW_BLOCK = block
                break
    return _ROW_BLOCK


def fuse(linears: list[QuantLinear]) -> QuantLinear | None:
    """One QuantLinear computing ``linears`` (same kernel, scheme and inputs) side by side,
    their outputs concatenated (q/k/v, gate/up); each part's buffers become views of it, so
    memory does not grow. None when they cannot share rows (different schemes; for torch's
    kernel, an output count not a multiple of its row block); then the caller keeps them
    apart."""
    first = linears[0]
    if any(type(m) is not type(first) for m in linears):
        return None
    if isinstance(first, BlockLinear):
        if any(m.scheme != first.scheme or m.in_features != first.in_features for m in linears):
            return None
        parts = [m.quant() for m in linears]
        fused_qt = QuantTensor(first.scheme, torch.cat([q.codes for q in parts]),
                               torch.cat([q.scale for q in parts]),
                               None if parts[0].min is None else torch.cat([q.min for q in parts]))
        biases = [m.bias for m in linears]
        bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
        fused = BlockLinear(fused_qt, bias)
        row = 0
        for m in linears:      # rows of the fused buffers: contiguous views, any split
            n = m.out_features
            m.codes, m.scale = fused.codes[row:row + n], fused.scale[row:row + n]
            if m.min is not None:
                m.min = fused.min[row:row + n]
            if bias is not None:
                m.bias = nn.Parameter(bias[row:row + n], requires_grad=False)
            row += n
        return fused
    block = _row_block()
    if (not block or any(m.scheme != first.scheme or m.in_features != first.in_features
                         for m in linears)
            or any(m.out_features % block for m in linears[:-1])):
        return None
    packed = torch.cat([m.packed for m in linears])
    sz = torch.cat([m.scale_zeros for m in linears], dim=1)
    biases = [m.bias for m in linears]
    bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    fused = Int4PackLinear(first.scheme, first.in_features, sum(m.out_features for m in linears),
                           packed, sz, bias)
    row = 0
    for m in linears:
        n, rows = m.out_features, m.packed.shape[0]    # rows: with the last one's padding
        m.packed, m.scale_zeros = packed[row:row + rows], sz[:, row:row + rows]
        if bias is not None:
            m.bias = nn.Parameter(bias[row:row + n], requires_grad=False)
        row += rows
    return fused


# ----------------------------------------------------------------------------- models
def _check_kernel(device) -> None:
    if str(device).split(":")[0] != "cpu":
        raise UsageError(f"--quant: quantized weights are computed on the CPU only (--device {device})")
    if not kernel_available():
        raise UsageError(f"--quant: this torch ({torch.__version__}) lacks the CPU 4-bit kernel "
                         "(_weight_int4pack_mm_for_cpu, torch ≥ 2.6)")


def _linear_names(model) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def output_scheme(scheme: str) -> str:
    """The scheme of the output matrix (lm_head) when the others get ``scheme``: q8_0 (as
    llama-quantize, which keeps the output matrix at more bits than 4: Q6_K or Q8_0)."""
    return "q8_0"


def quantize_model(model, scheme: str, device="cpu") -> dict[str, str]:
    """Replace every ``nn.Linear`` of a loaded float model by a :class:`QuantLinear` of its
    weights quantized with ``scheme`` (the output matrix with :func:`output_scheme`; a tied
    output matrix is quantized from the embedding, which itself stays float for row lookups).
    Returns {module name: scheme}.

    Raises:
        UsageError: not on CPU, no kernel, or a matrix whose inputs are not a multiple of 32
            (named).
    """
    _check_kernel(device)
    output = model.OUTPUT_NAME.rsplit(".", 1)[0]
    done = {}
    for name, lin in _linear_names(model).items():
        s = output_scheme(scheme) if name == output else scheme
        if lin.in_features % BLOCK:
            raise UsageError(f"--quant: {name} has {lin.in_features} inputs, not a multiple of "
                             f"the {BLOCK}-weight blocks of {s}")
        q = QuantLinear.from_quant(quantize(lin.weight, s), lin.bias)
        model.set_submodule(name, q)
        done[name] = s
    return done


def install_stored(model, stored: dict[str, QuantTensor], device="cpu") -> dict[str, str]:
    """Put the stored quantized matrices ``stored`` (weight name → QuantTensor, from
    :func:`take_stored`) into ``model`` as :class:`QuantLinear` modules. The embedding, when
    stored quantized, was dequantized by the loader (row lookups need float rows); when the
    output matrix is tied, it is packed from the embedding's blocks.

    Raises:
        UsageError: not on CPU or no kernel.
        LLMCLIError: a listed tensor that is not the weight of a linear module.
    """
    _check_kernel(device)
    linears = _linear_names(model)
    embed = model.EMBEDDING_NAME
    output = model.OUTPUT_NAME.rsplit(".", 1)[0]
    done = {}
    for wname, qt in stored.items():
        module = wname.rsplit(".", 1)[0]
        if wname == embed:
            if model.config.tie_word_embeddings:
                lin = linears[output]
                model.set_submodule(output, QuantLinear.from_quant(qt, lin.bias))
                done[output] = qt.scheme
            continue
        if module not in linears or not wname.endswith(".weight"):
            raise LLMCLIError(f"{wname} is stored quantized ({qt.scheme}) but is not the weight "
                              "of a linear layer; llmcli computes only linear layers quantized")
        model.set_submodule(module, QuantLinear.from_quant(qt, linears[module].bias))
        done[module] = qt.scheme
    return done


def summary(schemes: dict[str, str]) -> str:
    """``"q4_1 × 210, q8_0 × 1"`` for {module: scheme}."""
    counts: dict[str, int] = {}
    for s in schemes.values():
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{s} × {n}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))


# ----------------------------------------------------------------------------- loading
class LoadPlan:
    """What :func:`llmcli.weights.load_model` does about quantization, in three steps:
    :meth:`start` (before the checks: take the stored quantized matrices out of the
    checkpoint's tensors, leaving shape-only placeholders), :meth:`value` (the tensor to load
    for a name whose weights are stored quantized) and :meth:`finish` (after loading: put in
    the :class:`QuantLinear` modules, or quantize a float model for ``--quant``).

    ``quant``: the ``--quant`` value (None: not given; ``"none"``: compute in float, a stored
    quantized checkpoint dequantized; a scheme or alias). With a stored quantized checkpoint,
    a scheme other than the stored one is refused (quantizing again would add a second error).
    """

    def __init__(self, scheme: str | None, stored: dict[str, QuantTensor], dequantize: bool,
                 config_path) -> None:
        self.scheme, self.stored, self.dequantize, self.config_path = scheme, stored, dequantize, config_path
        #: {module name: scheme} once :meth:`finish` has run
        self.schemes: dict[str, str] = {}

    @classmethod
    def start(cls, model_dir, tensors: dict, model_cls, quant: str | None) -> "LoadPlan":
        """Raises: UsageError (a bad ``--quant``), LLMCLIError (see :func:`take_stored`)."""
        import json
        from pathlib import Path

        if quant is None:
            quant = requested()
        dequantize = quant is not None and quant.strip().lower() == "none"
        scheme = resolve(quant)
        config_path = Path(model_dir) / "config.json"
        try:
            raw = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        qc = raw.get("quantization_config") if isinstance(raw, dict) else None
        stored = {}
        if is_ours(qc):
            stored = take_stored(config_path, qc, tensors)
            ends = (model_cls.EMBEDDING_NAME, model_cls.OUTPUT_NAME)
            kinds = {qt.scheme for n, qt in stored.items() if n not in ends}
            if scheme is not None and kinds != {scheme}:
                have = summary({n: qt.scheme for n, qt in stored.items()})
                raise UsageError(f"--quant {quant}: {model_dir} is stored quantized ({have}); "
                                 "quantizing it again is not supported: omit --quant to compute "
                                 "with the stored blocks, or give --quant none for float")
            for name, qt in stored.items():
                tensors[name] = torch.empty(qt.shape, dtype=torch.float32, device="meta")
        return cls(scheme, stored, dequantize, config_path)

    def value(self, name: str, dtype: torch.dtype, device) -> torch.Tensor:
        """The tensor :func:`~llmcli.weights.load_model` loads for ``name`` (in
        :attr:`stored`): its dequantized weights when computing in float or for an embedding
        (rows are looked up in float), else a shape-only placeholder that :meth:`finish`
        replaces."""
        qt = self.stored[name]
        if self.dequantize or name.endswith(("embed_tokens.weight", "wte.weight", "embed_in.weight")):
            return qt.dequantize(dtype).to(device)
        return torch.empty(qt.shape, dtype=dtype, device="meta")

    def finish(self, model, device="cpu", warn=None) -> None:
        """Put the quantized modules into the loaded ``model`` (before the fast path is
        installed). Raises: UsageError (not on CPU, no kernel, inputs not a multiple of 32)."""
        if self.stored and not self.dequantize:
            stored = dict(self.stored)
            if model.EMBEDDING_NAME in stored and not model.config.tie_word_embeddings:
                del stored[model.EMBEDDING_NAME]      # loaded as float rows by value()
            self.schemes = install_stored(model, stored, device)
            unquantized = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if unquantized and warn is not None:
                warn(f"{self.config_path.parent}: {len(unquantized)} linear layer(s) are stored "
                     f"in float and computed in float ({', '.join(unquantized[:3])})")
        elif self.scheme is not None:
            self.schemes = quantize_model(model, self.scheme, device)
        if self.schemes and _LIB_ERROR is not None and warn is not None:
            warn(f"llmcli's C kernel for quantized weights could not be built ({_LIB_ERROR}); "
                 "using torch's slower 4-bit kernel")
        model.quantization = self.schemes or None
