"""Tests of ``llmcli convert`` (llama2.c and GGUF → HF directory).

Small random models are written in llama2.c's two formats and as GGUF (F32, F16, BF16, Q8_0)
by this file, converted, and their logits compared with an independent numpy reference of
llama2.c ``run.c``'s forward pass (interleaved-pair RoPE on the unconverted weights), so the
q/k permutation is really checked. Real-model tests use ../shared/fixtures/realmodels.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")
torch.set_num_threads(1)

from llmcli.convert import convert  # noqa: E402
from llmcli.errors import LLMCLIError  # noqa: E402
from llmcli.weights import load_model, read_tensors, weight_files  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "realmodels" / "stories260K"
STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in "
         "the park.")

# Tiny model: D hidden, H heads, K kv heads (GQA), hs head size, F intermediate, L layers.
D, H, K, F, L, S = 64, 4, 2, 96, 2, 32
HS = D // H

TRICKY = [
    "", " ", "a", "  two leading spaces", "trailing   ", "multiple    spaces   inside",
    "new\nline\n\nand\r\nwindows", "\ttab\tseparated\t", "emoji 😀👍🏽 family 👨‍👩‍👧 ok",
    "CJK 日本語 中文 한국어", "combining e\u0301 a\u0308 n\u0303 Å", "digits 0123456789 3.14159 2024",
    "<s> as text </s> <unk>", "<sep> a user symbol<sep>x", "Ünïcödé — “quotes” … ©",
    "    indented code:\n        return x  # comment", "\u2581 literal meta space",
]


# ----------------------------------------------------------------------------- tokenizers
def _corpus() -> list[str]:
    base = [
        "the quick brown fox jumps over the lazy dog",
        "once upon a time there was a little girl who loved to play in the park",
        "she saw a big red ball and she was very happy",
        "def main():", "    for i in range(10):", "        print(i, i * 2)", "    return 0",
        "numbers like 12 345 and 6789 appear here", "hello world, hello again! what a day.",
        "<sep> marks a boundary <sep> between parts",
    ]
    return [f"{line} {i}" if i % 3 == 0 else line for i in range(12) for line in base]


def _train_sp(tmp: Path, model_type: str) -> Path:
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=out, vocab_size=360, model_type=model_type,
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        allow_whitespace_only_pieces=(model_type == "bpe"), user_defined_symbols=["<sep>"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, num_threads=1,
        minloglevel=2)
    path = tmp / f"sp_{model_type}.model"
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture(scope="module")
def sp_bpe(tmp_path_factory) -> Path:
    return _train_sp(tmp_path_factory.mktemp("sp"), "bpe")


@pytest.fixture(scope="module")
def sp_unigram(tmp_path_factory) -> Path:
    return _train_sp(tmp_path_factory.mktemp("sp"), "unigram")


def _vocab(sp_path: Path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(sp_path.read_bytes())
    return [p.piece for p in m.pieces], [p.score for p in m.pieces], [int(p.type) for p in m.pieces]


# ----------------------------------------------------------------------------- weights
def random_weights(V: int, seed: int, shared: bool) -> dict:
    """Weights in llama2.c's layout (PyTorch (out, in), q/k rows in interleaved RoPE pairs)."""
    rng = np.random.default_rng(seed)

    def m(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "emb": m(V, D, scale=D ** -0.5),  # small: it is also the classifier when shared
        "rms_att": [1 + m(D, scale=0.1) for _ in range(L)],
        "wq": [m(H * HS, D, scale=D ** -0.5) for _ in range(L)],
        "wk": [m(K * HS, D, scale=D ** -0.5) for _ in range(L)],
        "wv": [m(K * HS, D, scale=D ** -0.5) for _ in range(L)],
        "wo": [m(D, H * HS, scale=D ** -0.5) for _ in range(L)],
        "rms_ffn": [1 + m(D, scale=0.1) for _ in range(L)],
        "w1": [m(F, D, scale=D ** -0.5) for _ in range(L)],
        "w2": [m(D, F, scale=F ** -0.5) for _ in range(L)],
        "w3": [m(F, D, scale=D ** -0.5) for _ in range(L)],
        "rms_final": 1 + m(D, scale=0.1),
    }
    w["wcls"] = w["emb"] if shared else m(V, D, scale=D ** -0.5)
    return w


def map_weights(w: dict, fn) -> dict:
    return {k: [fn(x, k) for x in v] if isinstance(v, list) else fn(v, k) for k, v in w.items()}


def reference_logits(w: dict, tokens: list[int], theta: float = 10000.0, eps: float = 1e-5) -> np.ndarray:
    """llama2.c run.c's forward, in float64, for all positions → (T, V)."""
    w = map_weights(w, lambda x, _: np.asarray(x, dtype=np.float64))
    T = len(tokens)

    def rmsnorm(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(v, n_heads):  # v (T, n_heads*HS): rotate adjacent pairs (v[i], v[i+1])
        out = v.copy()
        for pos in range(T):
            for i in range(0, n_heads * HS, 2):
                freq = 1.0 / theta ** ((i % HS) / HS)
                c, s = np.cos(pos * freq), np.sin(pos * freq)
                v0, v1 = v[pos, i], v[pos, i + 1]
                out[pos, i], out[pos, i + 1] = v0 * c - v1 * s, v0 * s + v1 * c
        return out

    x = w["emb"][tokens]
    mask = np.tril(np.ones((T, T), dtype=bool))
    for layer in range(L):
        xb = rmsnorm(x, w["rms_att"][layer])
        q = rope(xb @ w["wq"][layer].T, H)
        k = rope(xb @ w["wk"][layer].T, K)
        v = xb @ w["wv"][layer].T
        att = np.zeros((T, H * HS))
        for h in range(H):
            kh = h // (H // K)  # run.c: kv head = h / kv_mul
            qh, khs, vh = q[:, h * HS:(h + 1) * HS], k[:, kh * HS:(kh + 1) * HS], v[:, kh * HS:(kh + 1) * HS]
            scores = np.where(mask, qh @ khs.T / np.sqrt(HS), -np.inf)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            att[:, h * HS:(h + 1) * HS] = (p / p.sum(-1, keepdims=True)) @ vh
        x = x + att @ w["wo"][layer].T
        xb = rmsnorm(x, w["rms_ffn"][layer])
        g = xb @ w["w1"][layer].T
        x = x + ((g / (1 + np.exp(-g))) * (xb @ w["w3"][layer].T)) @ w["w2"][layer].T
    return rmsnorm(x, w["rms_final"]) @ w["wcls"].T


def llmcli_logits(model_dir: Path, tokens: list[int]) -> np.ndarray:
    model, _ = load_model(model_dir)
    with torch.no_grad():
        return model(torch.tensor([tokens]))[0].double().numpy()


def _tokens(V: int, n: int = 12, seed: int = 0) -> list[int]:
    return [1] + np.random.default_rng(seed).integers(3, V, n - 1).tolist()


# ----------------------------------------------------------------------------- file writers
def write_llama2c(path: Path, w: dict, version: int, shared: bool) -> Path:
    """A llama2.c checkpoint as export.py legacy_export / version1_export write it."""
    V = w["emb"].shape[0]
    if version == 0:
        header = struct.pack("<7i", D, F, L, H, K, V if shared else -V, S)
        freqs = np.zeros((S, HS // 2), np.float32)
        parts = [w["emb"], *w["rms_att"], *w["wq"], *w["wk"], *w["wv"], *w["wo"], *w["rms_ffn"],
                 *w["w1"], *w["w2"], *w["w3"], w["rms_final"], freqs + 1, freqs]
    else:
        header = struct.pack("<Ii7iB", 0x616B3432, 1, D, F, L, H, K, V, S, int(shared))
        header += b"\0" * (256 - len(header))
        parts = [*w["rms_att"], *w["rms_ffn"], w["rms_final"], w["emb"], *w["wq"], *w["wk"],
                 *w["wv"], *w["wo"], *w["w1"], *w["w2"], *w["w3"]]
    if not shared:
        parts.append(w["wcls"])
    with path.open("wb") as fh:
        fh.write(header)
        for p in parts:
            fh.write(np.ascontiguousarray(p, dtype="<f4").tobytes())
    return path


def gguf_stored(arr: np.ndarray, qtype) -> np.ndarray:
    """The float32 values a GGUF tensor of ``qtype`` holds for ``arr``."""
    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return arr.astype(np.float32)
    if qtype == Q.F16:
        return arr.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(arr.astype(np.float32), qtype), qtype)


def write_gguf(path: Path, w: dict, sp_path: Path | None, qtype=None, with_output: bool = True,
               arch: str = "llama", theta: float | None = None, context: int = 64,
               tokenizer_model: str = "llama", extra=None, big_endian: bool = False) -> Path:
    """A GGUF file as llama.cpp's converter writes one: norms F32, matrices in ``qtype``."""
    Q = gguf.GGMLQuantizationType
    qtype = Q.F32 if qtype is None else qtype
    wr = gguf.GGUFWriter(str(path), arch, endianess=gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE)
    wr.add_context_length(context)
    wr.add_embedding_length(D)
    wr.add_feed_forward_length(F)
    wr.add_block_count(L)
    wr.add_head_count(H)
    wr.add_head_count_kv(K)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_rope_dimension_count(HS)
    if theta is not None:
        wr.add_rope_freq_base(theta)
    if sp_path is not None:
        tokens, scores, types = _vocab(sp_path)
        wr.add_tokenizer_model(tokenizer_model)
        wr.add_token_list(tokens)
        wr.add_token_scores(scores)
        wr.add_token_types(types)
        wr.add_bos_token_id(1)
        wr.add_eos_token_id(2)
        wr.add_unk_token_id(0)
    if extra:
        extra(wr)

    def add(name, arr):
        if arr.ndim == 1 or qtype == Q.F32:
            wr.add_tensor(name, arr.astype(np.float32))
        elif qtype == Q.F16:
            wr.add_tensor(name, arr.astype(np.float16))
        else:
            wr.add_tensor(name, gguf.quants.quantize(arr.astype(np.float32), qtype), raw_dtype=qtype)

    add("token_embd.weight", w["emb"])
    for i in range(L):
        add(f"blk.{i}.attn_norm.weight", w["rms_att"][i])
        add(f"blk.{i}.attn_q.weight", w["wq"][i])  # llama.cpp's layout = llama2.c's (interleaved)
        add(f"blk.{i}.attn_k.weight", w["wk"][i])
        add(f"blk.{i}.attn_v.weight", w["wv"][i])
        add(f"blk.{i}.attn_output.weight", w["wo"][i])
        add(f"blk.{i}.ffn_norm.weight", w["rms_ffn"][i])
        add(f"blk.{i}.ffn_gate.weight", w["w1"][i])
        add(f"blk.{i}.ffn_down.weight", w["w2"][i])
        add(f"blk.{i}.ffn_up.weight", w["w3"][i])
    add("output_norm.weight", w["rms_final"])
    if with_output:
        add("output.weight", w["wcls"])
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def run_cli(args, capsys, monkeypatch) -> tuple[int, str, str]:
    """Run ``llmcli`` in-process through its real entry point → (exit code, stdout, stderr)."""
    from llmcli.cli.app import main

    monkeypatch.setattr(sys, "argv", ["llmcli", *map(str, args)])
    monkeypatch.delenv("LLMCLI_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, err


def leftovers(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name == name or p.name.startswith(f".{name}."))


# ----------------------------------------------------------------------------- llama2.c
@pytest.mark.parametrize("version", [0, 1], ids=["legacy", "v1"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "unshared"])
def test_llama2c_logits_match_reference(tmp_path, sp_bpe, version, shared):
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    w = random_weights(V, seed=10 * version + shared, shared=shared)
    src = write_llama2c(tmp_path / "model.bin", w, version, shared)
    out = tmp_path / "out"
    result = convert(src, out, tokenizer=sp_bpe)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is shared
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (D, F, L)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (H, K)
    assert (cfg["max_position_embeddings"], cfg["rms_norm_eps"], cfg["vocab_size"]) == (S, 1e-5, V)
    assert (out / "tokenizer.model").read_bytes() == sp_bpe.read_bytes()
    names = set(read_tensors(weight_files(out)))
    assert ("lm_head.weight" in names) is not shared
    assert result.format.startswith("llama2.c")
    tokens = _tokens(V)
    diff = np.abs(llmcli_logits(out, tokens) - reference_logits(w, tokens)).max()
    print(f"llama2c version={version} shared={shared}: max |logit diff| = {diff:.3g}")
    assert diff < 1e-5
    # The check has teeth: the same weights without the RoPE fix-up give clearly different logits.
    unpermuted = dict(w, wq=[_half_to_interleaved(x, H) for x in w["wq"]],
                      wk=[_half_to_interleaved(x, K) for x in w["wk"]])
    assert np.abs(reference_logits(unpermuted, tokens) - reference_logits(w, tokens)).max() > 1e-2


def _half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (HF → interleaved); applied to interleaved weights it
    scrambles them as a converter that forgot the permutation would."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def test_llama2c_readme_records_source(tmp_path, sp_bpe):
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    src = write_llama2c(tmp_path / "m.bin", random_weights(V, 1, True), 1, True)
    convert(src, tmp_path / "out", tokenizer=sp_bpe, command="llmcli convert m.bin out")
    readme = (tmp_path / "out" / "README.md").read_text()
    assert hashlib.sha256(src.read_bytes()).hexdigest() in readme
    assert "m.bin" in readme and "llama2.c version 1" in readme and "rotate-half" in readme


def test_llama2c_dtype_option(tmp_path, sp_bpe):
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    w = random_weights(V, 2, False)
    src = write_llama2c(tmp_path / "m.bin", w, 0, False)
    convert(src, tmp_path / "out", tokenizer=sp_bpe, dtype="bfloat16")
    tensors = read_tensors(weight_files(tmp_path / "out"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ref = map_weights(w, lambda x, _: torch.from_numpy(x).to(torch.bfloat16).double().numpy())
    tokens = _tokens(V)
    assert np.abs(llmcli_logits(tmp_path / "out", tokens) - reference_logits(ref, tokens)).max() < 1e-4


# ----------------------------------------------------------------------------- GGUF
@pytest.mark.parametrize("qname,default_dtype", [("F32", "float32"), ("F16", "float16"),
                                                 ("BF16", "bfloat16"), ("Q8_0", "float32")])
def test_gguf_logits_match_reference(tmp_path, sp_bpe, qname, default_dtype):
    qtype = gguf.GGMLQuantizationType[qname]
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    w = random_weights(V, seed=5, shared=False)
    src = write_gguf(tmp_path / "m.gguf", w, sp_bpe, qtype=qtype)
    out = tmp_path / "out"
    result = convert(src, out)
    assert result.dtype == default_dtype
    tensors = read_tensors(weight_files(out))
    assert {t.dtype for t in tensors.values()} == {getattr(torch, default_dtype)}
    # The reference runs on what the file holds, cast to the output dtype (norms are F32 in
    # the file and become float16/bfloat16 in a float16/bfloat16 output).
    out_dtype = getattr(torch, default_dtype)
    ref = map_weights(w, lambda x, _: torch.from_numpy(
        gguf_stored(x, qtype) if x.ndim == 2 else x).to(out_dtype).double().numpy())
    tokens = _tokens(V, seed=3)
    diff = np.abs(llmcli_logits(out, tokens) - reference_logits(ref, tokens)).max()
    print(f"gguf {qname}: max |logit diff| = {diff:.3g}")
    assert diff < 1e-5
    if qname == "Q8_0":  # and the quantisation error itself is small but real
        plain = np.abs(reference_logits(w, tokens) - reference_logits(ref, tokens)).max()
        assert 0 < plain < 0.2


def test_gguf_tied_output_and_metadata(tmp_path, sp_bpe):
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    w = random_weights(V, seed=6, shared=True)
    src = write_gguf(tmp_path / "m.gguf", w, sp_bpe, with_output=False, theta=500000.0, context=4096)
    out = tmp_path / "out"
    convert(src, out, dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True
    assert (cfg["rope_theta"], cfg["max_position_embeddings"], cfg["bos_token_id"], cfg["eos_token_id"]) \
        == (500000.0, 4096, 1, 2)
    assert "lm_head.weight" not in read_tensors(weight_files(out))
    assert "llama.context_length = 4096" in (out / "README.md").read_text()
    tokens = _tokens(V, seed=4)
    diff = np.abs(llmcli_logits(out, tokens) - reference_logits(w, tokens, theta=500000.0)).max()
    print(f"gguf tied, theta 5e5: max |logit diff| = {diff:.3g}")
    assert diff < 1e-5


def test_gguf_version_2(tmp_path, sp_bpe):
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    w = random_weights(V, seed=7, shared=False)
    src = write_gguf(tmp_path / "m.gguf", w, sp_bpe)
    data = bytearray(src.read_bytes())
    data[4:8] = struct.pack("<I", 2)  # v2 and v3 differ only in v3's big-endian support
    src.write_bytes(bytes(data))
    result = convert(src, tmp_path / "out")
    assert result.format.startswith("GGUF version 2")
    tokens = _tokens(V, seed=5)
    assert np.abs(llmcli_logits(tmp_path / "out", tokens) - reference_logits(w, tokens)).max() < 1e-5


def test_gguf_big_endian(tmp_path, sp_bpe):
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    w = random_weights(V, seed=12, shared=False)
    src = write_gguf(tmp_path / "m.gguf", w, sp_bpe, qtype=gguf.GGMLQuantizationType.F16, big_endian=True)
    assert src.read_bytes()[4:8] == b"\0\0\0\3"
    convert(src, tmp_path / "out", dtype="float32")
    ref = map_weights(w, lambda x, _: gguf_stored(x, gguf.GGMLQuantizationType.F16) if x.ndim == 2 else x)
    tokens = _tokens(V, seed=7)
    diff = np.abs(llmcli_logits(tmp_path / "out", tokens) - reference_logits(ref, tokens)).max()
    print(f"gguf big-endian F16: max |logit diff| = {diff:.3g}")
    assert diff < 1e-5
    tok = spm.SentencePieceProcessor(model_file=str(tmp_path / "out" / "tokenizer.model"))
    assert tok.encode(TRICKY[8]) == spm.SentencePieceProcessor(model_file=str(sp_bpe)).encode(TRICKY[8])


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_gguf_tokenizer_matches_original(tmp_path, sp_bpe, sp_unigram, kind):
    from sentencepiece import sentencepiece_model_pb2 as pb

    sp_path = sp_bpe if kind == "bpe" else sp_unigram
    orig = spm.SentencePieceProcessor(model_file=str(sp_path))
    V = orig.get_piece_size()
    if kind == "bpe":  # precondition: the trainer learnt whitespace-only pieces from the indentation
        assert any(set(orig.id_to_piece(i)) == {"\u2581"} and len(orig.id_to_piece(i)) > 1 for i in range(V))
    src = write_gguf(tmp_path / "m.gguf", random_weights(V, 8, True), sp_path, with_output=False)
    convert(src, tmp_path / "out")
    built = spm.SentencePieceProcessor(model_file=str(tmp_path / "out" / "tokenizer.model"))
    proto = pb.ModelProto()
    proto.ParseFromString((tmp_path / "out" / "tokenizer.model").read_bytes())
    assert proto.trainer_spec.model_type == (pb.TrainerSpec.BPE if kind == "bpe" else pb.TrainerSpec.UNIGRAM)
    assert built.get_piece_size() == V
    assert (built.bos_id(), built.eos_id(), built.unk_id()) == (orig.bos_id(), orig.eos_id(), orig.unk_id())
    for i in range(V):
        assert (built.id_to_piece(i), built.get_score(i), built.is_byte(i), built.is_control(i)) == \
               (orig.id_to_piece(i), orig.get_score(i), orig.is_byte(i), orig.is_control(i))
    for text in TRICKY + [" ".join(_corpus()[:20])]:
        ids = orig.encode(text)
        assert built.encode(text) == ids, text
        assert built.decode(ids) == orig.decode(ids), text
    assert orig.piece_to_id("<sep>") in built.encode("x<sep>y")  # user-defined symbols still match


def test_gguf_tokenizer_option_overrides_embedded(tmp_path, sp_bpe):
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    # even where the embedded vocabulary could not be converted (a non-sentencepiece tokenizer)
    src = write_gguf(tmp_path / "m.gguf", random_weights(V, 9, True), sp_bpe, with_output=False,
                     tokenizer_model="gpt2")
    convert(src, tmp_path / "out", tokenizer=sp_bpe)
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == sp_bpe.read_bytes()


# ----------------------------------------------------------------------------- transformers
def test_transformers_loads_converted_dirs(tmp_path, sp_bpe):
    transformers = pytest.importorskip("transformers")
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    tokens = _tokens(V, seed=6)
    for name, shared, make in [
            ("llama2c", False, lambda w, p: write_llama2c(p.with_suffix(".bin"), w, 0, False)),
            ("gguf-tied", True, lambda w, p: write_gguf(p.with_suffix(".gguf"), w, sp_bpe, with_output=False))]:
        w = random_weights(V, 11, shared)
        src = make(w, tmp_path / name)
        out = tmp_path / f"{name}-out"
        convert(src, out, tokenizer=sp_bpe)
        model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                              attn_implementation="eager")
        with torch.no_grad():
            logits = model(torch.tensor([tokens])).logits[0].double().numpy()
        diff = np.abs(logits - reference_logits(w, tokens)).max()
        print(f"transformers {name}: max |logit diff| vs run.c reference = {diff:.3g}")
        assert diff < 1e-4


# ----------------------------------------------------------------------------- atomicity
def test_interrupted_conversion_leaves_nothing(tmp_path, sp_bpe):
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    src = write_llama2c(tmp_path / "m.bin", random_weights(V, 1, False), 0, False)

    def interrupt(phase, done, total):
        if phase == "converting":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(src, tmp_path / "out", tokenizer=sp_bpe, on_progress=interrupt)
    assert leftovers(tmp_path, "out") == []


def test_force_replaces_existing_dir(tmp_path, sp_bpe, capsys, monkeypatch):
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    src = write_llama2c(tmp_path / "m.bin", random_weights(V, 1, True), 1, True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_text("old weights")
    code, _, err = run_cli(["convert", src, out, "--tokenizer", sp_bpe], capsys, monkeypatch)
    assert code == 1 and "already exists" in err and "--force" in err
    assert (out / "model.safetensors").read_text() == "old weights"
    code, _, err = run_cli(["convert", src, out, "--tokenizer", sp_bpe, "--force"], capsys, monkeypatch)
    assert code == 0, err
    assert (out / "model.safetensors").read_bytes() != b"old weights" and (out / "README.md").is_file()
    assert leftovers(tmp_path, "out") == ["out"]
    # (a directory holding files llmcli did not write is never replaced: tests/test_safety.py)
    # --force never deletes the source by replacing the directory that holds it
    inner = out / "m.bin"
    inner.write_bytes(src.read_bytes())
    code, _, err = run_cli(["convert", inner, out, "--tokenizer", sp_bpe, "--force"], capsys, monkeypatch)
    assert code == 1 and "contains the source" in err and inner.is_file()


# ----------------------------------------------------------------------------- bad input
def _bad_inputs(tmp: Path, sp_bpe: Path) -> dict:
    """name → (argv after 'convert SRC OUT', source path, expected exit code, message part)."""
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    w = random_weights(V, 3, False)
    cases = {}
    legacy = write_llama2c(tmp / "legacy.bin", w, 0, False)
    v1 = write_llama2c(tmp / "v1.bin", w, 1, False)
    good_gguf = write_gguf(tmp / "good.gguf", w, sp_bpe)
    tok = ["--tokenizer", sp_bpe]

    def cut(src: Path, name: str, keep: int) -> Path:
        path = tmp / name
        path.write_bytes(src.read_bytes()[:keep])
        return path

    cases["truncated legacy"] = ([*tok], cut(legacy, "trunc_legacy.bin", legacy.stat().st_size - 100), 1,
                                 "truncated")
    cases["truncated legacy forced"] = ([*tok, "--from", "llama2c"],
                                        cut(legacy, "trunc_legacy2.bin", legacy.stat().st_size - 4), 1,
                                        "truncated")
    cases["truncated v1"] = ([*tok], cut(v1, "trunc_v1.bin", v1.stat().st_size - 8), 1, "truncated")
    cases["truncated v1 header"] = ([*tok], cut(v1, "trunc_v1h.bin", 20), 1, "truncated")
    cases["truncated gguf data"] = ([], cut(good_gguf, "trunc.gguf", good_gguf.stat().st_size - 1000), 1,
                                    "truncated")
    cases["truncated gguf metadata"] = ([], cut(good_gguf, "trunc_meta.gguf", 300), 1, "truncated")
    header_bad = bytearray(legacy.read_bytes())
    header_bad[8:12] = struct.pack("<i", L + 1)  # n_layers no longer fits the file size
    (tmp / "hdr.bin").write_bytes(bytes(header_bad))
    cases["header size mismatch"] = ([*tok, "--from", "llama2c"], tmp / "hdr.bin", 1, "implies")
    cases["header size mismatch auto"] = ([*tok], tmp / "hdr.bin", 1, "implies")
    (tmp / "noise.bin").write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    cases["unrecognised"] = ([*tok], tmp / "noise.bin", 1, "unrecognised format")
    cases["wrong magic forced gguf"] = (["--from", "gguf"], legacy, 1, "not a GGUF file")
    v2 = bytearray(v1.read_bytes())
    v2[4:8] = struct.pack("<i", 2)
    (tmp / "v2.bin").write_bytes(bytes(v2))
    cases["llama2c version 2"] = ([*tok], tmp / "v2.bin", 1, "version 2")
    g1 = bytearray(good_gguf.read_bytes())
    g1[4:8] = struct.pack("<I", 1)
    (tmp / "v1.gguf").write_bytes(bytes(g1))
    cases["gguf version 1"] = ([], tmp / "v1.gguf", 1, "GGUF version 1")
    cases["gguf arch"] = ([], write_gguf(tmp / "mamba.gguf", w, sp_bpe, arch="mamba"), 1, "'mamba'")
    cases["gguf MXFP4"] = ([], write_gguf(tmp / "mxfp4.gguf", w, sp_bpe, qtype=gguf.GGMLQuantizationType.MXFP4),
                           1, "MXFP4")
    cases["gguf gpt2 tokenizer without merges"] = (
        [], write_gguf(tmp / "gpt2.gguf", w, sp_bpe, tokenizer_model="gpt2"), 1, "tokenizer.ggml.merges")
    cases["gguf t5 tokenizer"] = ([], write_gguf(tmp / "t5.gguf", w, sp_bpe, tokenizer_model="t5"), 1, "'t5'")
    cases["gguf unknown pre-tokenizer"] = ([], write_gguf(
        tmp / "pre.gguf", w, sp_bpe, tokenizer_model="gpt2", extra=lambda wr: (
            wr.add_tokenizer_pre("no-such-pre"), wr.add_token_merges(["a b"]))), 1, "'no-such-pre'")
    cases["gguf no tokenizer"] = ([], write_gguf(tmp / "notok.gguf", w, None), 1, "--tokenizer")
    cases["gguf split"] = ([], write_gguf(tmp / "split.gguf", w, sp_bpe, extra=lambda wr: wr.add_uint16(
        "split.count", 2)), 1, "split GGUF")
    cases["gguf yarn"] = ([], write_gguf(tmp / "yarn.gguf", w, sp_bpe, extra=lambda wr: wr.add_rope_scaling_type(
        gguf.RopeScalingType.YARN)), 1, "'yarn'")
    cases["no tokenizer for llama2c"] = ([], legacy, 1, "llama2.c checkpoints carry no tokenizer")
    small = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_writer=small, vocab_size=80,
                                   model_type="bpe", minloglevel=2, num_threads=1, hard_vocab_limit=False)
    (tmp / "small.model").write_bytes(small.getvalue())
    cases["tokenizer vocab size"] = (["--tokenizer", tmp / "small.model"], legacy, 1, "pieces but the model")
    cases["tokenizer vocab size gguf"] = (["--tokenizer", tmp / "small.model"], good_gguf, 1, "vocab_size")
    (tmp / "tok.bin").write_bytes(struct.pack("<i", 7) + b"\0" * 100)
    cases["tokenizer not sentencepiece"] = (["--tokenizer", tmp / "tok.bin"], legacy, 1, "not a sentencepiece")
    cases["tokenizer missing"] = (["--tokenizer", tmp / "nope.model"], legacy, 1, "not found")
    cases["source missing"] = ([], tmp / "missing.bin", 1, "no such file")
    with zipfile.ZipFile(tmp / "model.pt", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": [1.0]}, protocol=2))
    cases["zip pickle .pt"] = ([], tmp / "model.pt", 1, "never unpickles")
    (tmp / "pytorch_model.bin").write_bytes(pickle.dumps({"w": list(range(100))}, protocol=2))
    cases["pickle .bin"] = ([], tmp / "pytorch_model.bin", 1, "never unpickles")
    cases["pickle .bin forced llama2c"] = (["--from", "llama2c"], tmp / "pytorch_model.bin", 1, "never unpickles")
    cases["bad --from"] = (["--from", "onnx"], legacy, 2, "--from")
    cases["bad --dtype"] = ([*tok, "--dtype", "int8"], legacy, 2, "--dtype")
    return cases


def test_bad_inputs_fail_cleanly(tmp_path, sp_bpe, capsys, monkeypatch):
    cases = _bad_inputs(tmp_path, sp_bpe)
    failures = []
    for name, (extra, src, code, part) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '_')}"
        got, stdout, err = run_cli(["convert", src, out, *extra], capsys, monkeypatch)
        lines = err.strip().splitlines()
        ok = (got == code and len(lines) == 1 and lines[0].startswith("error: ") and part in lines[0]
              and not leftovers(tmp_path, out.name))
        if not ok:
            failures.append(f"{name}: exit {got}, stderr {err!r}, left {leftovers(tmp_path, out.name)}")
    assert not failures, "\n".join(failures)


def test_existing_output_file_refused_even_with_force(tmp_path, sp_bpe, capsys, monkeypatch):
    V = spm.SentencePieceProcessor(model_file=str(sp_bpe)).get_piece_size()
    src = write_llama2c(tmp_path / "m.bin", random_weights(V, 1, True), 1, True)
    (tmp_path / "out").write_text("a file")
    code, _, err = run_cli(["convert", src, tmp_path / "out", "--tokenizer", sp_bpe, "--force"],
                           capsys, monkeypatch)
    assert code == 1 and "not a directory" in err
    assert (tmp_path / "out").read_text() == "a file"


def test_library_errors_are_llmcli_errors(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(LLMCLIError, match="truncated"):
        convert(tmp_path / "x.gguf", tmp_path / "out")


# ----------------------------------------------------------------------------- real models
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} not present")


@pytest.fixture(scope="module")
def real_dirs(tmp_path_factory) -> dict[str, Path]:
    if not REAL.is_dir():
        pytest.skip(f"{REAL} not present")
    base = tmp_path_factory.mktemp("real")
    tok = REAL / "tok512.model"
    return {
        "legacy": convert(REAL / "stories260K.bin", base / "legacy", tokenizer=tok).out_dir,
        "v1": convert(REAL / "stories260K.v1.bin", base / "v1", tokenizer=tok).out_dir,
        "gguf": convert(REAL / "stories260K.gguf", base / "gguf").out_dir,
    }


def _greedy(model_dir: Path, prompt: str, n: int) -> str:
    sp = spm.SentencePieceProcessor(model_file=str(REAL / "tok512.model"))
    model, _ = load_model(model_dir)
    ids = [sp.bos_id()] + sp.encode(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return sp.decode(ids)


@needs_real
@pytest.mark.parametrize("which", ["legacy", "v1", "gguf"])
def test_real_stories260k_generates_the_story(real_dirs, which):
    text = _greedy(real_dirs[which], "Once upon a time", 30)
    assert text.startswith(STORY), text


@needs_real
def test_real_conversions_are_bit_identical(real_dirs):
    legacy = read_tensors(weight_files(real_dirs["legacy"]))
    for other in ("v1", "gguf"):
        tensors = read_tensors(weight_files(real_dirs[other]))
        if other == "gguf":  # llama.cpp's llama2.c converter wrote the shared classifier out
            assert torch.equal(tensors.pop("lm_head.weight"), legacy["model.embed_tokens.weight"])
        assert tensors.keys() == legacy.keys()
        for name, t in legacy.items():
            assert torch.equal(tensors[name], t), (other, name)
    cfg = {k: json.loads((real_dirs[k] / "config.json").read_text()) for k in real_dirs}
    assert cfg["legacy"] == cfg["v1"]
    assert cfg["gguf"]["max_position_embeddings"] == 2048  # what the GGUF records
    assert "llama.context_length = 2048" in (real_dirs["gguf"] / "README.md").read_text()


@needs_real
def test_real_gguf_tokenizer_matches_tok512(real_dirs):
    orig = spm.SentencePieceProcessor(model_file=str(REAL / "tok512.model"))
    built = spm.SentencePieceProcessor(model_file=str(real_dirs["gguf"] / "tokenizer.model"))
    # tok512 was trained with sentencepiece's default remove_extra_whitespaces=true, which GGUF
    # does not record (llama.cpp never collapses spaces); compare texts where that is moot
    # (no runs of spaces, no leading/trailing space, no literal U+2581 which decodes as one).
    texts = [t for t in TRICKY if "  " not in t and t.strip(" ") == t and "\u2581" not in t] + [STORY]
    for text in texts:
        assert built.encode(text) == orig.encode(text), text
        assert built.decode(orig.encode(text)) == orig.decode(orig.encode(text)), text
    assert built.encode("a  b") != orig.encode("a  b")  # the documented difference


@needs_real
def test_real_transformers_logits_match(real_dirs):
    transformers = pytest.importorskip("transformers")
    sp = spm.SentencePieceProcessor(model_file=str(REAL / "tok512.model"))
    ids = torch.tensor([[sp.bos_id()] + sp.encode(STORY)])
    for which in ("legacy", "gguf"):
        ours, _ = load_model(real_dirs[which])
        theirs = transformers.LlamaForCausalLM.from_pretrained(real_dirs[which], dtype=torch.float32,
                                                               attn_implementation="eager")
        with torch.no_grad():
            diff = (ours(ids) - theirs(ids).logits).abs().max().item()
        print(f"stories260K {which}: llmcli vs transformers max |logit diff| = {diff:.3g}")
        assert diff < 1e-4


@needs_real
def test_real_cli_subprocess(tmp_path):
    import subprocess

    exe = Path(sys.executable).with_name("llmcli")
    if not exe.exists():
        pytest.skip("llmcli console script not installed")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(exe), "convert", str(REAL / "stories260K.gguf"), str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "GGUF version 3" in proc.stderr and (tmp_path / "o" / "tokenizer.model").is_file()
    proc = subprocess.run([str(exe), "convert", str(REAL / "stories260K.gguf"), str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "already exists" in proc.stderr
