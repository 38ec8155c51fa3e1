"""Model configuration: each family's fields of a Hugging Face ``config.json``.

One dataclass per family (:class:`LlamaConfig`, :class:`MistralConfig`, :class:`Qwen2Config`,
:class:`Qwen3Config`, :class:`GPT2Config`, :class:`GPTNeoXConfig`), with the field names and
defaults of transformers' config class of that family, so that a real checkpoint's
``config.json`` is read with no renaming. Both the legacy RoPE keys (``rope_theta``,
``rope_scaling``, GPT-NeoX's ``rotary_pct``/``rotary_emb_base``) and the transformers 5 key
(``rope_parameters``) are understood. A field that changes the maths and is not implemented
is an error, never ignored. Each config also says in words what its family computes
(:class:`Architecture`). No torch here: ``llmcli info`` reads configs too.

Every config has the generic names generation and inspection use: ``vocab_size``,
``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim``, ``intermediate_size``, ``max_position_embeddings`` (the context length),
``tie_word_embeddings``, ``bos_token_id``, ``eos_token_id`` (a list), ``model_type``,
``torch_dtype`` (GPT-2's own names, ``n_embd``..., are its fields; the generic names are
properties).
"""

from __future__ import annotations

import json
from dataclasses import InitVar, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from llmcli.errors import LLMCLIError

#: RoPE scaling types implemented (see ``llmcli.models.common.rope_inv_freq``).
SUPPORTED_ROPE_TYPES = {"default", "linear", "llama3"}

#: ``hidden_act`` / ``activation_function`` values implemented (``llmcli.models.common.ACTIVATIONS``).
ACTIVATION_NAMES = ("silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


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


class HFConfig:
    """What every family's config shares: reading ``config.json`` (and the EOS/BOS ids of
    ``generation_config.json``), the common checks, and the class-level facts the registry
    (:mod:`llmcli.models`) reads. Subclasses are dataclasses."""

    #: The model family (a ``Family.name`` of ``llmcli.models.FAMILIES``).
    family: ClassVar[str]
    #: ``model_type`` and ``architectures`` values of this family.
    model_types: ClassVar[tuple[str, ...]]
    architectures: ClassVar[tuple[str, ...]]
    #: config.json keys that change the maths and are not implemented → the value that is
    #: (any other value is an error naming the key).
    unimplemented: ClassVar[dict[str, Any]] = {}

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json"):
        """Build from a parsed ``config.json`` dict; unknown keys are ignored, as transformers
        ignores them, except the :attr:`unimplemented` ones.

        Raises:
            LLMCLIError: the ``model_type``/``architectures`` are not this family's, or a
                field is invalid or not implemented.
        """
        model_type = raw.get("model_type")
        archs = raw.get("architectures") or []
        if model_type is not None and model_type not in cls.model_types:
            raise LLMCLIError(f"{source}: model_type {model_type!r} is not a {cls.family} model "
                              f"(this family reads: {', '.join(cls.model_types)})")
        if model_type is None and archs and not set(archs) & set(cls.architectures):
            raise LLMCLIError(f"{source}: architectures {archs} is not a {cls.family} model")
        if model_type is None and not archs:
            raise LLMCLIError(f"{source}: neither model_type nor architectures is set; "
                              "cannot tell which model this is")
        for key, ok in cls.unimplemented.items():
            if key in raw and raw[key] not in (ok, None):
                raise LLMCLIError(f"{source}: {key} = {raw[key]!r} is not implemented "
                                  f"(llmcli's {cls.family} supports {key} = {ok!r} only)")
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: v for k, v in raw.items() if k in names}
        cls._read_special(raw, kwargs)
        kwargs["model_type"] = model_type or cls.model_types[0]
        if kwargs.get("torch_dtype") is None and isinstance(raw.get("dtype"), str):
            kwargs["torch_dtype"] = raw["dtype"]  # transformers 5 renamed the key
        try:
            return cls(**kwargs, source=source)
        except TypeError as exc:  # pragma: no cover - defensive
            raise LLMCLIError(f"{source}: {exc}") from None

    @classmethod
    def _read_special(cls, raw: dict[str, Any], kwargs: dict[str, Any]) -> None:
        """Fill ``kwargs`` from keys that need more than a copy (renames, nested dicts)."""

    @classmethod
    def from_file(cls, path: Path):
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

    # ------------------------------------------------------------------ checks
    def _normalize_eos(self) -> None:
        if isinstance(self.eos_token_id, int) and not isinstance(self.eos_token_id, bool):
            self.eos_token_id = [self.eos_token_id]
        elif self.eos_token_id is None:
            self.eos_token_id = []

    def _check_common(self, source: str) -> None:
        """The checks every family needs: sizes are positive integers, the head size divides,
        EOS ids are integers, the activation is implemented.

        Raises:
            LLMCLIError: naming ``source`` and the offending field.
        """
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise LLMCLIError(f"{source}: {self._field_name(name)} must be a positive integer, "
                                  f"got {value!r}")
        if not isinstance(self.eos_token_id, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.eos_token_id):
            raise LLMCLIError(f"{source}: eos_token_id must be an integer or a list of integers, "
                              f"got {self.eos_token_id!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise LLMCLIError(
                f"{source}: num_attention_heads ({self.num_attention_heads}) is not a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})")

    def _field_name(self, name: str) -> str:
        """The config.json key of a generic name (GPT-2 renames them)."""
        return name

    def layer_window(self, index: int) -> int | None:
        """The sliding attention window of block ``index``, or None (full causal attention)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that both llmcli and transformers load (the family's field
        names; ``eos_token_id`` an int when there is one; unset optional fields left out)."""
        out = asdict(self)
        out["architectures"] = [self.architectures[0]]
        out["eos_token_id"] = self.eos_token_id[0] if len(self.eos_token_id) == 1 else self.eos_token_id
        for key in ("rope_scaling", "torch_dtype"):
            if key in out and out[key] is None:
                del out[key]
        return out


def _check_rope(source: str, theta: Any, scaling: Any) -> None:
    """RoPE fields: a positive theta and an implemented, complete scaling."""
    if not _is_number(theta) or theta <= 0:
        raise LLMCLIError(f"{source}: rope_theta must be a positive number, got {theta!r}")
    if scaling is not None and not isinstance(scaling, dict):
        raise LLMCLIError(f"{source}: rope_scaling must be an object, got {scaling!r}")
    rope_type = _rope_type(scaling)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise LLMCLIError(f"{source}: rope_scaling type {rope_type!r} is not supported "
                          f"(supported: {', '.join(sorted(SUPPORTED_ROPE_TYPES))})")
    if rope_type in ("linear", "llama3"):
        for key in ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings"):
            if key == "factor" or (rope_type == "llama3" and key in scaling):
                value = scaling.get(key)
                if not _is_number(value) or value <= 0:
                    raise LLMCLIError(f"{source}: rope_scaling of type {rope_type!r} "
                                      f"needs a positive number {key!r}, got {value!r}")
        if rope_type == "llama3" and (scaling.get("high_freq_factor", 4.0)
                                      <= scaling.get("low_freq_factor", 1.0)):
            raise LLMCLIError(f"{source}: rope_scaling needs high_freq_factor > low_freq_factor")


def _rope_type(scaling: dict | None) -> str:
    if not scaling:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))


def _read_rope_parameters(raw: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """transformers 5 writes rope_theta and the scaling into one dict, ``rope_parameters``:
    split it into ``rope_theta`` and ``rope_scaling`` (None for the default type)."""
    rope_params = raw.get("rope_parameters")
    if isinstance(rope_params, dict):
        if "rope_theta" in rope_params:
            kwargs["rope_theta"] = rope_params["rope_theta"]
        rtype = rope_params.get("rope_type", rope_params.get("type", "default"))
        if rtype != "default":
            kwargs["rope_scaling"] = {k: v for k, v in rope_params.items()
                                      if k not in ("rope_theta", "partial_rotary_factor")}
    if kwargs.get("rope_theta") is None:
        kwargs.pop("rope_theta", None)


def _activation_check(source: str, key: str, value: Any) -> None:
    if value not in ACTIVATION_NAMES:
        raise LLMCLIError(f"{source}: {key} {value!r} is not supported "
                          f"(supported: {', '.join(ACTIVATION_NAMES)})")


# ----------------------------------------------------------------------------- Llama
@dataclass
class LlamaConfig(HFConfig):
    """Hyper-parameters of a Llama decoder (names and defaults as in transformers' ``LlamaConfig``).

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

    family: ClassVar[str] = "llama"
    model_types: ClassVar[tuple[str, ...]] = ("llama",)
    architectures: ClassVar[tuple[str, ...]] = ("LlamaForCausalLM",)
    title: ClassVar[str] = "Llama"

    def __post_init__(self, source: str = "config") -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and _is_positive_int(self.hidden_size) \
                and _is_positive_int(self.num_attention_heads):
            self.head_dim = self.hidden_size // self.num_attention_heads
        self._normalize_eos()
        self.validate(source)

    @property
    def rope_type(self) -> str:
        """``"default"``, ``"linear"`` or ``"llama3"``."""
        return _rope_type(self.rope_scaling)

    @classmethod
    def _read_special(cls, raw: dict[str, Any], kwargs: dict[str, Any]) -> None:
        _read_rope_parameters(raw, kwargs)

    def validate(self, source: str = "config") -> None:
        """Check that the numbers describe a model we can build.

        Raises:
            LLMCLIError: naming ``source`` and the offending field.
        """
        self._check_common(source)
        if not _is_number(self.rms_norm_eps) or self.rms_norm_eps <= 0:
            raise LLMCLIError(f"{source}: rms_norm_eps must be a positive number, "
                              f"got {self.rms_norm_eps!r}")
        if self.head_dim % 2:
            raise LLMCLIError(f"{source}: head_dim must be even for RoPE, got {self.head_dim}")
        if self.hidden_act != "silu":
            raise LLMCLIError(f"{source}: hidden_act {self.hidden_act!r} is not supported "
                              f"({self.title} uses 'silu')")
        _check_rope(source, self.rope_theta, self.rope_scaling)

    def _attention_words(self, extra: str = "") -> str:
        H, K = self.num_attention_heads, self.num_key_value_heads
        return (f"{H} heads, {K} key/value heads ({attention_kind(H, K)}), "
                f"head_dim {self.head_dim}{extra}")

    def architecture(self) -> Architecture:
        """What this model computes, in words."""
        bias = ", q/k/v/o biases" if self.attention_bias else ""
        return self._llama_architecture(self._attention_words(bias))

    def _llama_architecture(self, attention: str) -> Architecture:
        return Architecture(
            family=self.title, norm=f"RMSNorm, eps {self.rms_norm_eps:g}",
            position=f"RoPE on queries and keys, theta {self.rope_theta:g}, scaling {self.rope_type}",
            attention=attention,
            mlp=f"SwiGLU, intermediate size {self.intermediate_size}"
                + (" (with biases)" if getattr(self, "mlp_bias", False) else ""),
            residual="pre-norm, serial: h = x + attn(norm(x)); x = h + mlp(norm(h))",
            position_note=ROPE_POSITION_NOTE, token_embedding="model.embed_tokens",
            layers="model.layers", attention_module="self_attn", mlp_module="mlp",
            final_norm="model.norm", lm_head="lm_head")



# ----------------------------------------------------------------------------- Mistral
@dataclass
class MistralConfig(LlamaConfig):
    """Mistral (Jiang et al. 2023, "Mistral 7B"): Llama with sliding-window attention, each
    position attending to its last ``sliding_window`` positions (None: all of them); no
    biases. Defaults as transformers' ``MistralConfig``."""

    vocab_size: int = 32000
    intermediate_size: int = 14336
    num_key_value_heads: int | None = 8
    max_position_embeddings: int = 4096 * 32
    sliding_window: int | None = 4096
    model_type: str = "mistral"

    family: ClassVar[str] = "mistral"
    model_types: ClassVar[tuple[str, ...]] = ("mistral",)
    architectures: ClassVar[tuple[str, ...]] = ("MistralForCausalLM",)
    title: ClassVar[str] = "Mistral"

    def __post_init__(self, source: str = "config") -> None:
        self.attention_bias = self.mlp_bias = False   # not Mistral fields: transformers ignores them
        super().__post_init__(source)
        if self.sliding_window is not None and not _is_positive_int(self.sliding_window):
            raise LLMCLIError(f"{source}: sliding_window must be a positive integer or null, "
                              f"got {self.sliding_window!r}")

    def layer_window(self, index: int) -> int | None:
        return self.sliding_window

    def architecture(self) -> Architecture:
        window = (f", sliding window {self.sliding_window}" if self.sliding_window is not None
                  else "")
        return self._llama_architecture(self._attention_words(window))


# ----------------------------------------------------------------------------- Qwen2, Qwen3
LAYER_TYPES = ("full_attention", "sliding_attention")


def _qwen_layer_types(cfg, source: str) -> None:
    """transformers' Qwen2/Qwen3 rule: ``sliding_window`` only with ``use_sliding_window``;
    without ``layer_types``, blocks from ``max_window_layers`` on slide."""
    if not cfg.use_sliding_window:
        cfg.sliding_window = None
    if cfg.sliding_window is not None and not _is_positive_int(cfg.sliding_window):
        raise LLMCLIError(f"{source}: sliding_window must be a positive integer or null, "
                          f"got {cfg.sliding_window!r}")
    if cfg.layer_types is None:
        cfg.layer_types = ["sliding_attention" if cfg.sliding_window is not None
                           and i >= cfg.max_window_layers else "full_attention"
                           for i in range(cfg.num_hidden_layers)]
    if (not isinstance(cfg.layer_types, list) or len(cfg.layer_types) != cfg.num_hidden_layers
            or any(t not in LAYER_TYPES for t in cfg.layer_types)):
        raise LLMCLIError(f"{source}: layer_types must list {cfg.num_hidden_layers} of "
                          f"{', '.join(LAYER_TYPES)}, got {cfg.layer_types!r}")


def _qwen_window_words(cfg) -> str:
    sliding = [i for i, t in enumerate(cfg.layer_types) if t == "sliding_attention"]
    if cfg.sliding_window is None or not sliding:
        return ""
    which = "all blocks" if len(sliding) == cfg.num_hidden_layers else \
        f"blocks {sliding[0]}-{sliding[-1]}" if sliding == list(range(sliding[0], sliding[-1] + 1)) \
        else "blocks " + ",".join(map(str, sliding))
    return f", sliding window {cfg.sliding_window} in {which}"


@dataclass
class Qwen2Config(LlamaConfig):
    """Qwen2 / Qwen2.5 (Qwen team 2024): Llama with biases on the q, k and v projections
    (none on o_proj) and optional sliding windows per block. Defaults as transformers'
    ``Qwen2Config`` (which has no bias fields: ``attention_bias``/``mlp_bias`` are ignored)."""

    vocab_size: int = 151936
    intermediate_size: int = 22016
    num_key_value_heads: int | None = 32
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    model_type: str = "qwen2"
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    layer_types: list[str] | None = None

    family: ClassVar[str] = "qwen2"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2",)
    architectures: ClassVar[tuple[str, ...]] = ("Qwen2ForCausalLM",)
    title: ClassVar[str] = "Qwen2"

    def __post_init__(self, source: str = "config") -> None:
        self.attention_bias = self.mlp_bias = False   # the q/k/v biases are always there
        super().__post_init__(source)
        _qwen_layer_types(self, source)

    def layer_window(self, index: int) -> int | None:
        return self.sliding_window if self.layer_types[index] == "sliding_attention" else None

    def architecture(self) -> Architecture:
        return self._llama_architecture(self._attention_words(", q/k/v biases" + _qwen_window_words(self)))


@dataclass
class Qwen3Config(LlamaConfig):
    """Qwen3 (Qwen team 2025): Llama with an RMSNorm over each query and key head
    (``q_norm``, ``k_norm``, before RoPE), an explicit ``head_dim`` (default 128, not
    hidden_size / heads), biases on q/k/v/o when ``attention_bias``, and optional sliding
    windows per block. Defaults as transformers' ``Qwen3Config``."""

    vocab_size: int = 151936
    intermediate_size: int = 22016
    num_key_value_heads: int | None = 32
    head_dim: int | None = 128
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    model_type: str = "qwen3"
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    layer_types: list[str] | None = None

    family: ClassVar[str] = "qwen3"
    model_types: ClassVar[tuple[str, ...]] = ("qwen3",)
    architectures: ClassVar[tuple[str, ...]] = ("Qwen3ForCausalLM",)
    title: ClassVar[str] = "Qwen3"

    def __post_init__(self, source: str = "config") -> None:
        self.mlp_bias = False
        super().__post_init__(source)
        _qwen_layer_types(self, source)

    def layer_window(self, index: int) -> int | None:
        return self.sliding_window if self.layer_types[index] == "sliding_attention" else None

    def architecture(self) -> Architecture:
        bias = ", q/k/v/o biases" if self.attention_bias else ""
        return self._llama_architecture(self._attention_words(
            bias + ", RMSNorm on each query and key head (q_norm, k_norm)" + _qwen_window_words(self)))


# ----------------------------------------------------------------------------- GPT-2
@dataclass
class GPT2Config(HFConfig):
    """GPT-2 (Radford et al. 2019): learned position embeddings added to the token
    embeddings, pre-norm LayerNorm blocks, GELU MLP. Field names and defaults as
    transformers' ``GPT2Config``; the generic names (``hidden_size``...) are properties.

    ``n_inner`` None means 4 × ``n_embd``; ``n_positions`` is the context length.
    ``reorder_and_upcast_attn`` only changes 16-bit rounding (transformers' eager attention
    computes the scores in float32 then) and is accepted; dropout rates are training-only.
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: list[int] = field(default_factory=lambda: [50256])
    model_type: str = "gpt2"
    torch_dtype: str | None = None
    source: InitVar[str] = "config"

    family: ClassVar[str] = "gpt2"
    model_types: ClassVar[tuple[str, ...]] = ("gpt2",)
    architectures: ClassVar[tuple[str, ...]] = ("GPT2LMHeadModel",)
    title: ClassVar[str] = "GPT-2"
    unimplemented: ClassVar[dict[str, Any]] = {"add_cross_attention": False}

    def __post_init__(self, source: str = "config") -> None:
        self._normalize_eos()
        self._check_common(source)
        if self.n_embd % self.n_head:
            raise LLMCLIError(f"{source}: n_embd ({self.n_embd}) is not a multiple of "
                              f"n_head ({self.n_head})")
        if not _is_number(self.layer_norm_epsilon) or self.layer_norm_epsilon <= 0:
            raise LLMCLIError(f"{source}: layer_norm_epsilon must be a positive number, "
                              f"got {self.layer_norm_epsilon!r}")
        _activation_check(source, "activation_function", self.activation_function)

    _NAMES: ClassVar[dict[str, str]] = {
        "hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
        "num_key_value_heads": "n_head", "max_position_embeddings": "n_positions",
        "intermediate_size": "n_inner", "head_dim": "n_embd / n_head"}

    def _field_name(self, name: str) -> str:
        return self._NAMES.get(name, name)

    hidden_size = property(lambda self: self.n_embd)
    num_hidden_layers = property(lambda self: self.n_layer)
    num_attention_heads = property(lambda self: self.n_head)
    num_key_value_heads = property(lambda self: self.n_head)
    max_position_embeddings = property(lambda self: self.n_positions)
    head_dim = property(lambda self: self.n_embd // self.n_head)
    intermediate_size = property(lambda self: self.n_inner if self.n_inner is not None
                                 else 4 * self.n_embd)

    def architecture(self) -> Architecture:
        act = {"gelu_new": "GELU (tanh approximation, gelu_new)", "gelu": "GELU (exact)"}.get(
            self.activation_function, self.activation_function)
        scale = ("1/sqrt(head_dim)" if self.scale_attn_weights else "no scaling") + \
            (" / (layer index + 1)" if self.scale_attn_by_inverse_layer_idx else "")
        return Architecture(
            family=self.title, norm=f"LayerNorm with bias, eps {self.layer_norm_epsilon:g}",
            position=f"learned absolute position embedding (transformer.wpe, {self.n_positions} "
                     "positions) added to the token embedding",
            attention=f"{self.n_head} heads ({attention_kind(self.n_head, self.n_head)}), "
                      f"head_dim {self.head_dim}, fused q/k/v (c_attn) with biases, "
                      f"scores scaled by {scale}",
            mlp=f"{act}: c_proj(act(c_fc(x))) with biases, intermediate size {self.intermediate_size}",
            residual="pre-norm, serial: h = x + attn(ln_1(x)); x = h + mlp(ln_2(h))",
            position_note=("Position is added to the embedding: the input to block 0 is the "
                           "token's row of transformer.wte plus the position's row of "
                           "transformer.wpe (a learned table, one row per position up to "
                           f"{self.n_positions}); attention itself does not see positions."),
            token_embedding="transformer.wte", position_embedding="transformer.wpe",
            layers="transformer.h", attention_module="attn", mlp_module="mlp",
            final_norm="transformer.ln_f", lm_head="lm_head")


# ----------------------------------------------------------------------------- GPT-NeoX
@dataclass
class GPTNeoXConfig(HFConfig):
    """GPT-NeoX / Pythia (Black et al. 2022; Biderman et al. 2023): LayerNorm blocks, RoPE on
    the first ``rotary_pct`` of each head's dims, a GELU MLP, and (``use_parallel_residual``)
    attention and MLP computed in parallel from the same input. Field names and defaults as
    transformers' ``GPTNeoXConfig``; ``rotary_pct``/``rotary_emb_base`` are read from
    ``rope_parameters`` (``partial_rotary_factor``, ``rope_theta``) when it is there."""

    vocab_size: int = 50432
    hidden_size: int = 6144
    num_hidden_layers: int = 44
    num_attention_heads: int = 64
    intermediate_size: int = 24576
    hidden_act: str = "gelu"
    max_position_embeddings: int = 2048
    layer_norm_eps: float = 1e-5
    rotary_pct: float = 0.25
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    use_parallel_residual: bool = True
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 0
    eos_token_id: list[int] = field(default_factory=lambda: [2])
    model_type: str = "gpt_neox"
    torch_dtype: str | None = None
    source: InitVar[str] = "config"

    family: ClassVar[str] = "gpt_neox"
    model_types: ClassVar[tuple[str, ...]] = ("gpt_neox",)
    architectures: ClassVar[tuple[str, ...]] = ("GPTNeoXForCausalLM",)
    title: ClassVar[str] = "GPT-NeoX"

    @classmethod
    def _read_special(cls, raw: dict[str, Any], kwargs: dict[str, Any]) -> None:
        # transformers: rope_parameters = rope_scaling or rope_parameters; then rope_theta and
        # partial_rotary_factor default to the legacy rotary_emb_base and rotary_pct
        params = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
        if not isinstance(params, dict):
            params = {}
        kwargs.pop("rope_scaling", None)
        kwargs["rope_theta"] = params.get("rope_theta", raw.get("rotary_emb_base", 10000.0))
        kwargs["rotary_pct"] = params.get("partial_rotary_factor", raw.get("rotary_pct", 0.25))
        rtype = params.get("rope_type", params.get("type", "default"))
        if rtype != "default":
            kwargs["rope_scaling"] = {k: v for k, v in params.items()
                                      if k not in ("rope_theta", "partial_rotary_factor")}

    def __post_init__(self, source: str = "config") -> None:
        self._normalize_eos()
        self._check_common(source)
        if self.hidden_size % self.num_attention_heads:
            raise LLMCLIError(f"{source}: hidden_size ({self.hidden_size}) is not a multiple of "
                              f"num_attention_heads ({self.num_attention_heads})")
        if not _is_number(self.layer_norm_eps) or self.layer_norm_eps <= 0:
            raise LLMCLIError(f"{source}: layer_norm_eps must be a positive number, "
                              f"got {self.layer_norm_eps!r}")
        if not _is_number(self.rotary_pct) or not 0 < self.rotary_pct <= 1:
            raise LLMCLIError(f"{source}: rotary_pct (partial_rotary_factor) must be in (0, 1], "
                              f"got {self.rotary_pct!r}")
        if self.rotary_dim % 2 or self.rotary_dim == 0:
            raise LLMCLIError(f"{source}: rotary_pct {self.rotary_pct:g} of head size "
                              f"{self.head_dim} gives {self.rotary_dim} rotary dims; RoPE needs an "
                              "even, positive number")
        _activation_check(source, "hidden_act", self.hidden_act)
        _check_rope(source, self.rope_theta, self.rope_scaling)

    num_key_value_heads = property(lambda self: self.num_attention_heads)
    head_dim = property(lambda self: self.hidden_size // self.num_attention_heads)

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`HFConfig.to_dict`, RoPE written both ways: ``rope_parameters``
        (transformers 5) and the legacy ``rotary_pct``/``rotary_emb_base``."""
        out = super().to_dict()
        theta = out.pop("rope_theta")
        out["rotary_emb_base"] = theta
        out["rope_parameters"] = {"rope_type": self.rope_type, "rope_theta": theta,
                                  "partial_rotary_factor": self.rotary_pct, **(self.rope_scaling or {})}
        return out

    @property
    def rotary_dim(self) -> int:
        """Rotated dims per head: ``int(head_dim × rotary_pct)`` (transformers' ``rotary_ndims``)."""
        return int(self.head_dim * self.rotary_pct)

    @property
    def rope_type(self) -> str:
        return _rope_type(self.rope_scaling)

    def architecture(self) -> Architecture:
        H = self.num_attention_heads
        residual = ("pre-norm, parallel: x = x + attn(input_layernorm(x)) + "
                    "mlp(post_attention_layernorm(x))" if self.use_parallel_residual else
                    "pre-norm, serial: h = x + attn(input_layernorm(x)); "
                    "x = h + mlp(post_attention_layernorm(h))")
        return Architecture(
            family=self.title, norm=f"LayerNorm with bias, eps {self.layer_norm_eps:g}",
            position=f"partial RoPE: the first {self.rotary_dim} of {self.head_dim} dims of each "
                     f"query and key head (rotary_pct {self.rotary_pct:g}), theta "
                     f"{self.rope_theta:g}, scaling {self.rope_type}",
            attention=f"{H} heads ({attention_kind(H, H)}), head_dim {self.head_dim}, fused "
                      "q/k/v (query_key_value)" + (" with biases" if self.attention_bias else ""),
            mlp=f"{self.hidden_act.upper() if self.hidden_act == 'gelu' else self.hidden_act}: "
                f"dense_4h_to_h(act(dense_h_to_4h(x))) with biases, intermediate size "
                f"{self.intermediate_size}",
            residual=residual,
            position_note=("Position is not added to the embedding: RoPE rotates the first "
                           f"{self.rotary_dim} dims of each query and key head by an angle "
                           "proportional to its position inside every attention layer (the "
                           f"other {self.head_dim - self.rotary_dim} dims carry no position); "
                           "the embedding row of a token is the same at every position."),
            token_embedding="gpt_neox.embed_in", layers="gpt_neox.layers",
            attention_module="attention", mlp_module="mlp",
            final_norm="gpt_neox.final_layer_norm", lm_head="embed_out")


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
