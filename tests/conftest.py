"""Shared test helpers: one CPU thread, tiny random Hugging Face checkpoints, the shared fixtures.

Keep this file small and generic; put helpers used by one test file in that file.
"""

from __future__ import annotations

import signal
import warnings
from pathlib import Path

import pytest
import torch

# A test runner started in the background by a non-interactive shell inherits SIGINT ignored,
# and every llmcli it starts would too (an ignored signal survives exec), so the Ctrl-C tests
# could not interrupt anything. A handled signal reverts to the default in an exec'd child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

torch.set_num_threads(1)  # the test machine is shared; tiny models gain nothing from threads

#: Real models and tokenizers kept beside the clone (``../shared``); tests using them skip
#: when it is absent, the project never depends on it.
SHARED = Path(__file__).resolve().parents[2] / "shared"

#: A small Llama: every test model starts from this and overrides what it exercises.
TINY_LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-5,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def shared_path(*parts: str) -> Path:
    """``SHARED / parts``, or skip the calling test when it does not exist."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (shared fixtures live beside the clone)")
    return path


@pytest.fixture
def shared() -> Path:
    """The shared fixtures directory; skips the test when it is absent."""
    return shared_path()


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``dtype=`` (transformers ≥ 4.56) or ``torch_dtype=`` (older) for ``from_pretrained``."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_hf(model_dir: Path, dtype: torch.dtype = torch.float32, **kwargs):
    """The ``transformers.LlamaForCausalLM`` stored in ``model_dir``, in ``dtype``, eval mode
    (``kwargs`` go to ``from_pretrained``, e.g. ``attn_implementation="eager"``)."""
    from transformers import LlamaForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LlamaForCausalLM.from_pretrained(str(model_dir), **_dtype_kwarg(dtype),
                                                 **kwargs)
    return model.eval()


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every parameter O(1)-scale random values, so that norms, biases and the
    embeddings all matter to the logits (HF's init leaves norms at 1 and biases at 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=generator))
            else:  # (out, in) Linear weight
                p.copy_(torch.randn(p.shape, generator=generator) / p.shape[1] ** 0.5)


def make_checkpoint(tmp_path: Path, name: str = "model", seed: int = 0,
                    storage_dtype: torch.dtype | None = None, max_shard_size: str | None = None,
                    **config_overrides):
    """Save a random ``transformers.LlamaForCausalLM`` → ``(model_dir, hf_model)``.

    The model is built from ``TINY_LLAMA`` updated with ``config_overrides`` (any
    ``transformers.LlamaConfig`` keyword), seeded, and saved with ``save_pretrained`` as
    safetensors: sharded when ``max_shard_size`` (e.g. ``"20KB"``) is given, stored in
    ``storage_dtype`` (``torch.bfloat16``/``torch.float16`` or its name; ``torch_dtype=`` and
    ``dtype=`` are accepted as aliases) when given. ``hf_model`` is float32, eval mode, and
    holds exactly the stored weights (reloaded from ``model_dir`` when stored in 16 bits).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    for alias in ("torch_dtype", "dtype"):
        if alias in config_overrides:
            storage_dtype = config_overrides.pop(alias)
    if isinstance(storage_dtype, str):
        storage_dtype = getattr(torch, storage_dtype)
    kwargs = {**TINY_LLAMA, **config_overrides}
    config = LlamaConfig(**kwargs)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    _randomize(model, generator)
    model_dir = tmp_path / name
    save_kwargs = {"safe_serialization": True}
    if max_shard_size is not None:
        save_kwargs["max_shard_size"] = max_shard_size
    if storage_dtype is not None and storage_dtype != torch.float32:
        model.to(storage_dtype).save_pretrained(str(model_dir), **save_kwargs)
        return model_dir, load_hf(model_dir)
    model.save_pretrained(str(model_dir), **save_kwargs)
    return model_dir, model


#: Text for the tiny sentencepiece model; everything else (emoji, CJK...) falls back to bytes.
_SPM_CORPUS = ["Once upon a time there was a little girl named Lily.",
               "She liked to play in the park with her dog, Max!",
               "The sun was shining; 123 birds sang 4567 songs.",
               "  Two spaces, a\ttab, and a new\nline.",
               "Café déjà vu, a naïve façade."]


@pytest.fixture(scope="session")
def tiny_tokenizer_model(tmp_path_factory) -> Path:
    """A ``tokenizer.model`` trained here: BPE, 320 pieces, Llama-style (byte fallback, no
    whitespace normalisation, split digits, ``<unk>``=0, ``<s>``=1, ``</s>``=2)."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SPM_CORPUS * 20), model_writer=buf, vocab_size=320,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, unk_surface=" \u2047 ",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``llmcli ARGS`` in-process (``llmcli.cli.app.main``) → ``(exit code, stdout,
    stderr)``. ``stdin`` is the text on standard input; ``stdout=`` replaces sys.stdout (e.g. a
    pipe whose reader went away). What was captured before the call (transformers' progress
    bars) is dropped; ``$LLMCLI_MODEL`` and ``$LLMCLI_DEBUG`` are unset for the run."""
    import io
    import sys

    from llmcli.cli.app import main

    def run(*args, stdin: str = "", stdout=None):
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["llmcli", *map(str, args)])
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        if stdout is not None:
            monkeypatch.setattr(sys, "stdout", stdout)
        monkeypatch.delenv("LLMCLI_MODEL", raising=False)
        monkeypatch.delenv("LLMCLI_DEBUG", raising=False)
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
