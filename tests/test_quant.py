"""Quantized weights (llmcli/quant.py): ggml's Q8_0, Q4_0 and Q4_1 blocks, kept quantized.

Checked against the ``gguf`` package (ggml's reference block formats, in numpy):

* :func:`quantize` gives the very bytes ``gguf.quants.quantize`` gives, and the stored form
  dequantizes to exactly ``gguf.quants.dequantize``'s values;
* the packed CPU kernel equals a dequantize-then-matmul reference to float rounding: the
  reference is built from the kernel's own operands (activations, scales and zeros rounded
  to bfloat16), computed in float64, and the kernel's output may differ by its one bfloat16
  rounding (half an ulp: at most 2⁻⁸ relative) plus float32 accumulation (bounded by 2⁻¹⁶·Σ|x·w|);
* a GGUF's Q8_0/Q4_0/Q4_1 blocks survive ``convert --quant keep`` and loading bit for bit;
* quantized models' logits are close to float32 (tolerances with their reasons below), the
  decoding fast path agrees with the readable forward, and bad inputs are one-line errors.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from llmcli import quant  # noqa: E402
from llmcli.errors import LLMCLIError, UsageError  # noqa: E402
from llmcli.weights import load_model  # noqa: E402

if not quant.kernel_available():   # pragma: no cover - torch < 2.6
    pytest.skip("torch lacks _weight_int4pack_mm_for_cpu", allow_module_level=True)

Q = gguf.GGMLQuantizationType
GGUF_TYPE = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}
SCHEMES = list(GGUF_TYPE)


def _matrix(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Random weights with the cases block quantizers get wrong: an all-zero block, a
    constant block, outliers, tiny and negative-only blocks."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[0, :32] = 0.0
    w[1, :32] = 0.25
    w[2, 5] = 3.0
    w[3, 32:64] = -torch.rand(32, generator=g) * 1e-6
    w[4, 64:96] = -torch.rand(32, generator=g)
    return w


# ----------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantize_is_bit_identical_to_gguf(scheme):
    w = _matrix(64, 256)
    raw = gguf.quants.quantize(w.numpy(), GGUF_TYPE[scheme])                 # (64, bytes)
    ours = quant.quantize(w, scheme)
    theirs = quant.from_ggml_blocks(raw, scheme, (64, 256))
    assert torch.equal(ours.codes, theirs.codes)
    assert torch.equal(ours.scale.view(torch.int16), theirs.scale.view(torch.int16))
    if scheme == "q4_1":
        assert torch.equal(ours.min.view(torch.int16), theirs.min.view(torch.int16))
    assert ours.shape == (64, 256)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_stored_blocks_dequantize_to_gguf_values(scheme):
    raw = gguf.quants.quantize(_matrix(32, 128, seed=1).numpy(), GGUF_TYPE[scheme])
    qt = quant.from_ggml_blocks(raw, scheme, (32, 128))
    want = torch.from_numpy(gguf.quants.dequantize(raw, GGUF_TYPE[scheme])).reshape(32, 128)
    assert torch.equal(qt.dequantize(), want)
    # stored dtypes and shapes, as written to model.safetensors
    state = qt.state("m.weight")
    assert state["m.weight"].dtype == (torch.int8 if scheme == "q8_0" else torch.uint8)
    assert {k: tuple(v.shape) for k, v in state.items()} == \
        {"m.weight" + s: shp for s, shp in quant.stored_shape(scheme, (32, 128)).items()}


def _int4pack_reference(qt: quant.QuantTensor, x: torch.Tensor):
    """torch's kernel's operands, in float64: x, scales and zeros rounded to bfloat16 →
    (x @ Wᵀ, |x| @ |W|ᵀ)."""
    N, K = qt.shape
    q = qt.integers().view(N, K // 32, 32).double()
    d = qt.scale.float().to(torch.bfloat16).double()[..., None]
    if qt.scheme == "q8_0":    # two planes: 16d·hi + d·lo, each scale rounded on its own
        hi, lo = torch.div(q, 16, rounding_mode="floor"), torch.remainder(q, 16)
        d16 = (16 * qt.scale.float()).to(torch.bfloat16).double()[..., None]
        w = d16 * hi + d * lo
    elif qt.scheme == "q4_0":
        w = d * (q - 8)
    else:
        zero = (qt.min.float() + 8 * qt.scale.float()).to(torch.bfloat16).double()[..., None]
        w = d * (q - 8) + zero
    xb = x.to(torch.bfloat16).double()
    return xb @ w.reshape(N, K).t(), xb.abs() @ w.reshape(N, K).abs().t()


def _c_reference(qt: quant.QuantTensor, x: torch.Tensor):
    """The C kernel's operands, in float64: the stored weights exactly, the activations as
    it quantizes them (ggml's quantize_row_q8_0 with a float32 scale: d = max|x|/127,
    q = round half away from zero of x/d) → (x @ Wᵀ, |x| @ |W|ᵀ)."""
    M, K = x.shape
    xb = x.float().view(M, K // 32, 32)
    d = xb.abs().amax(-1, keepdim=True) / 127
    v = xb * torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)
    xq = (q.double() * d.double()).view(M, K)
    w = qt.dequantize().double()
    return xq @ w.t(), xq.abs() @ w.abs().t()


KERNELS = ["c", "torch"]


def _need(kernel: str) -> None:
    if kernel == "c" and quant.kernel_name() != "c":
        pytest.skip("no C compiler: llmcli's C kernel is not built here")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("rows", [1, 5])
def test_packed_matmul_equals_dequantize_then_matmul(scheme, rows, kernel):
    """Each kernel equals a float64 dequantize-then-matmul of its own operands to float
    rounding. torch's: one bfloat16 rounding of each output (unit roundoff 2⁻⁸) plus float32
    accumulation (2⁻¹⁶ of Σ|x·w| leaves room for any summation order). The C kernel: integer
    block sums are exact, so only float32 products and the sum over blocks round (2⁻²⁰ of
    Σ|x·w|); its input quantization (as llama.cpp's) is in the reference."""
    _need(kernel)
    qt = quant.quantize(_matrix(200, 256, seed=2), scheme)   # 200 rows: padded for torch's kernel
    lin = quant.QuantLinear.from_quant(qt, backend=kernel)
    assert lin.kernel == kernel
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(3))
    out = lin(x).double()
    if kernel == "torch":
        ref, magnitude = _int4pack_reference(qt, x)
        bound = ref.abs() * 2 ** -8 + magnitude * 2 ** -16 + 1e-30
    else:
        ref, magnitude = _c_reference(qt, x)
        bound = magnitude * 2 ** -20 + 1e-30
    assert ((out - ref).abs() <= bound).all(), float(((out - ref).abs() / bound).max())
    # the weights each kernel multiplies: the stored ones (C), or those with bfloat16 scales
    w_kernel, w_stored = lin.weight.double(), qt.dequantize().double()
    if kernel == "c":
        assert torch.equal(w_kernel, w_stored)
    else:
        step = qt.scale.double().abs().repeat_interleave(32, dim=1)
        qmax = 127 if scheme == "q8_0" else 15
        assert ((w_kernel - w_stored).abs() <= step * qmax * 2 ** -8 + w_stored.abs() * 2 ** -8 + 1e-12).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_c_kernel_prefill_is_float32_matmul_of_the_stored_weights(scheme):
    """More than GEMV_ROWS input rows: blocks of rows dequantized exactly, then float32 matmul."""
    _need("c")
    qt = quant.quantize(_matrix(1100, 128, seed=4), scheme)    # two dequantized row blocks
    lin = quant.QuantLinear.from_quant(qt, backend="c")
    x = torch.randn(quant.GEMV_ROWS + 3, 128)
    assert torch.allclose(lin(x), x @ qt.dequantize().t(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
def test_fused_matrices_share_rows_and_give_the_parts_outputs(kernel):
    _need(kernel)
    parts = [quant.QuantLinear.from_quant(quant.quantize(_matrix(n, 128, seed=n), "q4_1"), backend=kernel)
             for n in (128, 64, 64)]
    x = torch.randn(2, 128)
    alone = torch.cat([p(x) for p in parts], dim=-1)
    fused = quant.fuse(parts)
    assert fused is not None and fused.out_features == 256
    assert torch.equal(fused(x), alone)
    assert torch.equal(torch.cat([p(x) for p in parts], dim=-1), alone)   # parts are views now
    buffers = (lambda m: m.codes) if kernel == "c" else (lambda m: m.packed)
    assert buffers(parts[1]).data_ptr() == buffers(fused)[128:].data_ptr()
    odd = [quant.QuantLinear.from_quant(quant.quantize(_matrix(n, 128), "q8_0"), backend=kernel)
           for n in (40, 64)]
    if kernel == "torch":
        assert quant.fuse(odd) is None      # 40 rows do not end on the kernel's row block
    else:
        assert torch.equal(quant.fuse(odd)(x), torch.cat([p(x) for p in odd], dim=-1))


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer_model):
    """A random Llama (transformers' save_pretrained; hidden 64, 2 layers, GQA, untied) with
    the 320-piece test tokenizer."""
    import shutil

    from conftest import make_checkpoint

    model_dir, _ = make_checkpoint(tmp_path_factory.mktemp("q"), vocab_size=320, hidden_size=64,
                                   intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=2, num_hidden_layers=2,
                                   tie_word_embeddings=False)
    shutil.copyfile(tiny_tokenizer_model, model_dir / "tokenizer.model")
    return model_dir


@pytest.fixture(scope="module")
def float_logits(tiny):
    model, _ = load_model(tiny)
    ids = torch.tensor([[1] + list(range(5, 40))])
    with torch.no_grad():
        return ids, model(ids)[0]


#: Quantized-vs-float32 tolerance on the logits, as a fraction of their root mean square.
#: Per weight the rounding error is uniform within half a step: Q8_0's step is max|w|/127,
#: about 2.5σ/127 for Gaussian weights in blocks of 32, so an rms error of 0.6 % of σ; Q4_0's
#: step max|w|/8 and Q4_1's (max − min)/15 give 8-9 % of σ. Each matrix's output then
#: carries about that relative error (the bfloat16 activations add ~0.2 %), and it adds up
#: over the 2 blocks and the output matrix (q8_0 there) of the tiny random Llama: measured
#: about 1 % (q8_0) and 13-14 % (q4_0, q4_1). The limits leave about 2x room and stay far
#: below what a wrong layout or block order gives (≥ 100 %: unrelated logits).
TOLERANCE = {"q8_0": 0.02, "q4_0": 0.3, "q4_1": 0.3}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_logits_are_close_to_float32(tiny, float_logits, scheme):
    ids, ref = float_logits
    model, _ = load_model(tiny, quant=scheme)
    assert model.quantization and set(model.quantization.values()) == {scheme, "q8_0"}
    assert not [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        out = model(ids)[0]
    rel = float((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())
    print(f"{scheme}: rms logit error {rel:.4f} of rms logit")
    assert rel < TOLERANCE[scheme]
    # the decoding fast path (fused q/k/v, gate/up) computes what the readable forward does,
    # to the kernels' roundings (the C kernel quantizes one-row inputs to int8, as llama.cpp,
    # and multiplies longer ones in float32: their difference is of q8_0's size)
    cache = model.new_cache(1, 64)
    with torch.no_grad():
        model(ids[:, :-1], cache=cache)
        step = model(ids[:, -1:], cache=cache)[0, -1]
    assert float((step - out[-1]).pow(2).mean().sqrt() / out[-1].pow(2).mean().sqrt()) < TOLERANCE["q8_0"]


def test_aliases_and_none():
    assert quant.resolve("int8") == "q8_0" and quant.resolve("INT4") == "q4_0"
    assert quant.resolve("none") is None and quant.resolve(None) is None
    with pytest.raises(UsageError, match="q4_1"):
        quant.resolve("q5_k")


def test_bad_shapes_and_devices_are_usage_errors(tmp_path):
    from conftest import make_checkpoint

    odd, _ = make_checkpoint(tmp_path, hidden_size=48, intermediate_size=96, num_attention_heads=4,
                             num_key_value_heads=4)
    with pytest.raises(UsageError, match="not a multiple"):
        load_model(odd, quant="q8_0")
    model, _ = load_model(odd)      # float still loads
    with pytest.raises(UsageError, match="CPU only"):
        quant.quantize_model(model, "q8_0", device="cuda")


# ----------------------------------------------------------------------------- GGUF blocks kept
@pytest.fixture(scope="module")
def kept(tmp_path_factory, tiny_tokenizer_model):
    """For each scheme: a GGUF with every matrix in it (test_gguf_quants' writer), converted
    with --quant keep → {scheme: (gguf path, weights it holds, out dir)}."""
    from test_gguf_quants import write_model

    from llmcli.convert import convert

    tmp = tmp_path_factory.mktemp("kept")
    out = {}
    for i, scheme in enumerate(SCHEMES):
        src, w, _ = write_model(tmp / f"{scheme}.gguf", tiny_tokenizer_model, scheme.upper(), seed=i)
        result = convert(src, tmp / scheme, quant="keep")
        assert scheme in result.dtype
        out[scheme] = (src, w, tmp / scheme)
    return out


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gguf_blocks_load_to_gguf_dequantized_values(kept, scheme):
    from test_gguf_quants import H, K, half_to_interleaved, hf_name

    from llmcli.weights import read_tensors, weight_files

    src, w, out = kept[scheme]
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "llmcli" and set(cfg["tensors"].values()) == {scheme}
    tensors = read_tensors(weight_files(out))
    stored = quant.take_stored(out / "config.json", cfg, tensors)
    assert all(t.dtype == torch.float32 for t in tensors.values())   # only the norms are left
    for key, ref in w.items():
        if ref.ndim != 2:
            continue
        got = stored[hf_name(key)].dequantize().double().numpy()
        if key.endswith(("attn_q", "attn_k")):
            got = half_to_interleaved(got, H if key.endswith("attn_q") else K)
        assert np.array_equal(got, ref), key
    # loading keeps them quantized: no float copy of a matrix but the embedding's rows
    model, _ = load_model(out)
    floats = sum(p.numel() for p in model.parameters())
    assert floats == model.input_embeddings().numel() + sum(
        m.weight.numel() for m in model.modules() if type(m).__name__ == "RMSNorm")
    assert model.quantization and set(model.quantization.values()) == {scheme}


def test_kept_model_logits_match_the_float_conversion(kept, tmp_path):
    """The kept Q4_1 blocks compute what the dequantized float32 conversion computes, to the
    kernel's bfloat16 rounding (same tolerance as the q8_0 row above: only roundings differ)."""
    from llmcli.convert import convert

    src, _, out = kept["q4_1"]
    convert(src, tmp_path / "f32")
    ids = torch.tensor([[1, 5, 9, 30, 44, 12, 7]])
    with torch.no_grad():
        ref = load_model(tmp_path / "f32")[0](ids)[0]
        ours = load_model(out)[0](ids)[0]
        deq = load_model(out, quant="none")[0](ids)[0]
    assert torch.equal(deq, ref)        # --quant none: the stored blocks dequantized exactly
    rel = float((ours - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())
    assert rel < TOLERANCE["q8_0"], rel


def test_stored_quantization_errors(kept, tmp_path):
    import shutil

    src, _, out = kept["q8_0"]
    with pytest.raises(UsageError, match="stored quantized"):
        load_model(out, quant="q4_0")
    assert load_model(out, quant="int8")[0].quantization     # the stored scheme: accepted

    def broken(edit, name):
        d = tmp_path / name
        shutil.copytree(out, d)
        cfg = json.loads((d / "config.json").read_text())
        edit(cfg["quantization_config"])
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(LLMCLIError) as info:
            load_model(d)
        assert "\n" not in str(info.value)
        return str(info.value)

    first = "model.layers.0.mlp.down_proj.weight"
    assert "q5_k" in broken(lambda q: q["tensors"].__setitem__(first, "q5_k"), "scheme")
    assert "version" in broken(lambda q: q.__setitem__("version", 2), "version")
    assert "block_size" in broken(lambda q: q.__setitem__("block_size", 64), "block")
    assert "int8" in broken(lambda q: q["tensors"].__setitem__(first, "q4_0"), "dtype")
    # a stored integer matrix the config does not list stays an error (issue 12's rule)
    msg = broken(lambda q: q["tensors"].pop(first), "unlisted")
    assert first in msg


def test_keep_refuses_other_types(tmp_path, tiny_tokenizer_model):
    from test_gguf_quants import write_model

    from llmcli.convert import convert

    src, _, _ = write_model(tmp_path / "k.gguf", tiny_tokenizer_model, "Q4_K", seed=5)
    with pytest.raises(LLMCLIError, match="Q4_K"):
        convert(src, tmp_path / "out", quant="keep")
    assert not (tmp_path / "out").exists()


def test_cli_quant_option(tiny, cli_runner=None):
    from typer.testing import CliRunner

    from llmcli.cli.app import app
    from llmcli.generation import Generation
    from llmcli.sampling import SamplingParams
    from llmcli.tokenizer import load_tokenizer

    runner = CliRunner()
    r = runner.invoke(app, ["generate", "-m", str(tiny), "Once upon", "-n", "6", "--temp", "0",
                            "--quant", "int8", "--ignore-eos"])
    assert r.exit_code == 0, r.output
    model, _ = load_model(tiny, quant="q8_0")
    tok = load_tokenizer(tiny)
    ids = tok.encode("Once upon")
    want = "".join(e.text for e in Generation(model, tok, ids, SamplingParams(temperature=0), 6,
                                              eos_ids=[]))
    assert want in r.stdout
    assert quant.requested() is None       # the option's value does not outlive the command
    bad = runner.invoke(app, ["logits", "-m", str(tiny), "Once", "--quant", "q3"])
    assert bad.exit_code == 2 and "q4_1" in bad.output


def test_info_counts_kept_blocks_as_their_matrices(kept, tmp_path):
    from llmcli.convert import convert
    from llmcli.inspection.info import model_info

    src, _, out = kept["q4_1"]
    convert(src, tmp_path / "f32")
    ours, ref = model_info(out), model_info(tmp_path / "f32")
    assert ours.parameters == ref.parameters
    down = {t.name: t for t in ours.tensors}["model.layers.0.mlp.down_proj.weight"]
    assert down.dtype == "q4_1" and down.shape == {t.name: t for t in ref.tensors}[down.name].shape
    assert not [t for t in ours.tensors if t.name.endswith(("_scale", "_min"))]


def test_without_a_compiler_torch_kernel_and_one_warning(tiny, monkeypatch):
    monkeypatch.setattr(quant, "_LIB", None)
    monkeypatch.setattr(quant, "_LIB_ERROR", "no C compiler (cc, gcc or $CC) on PATH")
    monkeypatch.delenv("LLMCLI_QUANT_KERNEL", raising=False)
    notes = []
    model, _ = load_model(tiny, quant="q4_0", warn=notes.append)
    assert {m.kernel for m in model.modules() if isinstance(m, quant.QuantLinear)} == {"torch"}
    assert len(notes) == 1 and "no C compiler" in notes[0] and "\n" not in notes[0]
    monkeypatch.setenv("LLMCLI_QUANT_KERNEL", "c")
    with pytest.raises(LLMCLIError, match="could not be built"):
        quant.kernel_name()
