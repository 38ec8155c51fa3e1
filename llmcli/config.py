"""Model configuration: the fields of a Hugging Face Llama ``config.json``.

Field names and defaults follow ``transformers.LlamaConfig`` so that a real checkpoint's
``config.json`` is read with no renaming. Both the legacy keys (``rope_theta``,
``rope_scaling``) and the transformers 5 key (``rope_parameters``) are understood.
"""

from __future__ import annotations

import json
from dataclasses import InitVar, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from llmcli.errors import LLMCLIError

#: ``model_type`` values whose checkpoints use the Llama tensor layout and maths.
LLAMA_COMPATIBLE_MODEL_TYPES = {"llama", "mistral"}
LLAMA_COMPATIBLE_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM"}

#: RoPE scaling types implemented in :mod:`llmcli.model` (see ``rope_inv_freq``).
SUPPORTED_ROPE_TYPES = {"default", "linear", "llama3"}


@dataclass(frozen=True)
class Architecture:
    """What a model family computes, in words, from its config (no torch): what ``info``,
    ``trace`` and ``embeddings`` say, and the Hugging Face module names of its stages.

    ``position_embedding`` is the name of a learned position table added to the token
    embedding (GPT-2's ``transformer.wpe``), or None when position enters elsewhere (RoPE).
    """

    family: str               # e.g. "Llama"
    norm: str                 # kind and eps
    position: str             # how position enters
    attention: str            # heads, key/value heads, head size, biases, window
    mlp: str                  # kind and intermediate size
    residual: str             # pre-/post-norm, serial or parallel
    position_note: str        # a longer explanation of position, for embeddings and trace
    token_embedding: str      # module names: "model.embed_tokens"
    layers: str               # "model.layers" (block i is f"{layers}.{i}")
    attention_module: str     # "self_attn" (inside a block)
    mlp_module: str           # "mlp"
    final_norm: str           # "model.norm"
    lm_head: str              # "lm_head"
    position_embedding: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attention_kind(heads: int, kv_heads: int) -> str:
    """``multi-head``, ``multi-query`` or ``grouped-query``."""
    return ("multi-head" if kv_heads == heads else "multi-query" if kv_heads == 1
            else "grouped-query")


#: How RoPE enters a model (shown by ``embeddings`` and ``trace``).
ROPE_POSITION_NOTE = ("Position is not added to the embedding: RoPE rotates each query and key "
                      "vector by an angle proportional to its position inside every attention "
                      "layer, so attention scores depend on relative position; the embedding "
                      "row of a token is the same at every position.")


@dataclass
class LlamaConfig:
    """Hyper-parameters of a Llama-family decoder (names as in Hugging Face ``LlamaConfig``).

    Derived values: ``head_dim`` defaults to ``hidden_size // num_attention_heads`` and
    ``num_key_value_heads`` to ``num_attention_heads`` (multi-head attention); fewer KV heads
    means grouped-query attention (Ainslie et al. 2023, "GQA").
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = 1
    eos_token_id: list[int] = field(default_factory=lambda: [2])
    model_type: str = "llama"
    torch_dtype: str | None = None
    #: Where the values came from, named in error messages (not a config field).
    source: InitVar[str] = "config"

    #: The model family (a key of ``llmcli.models.FAMILIES``).
    family: ClassVar[str] = "llama"

    def __post_init__(self, source: str = "config") -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and _is_positive_int(self.hidden_size) \
                and _is_positive_int(self.num_attention_heads):
            self.head_dim = self.hidden_size // self.num_attention_heads
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        elif self.eos_token_id is None:
            self.eos_token_id = []
        self.validate(source)

    @property
    def rope_type(self) -> str:
        """``"default"``, ``"linear"`` or ``"llama3"``."""
        if not self.rope_scaling:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))

    def architecture(self) -> Architecture:
        """What this model computes, in words."""
        H, K = self.num_attention_heads, self.num_key_value_heads
        bias = " with q/k/v/o biases" if self.attention_bias else ""
        return Architecture(
            family="Llama", norm=f"RMSNorm, eps {self.rms_norm_eps:g}",
            position=f"RoPE on queries and keys, theta {self.rope_theta:g}, scaling {self.rope_type}",
            attention=f"{H} heads, {K} key/value heads ({attention_kind(H, K)}), "
                      f"head_dim {self.head_dim}{bias}",
            mlp=f"SwiGLU, intermediate size {self.intermediate_size}"
                + (" (with biases)" if self.mlp_bias else ""),
            residual="pre-norm, serial: h = x + attn(norm(x)); x = h + mlp(norm(h))",
            position_note=ROPE_POSITION_NOTE, token_embedding="model.embed_tokens",
            layers="model.layers", attention_module="self_attn", mlp_module="mlp",
            final_norm="model.norm", lm_head="lm_head")

    def validate(self, source: str = "config") -> None:
        """Check that the numbers describe a model we can build.

        Raises:
            LLMCLIError: naming ``source`` and the offending field.
        """
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise LLMCLIError(f"{source}: {name} must be a positive integer, got {value!r}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise LLMCLIError(f"{source}: {name} must be a positive number, got {value!r}")
        if not isinstance(self.eos_token_id, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.eos_token_id):
            raise LLMCLIError(f"{source}: eos_token_id must be an integer or a list of integers, "
                              f"got {self.eos_token_id!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise LLMCLIError(f"{source}: rope_scaling must be an object, got {self.rope_scaling!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise LLMCLIError(
                f"{source}: num_attention_heads ({self.num_attention_heads}) is not a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise LLMCLIError(f"{source}: head_dim must be even for RoPE, got {self.head_dim}")
        if self.hidden_act != "silu":
            raise LLMCLIError(f"{source}: hidden_act {self.hidden_act!r} is not supported "
                              "(Llama uses 'silu')")
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise LLMCLIError(f"{source}: rope_scaling type {self.rope_type!r} is not supported "
                              f"(supported: {', '.join(sorted(SUPPORTED_ROPE_TYPES))})")
        if self.rope_type in ("linear", "llama3"):
            for key in ("factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings"):
                if key == "factor" or (self.rope_type == "llama3" and key in self.rope_scaling):
                    value = self.rope_scaling.get(key)
                    if not _is_number(value) or value <= 0:
                        raise LLMCLIError(f"{source}: rope_scaling of type {self.rope_type!r} "
                                          f"needs a positive number {key!r}, got {value!r}")
            if self.rope_type == "llama3" and (self.rope_scaling.get("high_freq_factor", 4.0)
                                               <= self.rope_scaling.get("low_freq_factor", 1.0)):
                raise LLMCLIError(f"{source}: rope_scaling needs high_freq_factor > low_freq_factor")

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "LlamaConfig":
        """Build from a parsed ``config.json`` dict; unknown keys are ignored.

        Raises:
            LLMCLIError: the architecture is not Llama-compatible or a field is invalid.
        """
        model_type = raw.get("model_type")
        archs = raw.get("architectures") or []
        if model_type is not None and model_type not in LLAMA_COMPATIBLE_MODEL_TYPES:
            raise LLMCLIError(f"{source}: model_type {model_type!r} is not a Llama-family model "
                              f"(supported: {', '.join(sorted(LLAMA_COMPATIBLE_MODEL_TYPES))})")
        if archs and not set(archs) & LLAMA_COMPATIBLE_ARCHITECTURES:
            raise LLMCLIError(f"{source}: architectures {archs} is not a Llama-family model")
        if model_type is None and not archs:
            raise LLMCLIError(f"{source}: neither model_type nor architectures is set; "
                              "cannot tell which model this is")
        kwargs: dict[str, Any] = {}
        names = {f.name for f in fields(cls)}
        for key, value in raw.items():
            if key in names:
                kwargs[key] = value
        # transformers 5 writes rope_theta and the scaling into one dict, rope_parameters.
        rope_params = raw.get("rope_parameters")
        if isinstance(rope_params, dict):
            if "rope_theta" in rope_params:
                kwargs["rope_theta"] = rope_params["rope_theta"]
            rtype = rope_params.get("rope_type", rope_params.get("type", "default"))
            if rtype != "default":
                kwargs["rope_scaling"] = {k: v for k, v in rope_params.items() if k != "rope_theta"}
        if kwargs.get("sliding_window") is not None:
            pass  # Mistral's sliding window is irrelevant for contexts shorter than it.
        if kwargs.get("rope_theta") is None:
            kwargs.pop("rope_theta", None)
        if "model_type" not in kwargs:
            kwargs["model_type"] = "llama"
        if kwargs.get("torch_dtype") is None and isinstance(raw.get("dtype"), str):
            kwargs["torch_dtype"] = raw["dtype"]  # transformers 5 renamed the key
        try:
            return cls(**kwargs, source=source)
        except TypeError as exc:  # pragma: no cover - defensive
            raise LLMCLIError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: Path) -> "LlamaConfig":
        """Read ``config.json`` (and ``generation_config.json`` beside it, for EOS ids).

        Raises:
            LLMCLIError: missing file, invalid JSON, or an invalid/unsupported config.
        """
        path = Path(path)
        if not path.is_file():
            raise LLMCLIError(f"{path}: no config.json in the model directory")
        raw = _read_json(path)
        config = cls.from_dict(raw, source=str(path))
        gen_path = path.parent / "generation_config.json"
        if gen_path.is_file():
            gen = _read_json(gen_path)
            eos = gen.get("eos_token_id")
            eos_list = [eos] if isinstance(eos, int) else eos if isinstance(eos, list) else []
            merged = config.eos_token_id + [i for i in eos_list if isinstance(i, int)
                                            and not isinstance(i, bool)]
            config.eos_token_id = list(dict.fromkeys(merged))  # config.json's ids first
            if config.bos_token_id is None and gen.get("bos_token_id") is not None:
                config.bos_token_id = gen["bos_token_id"]
        return config

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that both llmcli and transformers load."""
        out = asdict(self)
        out["architectures"] = ["LlamaForCausalLM"]
        out["eos_token_id"] = self.eos_token_id[0] if len(self.eos_token_id) == 1 else self.eos_token_id
        if out["rope_scaling"] is None:
            del out["rope_scaling"]
        if out["torch_dtype"] is None:
            del out["torch_dtype"]
        return out


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LLMCLIError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise LLMCLIError(f"{path}: expected a JSON object")
    return raw
