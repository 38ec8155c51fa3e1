"""Tokenizers: one interface (:class:`Tokenizer`), two kinds behind it.

* ``sentencepiece`` — a sentencepiece ``tokenizer.model`` (:mod:`llmcli.tokenizer.sentencepiece`);
* ``tokenizer.json`` — a Hugging Face ``tokenizer.json`` read by the ``tokenizers`` library
  (Hugging Face's Rust tokenizer; byte-level BPE as in Llama 3, Qwen, SmolLM, GPT-2, and
  anything else that library reads) (:mod:`llmcli.tokenizer.hf`).

:func:`load_tokenizer` opens the tokenizer of a model directory. When a directory holds both
``tokenizer.json`` and ``tokenizer.model``, **tokenizer.json wins**: transformers'
``AutoTokenizer`` uses the fast (``tokenizers``) tokenizer whenever ``tokenizer.json`` exists,
and that is the tokenizer the model's authors shipped last.

Callers see only the interface: pieces as the vocabulary stores them (``▁the``, ``Ġthe``,
``<|im_end|>``), the exact bytes of a token, a kind per token, and a streaming decoder
(:class:`StreamDecoder`) whose chunks add up to :meth:`Tokenizer.decode` exactly. Nothing here
imports torch, so ``llmcli tokenize`` starts fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from llmcli.errors import LLMCLIError
from llmcli.tokenizer.stream import REPLACEMENT_CHAR, StreamDecoder

__all__ = ["KINDS", "REPLACEMENT_CHAR", "SpecialTokensConfig", "StreamDecoder", "Tokenizer",
           "load_tokenizer", "read_special_config"]

#: The values :meth:`Tokenizer.token_kind` returns.
KINDS = ("normal", "byte", "control", "special", "unknown")

_MISSING = object()


@dataclass
class SpecialTokensConfig:
    """What a model directory says about special tokens, beside the tokenizer file itself.

    Attributes:
        bos_token, eos_token, unk_token, pad_token: the ``*_token`` strings of
            ``tokenizer_config.json`` (or ``special_tokens_map.json``); ``None`` when the file
            sets them to null; absent from ``present`` when no file names them.
        add_bos_token, add_eos_token: ``tokenizer_config.json``'s values, ``None`` when absent.
        config_bos_ids, config_eos_ids: ``bos_token_id``/``eos_token_id`` of
            ``generation_config.json`` then ``config.json`` (each may be an int or a list).
        present: which of those some file names.
    """

    bos_token: str | None = None
    eos_token: str | None = None
    unk_token: str | None = None
    pad_token: str | None = None
    add_bos_token: bool | None = None
    add_eos_token: bool | None = None
    config_bos_ids: list[int] = field(default_factory=list)
    config_eos_ids: list[int] = field(default_factory=list)
    present: set[str] = field(default_factory=set)


def _read_json(path: Path) -> dict:
    """``path`` parsed as a JSON object, ``{}`` when the file does not exist.

    Raises:
        LLMCLIError: the file exists but is not a JSON object.
    """
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LLMCLIError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LLMCLIError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _token_string(value, path: Path, key: str) -> str | None:
    """A special-token value of a tokenizer config: a string, null, or an AddedToken dict
    (``{"content": "<s>", ...}``, as transformers saves it)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise LLMCLIError(f"{path}: {key} must be a string, null or {{\"content\": ...}}, "
                      f"found {value!r}")


def _id_list(value, path: Path, key: str) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise LLMCLIError(f"{path}: {key} must be an integer or a list of integers, found {value!r}")
    return list(values)


def read_special_config(model_dir: Path) -> SpecialTokensConfig:
    """The special-token settings of ``model_dir``: ``tokenizer_config.json`` (falling back to
    ``special_tokens_map.json`` for the token strings), ``generation_config.json`` and
    ``config.json`` (the ids). Missing files count as empty.

    Raises:
        LLMCLIError: a file is not JSON, or a value has the wrong type.
    """
    out = SpecialTokensConfig()
    tc_path = model_dir / "tokenizer_config.json"
    stm_path = model_dir / "special_tokens_map.json"
    tc, stm = _read_json(tc_path), _read_json(stm_path)
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        for path, data in ((tc_path, tc), (stm_path, stm)):
            if key in data:
                setattr(out, key, _token_string(data[key], path, key))
                out.present.add(key)
                break
    for key in ("add_bos_token", "add_eos_token"):
        if key in tc:
            if not isinstance(tc[key], bool):
                raise LLMCLIError(f"{tc_path}: {key} must be true or false, found {tc[key]!r}")
            setattr(out, key, tc[key])
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        data = _read_json(path)
        for key, attr in (("bos_token_id", "config_bos_ids"), ("eos_token_id", "config_eos_ids")):
            for i in _id_list(data.get(key), path, key):
                if i not in getattr(out, attr):
                    getattr(out, attr).append(i)
    return out


class Tokenizer:
    """The one tokenizer interface; ``Tokenizer(path)`` opens a file by its name
    (``*.json`` → the ``tokenizer.json`` kind, anything else → sentencepiece) without reading
    the directory's configs; :func:`load_tokenizer` is the usual way in.

    Attributes:
        kind: ``"sentencepiece"`` or ``"tokenizer.json"``.
        path: the file it was read from.
        vocab_size: number of ids (``0..vocab_size-1``), added tokens included.
        bos_id, eos_id, unk_id, pad_id: the BOS/EOS/unknown/padding token ids, ``None`` when
            there is none.
        eos_ids: every id that ends generation: ``eos_id`` and every ``eos_token_id`` of
            ``generation_config.json`` and ``config.json``.
        add_bos: whether :meth:`encode` adds BOS by default (decided as transformers does; see
            the kinds).

    Raises:
        LLMCLIError: the file is missing or unreadable as its kind.
    """

    kind: str = ""
    path: Path
    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    eos_ids: list[int]
    add_bos: bool = False

    def __new__(cls, path=None, *args, **kwargs):
        if cls is Tokenizer:
            if path is not None and Path(path).suffix == ".json":
                from llmcli.tokenizer.hf import HFTokenizer
                cls = HFTokenizer
            else:
                from llmcli.tokenizer.sentencepiece import SentencePieceTokenizer
                cls = SentencePieceTokenizer
        return super().__new__(cls)

    # -- the interface (kinds implement the underscored methods) -----------------------------

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of ``text`` as the model is fed.

        Args:
            text: the text.
            add_bos: add the special tokens the tokenizer adds (BOS first); ``None`` uses
                :attr:`add_bos`; ``True`` puts BOS first even if the tokenizer adds none;
                ``False`` adds nothing.
            special: parse special-token strings in ``text`` (``<|im_end|>``, ``<s>``) as those
                tokens, like llama.cpp's ``--parse-special``; by default they are text.
        """
        raise NotImplementedError

    def decode(self, ids, skip_special: bool = True) -> str:
        """Text of ``ids``; special/control tokens decode to nothing when ``skip_special``.

        Raises:
            LLMCLIError: an id is outside ``[0, vocab_size)``.
        """
        return self._decode(self._check_ids(ids), skip_special)

    def piece(self, token_id: int) -> str:
        """The vocabulary piece of ``token_id`` as stored (``'▁the'``, ``'<0x0A>'``,
        ``'Ġthe'``, ``'Ċ'``, ``'<|im_end|>'``)."""
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes ``token_id`` stands for inside a text (``b""`` for control and
        special tokens); may be part of a UTF-8 character."""
        raise NotImplementedError

    def token_kind(self, token_id: int) -> str:
        """``"normal"``, ``"byte"`` (a byte-fallback piece), ``"control"`` (sentencepiece
        control: BOS/EOS), ``"special"`` (a special added token of tokenizer.json) or
        ``"unknown"``."""
        raise NotImplementedError

    def token_to_id(self, text: str) -> int | None:
        """The id of a vocabulary piece or special-token string, ``None`` when there is none."""
        raise NotImplementedError

    def normalize(self, text: str) -> str:
        """``text`` after the tokenizer's normaliser; ``""`` when it cannot say."""
        return ""

    def special_ids(self) -> list[int]:
        """Ids of every control/special token, ascending."""
        return [i for i in range(self.vocab_size) if self.token_kind(i) in ("control", "special")]

    def kind_counts(self) -> dict[str, int]:
        """How many ids of the vocabulary have each :meth:`token_kind` (kinds the tokenizer may
        split further, e.g. sentencepiece's ``user_defined`` and ``unused``)."""
        counts = {"normal": 0, "control" if self.kind == "sentencepiece" else "special": 0,
                  "byte": 0, "unknown": 0}
        for i in range(self.vocab_size):
            kind = self.token_kind(i)
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def stream(self, skip_special: bool = True) -> StreamDecoder:
        """A new :class:`StreamDecoder` for this tokenizer."""
        return StreamDecoder(self, skip_special=skip_special)

    # -- helpers for the kinds --------------------------------------------------------------

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        raise NotImplementedError

    def _stream_start_ok(self, token_id: int) -> bool:
        """Whether decoding may start at this token and give the same text as in the middle of
        a sequence (used by :class:`StreamDecoder` to keep its window short). Default: a normal
        token whose bytes are whole UTF-8 and do not start with whitespace."""
        if self.token_kind(token_id) != "normal":
            return False
        b = self.token_bytes(token_id)
        if not b or b[:1].isspace():
            return False
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in ids]  # also numpy/torch integers
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise LLMCLIError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        return ids

    def _set_eos_ids(self, special: SpecialTokensConfig | None) -> None:
        ids = [] if self.eos_id is None else [self.eos_id]
        for i in (special.config_eos_ids if special else []):
            if i not in ids:
                ids.append(i)
        self.eos_ids = ids


def load_tokenizer(model_dir: Path | str) -> Tokenizer:
    """The tokenizer of a model directory, with its special-token settings.

    ``tokenizer.json`` if present (transformers' fast tokenizer, the one ``AutoTokenizer``
    picks), else ``tokenizer.model`` (sentencepiece). BOS/EOS and ``add_bos`` follow
    ``tokenizer_config.json``, ``generation_config.json`` and ``config.json`` as described in
    each kind.

    Raises:
        LLMCLIError: the directory has neither file, or a file is unreadable.
    """
    model_dir = Path(model_dir)
    special = read_special_config(model_dir)
    if (model_dir / "tokenizer.json").is_file():
        from llmcli.tokenizer.hf import HFTokenizer
        return HFTokenizer(model_dir / "tokenizer.json", special)
    if (model_dir / "tokenizer.model").is_file():
        from llmcli.tokenizer.sentencepiece import SentencePieceTokenizer
        return SentencePieceTokenizer(model_dir / "tokenizer.model", special)
    raise LLMCLIError(f"{model_dir}: no tokenizer (neither tokenizer.json nor tokenizer.model)")
