"""Read llama2.c checkpoints: the legacy format of ``run.c`` and ``export.py``'s version 1.

Both hold float32 tensors in PyTorch's ``(out_features, in_features)`` row-major layout, with
q and k in the interleaved-pair RoPE layout (converted here to Hugging Face rotate-half).

Legacy (``export.py`` ``legacy_export``, read by ``run.c`` ``read_checkpoint`` and
``memory_map_weights``)::

    int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len   (28 bytes)
    (vocab_size < 0 means an unshared classifier, |vocab_size| tokens)
    float32 token_embedding (V, D) | rms_att (L, D) | wq (L, H·hs, D) | wk (L, K·hs, D)
            | wv (L, K·hs, D) | wo (L, D, H·hs) | rms_ffn (L, D) | w1 (L, F, D)
            | w2 (L, D, F) | w3 (L, F, D) | rms_final (D,)
            | freq_cis_real (seq_len, hs/2) | freq_cis_imag (seq_len, hs/2) | [wcls (V, D)]

Version 1 (``export.py`` ``version1_export``)::

    uint32 magic 0x616b3432 ("ak42") | int32 version = 1 | the 7 int32 params above
    | uint8 shared_classifier | zero padding to 256 bytes
    float32 rms_att (L, D) | rms_ffn (L, D) | rms_final (D,) | token_embedding (V, D)
            | wq | wk | wv | wo | w1 | w2 | w3 (each for all layers, shapes as above)
            | [wcls (V, D) unless shared]

(D dim, F hidden_dim, L n_layers, H n_heads, K n_kv_heads, hs = D / H, V vocab_size.)
"""

from __future__ import annotations

import struct
from pathlib import Path

from llmcli.convert.checkpoint import Checkpoint, LazyTensor, interleaved_to_half
from llmcli.errors import LLMCLIError

#: ``struct.pack('I', 0x616b3432)``: the bytes b"24ka" at the start of a version-1 file.
V1_MAGIC = 0x616B3432
V1_HEADER_BYTES = 256
LEGACY_HEADER_BYTES = 28
_PARAM_NAMES = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
#: Sanity bound on each header field: larger values mean "not a llama2.c file".
_MAX_FIELD = 1 << 24


def is_v1(head: bytes) -> bool:
    """True if ``head`` (the file's first bytes) starts with the version-1 magic."""
    return len(head) >= 4 and struct.unpack("<I", head[:4])[0] == V1_MAGIC


def legacy_layout(head: bytes, file_size: int) -> tuple[dict[str, int], int] | None:
    """The legacy header's params and expected file size, if they look like a llama2.c file.

    Returns ``(params, expected_size)`` (``params["vocab_size"]`` may be negative) when all
    seven fields are plausible, else ``None``. Used for detection: legacy files have no magic,
    so a header whose implied size equals ``file_size`` is the evidence.
    """
    if len(head) < LEGACY_HEADER_BYTES:
        return None
    values = struct.unpack("<7i", head[:LEGACY_HEADER_BYTES])
    params = dict(zip(_PARAM_NAMES, values))
    if not _plausible(params):
        return None
    return params, LEGACY_HEADER_BYTES + 4 * _n_floats(params, legacy=True)


def _plausible(params: dict[str, int]) -> bool:
    p = dict(params, vocab_size=abs(params["vocab_size"]))
    return (all(0 < v < _MAX_FIELD for v in p.values())
            and p["dim"] % p["n_heads"] == 0 and p["n_heads"] % p["n_kv_heads"] == 0
            and (p["dim"] // p["n_heads"]) % 2 == 0)


def _n_floats(params: dict[str, int], legacy: bool, shared: bool | None = None) -> int:
    """Number of float32 values after the header (run.c's ``memory_map_weights`` order)."""
    D, F, L = params["dim"], params["hidden_dim"], params["n_layers"]
    H, K, S = params["n_heads"], params["n_kv_heads"], params["seq_len"]
    V = abs(params["vocab_size"])
    hs = D // H
    if shared is None:
        shared = params["vocab_size"] > 0
    n = V * D + 2 * L * D + D                      # embedding, rms_att, rms_ffn, rms_final
    n += L * D * (H * hs) * 2 + L * D * (K * hs) * 2  # wq, wo; wk, wv
    n += 3 * L * D * F                             # w1, w2, w3
    if legacy:
        n += 2 * S * hs // 2                       # freq_cis_real, freq_cis_imag (unused)
    if not shared:
        n += V * D                                 # wcls
    return n


def read_llama2c(path: Path) -> Checkpoint:
    """Read a llama2.c checkpoint (legacy or version 1) → :class:`Checkpoint`.

    Tensors are memory-mapped float32; q_proj/k_proj are permuted to rotate-half
    (:func:`interleaved_to_half`, k with ``n_kv_heads``). Config: ``hidden_dim`` →
    ``intermediate_size``, ``seq_len`` → ``max_position_embeddings``, ``rms_norm_eps`` 1e-5,
    ``rope_theta`` 10000 (as run.c), ``tie_word_embeddings`` = shared classifier, BOS 1, EOS 2.

    Raises:
        LLMCLIError: wrong or unsupported version (e.g. version 2, int8), implausible header
            fields, or a file size that differs from what the header implies (truncated file).
    """
    import numpy as np

    from llmcli.config import LlamaConfig

    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(V1_HEADER_BYTES)
    if is_v1(head):
        if len(head) < 37:
            raise LLMCLIError(f"{path}: truncated llama2.c version-1 header ({size} bytes)")
        version = struct.unpack("<i", head[4:8])[0]
        if version == 2:
            raise LLMCLIError(f"{path}: llama2.c version 2 (int8-quantised, for runq.c) is not "
                              "supported; export a version 1 (float32) file with export.py --version 1")
        if version != 1:
            raise LLMCLIError(f"{path}: llama2.c checkpoint version {version} is not supported "
                              "(supported: legacy and version 1)")
        if size < V1_HEADER_BYTES:
            raise LLMCLIError(f"{path}: truncated llama2.c version-1 header ({size} bytes, expected 256)")
        params = dict(zip(_PARAM_NAMES, struct.unpack("<7i", head[8:36])))
        flag = head[36]
        if flag not in (0, 1):
            raise LLMCLIError(f"{path}: bad llama2.c version-1 header: shared_classifier flag is {flag}")
        shared, legacy, offset, fmt = bool(flag), False, V1_HEADER_BYTES, "llama2.c version 1 (export.py)"
    else:
        if size < LEGACY_HEADER_BYTES:
            raise LLMCLIError(f"{path}: truncated: {size} bytes is shorter than a llama2.c header (28)")
        params = dict(zip(_PARAM_NAMES, struct.unpack("<7i", head[:LEGACY_HEADER_BYTES])))
        shared, legacy, offset, fmt = params["vocab_size"] > 0, True, LEGACY_HEADER_BYTES, "llama2.c legacy (run.c)"
    if not _plausible(params):
        fields = ", ".join(f"{k}={v}" for k, v in params.items())
        raise LLMCLIError(f"{path}: not a valid llama2.c {'version-1' if not legacy else 'legacy'} "
                          f"header ({fields}): fields must be positive, dim divisible by n_heads into "
                          "an even head size, n_heads divisible by n_kv_heads")
    expected = offset + 4 * _n_floats(params, legacy, shared)
    if size != expected:
        fields = ", ".join(f"{k}={v}" for k, v in params.items())
        what = "truncated" if size < expected else "has trailing data"
        raise LLMCLIError(f"{path}: header ({fields}) implies {expected} bytes but the file has "
                          f"{size}: {what} or not a llama2.c checkpoint")

    D, F, L = params["dim"], params["hidden_dim"], params["n_layers"]
    H, K, S = params["n_heads"], params["n_kv_heads"], params["seq_len"]
    V = abs(params["vocab_size"])
    hs = D // H
    data = np.memmap(path, dtype="<f4", mode="r", offset=offset)
    cursor = [0]

    def take(*shape: int) -> tuple[int, int, tuple[int, ...]]:
        n = 1
        for s in shape:
            n *= s
        start = cursor[0]
        cursor[0] += n
        return start, n, shape

    def block(count: int, *shape: int) -> list[tuple[int, int, tuple[int, ...]]]:
        return [take(*shape) for _ in range(count)]

    # Offsets (in floats) of every tensor, in the file's order.
    if legacy:
        emb = take(V, D)
        rms_att = block(L, D)
        wq, wk, wv, wo = block(L, H * hs, D), block(L, K * hs, D), block(L, K * hs, D), block(L, D, H * hs)
        rms_ffn = block(L, D)
        w1, w2, w3 = block(L, F, D), block(L, D, F), block(L, F, D)
        rms_final = take(D)
        take(S, hs // 2)  # freq_cis_real: run.c skips it (RoPE is computed on the fly)
        take(S, hs // 2)  # freq_cis_imag
    else:
        rms_att, rms_ffn, rms_final = block(L, D), block(L, D), take(D)
        emb = take(V, D)
        wq, wk, wv, wo = block(L, H * hs, D), block(L, K * hs, D), block(L, K * hs, D), block(L, D, H * hs)
        w1, w2, w3 = block(L, F, D), block(L, D, F), block(L, F, D)
    wcls = None if shared else take(V, D)
    assert cursor[0] * 4 + offset == size

    def lazy(spec: tuple[int, int, tuple[int, ...]], rope_heads: int = 0) -> LazyTensor:
        start, n, shape = spec

        def load():
            import torch

            t = torch.from_numpy(np.array(data[start:start + n], dtype=np.float32).reshape(shape))
            return interleaved_to_half(t, rope_heads) if rope_heads else t

        return LazyTensor(shape, load, 4 * n)

    tensors: dict[str, LazyTensor] = {"model.embed_tokens.weight": lazy(emb)}
    for i in range(L):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = lazy(rms_att[i])
        tensors[p + "self_attn.q_proj.weight"] = lazy(wq[i], rope_heads=H)
        tensors[p + "self_attn.k_proj.weight"] = lazy(wk[i], rope_heads=K)
        tensors[p + "self_attn.v_proj.weight"] = lazy(wv[i])
        tensors[p + "self_attn.o_proj.weight"] = lazy(wo[i])
        tensors[p + "post_attention_layernorm.weight"] = lazy(rms_ffn[i])
        tensors[p + "mlp.gate_proj.weight"] = lazy(w1[i])
        tensors[p + "mlp.down_proj.weight"] = lazy(w2[i])
        tensors[p + "mlp.up_proj.weight"] = lazy(w3[i])
    tensors["model.norm.weight"] = lazy(rms_final)
    if wcls is not None:
        tensors["lm_head.weight"] = lazy(wcls)

    config = LlamaConfig(
        vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
        num_attention_heads=H, num_key_value_heads=K, max_position_embeddings=S,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=shared,
        bos_token_id=1, eos_token_id=[2])
    notes = [
        f"Header: dim={D}, hidden_dim={F}, n_layers={L}, n_heads={H}, n_kv_heads={K}, "
        f"vocab_size={V}, seq_len={S}; classifier {'shared with' if shared else 'separate from'} "
        "the token embedding.",
        "rms_norm_eps 1e-5 and rope_theta 10000 are run.c's fixed values (the file does not store them).",
    ]
    if legacy:
        notes.append("The precomputed freq_cis_real/freq_cis_imag tables were skipped (RoPE is "
                     "recomputed from rope_theta).")
    return Checkpoint(config=config, tensors=tensors, format=fmt, default_dtype="float32", notes=notes)
