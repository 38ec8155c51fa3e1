"""Every GGUF tensor type ``llmcli convert`` reads, checked against the ``gguf`` package.

For each type a small Llama (hidden 256, so that the 256-value K-quant blocks fit a row) is
written with ``gguf.GGUFWriter``: every matrix in that type, the norms in F32. Blocks come
from ``gguf.quants.quantize`` where the package can quantize the type (Q4_0 ... Q8_0, TQ1_0,
TQ2_0), otherwise from random bytes whose float16 scale fields are set so the weights are of
ordinary size (the K-quants and IQ types: any bytes are a valid block). Then:

* each converted float32 tensor equals ``gguf.quants.dequantize`` of the stored blocks, q/k
  after llama.cpp's own permutation formula (``LlamaModel.permute``, written out here);
* llmcli's logits on the converted model equal a float64 numpy forward pass of llama2.c's
  ``run.c`` on the dequantized, unpermuted weights;
* ``info`` shows each tensor's source type.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")

from llmcli.convert import convert  # noqa: E402
from llmcli.convert.gguf_reader import SUPPORTED_TYPES  # noqa: E402
from llmcli.weights import load_model, read_tensors, weight_files  # noqa: E402

Q = gguf.GGMLQuantizationType
D, H, K, F, L = 256, 4, 2, 512, 1
HS = D // H

#: Byte offsets of the float16 scale fields in one block (ggml's block_* structs); every other
#: byte of a block may hold anything.
F16_FIELDS = {
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
    "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,), "IQ3_XXS": (0,), "IQ3_S": (0,),
    "IQ1_S": (0,), "IQ4_NL": (0,), "IQ4_XS": (0,),
}
QUANTIZED = [t for t in SUPPORTED_TYPES if t not in ("F32", "F16", "BF16")]


def test_every_supported_quantized_type_is_exercised():
    can_quantize = []
    for name in QUANTIZED:
        try:
            gguf.quants.quantize(np.zeros((1, 256), np.float32), Q[name])
            can_quantize.append(name)
        except NotImplementedError:
            assert name in F16_FIELDS, f"{name}: neither quantizable by gguf nor built here"
    for required in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        assert required in QUANTIZED


def make_blocks(rows: int, cols: int, qtype: str, rng, scale: float) -> np.ndarray:
    """Stored bytes (rows, bytes per row) of a ``rows × cols`` matrix in ``qtype`` whose
    values have a root mean square of about ``scale``."""
    if qtype not in F16_FIELDS:
        return gguf.quants.quantize((rng.standard_normal((rows, cols)) * scale).astype(np.float32), Q[qtype])
    block, nbytes = gguf.constants.GGML_QUANT_SIZES[Q[qtype]]
    n = rows * cols // block
    raw = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    fields = F16_FIELDS[qtype]

    def set_scales(values):
        for k, off in enumerate(fields):
            raw[:, off:off + 2] = values[:, k:k + 1].astype(np.float16).view(np.uint8).reshape(n, 2)

    base = rng.uniform(0.5, 1.0, (n, len(fields))) * rng.choice([-1, 1], (n, len(fields)))
    set_scales(base)
    rms = np.sqrt((gguf.quants.dequantize(raw, Q[qtype]) ** 2).mean())
    set_scales(base * (scale / rms))  # every type is linear in its scale fields
    return raw.reshape(rows, -1)


def half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (HF rotate-half rows → interleaved pairs)."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def reference_logits(w: dict, tokens: list[int], eps: float = 1e-5, theta: float = 10000.0) -> np.ndarray:
    """llama2.c run.c's forward (interleaved-pair RoPE), float64, all positions → (T, V)."""
    T = len(tokens)
    rms = lambda x, g: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g  # noqa: E731
    pos = np.arange(T)[:, None]
    freq = 1.0 / theta ** (np.arange(0, HS, 2) / HS)
    cos, sin = np.cos(pos * freq), np.sin(pos * freq)

    def rope(v, n):
        v = v.reshape(T, n, HS // 2, 2)
        a, b = v[..., 0], v[..., 1]
        c, s = cos[:, None], sin[:, None]
        return np.stack([a * c - b * s, a * s + b * c], -1).reshape(T, n * HS)

    x = w["token_embd"][tokens]
    mask = np.tril(np.ones((T, T), bool))
    for i in range(L):
        xb = rms(x, w[f"{i}.attn_norm"])
        q, k, v = rope(xb @ w[f"{i}.attn_q"].T, H), rope(xb @ w[f"{i}.attn_k"].T, K), xb @ w[f"{i}.attn_v"].T
        out = np.zeros((T, H * HS))
        for h in range(H):
            g = h // (H // K)
            s = np.where(mask, q[:, h * HS:(h + 1) * HS] @ k[:, g * HS:(g + 1) * HS].T / np.sqrt(HS), -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[:, h * HS:(h + 1) * HS] = (p / p.sum(-1, keepdims=True)) @ v[:, g * HS:(g + 1) * HS]
        x = x + out @ w[f"{i}.attn_output"].T
        xb = rms(x, w[f"{i}.ffn_norm"])
        gate = xb @ w[f"{i}.ffn_gate"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (xb @ w[f"{i}.ffn_up"].T)) @ w[f"{i}.ffn_down"].T
    return rms(x, w["output_norm"]) @ w["output"].T


def write_model(path, tok_path, qtype: str, seed: int = 0):
    """A GGUF with every matrix in ``qtype`` → (path, float64 weights it holds, raw blocks)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    rng = np.random.default_rng(seed)
    proto = pb.ModelProto()
    proto.ParseFromString(tok_path.read_bytes())
    V = len(proto.pieces)
    shapes = {"token_embd": (V, D), "output": (V, D)}
    for i in range(L):
        shapes.update({f"{i}.attn_q": (H * HS, D), f"{i}.attn_k": (K * HS, D),
                       f"{i}.attn_v": (K * HS, D), f"{i}.attn_output": (D, H * HS),
                       f"{i}.ffn_gate": (F, D), f"{i}.ffn_up": (F, D), f"{i}.ffn_down": (D, F)})
    wr = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("context_length", 64), ("embedding_length", D), ("feed_forward_length", F),
                       ("block_count", L), ("head_count", H), ("head_count_kv", K)):
        getattr(wr, f"add_{key}")(value)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_tokenizer_model("llama")
    wr.add_token_list([p.piece for p in proto.pieces])
    wr.add_token_scores([p.score for p in proto.pieces])
    wr.add_token_types([int(p.type) for p in proto.pieces])
    weights, blocks = {}, {}
    for key, (rows, cols) in shapes.items():
        raw = make_blocks(rows, cols, qtype, rng, cols ** -0.5)
        name = key if "." not in key else f"blk.{key}"
        wr.add_tensor(f"{name}.weight", raw, raw_dtype=Q[qtype])
        blocks[key] = raw
        weights[key] = gguf.quants.dequantize(raw, Q[qtype]).astype(np.float64).reshape(rows, cols)
    for key in ["output_norm"] + [f"{i}.{n}" for i in range(L) for n in ("attn_norm", "ffn_norm")]:
        g = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
        wr.add_tensor(f"{key if '.' not in key else 'blk.' + key}.weight", g)
        weights[key] = g.astype(np.float64)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path, weights, V


_HF = {"token_embd": "model.embed_tokens.weight", "output": "lm_head.weight",
       "output_norm": "model.norm.weight"}
_HF_LAYER = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}


def hf_name(key: str) -> str:
    if key in _HF:
        return _HF[key]
    i, part = key.split(".")
    return f"model.layers.{i}.{_HF_LAYER[part]}.weight"


@pytest.mark.parametrize("qtype", QUANTIZED)
def test_quantized_type_converts_to_gguf_dequantization(tmp_path, tiny_tokenizer_model, qtype):
    src, w, V = write_model(tmp_path / f"m-{qtype}.gguf", tiny_tokenizer_model, qtype,
                            seed=QUANTIZED.index(qtype))
    out = tmp_path / "out"
    result = convert(src, out)
    assert result.dtype == "float32"  # --dtype auto for a quantized file
    tensors = read_tensors(weight_files(out))
    assert set(tensors) == {hf_name(k) for k in w}
    for key, ref in w.items():
        got = tensors[hf_name(key)].double().numpy()
        if key.endswith("attn_q") or key.endswith("attn_k"):
            got = half_to_interleaved(got, H if key.endswith("attn_q") else K)
        assert np.array_equal(got, ref), f"{qtype} {key}"
    tokens = [1] + np.random.default_rng(1).integers(3, V, 11).tolist()
    model, _ = load_model(out)
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0].double().numpy()
    ref = reference_logits(w, tokens)
    diff = np.abs(ours - ref).max()
    print(f"{qtype}: max |logit diff| = {diff:.3g} (logit range {np.abs(ref).max():.3g})")
    assert diff < 1e-4
    # the source type of every tensor is recorded
    from llmcli.inspection.info import model_info

    info = model_info(out)
    by_name = {t.name: t for t in info.tensors}
    for key in w:
        assert by_name[hf_name(key)].source_type == (qtype if key in shapes_of(w) else "F32"), key
    assert f"{qtype}" in (out / "README.md").read_text()


def shapes_of(w: dict) -> set:
    return {k for k, v in w.items() if v.ndim == 2}


def test_quantized_to_bfloat16(tmp_path, tiny_tokenizer_model):
    src, w, _ = write_model(tmp_path / "m.gguf", tiny_tokenizer_model, "Q4_K", seed=3)
    convert(src, tmp_path / "out", dtype="bfloat16")
    got = read_tensors(weight_files(tmp_path / "out"))["model.layers.0.mlp.down_proj.weight"]
    assert got.dtype == torch.bfloat16
    want = torch.from_numpy(w["0.ffn_down"]).float().to(torch.bfloat16)
    assert torch.equal(got, want)


def test_unsupported_type_is_one_line_error(tmp_path, tiny_tokenizer_model, capsys, monkeypatch):
    """A type llmcli does not read (MXFP4 here, which gguf can write) is named; nothing is written."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(tiny_tokenizer_model.read_bytes())
    path = tmp_path / "mx.gguf"
    wr = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("context_length", 64), ("embedding_length", 64), ("feed_forward_length", 64),
                       ("block_count", 1), ("head_count", 4)):
        getattr(wr, f"add_{key}")(value)
    wr.add_tokenizer_model("llama")
    wr.add_token_list([p.piece for p in proto.pieces])
    wr.add_token_types([int(p.type) for p in proto.pieces])
    emb = np.random.default_rng(0).standard_normal((len(proto.pieces), 64)).astype(np.float32)
    wr.add_tensor("token_embd.weight", gguf.quants.quantize(emb, Q.MXFP4), raw_dtype=Q.MXFP4)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    from llmcli.cli.app import main

    monkeypatch.setattr(sys, "argv", ["llmcli", "convert", str(path), str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1, err
    assert "MXFP4" in err and str(path) in err and "token_embd.weight" in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_gguf_source_types_in_safetensors_metadata(tmp_path, tiny_tokenizer_model):
    from safetensors import safe_open

    src, w, _ = write_model(tmp_path / "m.gguf", tiny_tokenizer_model, "Q5_1", seed=4)
    convert(src, tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == "pt"
    types = json.loads(meta["gguf_tensor_types"])
    assert types["model.layers.0.self_attn.q_proj.weight"] == "Q5_1"
    assert types["model.norm.weight"] == "F32"
    assert meta["source_format"].startswith("GGUF")
