"""Logits parity with transformers: llmcli's loader and model vs ``transformers.LlamaForCausalLM``.

Every checkpoint is written by ``save_pretrained`` (see ``conftest.make_checkpoint``), loaded
with :func:`llmcli.weights.load_model`, and compared in float32 at every position, both in
one full forward and through the KV cache (prefill, single tokens, then a multi-token chunk).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import load_hf, make_checkpoint, shared_path
from llmcli.config import LlamaConfig
from llmcli.models.common import rope_inv_freq
from llmcli.weights import load_model

pytest.importorskip("transformers")

ATOL = 1e-4
SEQ_LEN = 24
PREFILL, SINGLES = 9, 6  # cache schedule: prefill 9, then 6 single tokens, then the rest (9)

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

CASES = {
    "mha": {},
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2),
    "mqa": dict(num_attention_heads=4, num_key_value_heads=1),
    "tied": dict(tie_word_embeddings=True),
    "rope_theta": dict(rope_theta=500000.0),
    # head_dim 16, theta 5e5: wavelengths 6, 32, 168... positions, one in each llama3 band
    # (kept < 16, smoothed in [16, 64], divided by factor > 64)
    "rope_llama3": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                        rope_theta=500000.0, rope_scaling=LLAMA3_SCALING,
                        max_position_embeddings=256),  # extended from the original 64
    "rope_linear": dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "head_dim": dict(head_dim=16),  # ≠ hidden_size / heads = 8
    "bias": dict(attention_bias=True, mlp_bias=True),
    "sharded": dict(max_shard_size="20KB"),
    "bf16": dict(storage_dtype=torch.bfloat16),
    "fp16": dict(storage_dtype=torch.float16),
    "everything": dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                       attention_bias=True, mlp_bias=True, rope_theta=20000.0,
                       rope_scaling={"rope_type": "linear", "factor": 2.0},
                       max_shard_size="20KB", storage_dtype=torch.bfloat16),
}


def _tokens(vocab_size: int, batch: int = 1, length: int = SEQ_LEN, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _hf_logits(hf_model, ids: torch.Tensor) -> torch.Tensor:
    return hf_model(input_ids=ids, use_cache=False).logits.float()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def _assert_close_per_position(ours: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    """max |ours - ref| ≤ ATOL at every position of (B, T, V) logits; returns the max."""
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    per_pos = (ours.float() - ref.float()).abs().amax(dim=-1)  # (B, T)
    worst = per_pos.max().item()
    assert worst <= ATOL, f"{what}: max diff {worst:.3g} at positions {per_pos.gt(ATOL).nonzero().tolist()}"
    return worst


@torch.no_grad()
def check_parity(model_dir, hf_model, batch: int = 2) -> float:
    """Full forward and KV-cache logits of llmcli vs transformers; returns the max diff."""
    model, config = load_model(model_dir)
    assert model.dtype == torch.float32
    ids = _tokens(config.vocab_size, batch)
    ref = _hf_logits(hf_model, ids)                                          # (B, T, V)
    worst = _assert_close_per_position(model(ids), ref, "full forward")

    cache = model.new_cache(batch=batch)
    steps = [(0, PREFILL)]
    steps += [(p, p + 1) for p in range(PREFILL, PREFILL + SINGLES)]
    steps += [(PREFILL + SINGLES, SEQ_LEN)]
    for start, end in steps:
        assert cache.length == start
        out = model(ids[:, start:end], cache=cache)
        worst = max(worst, _assert_close_per_position(
            out, ref[:, start:end], f"cached step [{start}, {end})"))
    assert cache.length == SEQ_LEN

    last = model(ids, last_only=True)
    worst = max(worst, _assert_close_per_position(last, ref[:, -1:], "last_only"))
    return worst


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(tmp_path, case):
    model_dir, hf_model = make_checkpoint(tmp_path, **CASES[case])
    if "max_shard_size" in CASES[case]:
        assert (model_dir / "model.safetensors.index.json").is_file()
        assert len(list(model_dir.glob("model-*.safetensors"))) > 1
    worst = check_parity(model_dir, hf_model)
    print(f"{case}: max |Δlogit| = {worst:.2e}")


def test_tied_checkpoint_shipping_lm_head(tmp_path):
    """Some exporters write a copy of the embedding as ``lm_head.weight`` in a tied model."""
    model_dir, hf_model = make_checkpoint(tmp_path, tie_word_embeddings=True)
    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    assert "lm_head.weight" not in state  # save_pretrained leaves it out when tied
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, str(path), metadata={"format": "pt"})
    warnings: list[str] = []
    model, _ = load_model(model_dir, warn=warnings.append)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not warnings  # an identical copy is expected, not worth a notice
    check_parity(model_dir, hf_model)


def test_tied_checkpoint_with_different_lm_head_warns(tmp_path):
    """A tied config whose checkpoint ships a different lm_head: the tie wins, with a notice."""
    model_dir, _ = make_checkpoint(tmp_path, tie_word_embeddings=True)
    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    state["lm_head.weight"] = torch.randn_like(state["model.embed_tokens.weight"])
    save_file(state, str(path), metadata={"format": "pt"})
    warnings: list[str] = []
    model, _ = load_model(model_dir, warn=warnings.append)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(warnings) == 1 and "lm_head.weight" in warnings[0], warnings


def test_untied_model_has_own_lm_head(tmp_path):
    model_dir, hf_model = make_checkpoint(tmp_path, tie_word_embeddings=False)
    model, _ = load_model(model_dir)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, hf_model.lm_head.weight)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@torch.no_grad()
def test_16_bit_compute(tmp_path, dtype):
    """--dtype bfloat16/float16: the same arithmetic as transformers in that dtype."""
    model_dir, hf32 = make_checkpoint(tmp_path, **CASES["gqa"], attention_bias=True)
    torch_dtype = getattr(torch, dtype)
    model, config = load_model(model_dir, dtype=dtype)
    assert model.dtype == torch_dtype and model.new_cache().k[0].dtype == torch_dtype
    hf16 = load_hf(model_dir, dtype=torch_dtype)  # (not .to(): that would round HF's inv_freq)
    ids = _tokens(config.vocab_size)
    ours = model(ids)
    assert ours.dtype == torch_dtype
    assert _max_diff(ours, hf16(input_ids=ids).logits) <= 2e-2
    assert _max_diff(ours, _hf_logits(hf32, ids)) <= 0.25  # rounding, not a wrong model
    cache = model.new_cache()
    cached = torch.cat([model(ids[:, :PREFILL], cache=cache), model(ids[:, PREFILL:PREFILL + 1],
                        cache=cache), model(ids[:, PREFILL + 1:], cache=cache)], dim=1)
    assert _max_diff(cached, ours) <= 0.1


@torch.no_grad()
def test_capture_matches_transformers_hidden_states_and_attentions(tmp_path):
    """Capture's hidden states and attention weights equal transformers' (eager attention)."""
    from llmcli.models.common import Capture

    model_dir, _ = make_checkpoint(tmp_path, **CASES["everything"])
    hf_model = load_hf(model_dir, attn_implementation="eager")
    model, config = load_model(model_dir)
    ids = _tokens(config.vocab_size, batch=2, length=12)
    ref = hf_model(input_ids=ids, use_cache=False, output_hidden_states=True,
                   output_attentions=True)
    capture = Capture(attentions_wanted=True)
    logits = model(ids, capture=capture)
    _assert_close_per_position(logits, ref.logits, "logits with capture")
    assert len(capture.hidden_states) == len(ref.hidden_states) == config.num_hidden_layers + 1
    for ours, theirs in zip(capture.hidden_states, ref.hidden_states):
        assert _max_diff(ours, theirs) <= ATOL
    assert len(capture.residuals) == config.num_hidden_layers
    assert len(capture.attentions) == len(ref.attentions) == config.num_hidden_layers
    for ours, theirs in zip(capture.attentions, ref.attentions):
        assert _max_diff(ours, theirs) <= 1e-5

    cache = model.new_cache(batch=2)
    for start, end in [(0, 5), (5, 6), (6, 12)]:  # prefill, one token, a chunk
        capture = Capture(attentions_wanted=True)
        logits = model(ids[:, start:end], cache=cache, capture=capture)
        _assert_close_per_position(logits, ref.logits[:, start:end], f"captured [{start}, {end})")
        for ours, theirs in zip(capture.attentions, ref.attentions):
            assert ours.shape == (2, config.num_attention_heads, end - start, end)
            assert _max_diff(ours, theirs[:, :, start:end, :end]) <= 1e-5


# ----------------------------------------------------------------------------- rope config forms
def _rewrite_config(model_dir, edit) -> dict:
    path = model_dir / "config.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw, indent=2))
    return raw


def _to_legacy(raw: dict) -> None:
    """transformers 5's ``rope_parameters`` → the legacy ``rope_theta`` + ``rope_scaling``."""
    params = raw.pop("rope_parameters", None)
    if params is None:
        return
    raw["rope_theta"] = params.pop("rope_theta")
    raw["rope_scaling"] = params if params.get("rope_type", "default") != "default" else None


@pytest.mark.parametrize("case", ["rope_theta", "rope_llama3", "rope_linear"])
def test_legacy_rope_config_json(tmp_path, case):
    """A hand-written config.json with the legacy keys loads the same model."""
    model_dir, hf_model = make_checkpoint(tmp_path, **CASES[case])
    raw = _rewrite_config(model_dir, _to_legacy)
    assert "rope_parameters" not in raw and "rope_theta" in raw
    check_parity(model_dir, hf_model)
    # and transformers reads the hand-written file to the same model
    check_parity(model_dir, load_hf(model_dir), batch=1)


def _inv_freq(cfg):
    return rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings)


def test_rope_parameters_and_legacy_keys_agree():
    base = dict(model_type="llama", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=64)
    legacy = LlamaConfig.from_dict({**base, "rope_theta": 500000.0,
                                    "rope_scaling": dict(LLAMA3_SCALING)})
    new = LlamaConfig.from_dict({**base, "rope_parameters": {**LLAMA3_SCALING, "rope_theta": 500000.0}})
    old_style_type = LlamaConfig.from_dict({**base, "rope_theta": 500000.0, "rope_scaling": {
        "type": "llama3", **{k: v for k, v in LLAMA3_SCALING.items() if k != "rope_type"}}})
    for cfg in (legacy, new, old_style_type):
        assert cfg.rope_theta == 500000.0 and cfg.rope_type == "llama3"
        assert torch.equal(_inv_freq(cfg), _inv_freq(legacy))
    default_new = LlamaConfig.from_dict({**base, "rope_parameters": {"rope_type": "default",
                                                                     "rope_theta": 1234.0}})
    assert default_new.rope_theta == 1234.0 and default_new.rope_type == "default"
    plain = LlamaConfig.from_dict(base)
    assert plain.rope_theta == 10000.0 and plain.rope_type == "default"


# ----------------------------------------------------------------------------- generation
@torch.no_grad()
def greedy(model, prompt: list[int], n: int) -> list[int]:
    """Argmax decoding through the KV cache: prefill the prompt, then one token per step."""
    cache = model.new_cache(max_len=len(prompt) + n)
    logits = model(torch.tensor([prompt]), cache=cache, last_only=True)
    out: list[int] = []
    for _ in range(n):
        token = int(logits[0, -1].argmax())
        out.append(token)
        if len(out) == n:
            break
        logits = model(torch.tensor([[token]]), cache=cache)
    return out


@torch.no_grad()
def hf_greedy(hf_model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                            min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("case", ["gqa", "everything"])
def test_greedy_generation_matches_transformers(tmp_path, case):
    model_dir, hf_model = make_checkpoint(tmp_path, **CASES[case])
    model, config = load_model(model_dir)
    prompt = _tokens(config.vocab_size, length=7, seed=3)[0].tolist()
    assert greedy(model, prompt, 20) == hf_greedy(hf_model, prompt, 20)


# ----------------------------------------------------------------------------- real models
REAL_MODELS = ["stories260K-hf", "tinystories-d64-saltyduckegg-hf"]


@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_logits_and_greedy(name):
    from llmcli.tokenizer import Tokenizer

    model_dir = shared_path("fixtures", "realmodels", name)
    hf_model = load_hf(model_dir)
    model, config = load_model(model_dir)
    tok = Tokenizer(model_dir / "tokenizer.model")
    assert tok.vocab_size == config.vocab_size
    prompt = tok.encode("Once upon a time, there was a little girl named Lily. She")
    ids = torch.tensor([prompt])
    with torch.no_grad():
        worst = _assert_close_per_position(model(ids), _hf_logits(hf_model, ids), name)
    print(f"{name}: max |Δlogit| = {worst:.2e}")
    ours = greedy(model, prompt, 40)
    assert ours == hf_greedy(hf_model, prompt, 40)
    assert tok.decode(ours).strip()  # real words, not an empty string


@pytest.mark.parametrize("case", ["gqa", "bias", "bf16"])
@torch.no_grad()
def test_fused_decode_path_equals_general_path(tmp_path, case):
    """load_model installs llmcli.fastpath (weights relaid out, q/k/v and gate/up fused); its
    one-token decoder gives the logits of the readable (unfused, module-by-module) path, and
    the parameters keep their values and names."""
    from llmcli.fastpath import LlamaStyleDecoder
    from llmcli.models.llama import LlamaForCausalLM

    kwargs = dict(CASES[case])
    dtype = "bfloat16" if kwargs.get("storage_dtype") is torch.bfloat16 else "float32"
    model_dir, _ = make_checkpoint(tmp_path, **kwargs)
    fused, config = load_model(model_dir, dtype=dtype)
    assert isinstance(fused.fast_decoder, LlamaStyleDecoder)
    assert fused.model.layers[0].self_attn.qkv_weight is not None
    plain = LlamaForCausalLM(config).to(fused.dtype).eval()
    plain.load_state_dict(fused.state_dict())
    assert plain.fast_decoder is None
    state = fused.state_dict()
    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        assert torch.equal(state[name], tensor.to(fused.dtype)), name

    ids = _tokens(config.vocab_size, batch=2, length=12)
    calls = []
    original = LlamaStyleDecoder.__call__
    LlamaStyleDecoder.__call__ = lambda self, *a: calls.append(1) or original(self, *a)
    try:
        caches = [fused.new_cache(batch=2), plain.new_cache(batch=2)]
        outs = [[m(ids[:, :4], cache=c)] for m, c in zip((fused, plain), caches)]
        for t in range(4, 12):
            for m, c, out in zip((fused, plain), caches, outs):
                out.append(m(ids[:, t:t + 1], cache=c))
    finally:
        LlamaStyleDecoder.__call__ = original
    assert len(calls) == 8  # the fused model took the fast path at every single-token step
    tol = 1e-5 if dtype == "float32" else 6e-2  # bf16: a few ulps of logits near 1-4
    for a, b in zip(*outs):
        assert _max_diff(a, b) <= tol


@torch.no_grad()
def test_bundled_model_loads_in_transformers_with_equal_logits_and_greedy_output():
    """The shipped default model is a plain HF checkpoint: transformers loads it unchanged,
    and llmcli's logits and greedy continuation equal transformers'."""
    from pathlib import Path

    from llmcli.tokenizer import Tokenizer

    model_dir = Path(__file__).resolve().parents[1] / "models" / "shakespeare"
    hf_model = load_hf(model_dir)
    model, config = load_model(model_dir)
    tok = Tokenizer(model_dir / "tokenizer.model")
    prompt = tok.encode("ROMEO.\nBut soft, what light through yonder window breaks?\n")
    ids = torch.tensor([prompt])
    _assert_close_per_position(model(ids), _hf_logits(hf_model, ids), "bundled model")
    ours = greedy(model, prompt, 60)
    assert ours == hf_greedy(hf_model, prompt, 60)
    assert len(tok.decode(ours).split()) > 5  # words, not an empty string
