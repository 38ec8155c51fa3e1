"""Chat templates: find a model directory's template, render a conversation, know when a turn ends.

Pure Python (``jinja2`` and ``json``; never torch), so it can be tested and used without a model.

What transformers does, and this module does the same (read from transformers 5.x,
``tokenization_utils_base.PreTrainedTokenizerBase.from_pretrained`` / ``apply_chat_template`` /
``get_chat_template`` and ``utils/chat_template_utils.py``; reimplemented, transformers is not
imported at run time):

* **Where the template comes from.** ``chat_template.jinja`` beside the tokenizer files (the
  template named ``default``) and ``additional_chat_templates/NAME.jinja`` (named templates) take
  priority; when none of those files exists, ``tokenizer_config.json``'s ``chat_template``: a
  string, or a list of ``{"name", "template"}`` objects. With several templates, the one named
  ``default`` is used (an error when there is none; transformers picks ``tool_use`` only when
  tools are passed, which llmcli never does). ``chat_template.json`` (``{"chat_template": ...}``)
  is read only when none of the above has a template: it is the legacy file of multimodal
  *processors* (``AutoProcessor``); ``AutoTokenizer`` ignores it.
* **Special tokens the template sees.** The tokenizer's ``special_tokens_map``: ``bos_token``,
  ``eos_token``, ``unk_token``, ``sep_token``, ``pad_token``, ``cls_token``, ``mask_token`` from
  ``tokenizer_config.json`` (a plain string or an ``AddedToken`` object, of which the
  ``content`` counts; ``null`` leaves it out), overridden by the legacy
  ``special_tokens_map.json`` when ``tokenizer_config.json`` has no ``added_tokens_decoder``;
  plus model-specific ``*_token`` string entries and an ``extra_special_tokens`` object. Not
  reproduced: default tokens that a tokenizer *class* sets in Python when the files name none
  (e.g. ``LlamaTokenizer``'s ``<s>``); llmcli sees only what the files say.
* **Rendering.** ``jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True,
  lstrip_blocks=True)`` with the ``loopcontrols`` extension and a ``{% generation %}`` block tag
  (transformers' ``AssistantTracker``; here it only renders its body), transformers' ``tojson``
  filter (``json.dumps`` with ``ensure_ascii=False``, so non-ASCII text and ``<``/``>``/``&`` stay
  as they are, unlike jinja's HTML-safe filter), and the globals ``raise_exception(message)``,
  ``strftime_now(format)`` (local time), ``dict`` and ``namespace`` (which refuses
  underscore-prefixed names). The template is rendered with ``messages``, ``tools=None``,
  ``documents=None``, ``add_generation_prompt`` and the special tokens as variables (keyword
  arguments given to :meth:`ChatTemplate.render` override the special tokens, as in
  transformers). Message keys whose value is ``None`` are dropped first.

The rendered text is then encoded with special tokens parsed and no BOS added by the tokenizer
(the template writes BOS itself when the model wants one), as
``apply_chat_template(tokenize=True)`` does (``add_special_tokens=False``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

from llmcli.errors import LLMCLIError

#: The special-token attributes of transformers' tokenizers (``SPECIAL_TOKENS_ATTRIBUTES``).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")

#: Texts of tokens that end a turn in common chat formats (the end-of-generation tokens
#: llama.cpp recognises by name in ``src/llama-vocab.cpp``): ChatML (``<|im_end|>``), Llama 3
#: (``<|eot_id|>``, ``<|eom_id|>``), Phi-3 (``<|end|>``), Gemma (``<end_of_turn>``), and others.
TURN_TERMINATORS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
                    "<|endoftext|>", "<|end_of_text|>", "<EOT>", "<|return|>", "<|call|>",
                    "<end_of_utterance>", "<\uff5cend\u2581of\u2581sentence\uff5c>")

CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
LEGACY_CHAT_TEMPLATE_FILE = "chat_template.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"


@dataclass
class ChatTemplate:
    """A model's chat template with the special tokens it is rendered with.

    Attributes:
        template: the Jinja source.
        source: where it came from, for messages, e.g. ``"smol/tokenizer_config.json
            (chat_template)"`` or ``"smol/chat_template.jinja"``.
        special_tokens: template variables such as ``{"bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>"}`` (strings; absent tokens are left out).
    """

    template: str
    source: str
    special_tokens: dict[str, str] = field(default_factory=dict)
    _compiled: object = field(default=None, init=False, repr=False, compare=False)

    def compile(self):
        """The compiled ``jinja2.Template`` (compiled once).

        Raises:
            LLMCLIError: the template does not parse (the message names :attr:`source`, the
                line and jinja's reason).
        """
        if self._compiled is None:
            import jinja2

            try:
                self._compiled = _environment().from_string(self.template)
            except jinja2.TemplateSyntaxError as exc:
                raise LLMCLIError(f"{self.source}: the chat template does not parse: "
                                  f"{_one_line(exc.message or str(exc))} (line {exc.lineno})") from None
        return self._compiled

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """The conversation as the model reads it, exactly as transformers'
        ``tokenizer.apply_chat_template(messages, tokenize=False,
        add_generation_prompt=add_generation_prompt, **kwargs)``.

        Args:
            messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
            add_generation_prompt: end with the header that opens the assistant's turn.
            **kwargs: more template variables (e.g. ``enable_thinking=False`` for Qwen3);
                they override the special tokens of the same name.

        Raises:
            LLMCLIError: the conversation is empty, the template does not parse, calls
                ``raise_exception`` (the message is the template's), or fails while rendering
                (an undefined attribute, a type error, a sandbox violation).
        """
        import jinja2

        if not messages:
            raise LLMCLIError("cannot apply the chat template to an empty conversation")
        compiled = self.compile()
        chat = [{k: _plain(v) for k, v in m.items() if v is not None} for m in messages]
        variables = {**self.special_tokens, **_plain(kwargs)}
        try:
            return compiled.render(messages=chat, tools=None, documents=None,
                                   add_generation_prompt=add_generation_prompt, **variables)
        except _TemplateRaised as exc:
            raise LLMCLIError(f"{self.source}: the chat template refused the conversation: "
                              f"{_one_line(str(exc))}") from None
        except jinja2.TemplateError as exc:
            raise LLMCLIError(f"{self.source}: the chat template failed: {type(exc).__name__}: "
                              f"{_one_line(str(exc))}") from None
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, ZeroDivisionError,
                RecursionError) as exc:
            raise LLMCLIError(f"{self.source}: the chat template failed: {type(exc).__name__}: "
                              f"{_one_line(str(exc))}") from None

    def literal_text(self) -> str:
        """The template's literal strings (raw text and string constants), joined by NUL so
        that a search cannot match across two of them (transformers'
        ``_get_template_literal_text``).

        Raises:
            LLMCLIError: the template does not parse.
        """
        import jinja2.nodes

        self.compile()  # parse errors as one line
        ast = _environment().parse(self.template)
        literals = {node.data for node in ast.find_all(jinja2.nodes.TemplateData)}
        literals |= {node.value for node in ast.find_all(jinja2.nodes.Const) if isinstance(node.value, str)}
        return "\0".join(sorted(literals))


@dataclass
class EndOfTurn:
    """What ends the assistant's reply: token ids, and texts (turn markers that the tokenizer
    does not have as one token, so the model can only write them as text)."""

    ids: list[int]
    strings: list[str]


def end_of_turn(template: ChatTemplate, token_to_id: Callable[[str], int | None],
                eos_ids: Iterable[int] = ()) -> EndOfTurn:
    """The tokens (and texts) to stop a reply on.

    ``ids``: ``eos_ids`` (the model's EOS ids from ``config.json`` and
    ``generation_config.json``), the id of the template's ``eos_token``, and the id of every
    :data:`TURN_TERMINATORS` text that appears among the template's literal strings and is one
    token of the vocabulary (``token_to_id`` returns its id, else ``None``). ``strings``: the
    terminators of the template that are not a token (a template whose markers are plain text).

    Example: Llama 3's template writes ``<|eot_id|>`` after every turn while its EOS is
    ``<|end_of_text|>``: both ids are returned. Qwen3's writes ``<|im_end|>``, which is also its
    ``eos_token``.
    """
    ids = [int(i) for i in eos_ids]
    strings: list[str] = []
    eos_text = template.special_tokens.get("eos_token")
    if eos_text:
        tid = token_to_id(eos_text)
        if tid is not None:
            ids.append(int(tid))
    literals = template.literal_text()
    for text in TURN_TERMINATORS:
        if text not in literals:
            continue
        tid = token_to_id(text)
        if tid is not None:
            ids.append(int(tid))
        else:
            strings.append(text)
    return EndOfTurn(ids=list(dict.fromkeys(ids)), strings=strings)


def load_chat_template(model_dir: Path | str) -> ChatTemplate:
    """The chat template of ``model_dir`` (see the module docstring for where it is looked
    for and in which order) with the special tokens from its tokenizer files.

    Raises:
        LLMCLIError: no template anywhere (``"<dir>: has no chat template
            (tokenizer_config.json chat_template); use generate without --chat"``), a file that
            is not valid JSON or UTF-8, a ``chat_template`` entry that is neither a string nor
            a list of ``{"name", "template"}`` objects, several templates with none named
            ``default``.
    """
    found = find_chat_template(model_dir)
    if found is None:
        raise LLMCLIError(f"{model_dir}: has no chat template ({TOKENIZER_CONFIG_FILE} chat_template); "
                          "use generate without --chat")
    return found


def find_chat_template(model_dir: Path | str) -> ChatTemplate | None:
    """Like :func:`load_chat_template`, but ``None`` when the directory has no template."""
    model_dir = Path(model_dir)
    config_path = model_dir / TOKENIZER_CONFIG_FILE
    config = _read_json(config_path) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise LLMCLIError(f"{config_path}: not a JSON object")
    special = special_tokens(model_dir, config)

    templates: dict[str, tuple[str, str]] = {}  # name -> (template, source)
    jinja_path = model_dir / CHAT_TEMPLATE_FILE
    if jinja_path.is_file():
        templates["default"] = (_read_text(jinja_path), str(jinja_path))
    extra_dir = model_dir / CHAT_TEMPLATE_DIR
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.name[:-len(".jinja")]] = (_read_text(path), str(path))
    if not templates and config.get("chat_template") is not None:
        templates = _config_templates(config["chat_template"], config_path)
    if not templates:
        legacy = model_dir / LEGACY_CHAT_TEMPLATE_FILE
        if legacy.is_file():
            data = _read_json(legacy)
            value = data.get("chat_template") if isinstance(data, dict) else None
            if not isinstance(value, str):
                raise LLMCLIError(f"{legacy}: expected an object with a string \"chat_template\"")
            templates["default"] = (value, f"{legacy} (chat_template)")
    if not templates:
        return None
    if "default" not in templates:
        names = ", ".join(sorted(templates))
        raise LLMCLIError(f"{model_dir}: chat templates named {names} and none named 'default' "
                          "(the one llmcli uses)")
    template, source = templates["default"]
    return ChatTemplate(template=template, source=source, special_tokens=special)


def special_tokens(model_dir: Path | str, config: dict | None = None) -> dict[str, str]:
    """The special tokens a chat template sees, as transformers' ``special_tokens_map`` (see
    the module docstring): ``{"bos_token": "<s>", "eos_token": "</s>", ...}``.

    ``config``: the parsed ``tokenizer_config.json`` when the caller has it already.

    Raises:
        LLMCLIError: ``tokenizer_config.json`` or ``special_tokens_map.json`` is not valid JSON.
    """
    model_dir = Path(model_dir)
    if config is None:
        path = model_dir / TOKENIZER_CONFIG_FILE
        config = _read_json(path) if path.is_file() else {}
    values = dict(config) if isinstance(config, dict) else {}
    legacy = model_dir / SPECIAL_TOKENS_MAP_FILE
    if "added_tokens_decoder" not in values and legacy.is_file():
        data = _read_json(legacy)
        if isinstance(data, dict):
            values.update({k: v for k, v in data.items() if k != "extra_special_tokens"})
            if isinstance(data.get("extra_special_tokens"), dict):
                values["extra_special_tokens"] = data["extra_special_tokens"]
    out: dict[str, str] = {}
    for name in SPECIAL_TOKEN_NAMES:
        text = _token_text(values.get(name))
        if text is not None:
            out[name] = text
    # model-specific tokens: other "*_token" keys holding a plain string, and an
    # extra_special_tokens object (a list of extra tokens is not a template variable)
    for key, value in values.items():
        if key not in SPECIAL_TOKEN_NAMES and key.endswith("_token") and isinstance(value, str):
            out[key] = value
    extra = values.get("extra_special_tokens")
    if isinstance(extra, dict):
        for key, value in extra.items():
            text = _token_text(value)
            if text is not None:
                out[key] = text
    return out


def _token_text(value) -> str | None:
    """A special token's text: a string, or an ``AddedToken`` object's ``content``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _config_templates(value, path: Path) -> dict[str, tuple[str, str]]:
    source = f"{path} (chat_template)"
    if isinstance(value, str):
        return {"default": (value, source)}
    if isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                       and isinstance(t.get("template"), str) for t in value):
        return {t["name"]: (t["template"], f"{path} (chat_template '{t['name']}')") for t in value}
    raise LLMCLIError(f"{path}: chat_template must be a string or a list of "
                      "{\"name\": ..., \"template\": ...} objects")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise LLMCLIError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise LLMCLIError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LLMCLIError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _plain(value):
    """A copy made of plain JSON-like types (what transformers' ``_plain_template_data`` gives
    the template); other objects become ``"<TypeName>"``."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


class _TemplateRaised(Exception):
    """Raised by the template's ``raise_exception(message)``."""


_ENV = None


def _environment():
    """The sandboxed jinja environment transformers renders chat templates in (built once)."""
    global _ENV
    if _ENV is not None:
        return _ENV
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` renders its body (transformers uses the
        tag to mark the assistant's tokens for training masks)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise _TemplateRaised(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        """``dict(...)`` and ``dict.fromkeys(...)`` without exposing the ``dict`` type."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """jinja's ``namespace`` refusing underscore-prefixed attribute names."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace ({name!r})")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    _ENV = env
    return env


class Conversation:
    """The history of a chat and the prompt of its next turn.

    ``messages`` holds ``{"role", "content"}`` dicts: the system message (if any) first, then
    user and assistant turns. :meth:`prompt` renders the history plus a new user message with
    the assistant's header (``add_generation_prompt=True``) and encodes it; when that is too
    long for the model's context, the oldest exchanges (a user message and the replies after
    it; never the system message nor the new message) are dropped until it fits, and the
    history keeps only what was sent. The whole conversation is rendered and encoded every
    turn (the template may change earlier text, e.g. Qwen3 drops old reasoning), and nothing is
    cached between turns.
    """

    def __init__(self, template: ChatTemplate, system: str | None = None) -> None:
        self.template = template
        self.system = system
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        """Forget every turn; keep the system message."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def render(self, messages: list[dict] | None = None) -> str:
        """``messages`` (default: the history) through the template, with the assistant's
        header at the end."""
        return self.template.render(self.messages if messages is None else messages,
                                    add_generation_prompt=True)

    def prompt(self, user: str, encode: Callable[[str], list[int]], context: int,
               reserve: int = 1, context_source: str = "max_position_embeddings"
               ) -> tuple[list[int], int]:
        """Add the user message ``user`` and return ``(prompt_ids, dropped)``: the ids to feed
        the model (``encode`` of the rendered conversation) and how many old messages were
        dropped to fit.

        Args:
            encode: rendered text → ids (special tokens parsed, no BOS added).
            context: the model's context length in tokens.
            context_source: what sets ``context``, named in the error (the config.json field,
                ``n_positions`` for GPT-2, or ``-c/--ctx-size``).
            reserve: tokens to leave for the reply; old exchanges are dropped while the prompt
                plus ``reserve`` exceeds ``context`` and there is one to drop.

        Raises:
            LLMCLIError: the conversation does not fit even with every old exchange dropped
                (the message names its token count and the context), or the template fails;
                the history is then left as it was.
        """
        candidate = self.messages + [{"role": "user", "content": user}]
        dropped = 0
        while True:
            ids = encode(self.render(candidate))
            if len(ids) + reserve <= context:
                break
            start = next((i for i, m in enumerate(candidate) if m["role"] != "system"), None)
            if start is None or start >= len(candidate) - 1:  # nothing left but the new message
                break
            end = start + 1
            while end < len(candidate) - 1 and candidate[end]["role"] != "user":
                end += 1
            dropped += end - start
            candidate = candidate[:start] + candidate[end:]
        if len(ids) >= context:
            whose = "the context" if context_source.startswith("-c") else "the model's context"
            raise LLMCLIError(f"the conversation is {len(ids)} tokens with this message, which leaves no "
                              f"room for a reply in {whose} of {context} tokens ({context_source})")
        self.messages = candidate
        return ids, dropped

    def add_reply(self, text: str) -> None:
        """Record the assistant's reply to the last user message."""
        self.messages.append({"role": "assistant", "content": text})
