"""The sentencepiece kind: a ``tokenizer.model`` read by the sentencepiece library.

Imports sentencepiece only (never torch), so ``llmcli tokenize`` starts fast.
"""

from __future__ import annotations

import re
from pathlib import Path

from llmcli.errors import LLMCLIError
from llmcli.tokenizer import SpecialTokensConfig, Tokenizer


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model (``tokenizer.model``) as the model expects to be fed.

    Text is text by default: ``<s>`` typed in a prompt is encoded as the characters ``<``,
    ``s``, ``>``, never as the control token (sentencepiece only matches user-defined symbols
    in text); ``encode(..., special=True)`` splits the text at control-piece strings first and
    encodes each stretch between them separately, as llama.cpp's ``--parse-special`` does
    (sentencepiece's dummy-prefix space then starts each stretch).

    BOS/EOS are the model's own ``bos_id``/``eos_id``; ``add_bos`` is ``tokenizer_config.json``'s
    ``add_bos_token`` when it says, else True (transformers' ``LlamaTokenizer`` default) when
    there is a BOS piece. ``eos_ids`` adds the ``eos_token_id`` of ``generation_config.json``
    and ``config.json``.

    Extra, sentencepiece-only members: ``sp`` (the ``SentencePieceProcessor``),
    :meth:`is_byte`, :meth:`is_control`, :meth:`is_unknown`.

    Raises:
        LLMCLIError: the file is missing or is not a sentencepiece model.
    """

    kind = "sentencepiece"

    def __init__(self, path: Path | str, special: SpecialTokensConfig | None = None) -> None:
        import sentencepiece as spm

        self.path = Path(path)
        if not self.path.is_file():
            raise LLMCLIError(f"{self.path}: tokenizer.model not found")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.path.read_bytes())
        except (RuntimeError, OSError) as exc:
            raise LLMCLIError(f"{self.path}: not a sentencepiece model ({exc})") from None
        self.vocab_size: int = self.sp.get_piece_size()
        bos, eos, unk = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = eos if eos >= 0 else None
        self.unk_id = unk if unk >= 0 else None
        self.pad_id: int | None = self.sp.pad_id() if self.sp.pad_id() >= 0 else None
        self.add_bos = self.bos_id is not None
        if special is not None and special.add_bos_token is not None:
            self.add_bos = special.add_bos_token and self.bos_id is not None
        self._set_eos_ids(special)
        self._control_re: re.Pattern | None = None

    # -- interface --------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of ``text``; see :meth:`Tokenizer.encode`."""
        if special:
            ids: list[int] = []
            pattern = self._control_pattern()
            pos = 0
            for m in (pattern.finditer(text) if pattern else ()):
                if m.start() > pos:
                    ids += self.sp.encode(text[pos:m.start()])
                ids.append(self.sp.piece_to_id(m.group(0)))
                pos = m.end()
            if pos < len(text):
                ids += self.sp.encode(text[pos:])
        else:
            ids = self.sp.encode(text)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def piece(self, token_id: int) -> str:
        """The vocabulary piece of ``token_id``, e.g. ``'▁the'`` or ``'<0x0A>'``."""
        return self.sp.id_to_piece(int(token_id))

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token stands for (``▁`` → space; ``<0xNN>`` → that byte;
        control and unknown tokens → ``b""``)."""
        token_id = int(token_id)
        if self.sp.is_control(token_id) or self.sp.is_unknown(token_id):
            return b""
        piece = self.sp.id_to_piece(token_id)
        if self.sp.is_byte(token_id):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def token_kind(self, token_id: int) -> str:
        """``control``, ``unknown``, ``byte`` or ``normal`` (user-defined pieces count as
        normal)."""
        token_id = int(token_id)
        if self.sp.is_control(token_id):
            return "control"
        if self.sp.is_unknown(token_id):
            return "unknown"
        if self.sp.is_byte(token_id):
            return "byte"
        return "normal"

    def token_to_id(self, text: str) -> int | None:
        """The id of the piece ``text`` (``'▁the'``, ``'<s>'``), ``None`` if not a piece."""
        i = self.sp.piece_to_id(text)
        if i == self.sp.unk_id() and text != self.sp.id_to_piece(i):
            return None
        return i

    def normalize(self, text: str) -> str:
        """``text`` after the model's normaliser (``""`` on old sentencepiece versions)."""
        try:
            return self.sp.normalize(text)
        except (AttributeError, RuntimeError, TypeError):
            return ""

    def kind_counts(self) -> dict[str, int]:
        """Pieces by sentencepiece type: ``normal``, ``control``, ``byte``, ``unknown``,
        ``user_defined``, ``unused``."""
        sp = self.sp
        counts = {"normal": 0, "control": 0, "byte": 0, "unknown": 0, "user_defined": 0, "unused": 0}
        for i in range(self.vocab_size):
            if sp.is_control(i):
                counts["control"] += 1
            elif sp.is_unknown(i):
                counts["unknown"] += 1
            elif sp.is_byte(i):
                counts["byte"] += 1
            elif sp.is_unused(i):
                counts["unused"] += 1
            elif hasattr(sp, "IsUserDefined") and sp.IsUserDefined(i):
                counts["user_defined"] += 1
            else:
                counts["normal"] += 1
        return counts

    def special_ids(self) -> list[int]:
        """Ids of the control pieces (BOS, EOS), ascending."""
        return [i for i in range(self.vocab_size) if self.sp.is_control(i)]

    # -- sentencepiece-only -----------------------------------------------------------------

    def is_byte(self, token_id: int) -> bool:
        return self.sp.is_byte(int(token_id))

    def is_control(self, token_id: int) -> bool:
        return self.sp.is_control(int(token_id))

    def is_unknown(self, token_id: int) -> bool:
        return self.sp.is_unknown(int(token_id))

    # -- helpers ----------------------------------------------------------------------------

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        """sentencepiece decodes control pieces to nothing; with ``skip_special=False`` their
        piece text (``<s>``) goes between the decodes of the stretches around them, each decoded
        on its own (so its leading ``▁`` is dropped as at a start): the inverse of
        ``encode(special=True)``, which encodes each stretch on its own."""
        if skip_special or not any(self.sp.is_control(i) for i in ids):
            return self.sp.decode(ids)
        out, run = [], []
        for i in ids:
            if self.sp.is_control(i):
                out += [self.sp.decode(run), self.sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join(out) + self.sp.decode(run)

    def _stream_start_ok(self, token_id: int) -> bool:
        """A text piece that does not begin with ``▁`` (sentencepiece drops leading whitespace
        at the start, and after a control token); not a control, unknown or byte piece."""
        return self.token_kind(token_id) == "normal" and not self.piece(token_id).startswith("\u2581")

    def _control_pattern(self) -> re.Pattern | None:
        if self._control_re is None:
            pieces = sorted({self.sp.id_to_piece(i) for i in range(self.vocab_size)
                             if self.sp.is_control(i) and self.sp.id_to_piece(i)},
                            key=len, reverse=True)
            self._control_re = re.compile("|".join(map(re.escape, pieces))) if pieces else re.compile(r"(?!)")
        return self._control_re
