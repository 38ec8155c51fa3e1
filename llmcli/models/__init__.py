"""Model families behind one interface, and the registry that picks one from ``config.json``.

The interface (:class:`llmcli.models.common.CausalLM`) is all that generation, inspection and
rendering use:

* ``model(input_ids, cache=None, capture=None, last_only=False)`` → logits (B, T, V), with
  a :class:`~llmcli.models.common.KVCache` from ``model.new_cache(batch, max_len)`` and an
  optional :class:`~llmcli.models.common.Capture` (hidden states, attention weights, named
  stage outputs);
* ``model.final_norm(x)`` and ``model.unembed(x)`` (the logit lens), ``model.input_embeddings()``;
* ``model.config`` (the family's config dataclass in :mod:`llmcli.config`, Hugging Face's field
  names and defaults) and ``model.architecture`` (what the family computes, in words).

Each family is one readable file here (``llama.py``...), with Hugging Face's parameter names
so that checkpoints load as a straight copy; shared pieces are in ``common.py``. The one-token
decoding fast path is not part of the families: see :mod:`llmcli.fastpath`.

This ``__init__`` never imports torch (``llmcli info`` reads configs through it).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmcli import config as _config
from llmcli.errors import LLMCLIError


@dataclass(frozen=True)
class Family:
    """A model family: its config class (in :mod:`llmcli.config`, which also names the
    ``model_type``/``architectures`` values of ``config.json`` it reads) and its model class."""

    config_class: str              # a class of llmcli.config
    module: str                    # where the model class lives
    model_class: str

    def config_type(self) -> type:
        return getattr(_config, self.config_class)

    @property
    def name(self) -> str:
        return self.config_type().family

    @property
    def model_types(self) -> tuple[str, ...]:
        return self.config_type().model_types

    @property
    def architectures(self) -> tuple[str, ...]:
        return self.config_type().architectures

    def model_type_class(self) -> type:
        """The model class (imports torch)."""
        return getattr(importlib.import_module(self.module), self.model_class)


#: Every family llmcli implements.
FAMILIES: tuple[Family, ...] = (
    Family("LlamaConfig", "llmcli.models.llama", "LlamaForCausalLM"),
    Family("MistralConfig", "llmcli.models.mistral", "MistralForCausalLM"),
    Family("Qwen2Config", "llmcli.models.qwen2", "Qwen2ForCausalLM"),
    Family("Qwen3Config", "llmcli.models.qwen3", "Qwen3ForCausalLM"),
    Family("GPT2Config", "llmcli.models.gpt2", "GPT2LMHeadModel"),
    Family("GPTNeoXConfig", "llmcli.models.gpt_neox", "GPTNeoXForCausalLM"),
)


def supported_model_types() -> list[str]:
    return sorted(t for f in FAMILIES for t in f.model_types)


def family_of(raw: dict[str, Any], source: str = "config.json") -> Family:
    """The family of a parsed ``config.json``: by ``model_type``, else by ``architectures``.

    Raises:
        LLMCLIError: one line naming the type and the supported ones, when no family reads it.
    """
    model_type = raw.get("model_type")
    archs = raw.get("architectures") or []
    if model_type is not None:
        for family in FAMILIES:
            if model_type in family.model_types:
                return family
        raise LLMCLIError(f"{source}: model_type {model_type!r} is not supported "
                          f"(supported: {', '.join(supported_model_types())})")
    if not archs:
        raise LLMCLIError(f"{source}: neither model_type nor architectures is set; "
                          "cannot tell which model this is")
    for family in FAMILIES:
        if set(archs) & set(family.architectures):
            return family
    raise LLMCLIError(f"{source}: architectures {archs} is not supported (supported: "
                      f"{', '.join(sorted(a for f in FAMILIES for a in f.architectures))})")


def config_from_dict(raw: dict[str, Any], source: str = "config.json"):
    """The family's config dataclass for a parsed ``config.json``.

    Raises:
        LLMCLIError: an unsupported family, or a field that is invalid or not implemented.
    """
    return family_of(raw, source).config_type().from_dict(raw, source=source)


def load_config(path: Path | str):
    """Read ``config.json`` (and ``generation_config.json`` beside it, for EOS ids) into the
    config dataclass of its family.

    Raises:
        LLMCLIError: a missing file, invalid JSON, an unsupported family or an invalid field.
    """
    path = Path(path)
    if not path.is_file():
        raise LLMCLIError(f"{path}: no config.json in the model directory")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LLMCLIError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise LLMCLIError(f"{path}: expected a JSON object")
    return family_of(raw, str(path)).config_type().from_file(path)


def family_by_name(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(name)


def model_class(config) -> type:
    """The model class for a config (imports torch)."""
    return family_by_name(config.family).model_type_class()
