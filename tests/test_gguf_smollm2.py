"""SmolLM2-135M-Instruct (a real quantized GGUF: Q4_1 matrices, a Q8_0 embedding, byte-level
BPE vocabulary with the ``smollm`` pre-tokenizer, ChatML template) through ``llmcli convert``,
against transformers loading the same GGUF (``from_pretrained(dir, gguf_file=...)``, which
dequantizes with the same ``gguf`` package). Converted once per session; skips without
``../shared`` (or without transformers/accelerate).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' GGUF loading needs it

from conftest import SHARED  # noqa: E402

from llmcli.convert import convert  # noqa: E402

DIR = SHARED / "fixtures" / "realmodels" / "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"
TEXTS = [PROMPT, "Hello, world! 1234567", "  two spaces\nand a newline\n\n\ttab", "émoji 🦙 日本語",
         "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    if not (DIR / GGUF).is_file():
        pytest.skip(f"{DIR / GGUF} not present")
    out = tmp_path_factory.mktemp("smol") / "smol"
    start = time.perf_counter()
    result = convert(DIR / GGUF, out)
    print(f"\nllmcli convert SmolLM2 Q4_1: {time.perf_counter() - start:.1f} s, {result.num_tensors} tensors")
    return out


@pytest.fixture(scope="module")
def reference():
    """transformers' own GGUF loading of the same file (float32), and its GGUF tokenizer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_pretrained(str(DIR), gguf_file=GGUF,
                                                                  dtype=torch.float32)
        tok = transformers.AutoTokenizer.from_pretrained(str(DIR), gguf_file=GGUF)
    return model.eval(), tok


def test_converted_files(converted):
    names = {p.name for p in converted.iterdir()}
    assert names == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "README.md"}
    cfg = json.loads((converted / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["rope_theta"], cfg["tie_word_embeddings"]) == \
        (30, 576, 9, 3, 100000.0, True)
    tcfg = json.loads((converted / "tokenizer_config.json").read_text())
    assert (tcfg["bos_token"], tcfg["eos_token"], tcfg["add_bos_token"]) == ("<|im_start|>", "<|im_end|>", False)
    assert "<|im_start|>" in tcfg["chat_template"]
    readme = (converted / "README.md").read_text()
    assert "Q4_1 × 210" in readme and "Q8_0 × 1" in readme and "'smollm'" in readme


def test_logits_equal_transformers_gguf(converted, reference):
    from llmcli.weights import load_model

    ref_model, ref_tok = reference
    ids = ref_tok.encode(PROMPT, add_special_tokens=True)
    x = torch.tensor([ids])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_converted = transformers.AutoModelForCausalLM.from_pretrained(str(converted), dtype=torch.float32).eval()
    ours, _ = load_model(converted)
    with torch.no_grad():
        want = ref_model(x).logits[0]
        d_ours = (ours(x)[0] - want).abs().max().item()
        d_hf = (hf_converted(x).logits[0] - want).abs().max().item()
    print(f"SmolLM2: max |Δlogit| llmcli(converted) vs transformers(GGUF) = {d_ours:.3g}; "
          f"transformers(converted) vs transformers(GGUF) = {d_hf:.3g}")
    assert d_ours <= 1e-4 and d_hf <= 1e-4
    # the converted weights are the GGUF's dequantized values exactly
    theirs = dict(ref_model.named_parameters())
    for name, p in hf_converted.named_parameters():
        assert torch.equal(p, theirs[name]), name


def test_greedy_tokens_equal_and_say_paris(converted, reference):
    from llmcli.weights import load_model

    ref_model, ref_tok = reference
    ids = ref_tok.encode(PROMPT, add_special_tokens=True)
    with torch.no_grad():
        want = ref_model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
    ours, _ = load_model(converted)
    got = list(ids)
    with torch.no_grad():
        for _ in range(16):
            got.append(int(ours(torch.tensor([got]))[0, -1].argmax()))
    assert got[len(ids):] == want
    text = ref_tok.decode(want)
    print(f"SmolLM2 greedy: {PROMPT!r} → {text!r}")
    assert text.startswith(" Paris")


def test_tokenizer_equals_transformers_gguf_tokenizer(converted, reference):
    _, ref_tok = reference
    tok = transformers.AutoTokenizer.from_pretrained(str(converted))
    import tokenizers

    raw = tokenizers.Tokenizer.from_file(str(converted / "tokenizer.json"))
    for text in TEXTS:
        want = ref_tok.encode(text, add_special_tokens=False)
        assert tok.encode(text, add_special_tokens=False) == want, text
        assert raw.encode(text, add_special_tokens=False).ids == want, text
        assert tok.decode(want) == ref_tok.decode(want), text
    assert tok.encode(PROMPT) == ref_tok.encode(PROMPT)  # neither adds BOS
    assert (tok.bos_token, tok.eos_token) == (ref_tok.bos_token, ref_tok.eos_token)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_info_shows_source_types(converted):
    from llmcli.inspection.info import model_info
    from llmcli.render import info_plain

    info = model_info(converted)
    types = {t.name: t.source_type for t in info.tensors}
    assert types["model.embed_tokens.weight"] == "Q8_0"
    assert types["model.layers.0.mlp.down_proj.weight"] == "Q4_1"
    assert types["model.norm.weight"] == "F32"
    assert info.source["types"] == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    text = info_plain(info)
    assert "converted from" in text and "Q4_1 × 210" in text
