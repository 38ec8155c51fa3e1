"""Tokenize and detokenize, with each token's exact bytes and a round-trip check.

Works on any :class:`llmcli.tokenizer.Tokenizer` (sentencepiece or tokenizer.json) and never
imports torch.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from llmcli.errors import UsageError

#: Token kinds (:meth:`llmcli.tokenizer.Tokenizer.token_kind`).
KIND_NORMAL, KIND_CONTROL, KIND_BYTE, KIND_UNKNOWN = "normal", "control", "byte", "unknown"
KIND_SPECIAL = "special"

#: What sentencepiece decodes an unknown piece to.
UNK_SURFACE = "\u2047"


@dataclass
class TokenRow:
    """One token: its ``position`` in the sequence, ``id``, vocabulary ``piece`` as stored
    (sentencepiece: ``▁`` marks a space, byte-fallback pieces look like ``<0xE2>``; byte-level
    BPE: ``Ġ`` is a space, ``Ċ`` a newline, ``ðŁ`` the first bytes of an emoji), the exact
    ``bytes`` it stands for (``b""`` for control, special and unknown tokens), and its
    ``kind``."""

    position: int
    id: int
    piece: str
    bytes: bytes
    kind: str

    def to_dict(self) -> dict:
        """JSON form: ``bytes`` is a list of ints (0–255), ``hex`` the same bytes as hex."""
        return {"position": self.position, "id": self.id, "piece": self.piece,
                "bytes": list(self.bytes), "hex": self.bytes.hex(), "kind": self.kind}


@dataclass
class TokenizeResult:
    """``text`` split into ``tokens``; ``decoded`` is ``decode(encode(text))``.

    ``roundtrip_notes`` explains any difference between ``decoded`` and ``text`` (empty when
    they are equal); ``normalized`` is what the tokenizer's normalizer made of the text
    (sentencepiece: ``▁`` for spaces), the usual cause of a difference. ``special``: special
    tokens typed in the text were parsed (``--special``).
    """

    text: str
    add_bos: bool
    tokens: list[TokenRow]
    decoded: str
    normalized: str
    roundtrip_notes: list[str] = field(default_factory=list)
    vocab_size: int = 0
    kind: str = "sentencepiece"   # the tokenizer's kind
    special: bool = False
    context_length: int | None = None  # the model's, when its config.json could be read

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    @property
    def count(self) -> int:
        return len(self.tokens)

    @property
    def characters(self) -> int:
        return len(self.text)

    @property
    def num_bytes(self) -> int:
        return len(self.text.encode("utf-8", errors="surrogatepass"))

    @property
    def roundtrip_ok(self) -> bool:
        return self.decoded == self.text

    def to_dict(self) -> dict:
        return {"text": self.text, "add_bos": self.add_bos, "count": self.count,
                "characters": self.characters, "utf8_bytes": self.num_bytes,
                "context_length": self.context_length,
                "fits_context": None if self.context_length is None else self.count <= self.context_length,
                "tokens": [t.to_dict() for t in self.tokens],
                "ids": self.ids,
                "roundtrip": {"ok": self.roundtrip_ok, "decoded": self.decoded,
                              "normalized": self.normalized, "notes": self.roundtrip_notes},
                "vocab_size": self.vocab_size, "tokenizer": self.kind, "special": self.special}


@dataclass
class DetokenizeResult:
    """``ids`` decoded to ``text``, with each token's row."""

    ids: list[int]
    tokens: list[TokenRow]
    text: str

    def to_dict(self) -> dict:
        return {"ids": self.ids, "text": self.text, "count": len(self.ids),
                "tokens": [t.to_dict() for t in self.tokens]}


def token_kind(tokenizer, token_id: int) -> str:
    """``normal``, ``byte``, ``control``, ``special`` or ``unknown``
    (:meth:`llmcli.tokenizer.Tokenizer.token_kind`)."""
    return tokenizer.token_kind(token_id)


def token_rows(tokenizer, ids: list[int]) -> list[TokenRow]:
    """A :class:`TokenRow` per id (ids must be inside the vocabulary)."""
    return [TokenRow(i, t, tokenizer.piece(t), tokenizer.token_bytes(t), token_kind(tokenizer, t))
            for i, t in enumerate(ids)]


def tokenize_text(tokenizer, text: str, add_bos: bool | None = None,
                  special: bool = False) -> TokenizeResult:
    """Encode ``text`` exactly as the model is fed: the tokenizer's own special tokens when
    ``add_bos`` is ``None`` (:attr:`~llmcli.tokenizer.Tokenizer.add_bos`), BOS first when
    ``True``, none when ``False``; special tokens typed in ``text`` parsed when ``special``.
    ``decoded`` is the decode of the text's own tokens (without the ones the tokenizer adds),
    keeping special tokens when they were parsed, so that a parsed ``<|im_end|>``
    round-trips. ``add_bos`` in the result says whether a BOS was put first."""
    ids = tokenizer.encode(text, add_bos=add_bos, special=special)
    body = ids if add_bos is False else tokenizer.encode(text, add_bos=False, special=special)
    added = len(ids) > len(body) and tokenizer.bos_id is not None and ids[0] == tokenizer.bos_id
    decoded = tokenizer.decode(body, skip_special=not special)
    normalized = tokenizer.normalize(text)
    unknown = sum(1 for i in ids if tokenizer.token_kind(i) == KIND_UNKNOWN)
    return TokenizeResult(text=text, add_bos=added, tokens=token_rows(tokenizer, ids),
                          decoded=decoded, normalized=normalized,
                          roundtrip_notes=explain_roundtrip(text, decoded, normalized, unknown,
                                                            kind=tokenizer.kind),
                          vocab_size=tokenizer.vocab_size, kind=tokenizer.kind, special=special)


def explain_roundtrip(text: str, decoded: str, normalized: str = "", unknown: int = 0,
                      kind: str = "sentencepiece") -> list[str]:
    """Human-readable reasons why ``decoded`` differs from ``text`` (``[]`` when equal).

    sentencepiece normalizes text before splitting it (e.g. NFKC, collapsing and trimming
    spaces, depending on how the tokenizer was trained); decoding cannot undo that. Pieces
    outside the vocabulary (without byte fallback) become ``<unk>`` and decode as ``⁇``.
    A tokenizer.json may normalize too (Qwen: NFC, which composes combining marks; BERT:
    lower case, accents stripped); ``kind`` (:attr:`llmcli.tokenizer.Tokenizer.kind`) picks
    the explanations that apply.
    """
    if decoded == text:
        return []
    if kind != "sentencepiece":
        return _explain_generic(text, decoded, normalized, unknown)
    notes: list[str] = []
    changed = [(c, unicodedata.normalize("NFKC", c)) for c in dict.fromkeys(text)
               if unicodedata.normalize("NFKC", c) != c and c not in decoded]
    if changed:
        shown = ", ".join(f"{a!r}→{b!r}" for a, b in changed[:6])
        more = f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""
        notes.append(f"the normalizer replaced compatibility characters (NFKC): {shown}{more}")
    body = text.strip(" ")
    plain = decoded.replace(f" {UNK_SURFACE} ", UNK_SURFACE)  # spaces around ⁇ come from decode
    if text.startswith(" ") and not plain.startswith(" "):
        notes.append("leading spaces were removed by the normalizer (remove_extra_whitespaces)")
    if text.endswith(" ") and not plain.endswith(" "):
        notes.append("trailing spaces were removed by the normalizer (remove_extra_whitespaces)")
    if re.search("  ", body) and not re.search("  ", plain):
        notes.append("runs of spaces were collapsed to one by the normalizer (remove_extra_whitespaces)")
    if unknown:
        notes.append(f"{unknown} piece(s) are not in the vocabulary (no byte fallback): they became "
                     f"<unk> and decode as {UNK_SURFACE!r}")
    if normalized:
        surface = normalized.replace("\u2581", " ")
        if surface != decoded and surface.startswith(" "):
            surface = surface[1:]  # the dummy prefix sentencepiece adds and decode removes
        if surface == decoded and not unknown:
            notes.append("decode(encode(text)) equals the normalizer's output: the text was "
                         "normalized before it was split, and decoding cannot undo that")
    i = next((n for n, (a, b) in enumerate(zip(text, decoded)) if a != b), min(len(text), len(decoded)))
    notes.append(f"first difference at character {i}: {text[i:i + 12]!r} became {decoded[i:i + 12]!r}")
    return notes


def _explain_generic(text: str, decoded: str, normalized: str, unknown: int) -> list[str]:
    """:func:`explain_roundtrip` for a tokenizer.json."""
    notes: list[str] = []
    if normalized and normalized != text and decoded == normalized:
        forms = [f for f in ("NFC", "NFKC", "NFD", "NFKD") if unicodedata.normalize(f, text) == normalized]
        how = f" ({forms[0]})" if forms else ""
        notes.append(f"the tokenizer's normalizer changed the text{how} before it was split, and "
                     "decoding cannot undo that")
    if unknown:
        notes.append(f"{unknown} piece(s) are not in the vocabulary: they became the unknown token")
    i = next((n for n, (a, b) in enumerate(zip(text, decoded)) if a != b), min(len(text), len(decoded)))
    notes.append(f"first difference at character {i}: {text[i:i + 12]!r} became {decoded[i:i + 12]!r}")
    return notes


def parse_ids(words: list[str]) -> list[int]:
    """Token ids from words such as ``["1", "450,", "[22]"]`` (spaces, commas and brackets
    separate ids, so ``tokenize --ids`` and ``tokenize --json``'s ``ids`` both parse).

    Raises:
        UsageError: a word is not an integer (naming the ``ID`` argument).
    """
    ids: list[int] = []
    for word in words:
        for part in re.split(r"[\s,\[\]]+", word):
            if not part:
                continue
            try:
                ids.append(int(part))
            except ValueError:
                raise UsageError(f"ID: {part!r} is not a token id (an integer)") from None
    return ids


def detokenize_ids(tokenizer, ids: list[int], special: bool = False) -> DetokenizeResult:
    """Decode ``ids`` to text; control/special tokens give their text (``<|im_end|>``) when
    ``special``, nothing otherwise.

    Raises:
        UsageError: an id outside ``[0, vocab_size)`` (naming the ``ID`` argument).
    """
    bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
    if bad:
        raise UsageError(f"ID: token id {bad[0]} is not in the vocabulary (0..{tokenizer.vocab_size - 1})"
                         + (f"; {len(bad) - 1} more unknown id(s)" if len(bad) > 1 else ""))
    return DetokenizeResult(ids=list(ids), tokens=token_rows(tokenizer, ids), text=tokenizer.decode(ids, skip_special=not special))
