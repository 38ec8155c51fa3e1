"""The ``tokenizer.json`` kind: a Hugging Face tokenizer read by the ``tokenizers`` library.

That library (Hugging Face's Rust tokenizer, the engine of transformers' fast tokenizers)
does the normalising, pre-tokenising, BPE/Unigram/WordPiece and decoding; this module adds the
special-token rules transformers applies around it, the exact bytes of a token, and a kind
per token. Imports ``tokenizers`` only (never torch).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from llmcli.errors import LLMCLIError
from llmcli.tokenizer import SpecialTokensConfig, Tokenizer

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet, char → byte: printable bytes map to themselves, the other
    68 to U+0100.. in byte order (``' '`` → ``'Ġ'``, ``'\\n'`` → ``'Ċ'``). Source: GPT-2's
    ``encoder.py`` ``bytes_to_unicode``, used unchanged by the ``tokenizers`` ByteLevel
    pre-tokenizer and decoder."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return {c: b for b, c in table.items()}


def _decoder_types(state: dict | None) -> set[str]:
    """Every decoder ``type`` in a tokenizer.json ``decoder`` (nested Sequences flattened)."""
    if not state:
        return set()
    out = {state.get("type", "")}
    for sub in state.get("decoders", []) or []:
        out |= _decoder_types(sub)
    return out


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` (any model the ``tokenizers`` library reads).

    Special tokens and BOS, as transformers ≥ 5 decides them for a directory with a
    tokenizer.json:

    * ``add_bos`` / what :meth:`encode` adds by default: exactly what the tokenizer.json
      ``post_processor`` adds (``encode(text, add_special_tokens=True)``): a
      ``TemplateProcessing`` such as ``<|begin_of_text|> $A`` adds BOS, a ``ByteLevel`` one
      (Llama 3 as in our fixtures, SmolLM2, Qwen) adds nothing. transformers ignores
      ``tokenizer_config.json``'s ``add_bos_token``/``add_eos_token`` when a tokenizer.json
      exists, and so does this class.
    * ``bos_id``/``eos_id``: the ids of ``tokenizer_config.json``'s ``bos_token``/``eos_token``
      (a string or an AddedToken dict; ``special_tokens_map.json`` when the config has none);
      when no file names one, the first ``bos_token_id``/``eos_token_id`` of
      ``generation_config.json``/``config.json``. ``eos_ids`` adds every ``eos_token_id`` of
      those two files (Llama 3 instruct ends on ``<|eot_id|>`` and ``<|end_of_text|>``).
    * Typed special tokens stay text (``encode_special_tokens``, transformers'
      ``split_special_tokens=True``) unless ``special=True``; added tokens that are not
      special (``special: false`` in ``added_tokens``) are always matched, as in transformers.
    * :meth:`decode` is the library's decode: transformers'
      ``clean_up_tokenization_spaces`` is not applied (it deletes spaces before punctuation, so
      decode would no longer give back the text).

    Raises:
        LLMCLIError: the file is missing or ``tokenizers`` cannot read it; a special token
            named in a config is not in the vocabulary.
    """

    kind = "tokenizer.json"

    def __init__(self, path: Path | str, special: SpecialTokensConfig | None = None) -> None:
        try:
            from tokenizers import Tokenizer as _RustTokenizer
        except ImportError:  # pragma: no cover - a dependency
            raise LLMCLIError("the tokenizers package is not installed (pip install tokenizers)") from None

        self.path = Path(path)
        if not self.path.is_file():
            raise LLMCLIError(f"{self.path}: tokenizer.json not found")
        try:
            self._tk = _RustTokenizer.from_file(str(self.path))
        except Exception as exc:  # the library raises plain Exception
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LLMCLIError(f"{self.path}: the tokenizers library cannot read it ({msg})") from None
        tk = self._tk
        self.vocab_size = tk.get_vocab_size(with_added_tokens=True)
        added = tk.get_added_tokens_decoder()
        self.vocab_size = max([self.vocab_size] + [i + 1 for i in added])
        self._special = {i for i, t in added.items() if t.special}
        self._added = set(added)
        unk = getattr(tk.model, "unk_token", None)
        self.unk_id = tk.token_to_id(unk) if isinstance(unk, str) else None
        if self.unk_id is None and type(tk.model).__name__ == "Unigram":
            self.unk_id = getattr(tk.model, "unk_id", None)
        special = special or SpecialTokensConfig()
        if self.unk_id is None and isinstance(special.unk_token, str):
            self.unk_id = tk.token_to_id(special.unk_token)  # transformers' unk_token_id
        if isinstance(special.pad_token, str):
            self.pad_id = tk.token_to_id(special.pad_token)
        self._byte_fallback = bool(getattr(tk.model, "byte_fallback", False))
        try:
            dec_state = json.loads(tk.decoder.__getstate__()) if tk.decoder is not None else None
        except Exception:  # pragma: no cover - every decoder pickles to JSON
            dec_state = None
        types = _decoder_types(dec_state)
        self._byte_level = "ByteLevel" in types
        self._metaspace = bool({"Metaspace", "Replace"} & types)
        self._wordpiece = "WordPiece" in types
        #: The ByteFallback decoder turns a whole run of byte pieces into U+FFFDs when the run
        #: is not valid UTF-8 (StreamDecoder holds such runs back until they end).
        self._byte_runs_fuse = "ByteFallback" in types
        self._bytes_cache: dict[int, bytes] = {}
        #: The model's type as tokenizer.json names it: ``BPE``, ``Unigram``, ``WordPiece``...
        self.model_type: str = type(tk.model).__name__

        # What the post-processor adds around a text (BOS in front, EOS behind, [CLS]...[SEP]).
        self._tk.encode_special_tokens = True
        bare = tk.encode("a", add_special_tokens=False).ids
        full = tk.encode("a", add_special_tokens=True).ids
        k = next((i for i in range(len(full)) if full[i:i + len(bare)] == bare), 0)
        self._post_prefix = full[:k]

        self.bos_id = self._special_id(special, "bos_token", special.config_bos_ids)
        self.eos_id = self._special_id(special, "eos_token", special.config_eos_ids)
        self._post_adds_bos = self.bos_id is not None and self.bos_id in self._post_prefix
        self.add_bos = self._post_adds_bos
        self._set_eos_ids(special)

    def _special_id(self, special: SpecialTokensConfig, key: str, config_ids: list[int]) -> int | None:
        if key in special.present:
            text = getattr(special, key)
            if text is None:
                return None
            i = self._tk.token_to_id(text)
            if i is None:
                raise LLMCLIError(f"{self.path.parent / 'tokenizer_config.json'}: {key} {text!r} "
                                  f"is not in the vocabulary of {self.path}")
            return i
        return next((i for i in config_ids if 0 <= i < self.vocab_size), None)

    # -- interface --------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of ``text``; see :meth:`Tokenizer.encode` (``add_bos=None`` adds what
        the post-processor adds, as transformers' ``add_special_tokens=True``)."""
        self._tk.encode_special_tokens = not special
        ids = self._tk.encode(text, add_special_tokens=add_bos is not False).ids
        if add_bos and not self._post_adds_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def piece(self, token_id: int) -> str:
        """The vocabulary piece as stored (``'Ġthe'``, ``'Ċ'``, ``'<|im_end|>'``)."""
        p = self._tk.id_to_token(int(token_id))
        return "" if p is None else p

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes of a token: byte-level pieces through GPT-2's byte alphabet
        (``Ġ`` → ``b" "``; a piece with a character outside it, as added tokens may have, as
        its UTF-8, which is what the ``tokenizers`` ByteLevel decoder does); ``▁`` → space and
        ``<0xNN>`` → that byte for Metaspace/byte-fallback tokenizers; special tokens → ``b""``.
        WordPiece (and other decoders that join tokens by context) give the piece's text
        without ``##``, which is exact only inside a word."""
        token_id = int(token_id)
        cached = self._bytes_cache.get(token_id)
        if cached is not None:
            return cached
        if token_id in self._special or token_id == self.unk_id:
            out = b""
        else:
            piece = self.piece(token_id)
            m = _BYTE_PIECE.fullmatch(piece) if self._byte_fallback else None
            if m and token_id not in self._added:
                out = bytes([int(m.group(1), 16)])
            elif self._byte_level:
                chars = byte_level_chars()
                if all(c in chars for c in piece):
                    out = bytes(chars[c] for c in piece)
                else:
                    out = piece.encode("utf-8")
            elif self._metaspace:
                out = piece.replace("\u2581", " ").encode("utf-8")
            elif self._wordpiece and piece.startswith("##"):
                out = piece[2:].encode("utf-8")
            else:
                out = piece.encode("utf-8")
        self._bytes_cache[token_id] = out
        return out

    def token_kind(self, token_id: int) -> str:
        """``unknown`` (the model's unk token), ``special`` (a special added token), ``byte``
        (a ``<0xNN>`` byte-fallback piece) or ``normal``."""
        token_id = int(token_id)
        if token_id == self.unk_id:
            return "unknown"
        if token_id in self._special:
            return "special"
        if self._byte_fallback and token_id not in self._added and _BYTE_PIECE.fullmatch(self.piece(token_id)):
            return "byte"
        return "normal"

    def token_to_id(self, text: str) -> int | None:
        """The id of a vocabulary piece or added-token string, ``None`` if there is none."""
        return self._tk.token_to_id(text)

    def special_ids(self) -> list[int]:
        """Ids of the special added tokens, ascending."""
        return sorted(self._special)

    def normalize(self, text: str) -> str:
        """``text`` after the tokenizer's normaliser (``text`` itself when it has none)."""
        n = self._tk.normalizer
        return text if n is None else n.normalize_str(text)

    # -- helpers ----------------------------------------------------------------------------

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        return self._tk.decode(ids, skip_special_tokens=skip_special)
