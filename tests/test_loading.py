"""How models are loaded (the start-up and memory levers of issue "Speed"), not how fast.

* The model is built on the meta device without running the modules' random initialisation
  and without meta arithmetic, so ``torch._dynamo`` (1-2 s of imports) is never imported by
  a generation.
* Each tensor is read from the file straight into its final place (dtype, layout) in chunks:
  the numbers are the checkpoint's exactly, whatever the chunk size, dtype conversion, fused
  or transposed layout, and every family still matches a plain copy of its state dict.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

from llmcli import weights
from llmcli.paths import default_model_dir
from llmcli.weights import load_model

transformers = pytest.importorskip("transformers")


def test_generate_does_not_import_torch_dynamo():
    code = ("import sys\n"
            "from llmcli.cli.app import main\n"
            "sys.argv = ['llmcli', 'generate', '-n', '2', '--temp', '0', 'Hello']\n"
            "try:\n    main()\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('DYNAMO', 'torch._dynamo' in sys.modules, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "DYNAMO False" in proc.stderr, proc.stderr


def _save(tmp_path, name, cls_name, dtype, **cfg):
    cls = getattr(transformers, cls_name)
    config = getattr(transformers, cls_name.replace("ForCausalLM", "Config").replace("LMHeadModel", "Config"))(**cfg)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls(config).to(dtype)
        model.save_pretrained(tmp_path / name, safe_serialization=True)
    return tmp_path / name


_LLAMA = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
              bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize("case", ["llama_bf16_tied", "llama_f32_untied", "gpt2_f16"])
@pytest.mark.parametrize("chunk", [weights._CHUNK_BYTES, 100])
def test_loaded_numbers_are_the_checkpoints(tmp_path, monkeypatch, case, chunk):
    """Every parameter equals the stored tensor converted to float32, bit for bit; chunk 100
    bytes reads one row (or a few) at a time."""
    monkeypatch.setattr(weights, "_CHUNK_BYTES", chunk)
    if case.startswith("gpt2"):
        d = _save(tmp_path, case, "GPT2LMHeadModel", torch.float16, vocab_size=96, n_embd=32,
                  n_layer=2, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=2)
    else:
        dtype = torch.bfloat16 if "bf16" in case else torch.float32
        d = _save(tmp_path, case, "LlamaForCausalLM", dtype, tie_word_embeddings="tied" in case,
                  **_LLAMA)
    stored = load_file(str(d / "model.safetensors"))
    model, config = load_model(d)
    state = model.state_dict()
    transposed = type(model).TRANSPOSED_IN_CHECKPOINT
    for name, t in stored.items():
        if name.endswith(".attn.bias") or name.endswith("masked_bias"):
            continue                       # GPT-2 buffers transformers may write
        full = name if name in state else "transformer." + name
        expect = t.float().t() if full.endswith(transposed) and transposed else t.float()
        assert state[full].dtype == torch.float32
        assert torch.equal(state[full], expect), name
    # the fast layout: matrices are (out, in) views of (in, out) row-major storage
    w = state["lm_head.weight"]
    assert w.stride() == (1, w.shape[0])
    if config.tie_word_embeddings:
        assert model.lm_head.weight is model.input_embeddings() or \
            model.lm_head.weight.data_ptr() == model.input_embeddings().data_ptr()


def test_bundled_model_logits_equal_transformers_after_chunked_load(monkeypatch):
    """The chunked reader with odd chunk sizes gives the same logits as transformers (float32)."""
    monkeypatch.setattr(weights, "_CHUNK_BYTES", 4096 + 4)
    d = default_model_dir()
    model, _ = load_model(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = transformers.LlamaForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    with torch.inference_mode():
        ours = model(ids)
        theirs = ref(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4
