"""What a source reader hands to the writer: a config, lazily loaded tensors and notes.

Readers (:mod:`llmcli.convert.llama2c`, :mod:`llmcli.convert.gguf_reader`) return a
:class:`Checkpoint` whose tensors already carry Hugging Face names, shapes and the
rotate-half q/k layout; nothing is read from disk until :meth:`LazyTensor.load` is called, so
a conversion holds one tensor in memory at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from llmcli.config import LlamaConfig

#: Output dtypes ``llmcli convert --dtype`` accepts (``auto`` = the source's, see readers).
OUTPUT_DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class LazyTensor:
    """A tensor of ``shape`` produced on demand by ``load()`` (a float ``torch.Tensor``).

    ``nbytes_source`` is how many bytes of the source file it is read from (for progress).
    """

    shape: tuple[int, ...]
    load: Callable[[], "torch.Tensor"]
    nbytes_source: int = 0
    #: the stored dtype (``"int8"``, ``"uint8"``, ``"float16"``: quantized blocks, written as
    #: they are); None: a float tensor written in the output dtype
    dtype: str | None = None


@dataclass
class Checkpoint:
    """A model read from a foreign file, in Hugging Face terms.

    config: the :class:`~llmcli.config.LlamaConfig` to write as ``config.json``; ``None``
        for a vocabulary-only GGUF (then ``tensors`` is empty and only tokenizer files are
        written).
    tensors: HF parameter name → :class:`LazyTensor`; ``lm_head.weight`` is absent when
        ``config.tie_word_embeddings``.
    format: a human description of the source format, e.g. ``"llama2.c version 1"``.
    default_dtype: the output dtype ``--dtype auto`` means (``"float32"``, ``"float16"`` or
        ``"bfloat16"``).
    tokenizer_files: file name → bytes of the tokenizer rebuilt from a vocabulary embedded in
        the file (GGUF: ``tokenizer.model`` or ``tokenizer.json``, and
        ``tokenizer_config.json``), or ``None`` when the file has none (llama2.c).
    notes: sentences for the output's README.md (what was read, assumed or changed).
    quantized: HF matrix name → scheme (:mod:`llmcli.quant`) for matrices stored quantized;
        their integers, ``_scale`` and ``_min`` tensors are in ``tensors`` (LazyTensor.dtype).
    sources: HF parameter name → where it came from in the source file (GGUF:
        ``{"gguf_name", "type", "shape", "bytes"}``, ``type`` being the ggml type such as
        ``"Q4_K"``); empty for llama2.c.
    """

    config: "LlamaConfig | None"
    tensors: dict[str, LazyTensor]
    format: str
    default_dtype: str = "float32"
    tokenizer_files: dict[str, bytes] | None = None
    notes: list[str] = field(default_factory=list)
    sources: dict[str, dict] = field(default_factory=dict)
    #: HF name → llmcli.quant scheme of the matrices kept quantized (``convert --quant keep``)
    quantized: dict[str, str] = field(default_factory=dict)

    @property
    def tokenizer_model(self) -> bytes | None:
        """The sentencepiece ``tokenizer.model`` among :attr:`tokenizer_files`, if any."""
        return (self.tokenizer_files or {}).get("tokenizer.model")


def interleaved_to_half(w: "torch.Tensor", n_heads: int) -> "torch.Tensor":
    """Reorder the rows of a q or k projection from interleaved-pair RoPE to rotate-half RoPE.

    ``w``: (n_heads · Dh, D), rows of each head ordered (x0, y0, x1, y1, …) as llama2.c, Meta
    and llama.cpp's GGUF files store them (rotation acts on adjacent pairs). Returns the same
    shape with each head's rows ordered (x0, x1, …, y0, y1, …), the layout of Hugging Face's
    ``rotate_half``. This is transformers' ``convert_llama_weights_to_hf.py`` ``permute``:
    ``w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)``,
    and the inverse of llama.cpp's ``convert_hf_to_gguf.py`` ``LlamaModel.permute``.
    For k, pass the number of key/value heads.
    """
    dim1, dim2 = w.shape
    return w.reshape(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)
