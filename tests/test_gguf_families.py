"""``llmcli convert`` of GGUF files of the qwen2, gpt2 and gptneox architectures.

Each GGUF is written with the ``gguf`` package from a random transformers checkpoint
(``save_pretrained``) the way llama.cpp's converter writes one (``convert_hf_to_gguf.py``:
names from ``gguf.get_tensor_name_map``, GPT-2's Conv1D matrices transposed, GPT-NeoX's
query_key_value regrouped into all q, all k, all v; Qwen2 copied), converted, and the result
compared with the original model: llmcli's logits and transformers' (loading the converted
directory) at every position.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_families import _tokens, _worst, make_family_checkpoint

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

VOCAB = 320   # the test tokenizer's (conftest.tiny_tokenizer_model)


def _llama_cpp_tensor(arch: str, name: str, t: torch.Tensor, cfg: dict) -> torch.Tensor:
    """What llama.cpp's converter does to one tensor before writing it (conversion/*.py)."""
    if arch == "gpt2" and name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
        return t.transpose(1, 0)
    if arch == "gptneox" and "query_key_value" in name:
        H, D = cfg["num_attention_heads"], cfg["hidden_size"]
        parts = t.reshape((H, 3, D // H, *t.shape[1:]))
        return torch.cat([parts[:, j].reshape((-1, *t.shape[1:])) for j in range(3)], dim=0)
    return t


def write_gguf_like_llama_cpp(model_dir, path, arch: str, qtype=None):
    """A GGUF of the checkpoint in ``model_dir``: metadata as llama.cpp's converter writes it
    for ``arch``, 1-D tensors F32, matrices F32 or quantized to ``qtype``."""
    Q = gguf.GGMLQuantizationType
    cfg = json.loads((model_dir / "config.json").read_text())
    state = load_file(str(model_dir / "model.safetensors"))
    arch_enum = {"qwen2": gguf.MODEL_ARCH.QWEN2, "gpt2": gguf.MODEL_ARCH.GPT2,
                 "gptneox": gguf.MODEL_ARCH.GPTNEOX}[arch]
    wr = gguf.GGUFWriter(str(path), arch)
    if arch == "gpt2":
        n = cfg["n_layer"]
        wr.add_block_count(n)
        wr.add_context_length(cfg["n_positions"])
        wr.add_embedding_length(cfg["n_embd"])
        wr.add_feed_forward_length(4 * cfg["n_embd"])
        wr.add_head_count(cfg["n_head"])
        wr.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    elif arch == "gptneox":
        n = cfg["num_hidden_layers"]
        rope = cfg["rope_parameters"]
        wr.add_context_length(cfg["max_position_embeddings"])
        wr.add_embedding_length(cfg["hidden_size"])
        wr.add_block_count(n)
        wr.add_feed_forward_length(cfg["intermediate_size"])
        wr.add_rope_dimension_count(int(rope["partial_rotary_factor"]
                                        * (cfg["hidden_size"] // cfg["num_attention_heads"])))
        wr.add_rope_freq_base(rope["rope_theta"])
        wr.add_head_count(cfg["num_attention_heads"])
        wr.add_parallel_residual(cfg.get("use_parallel_residual", True))
        wr.add_layer_norm_eps(cfg["layer_norm_eps"])
    else:
        n = cfg["num_hidden_layers"]
        wr.add_context_length(cfg["max_position_embeddings"])
        wr.add_embedding_length(cfg["hidden_size"])
        wr.add_block_count(n)
        wr.add_feed_forward_length(cfg["intermediate_size"])
        wr.add_head_count(cfg["num_attention_heads"])
        wr.add_head_count_kv(cfg["num_key_value_heads"])
        wr.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
        wr.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    names = gguf.get_tensor_name_map(arch_enum, n)
    for name, t in state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        arr = _llama_cpp_tensor(arch, name, t.float(), cfg).numpy()
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        if arr.ndim == 1 or qtype is None:
            wr.add_tensor(new, arr.astype(np.float32))
        else:
            wr.add_tensor(new, gguf.quants.quantize(arr.astype(np.float32), qtype), raw_dtype=qtype)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


CASES = [("qwen2_untied", "qwen2"), ("qwen2_tied_window", "qwen2"), ("gpt2", "gpt2"),
         ("gpt2_untied_scaled", "gpt2"), ("neox_parallel", "gptneox"), ("neox_serial_tied", "gptneox")]


@pytest.mark.parametrize("case, arch", CASES)
@torch.no_grad()
def test_gguf_converts_to_the_same_model(tmp_path, tiny_tokenizer_model, case, arch):
    from llmcli.convert import convert
    from llmcli.weights import load_model

    overrides = {"vocab_size": VOCAB}
    if case == "qwen2_tied_window":   # GGUF records no sliding window: compare without one
        overrides["use_sliding_window"] = False
    if case == "gpt2_untied_scaled":  # GGUF records neither: compare with GPT-2's defaults
        overrides.update(scale_attn_by_inverse_layer_idx=False, activation_function="gelu_new")
    model_dir, hf = make_family_checkpoint(tmp_path, case, **overrides)
    src = write_gguf_like_llama_cpp(model_dir, tmp_path / f"{case}.gguf", arch)
    out = tmp_path / "converted"
    convert(src, out, tokenizer=tiny_tokenizer_model)
    converted = load_file(str(out / "model.safetensors"))
    original = load_file(str(model_dir / "model.safetensors"))
    assert set(converted) == set(original)
    for name, t in original.items():   # F32 in, F32 out: every tensor exactly the original
        assert torch.equal(converted[name], t), name
    ids = _tokens(VOCAB)
    ref = hf(input_ids=ids).logits
    model, config = load_model(out)
    assert config.family == hf.config.model_type
    _worst(model(ids), ref, f"{case}: llmcli on the converted directory")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    _worst(theirs(input_ids=ids).logits, ref, f"{case}: transformers on the converted directory")
    readme = (out / "README.md").read_text()
    assert f"Hugging Face {type(config).title} names" in readme and "permuted" not in readme


@pytest.mark.parametrize("case, arch", [("gpt2", "gpt2"), ("neox_parallel", "gptneox"),
                                        ("qwen2_untied", "qwen2")])
@torch.no_grad()
def test_quantized_gguf_dequantizes_to_gguf_values(tmp_path, tiny_tokenizer_model, case, arch):
    """Q8_0 matrices: each converted tensor equals gguf's dequantization of the stored blocks
    (undone the same way as F32), and llmcli and transformers agree on the converted model."""
    from llmcli.convert import convert
    from llmcli.weights import load_model

    extra = {"n_inner": 64} if arch == "gpt2" else {}   # Q8_0 rows come in blocks of 32
    model_dir, hf = make_family_checkpoint(tmp_path, case, vocab_size=VOCAB, **extra)
    Q = gguf.GGMLQuantizationType
    src = write_gguf_like_llama_cpp(model_dir, tmp_path / "q.gguf", arch, qtype=Q.Q8_0)
    out = tmp_path / "converted"
    convert(src, out, tokenizer=tiny_tokenizer_model)
    cfg = json.loads((model_dir / "config.json").read_text())
    converted = load_file(str(out / "model.safetensors"))
    for name, t in load_file(str(model_dir / "model.safetensors")).items():
        if t.dim() == 1:
            assert torch.equal(converted[name], t), name
            continue
        stored = _llama_cpp_tensor(arch, name, t, cfg).numpy()
        deq = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(stored, Q.Q8_0), Q.Q8_0))
        # undo llama.cpp's change the way a reader must: GPT-2 transpose, NeoX regroup
        if arch == "gpt2" and name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            deq = deq.t()
        if arch == "gptneox" and "query_key_value" in name:
            H, Dh = cfg["num_attention_heads"], cfg["hidden_size"] // cfg["num_attention_heads"]
            deq = deq.reshape(3, H, Dh, -1).transpose(0, 1).reshape(t.shape)
        assert torch.equal(converted[name], deq), name
        assert (converted[name] - t).abs().max() < 0.05 * t.abs().max(), name   # close, not equal
    ids = _tokens(VOCAB)
    model, _ = load_model(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    _worst(model(ids), theirs(input_ids=ids).logits, f"{case} Q8_0: llmcli vs transformers")
    assert "Q8_0" in (out / "README.md").read_text()


def test_gguf_of_an_unsupported_architecture_is_one_line(tmp_path):
    from llmcli.convert import convert
    from llmcli.errors import LLMCLIError

    wr = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    wr.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    with pytest.raises(LLMCLIError) as info:
        convert(tmp_path / "m.gguf", tmp_path / "out")
    message = str(info.value)
    assert "'mamba'" in message and "gpt2" in message and "gptneox" in message and "\n" not in message
