"""Loading a bad model directory gives one clear line naming the file or tensor; config defaults."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_checkpoint
from llmcli.config import LlamaConfig
from llmcli.errors import LLMCLIError
from llmcli.weights import load_model

pytest.importorskip("transformers")


@pytest.fixture
def model_dir(tmp_path):
    """A valid tiny checkpoint (untied, single file) for each test to break."""
    return make_checkpoint(tmp_path, tie_word_embeddings=False)[0]


def load_error(path, **kwargs) -> str:
    """The message of the LLMCLIError that ``load_model(path)`` raises (asserted one line)."""
    with pytest.raises(LLMCLIError) as info:
        load_model(path, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message, repr(message)
    assert "Traceback" not in message
    return message


def _edit_weights(model_dir, edit) -> None:
    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


# ----------------------------------------------------------------------------- directory/config
def test_missing_directory(tmp_path):
    message = load_error(tmp_path / "nope")
    assert "nope" in message and "directory" in message


def test_file_instead_of_directory(model_dir):
    message = load_error(model_dir / "model.safetensors")
    assert "model.safetensors" in message and "directory" in message


def test_missing_config(model_dir):
    (model_dir / "config.json").unlink()
    assert "config.json" in load_error(model_dir)


def test_invalid_json_config(model_dir):
    (model_dir / "config.json").write_text('{"model_type": "llama", ')
    message = load_error(model_dir)
    assert "config.json" in message and "JSON" in message


def test_config_not_an_object(model_dir):
    (model_dir / "config.json").write_text("[1, 2]")
    assert "config.json" in load_error(model_dir)


def test_unsupported_model_type(model_dir):
    """One line naming the type and every supported one."""
    raw = json.loads((model_dir / "config.json").read_text())
    raw.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (model_dir / "config.json").write_text(json.dumps(raw))
    message = load_error(model_dir)
    assert "config.json" in message and "'mamba'" in message and "\n" not in message
    for supported in ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox"):
        assert supported in message


def test_unsupported_rope_scaling(model_dir):
    raw = json.loads((model_dir / "config.json").read_text())
    raw.pop("rope_parameters", None)
    raw["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (model_dir / "config.json").write_text(json.dumps(raw))
    message = load_error(model_dir)
    assert "yarn" in message and "config.json" in message


@pytest.mark.parametrize("field,value", [
    ("hidden_size", 0), ("hidden_size", "64"), ("num_attention_heads", 0),
    ("num_attention_heads", None), ("num_key_value_heads", 3), ("vocab_size", "many"),
    ("head_dim", 7), ("hidden_act", "gelu"), ("rope_scaling", "linear"),
    ("rope_scaling", {"rope_type": "linear"}), ("rope_scaling", {"rope_type": "llama3", "factor": "8"}),
    ("rope_theta", -1.0), ("eos_token_id", "2"), ("rms_norm_eps", None)])
def test_invalid_config_field(model_dir, field, value):
    raw = json.loads((model_dir / "config.json").read_text())
    if field.startswith("rope"):
        raw.pop("rope_parameters", None)
    raw[field] = value
    (model_dir / "config.json").write_text(json.dumps(raw))
    message = load_error(model_dir)
    assert "config.json" in message and field in message


# ----------------------------------------------------------------------------- tensors
def test_missing_tensor_is_named(model_dir):
    name = "model.layers.1.mlp.up_proj.weight"
    _edit_weights(model_dir, lambda s: s.pop(name))
    message = load_error(model_dir)
    assert name in message and "missing" in message


def test_misshapen_tensor_is_named_with_shapes(model_dir):
    name = "model.layers.0.self_attn.k_proj.weight"

    def edit(state):
        state[name] = torch.zeros(state[name].shape[0] + 4, state[name].shape[1])
    _edit_weights(model_dir, edit)
    message = load_error(model_dir)
    assert name in message and "[36, 32]" in message and "[32, 32]" in message


def test_untied_checkpoint_without_lm_head(model_dir):
    _edit_weights(model_dir, lambda s: s.pop("lm_head.weight"))
    assert "lm_head.weight" in load_error(model_dir)


def test_unknown_tensors_are_warned_not_used(model_dir):
    def edit(state):
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # silently ignored
        state["model.extra_adapter.weight"] = torch.ones(3, 3)
        state["vision_tower.proj.weight"] = torch.ones(2)
    _edit_weights(model_dir, edit)
    notices: list[str] = []
    model, _ = load_model(model_dir, warn=notices.append)
    assert len(notices) == 1, notices
    assert "model.extra_adapter.weight" in notices[0] and "vision_tower.proj.weight" in notices[0]
    assert "inv_freq" not in notices[0]
    names = set(model.state_dict())
    assert "model.extra_adapter.weight" not in names and "vision_tower.proj.weight" not in names
    load_model(model_dir)  # without a warn callback the extras are dropped quietly


# ----------------------------------------------------------------------------- files
def test_truncated_safetensors(model_dir):
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = load_error(model_dir)
    # the same figures `llmcli info` gives: the size found and the size the header describes
    assert f"model.safetensors: truncated ({len(data) // 2} bytes; its header describes {len(data)})" in message


@pytest.mark.parametrize("size", [0, 5, 40])
def test_safetensors_truncated_in_header(model_dir, size):
    path = model_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:size])
    message = load_error(model_dir)
    assert "model.safetensors" in message and "truncated" in message


def test_git_lfs_pointer(model_dir):
    (model_dir / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 1044992\n")
    message = load_error(model_dir)
    assert "model.safetensors" in message and "LFS" in message


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(model_dir, seed):
    gen = torch.Generator().manual_seed(seed)
    data = bytes(torch.randint(0, 256, (4096,), generator=gen, dtype=torch.uint8).tolist())
    (model_dir / "model.safetensors").write_bytes(data)
    assert "model.safetensors" in load_error(model_dir)


def test_header_ok_but_not_json(model_dir):
    header = b"{not json at all}"
    (model_dir / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    assert "model.safetensors" in load_error(model_dir)


def test_missing_shard(tmp_path):
    model_dir, _ = make_checkpoint(tmp_path, max_shard_size="20KB")
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (model_dir / shard).unlink()
    message = load_error(model_dir)
    assert shard in message and "missing" in message


def test_invalid_index(tmp_path):
    model_dir, _ = make_checkpoint(tmp_path, max_shard_size="20KB")
    (model_dir / "model.safetensors.index.json").write_text('{"metadata": {}}')
    assert "model.safetensors.index.json" in load_error(model_dir)


def test_only_pytorch_bin(model_dir):
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"PK\x03\x04 pickled zip")
    message = load_error(model_dir)
    assert "pytorch_model.bin" in message and "safetensors" in message


def test_no_weights_at_all(model_dir):
    (model_dir / "model.safetensors").unlink()
    assert "model.safetensors" in load_error(model_dir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_weights(model_dir):
    (model_dir / "model.safetensors").chmod(0)
    assert "model.safetensors" in load_error(model_dir)


# ----------------------------------------------------------------------------- config defaults
def _config(tmp_path, raw: dict, generation: dict | None = None) -> LlamaConfig:
    (tmp_path / "config.json").write_text(json.dumps(raw))
    if generation is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation))
    return LlamaConfig.from_file(tmp_path / "config.json")


BASE = dict(model_type="llama", hidden_size=64, num_attention_heads=8, intermediate_size=128,
            num_hidden_layers=2, vocab_size=100)


def test_derived_defaults(tmp_path):
    cfg = _config(tmp_path, BASE)
    assert cfg.num_key_value_heads == 8 and cfg.head_dim == 8
    assert cfg.rope_theta == 10000.0 and cfg.rope_type == "default"
    assert cfg.tie_word_embeddings is False
    cfg = _config(tmp_path, {**BASE, "num_key_value_heads": None, "head_dim": None})
    assert cfg.num_key_value_heads == 8 and cfg.head_dim == 8
    cfg = _config(tmp_path, {**BASE, "num_key_value_heads": 2, "head_dim": 32})
    assert cfg.num_key_value_heads == 2 and cfg.head_dim == 32


def test_architectures_without_model_type(tmp_path):
    raw = {k: v for k, v in BASE.items() if k != "model_type"}
    assert _config(tmp_path, {**raw, "architectures": ["LlamaForCausalLM"]}).model_type == "llama"
    with pytest.raises(LLMCLIError, match="model_type"):
        _config(tmp_path, raw)


@pytest.mark.parametrize("eos,expected", [(2, [2]), ([2, 7], [2, 7]), (None, [])])
def test_eos_int_or_list(tmp_path, eos, expected):
    assert _config(tmp_path, {**BASE, "eos_token_id": eos}).eos_token_id == expected


def test_eos_merged_from_generation_config(tmp_path):
    cfg = _config(tmp_path, {**BASE, "eos_token_id": 2}, {"eos_token_id": [9, 2]})
    assert cfg.eos_token_id == [2, 9]
    cfg = _config(tmp_path, {**BASE, "eos_token_id": [2, 7]}, {"eos_token_id": 7})
    assert cfg.eos_token_id == [2, 7]
    cfg = _config(tmp_path, {**BASE, "eos_token_id": None, "bos_token_id": None},
                  {"eos_token_id": 5, "bos_token_id": 4})
    assert cfg.eos_token_id == [5] and cfg.bos_token_id == 4


def test_invalid_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text("{oops")
    with pytest.raises(LLMCLIError, match="generation_config.json"):
        _config(tmp_path, BASE)


def test_to_dict_round_trip(tmp_path):
    cfg = _config(tmp_path, {**BASE, "num_key_value_heads": 2, "eos_token_id": [2, 3],
                             "rope_theta": 500000.0,
                             "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    again = LlamaConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_storage_dtype_key_old_and_new(tmp_path):
    assert _config(tmp_path, {**BASE, "torch_dtype": "bfloat16"}).torch_dtype == "bfloat16"
    assert _config(tmp_path, {**BASE, "dtype": "float16"}).torch_dtype == "float16"  # transformers 5
