"""Every family against transformers: Mistral, Qwen2, Qwen3, GPT-2, GPT-NeoX.

Each checkpoint is a random transformers model written by ``save_pretrained``, loaded with
:func:`llmcli.weights.load_model`, and compared in float32: logits at every position in one
full forward and through the KV cache (prefill, single tokens, a chunk), hidden states and
attention weights (transformers' eager attention), greedy tokens; for the families the
decoding fast path serves, the fast path against the readable path.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from llmcli.models.common import Capture
from llmcli.weights import load_model

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
SEQ_LEN = 24
SCHEDULE = [(0, 9)] + [(p, p + 1) for p in range(9, 15)] + [(15, SEQ_LEN)]

_LLAMA_LIKE = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                   rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)

#: name → (transformers class, config keywords). Windows are shorter than SEQ_LEN, so they
#: matter in prefill, in the cached chunk and in single-token steps.
CASES = {
    "mistral_window": ("MistralForCausalLM", dict(_LLAMA_LIKE, sliding_window=6)),
    "mistral_no_window": ("MistralForCausalLM", dict(_LLAMA_LIKE, sliding_window=None,
                                                     tie_word_embeddings=True)),
    "mistral_mha_head_dim": ("MistralForCausalLM", dict(_LLAMA_LIKE, num_key_value_heads=4,
                                                        head_dim=16, sliding_window=5)),
    "qwen2_untied": ("Qwen2ForCausalLM", dict(_LLAMA_LIKE)),
    "qwen2_tied_window": ("Qwen2ForCausalLM", dict(_LLAMA_LIKE, tie_word_embeddings=True,
                                                   num_hidden_layers=3, use_sliding_window=True,
                                                   sliding_window=5, max_window_layers=1)),
    "qwen3": ("Qwen3ForCausalLM", dict(_LLAMA_LIKE, head_dim=16)),
    "qwen3_bias_tied_window": ("Qwen3ForCausalLM", dict(_LLAMA_LIKE, head_dim=16, attention_bias=True,
                                                        tie_word_embeddings=True, use_sliding_window=True,
                                                        sliding_window=7, max_window_layers=1)),
    "gpt2": ("GPT2LMHeadModel", dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     n_inner=48, bos_token_id=1, eos_token_id=2)),
    "gpt2_untied_scaled": ("GPT2LMHeadModel", dict(vocab_size=128, n_embd=32, n_layer=3, n_head=2,
                                                   n_positions=40, tie_word_embeddings=False,
                                                   scale_attn_by_inverse_layer_idx=True,
                                                   activation_function="gelu", bos_token_id=1,
                                                   eos_token_id=2)),
    "neox_parallel": ("GPTNeoXForCausalLM", dict(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 rotary_pct=0.5, rotary_emb_base=500.0,
                                                 max_position_embeddings=64, bos_token_id=1,
                                                 eos_token_id=2)),
    "neox_serial_tied": ("GPTNeoXForCausalLM", dict(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=48,
                                                    rotary_pct=0.25, use_parallel_residual=False,
                                                    tie_word_embeddings=True, attention_bias=False,
                                                    max_position_embeddings=64, bos_token_id=1,
                                                    eos_token_id=2)),
}

#: families the decoding fast path serves (llmcli.fastpath.SERVED)
FAST = {"mistral", "qwen2", "qwen3"}


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """O(1)-scale random values for every parameter, so that norms, biases and embeddings all
    matter (transformers' init leaves norms at 1 and biases at 0)."""
    from transformers.pytorch_utils import Conv1D

    def randn(shape):
        return torch.randn(shape, generator=generator)

    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.Embedding):
                    p.copy_(randn(p.shape))
                elif name == "bias":
                    p.copy_(0.2 * randn(p.shape))
                elif p.dim() == 1:                                  # a norm's weight
                    p.copy_(1.0 + 0.2 * randn(p.shape))
                elif isinstance(module, Conv1D):                    # (in, out)
                    p.copy_(randn(p.shape) / p.shape[0] ** 0.5)
                else:                                               # (out, in)
                    p.copy_(randn(p.shape) / p.shape[1] ** 0.5)


def make_family_checkpoint(tmp_path, case: str, seed: int = 0, **overrides):
    """A random transformers model of ``CASES[case]`` (updated with ``overrides``) saved with
    ``save_pretrained`` → ``(model_dir, hf_model)`` (float32, eval mode)."""
    cls_name, kwargs = CASES[case]
    kwargs = {**kwargs, **overrides}
    cls = getattr(transformers, cls_name)
    config = cls.config_class(**kwargs)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls(config).float().eval()
    _randomize(model, torch.Generator().manual_seed(seed))
    model_dir = tmp_path / case
    model.save_pretrained(str(model_dir), safe_serialization=True)
    return model_dir, model


def _load_hf(model_dir, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, **kwargs).eval()


def _tokens(vocab_size: int, batch: int = 2, length: int = SEQ_LEN, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def _worst(ours: torch.Tensor, ref: torch.Tensor, what: str, atol: float = ATOL) -> float:
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    per_pos = (ours.float() - ref.float()).abs().amax(dim=-1)
    worst = per_pos.max().item()
    assert worst <= atol, f"{what}: max diff {worst:.3g} at {per_pos.gt(atol).nonzero().tolist()}"
    return worst


@pytest.fixture(scope="module", params=list(CASES))
def family_case(request, tmp_path_factory):
    """``(case, model_dir, hf_model, model, config)`` for each case (built once per module)."""
    model_dir, hf_model = make_family_checkpoint(tmp_path_factory.mktemp("fam"), request.param)
    model, config = load_model(model_dir)
    return request.param, model_dir, hf_model, model, config


@torch.no_grad()
def test_logits_match_transformers_full_and_cached(family_case):
    case, _, hf_model, model, config = family_case
    ids = _tokens(config.vocab_size)
    ref = hf_model(input_ids=ids, use_cache=False).logits                      # (B, T, V)
    worst = _worst(model(ids), ref, f"{case} full forward")
    cache = model.new_cache(batch=2)
    for start, end in SCHEDULE:
        assert cache.length == start
        worst = max(worst, _worst(model(ids[:, start:end], cache=cache), ref[:, start:end],
                                  f"{case} cached [{start}, {end})"))
    worst = max(worst, _worst(model(ids, last_only=True), ref[:, -1:], f"{case} last_only"))
    print(f"{case}: max |Δlogit| = {worst:.2e}")


@torch.no_grad()
def test_capture_matches_transformers_hidden_states_and_attentions(family_case):
    case, model_dir, _, model, config = family_case
    hf_eager = _load_hf(model_dir, attn_implementation="eager")
    ids = _tokens(config.vocab_size, length=12)
    ref = hf_eager(input_ids=ids, use_cache=False, output_hidden_states=True, output_attentions=True)
    capture = Capture(attentions_wanted=True)
    _worst(model(ids, capture=capture), ref.logits, f"{case} logits with capture")
    assert len(capture.hidden_states) == len(ref.hidden_states) == config.num_hidden_layers + 1
    for i, (ours, theirs) in enumerate(zip(capture.hidden_states, ref.hidden_states)):
        _worst(ours, theirs, f"{case} hidden_states[{i}]")
    assert len(capture.attentions) == len(ref.attentions) == config.num_hidden_layers
    for i, (ours, theirs) in enumerate(zip(capture.attentions, ref.attentions)):
        _worst(ours, theirs, f"{case} attentions[{i}]", atol=1e-5)
    # the named stages: each block's two residual terms add up to its output
    arch = config.architecture()
    x = capture.hidden_states[0]
    for i in range(config.num_hidden_layers):
        name = f"{arch.layers}.{i}"
        a, m = capture.stages[f"{name}.{arch.attention_module}"], capture.stages[f"{name}.{arch.mlp_module}"]
        torch.testing.assert_close(x + a + m, capture.residuals[i], atol=1e-5, rtol=1e-5)
        x = capture.residuals[i]
    if arch.position_embedding:   # GPT-2: the embedding output is token row + position row
        torch.testing.assert_close(capture.stages[arch.token_embedding] + capture.stages[arch.position_embedding],
                                   capture.hidden_states[0])


@torch.no_grad()
def test_greedy_generation_matches_transformers(family_case):
    case, _, hf_model, model, config = family_case
    prompt = _tokens(config.vocab_size, batch=1, length=7, seed=3)[0].tolist()
    n = 20
    cache = model.new_cache(max_len=len(prompt) + n)
    logits = model(torch.tensor([prompt]), cache=cache, last_only=True)
    ours = []
    for _ in range(n):
        ours.append(int(logits[0, -1].argmax()))
        if len(ours) < n:
            logits = model(torch.tensor([[ours[-1]]]), cache=cache)
    x = torch.tensor([prompt])
    theirs = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == theirs


@torch.no_grad()
def test_fast_path_equals_readable_path(family_case):
    """Served families decode through llmcli.fastpath; the readable path gives the same logits."""
    from llmcli.fastpath import LlamaStyleDecoder
    from llmcli.models import model_class

    case, _, _, model, config = family_case
    assert (model.fast_decoder is not None) == (config.family in FAST)
    plain = model_class(config)(config).eval()
    plain.load_state_dict(model.state_dict())
    assert plain.fast_decoder is None
    ids = _tokens(config.vocab_size, length=SEQ_LEN)
    calls = []
    if model.fast_decoder is not None:
        original = LlamaStyleDecoder.__call__
        LlamaStyleDecoder.__call__ = lambda self, *a: calls.append(1) or original(self, *a)
    try:
        caches = [model.new_cache(batch=2), plain.new_cache(batch=2)]
        outs = [[m(ids[:, :3], cache=c)] for m, c in zip((model, plain), caches)]
        for t in range(3, SEQ_LEN):
            for m, c, out in zip((model, plain), caches, outs):
                out.append(m(ids[:, t:t + 1], cache=c))
    finally:
        if model.fast_decoder is not None:
            LlamaStyleDecoder.__call__ = original
    assert len(calls) == (SEQ_LEN - 3 if config.family in FAST else 0)
    for a, b in zip(*outs):
        _worst(a, b, f"{case} fast vs readable", atol=1e-5)


def test_architecture_words_follow_the_family(family_case):
    """info/trace words come from the family: GPT-2 says LayerNorm and a learned position
    embedding, never RoPE, SwiGLU or RMSNorm; GPT-NeoX says partial RoPE and its residual."""
    case, _, _, _, config = family_case
    arch = config.architecture()
    words = " ".join([arch.norm, arch.position, arch.mlp, arch.residual, arch.attention, arch.position_note])
    if config.family == "gpt2":
        assert "LayerNorm" in arch.norm and "wpe" in arch.position and "added" in arch.position_note
        assert not any(w in words for w in ("RoPE", "SwiGLU", "RMSNorm", "rotary"))
    elif config.family == "gpt_neox":
        assert "LayerNorm" in arch.norm and "partial RoPE" in arch.position and "SwiGLU" not in words
        assert ("parallel" in arch.residual) == config.use_parallel_residual
    else:
        assert "RMSNorm" in arch.norm and "RoPE" in arch.position and "SwiGLU" in arch.mlp
    windows = [config.layer_window(i) for i in range(config.num_hidden_layers)]
    assert ("sliding window" in arch.attention) == any(w is not None for w in windows)


@torch.no_grad()
def test_mistral_sliding_window_changes_the_logits(tmp_path):
    """The window is honoured: the same weights read as Llama (no window) differ past it."""
    model_dir, hf_model = make_family_checkpoint(tmp_path, "mistral_window")
    ids = _tokens(128, batch=1)
    ours, _ = load_model(model_dir)
    raw = json.loads((model_dir / "config.json").read_text())
    raw.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (model_dir / "config.json").write_text(json.dumps(raw))
    as_llama, _ = load_model(model_dir)
    ref = hf_model(input_ids=ids).logits
    _worst(ours(ids), ref, "mistral")
    diff = (as_llama(ids) - ref).abs().amax(dim=-1)[0]                          # (T,)
    assert diff[:6].max() <= ATOL and diff[6:].max() > 0.1                      # window = 6


def test_gpt2_conv1d_weights_transposed_at_load_and_bare_names(tmp_path):
    """GPT-2's Conv1D (in, out) matrices become (out, in) Linear weights when loaded, once;
    checkpoints named without the ``transformer.`` prefix (GPT2Model) load the same."""
    from safetensors.torch import load_file, save_file

    model_dir, hf_model = make_family_checkpoint(tmp_path, "gpt2")
    model, _ = load_model(model_dir)
    stored = load_file(str(model_dir / "model.safetensors"))
    w = stored["transformer.h.0.attn.c_attn.weight"]                            # (D, 3D)
    assert w.shape == (32, 96)
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight, w.t())
    bare = {k.removeprefix("transformer."): v for k, v in stored.items()}
    bare["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)                           # old mask buffer
    save_file(bare, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    notices: list[str] = []
    again, _ = load_model(model_dir, warn=notices.append)
    assert not notices
    ids = _tokens(128, batch=1)
    with torch.no_grad():
        _worst(again(ids), hf_model(input_ids=ids).logits, "bare GPT-2 names")


# ----------------------------------------------------------------------------- every command
CLI_CASES = ["mistral_window", "qwen2_tied_window", "qwen3_bias_tied_window", "gpt2", "neox_parallel"]
PROMPT = "Once upon a time there was a little girl"


@pytest.mark.parametrize("case", CLI_CASES)
@torch.no_grad()
def test_every_command_runs_on_each_family(tmp_path, tiny_tokenizer_model, cli, case):
    """generate, topk, logits, embeddings, trace and info on a tiny random checkpoint of each
    family (with the 320-piece test tokenizer), their numbers checked against transformers."""
    import shutil

    from llmcli.tokenizer import load_tokenizer

    vocab = 320
    overrides = {"vocab_size": vocab}
    model_dir, hf = make_family_checkpoint(tmp_path, case, **overrides)
    shutil.copyfile(tiny_tokenizer_model, model_dir / "tokenizer.model")
    ids = load_tokenizer(model_dir).encode(PROMPT)
    ref = hf(input_ids=torch.tensor([ids]), output_hidden_states=True)
    family = json.loads((model_dir / "config.json").read_text())["model_type"]

    code, out, err = cli("logits", "-m", model_dir, PROMPT, "--json")
    assert code == 0, err
    assert (torch.tensor(json.loads(out)["logits"]) - ref.logits[0, -1]).abs().max() <= ATOL

    code, out, err = cli("generate", "-m", model_dir, PROMPT, "-n", "8", "--temp", "0", "--json")
    assert code == 0, err
    got = [json.loads(line)["id"] for line in out.splitlines() if '"id"' in line]
    x = torch.tensor([ids])
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, min_new_tokens=8,
                       do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert got == want[:len(got)] and got, (got, want)

    code, out, err = cli("topk", "-m", model_dir, PROMPT, "-k", "3", "--steps", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["steps"][0]["chosen"]["id"] == int(ref.logits[0, -1].argmax())

    n = hf.config.num_hidden_layers
    for layer in (0, n):
        code, out, err = cli("embeddings", "-m", model_dir, PROMPT, "--layer", layer, "--json",
                             "--neighbors", "2")
        assert code == 0, err
        doc = json.loads(out)
        assert (torch.tensor(doc["vectors"]) - ref.hidden_states[layer][0]).abs().max() <= ATOL
    code, out, err = cli("embeddings", "-m", model_dir, PROMPT, "--json")
    doc = json.loads(out)
    if family == "gpt2":   # token row, position row, and their sum
        parts = {c["part"]: torch.tensor(c["vectors"]) for c in doc["components"]}
        assert torch.equal(parts["token"], hf.transformer.wte.weight[ids])
        assert torch.equal(parts["position"], hf.transformer.wpe.weight[:len(ids)])
        assert torch.allclose(parts["token"] + parts["position"], torch.tensor(doc["vectors"]))
        assert "added" in doc["position_note"] and "RoPE" not in doc["position_note"]
        code, out, err = cli("embeddings", "-m", model_dir, PROMPT)
        assert code == 0 and "transformer.wpe" in out and "= sum" in out, err
    else:
        assert doc["components"] == [] and "RoPE" in doc["position_note"]

    code, out, err = cli("trace", "-m", model_dir, PROMPT, "--json", "--attention", "0")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["chosen"]["id"] == int(ref.logits[0, -1].argmax())
    assert doc["architecture"]["family"] == hf.config.model_type.replace("gpt_neox", "GPT-NeoX").replace(
        "gpt2", "GPT-2").replace("mistral", "Mistral").replace("qwen", "Qwen")
    code, out, err = cli("trace", "-m", model_dir, PROMPT)
    assert code == 0, err
    code, out, err = cli("info", "-m", model_dir, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["parameters"]["total"] == sum(p.numel() for p in hf.parameters())
    assert len(info["parameters"]["per_block"]) == n and min(info["parameters"]["per_block"]) > 0
    code, text, err = cli("info", "-m", model_dir)
    assert code == 0, err
    words = (out + text).replace("rope_theta", "")
    if family == "gpt2":
        for wrong in ("RoPE", "SwiGLU", "RMSNorm", "rotary"):
            assert wrong not in text, wrong
        assert "LayerNorm" in text and "transformer.wpe" in text and "gelu" in text.lower()
    elif family == "gpt_neox":
        assert "partial RoPE" in text and "parallel" in text and "SwiGLU" not in text
    else:
        assert "RoPE" in words and "SwiGLU" in text


# ----------------------------------------------------------------------------- configs
def test_activation_names_match_the_implemented_ones():
    from llmcli.config import ACTIVATION_NAMES
    from llmcli.models.common import ACTIVATIONS

    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS)


@pytest.mark.parametrize("case", ["mistral_window", "qwen2_tied_window", "qwen3", "gpt2", "neox_parallel"])
def test_config_json_fields_read_as_transformers_reads_them(tmp_path, case):
    """The fields llmcli reads equal transformers' config of the same config.json."""
    from llmcli.models import load_config

    model_dir, hf = make_family_checkpoint(tmp_path, case)
    ours, theirs = load_config(model_dir / "config.json"), hf.config
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(ours, name) == getattr(theirs, name), name
    if hasattr(theirs, "layer_types") and theirs.layer_types is not None:
        windows = [theirs.sliding_window if t == "sliding_attention" else None for t in theirs.layer_types]
        assert [ours.layer_window(i) for i in range(ours.num_hidden_layers)] == windows
    if case == "neox_parallel":
        assert ours.rotary_dim == int(ours.head_dim * 0.5) and ours.rope_theta == 500.0
    if case == "gpt2":
        assert ours.intermediate_size == 48 and ours.head_dim == 8


def _config_error(tmp_path, raw: dict) -> str:
    from llmcli.errors import LLMCLIError
    from llmcli.models import load_config

    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(LLMCLIError) as info:
        load_config(tmp_path / "config.json")
    message = str(info.value)
    assert "\n" not in message and "config.json" in message
    return message


GPT2 = dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=100)
NEOX = dict(model_type="gpt_neox", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, vocab_size=100)
QWEN2 = dict(model_type="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=64, vocab_size=100)


@pytest.mark.parametrize("raw, needle", [
    ({**GPT2, "add_cross_attention": True}, "add_cross_attention"),
    ({**GPT2, "activation_function": "quick_gelu"}, "quick_gelu"),
    ({**GPT2, "n_head": 5}, "n_head"),
    ({**GPT2, "n_embd": 0}, "n_embd"),
    ({**NEOX, "rotary_pct": 0.375}, "rotary"),            # 8 × 0.375 = 3 rotary dims: odd
    ({**NEOX, "hidden_act": "gelu_fast"}, "gelu_fast"),
    ({**NEOX, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, "dynamic"),
    ({**QWEN2, "layer_types": ["full_attention", "chunked_attention"]}, "layer_types"),
    ({**QWEN2, "hidden_act": "gelu"}, "hidden_act"),
    ({**QWEN2, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, "yarn"),
    ({"model_type": "mistral", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
      "num_hidden_layers": 2, "intermediate_size": 64, "sliding_window": -3}, "sliding_window"),
])
def test_unimplemented_or_invalid_fields_are_errors(tmp_path, raw, needle):
    assert needle in _config_error(tmp_path, raw)
