"""A thin layer over sentencepiece: encode with BOS, decode, and streaming decode.

This module imports sentencepiece only (never torch), so ``llmcli tokenize`` starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmcli.errors import LLMCLIError

REPLACEMENT_CHAR = "\ufffd"


class Tokenizer:
    """A sentencepiece model (``tokenizer.model``) as the model expects to be fed.

    Text is always text: ``<s>`` typed in a prompt is encoded as the characters ``<``, ``s``,
    ``>``, never as the control token (sentencepiece only matches user-defined symbols in text).

    Raises:
        LLMCLIError: the file is missing or is not a sentencepiece model.
    """

    def __init__(self, path: Path | str) -> None:
        import sentencepiece as spm

        self.path = Path(path)
        if not self.path.is_file():
            raise LLMCLIError(f"{self.path}: tokenizer.model not found")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.path.read_bytes())
        except (RuntimeError, OSError) as exc:
            raise LLMCLIError(f"{self.path}: not a sentencepiece model ({exc})") from None
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.unk_id: int = self.sp.unk_id()
        self.vocab_size: int = self.sp.get_piece_size()

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``, preceded by one BOS id when ``add_bos`` (and the model has one)."""
        ids = self.sp.encode(text)
        if add_bos and self.bos_id >= 0:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` (control tokens such as BOS/EOS decode to nothing).

        Raises:
            LLMCLIError: an id is outside ``[0, vocab_size)``.
        """
        ids = [int(i) for i in ids]  # also numpy/torch integers
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise LLMCLIError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self.sp.decode(ids)

    def piece(self, token_id: int) -> str:
        """The vocabulary piece of ``token_id``, e.g. ``'▁the'`` or ``'<0x0A>'``."""
        return self.sp.id_to_piece(token_id)

    def is_byte(self, token_id: int) -> bool:
        return self.sp.is_byte(token_id)

    def is_control(self, token_id: int) -> bool:
        return self.sp.is_control(token_id)

    def is_unknown(self, token_id: int) -> bool:
        return self.sp.is_unknown(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token stands for (``▁`` → space; ``<0xNN>`` → that byte;
        control tokens → ``b""``)."""
        if self.sp.is_control(token_id):
            return b""
        piece = self.sp.id_to_piece(token_id)
        if self.sp.is_byte(token_id):
            return bytes([int(piece[3:5], 16)])
        if self.sp.is_unknown(token_id):
            return b""
        return piece.replace("\u2581", " ").encode("utf-8")

    def stream(self) -> "StreamDecoder":
        """A new :class:`StreamDecoder` for this tokenizer."""
        return StreamDecoder(self)


@dataclass
class StreamDecoder:
    """Turns token ids, fed one at a time, into text chunks for streaming output.

    The concatenation of every chunk returned by :meth:`push` and :meth:`flush` equals
    ``tokenizer.decode(all_ids)`` exactly: leading ``▁`` spaces are kept (and the one after
    BOS dropped exactly as sentencepiece does), and byte-fallback pieces that do not yet
    form a whole UTF-8 character are held back until they do.

    Method (after Hugging Face text-generation-inference's ``decode_token``): decode only a
    short window ``ids[prefix:]`` that starts on an already-emitted piece, and emit what it adds
    to ``decode(ids[prefix:read])``. The window starts on a piece without a leading ``▁`` so
    that sentencepiece's rule of dropping leading whitespace at the start never touches it, and
    the cost per token does not grow with the length of the generation. A trailing U+FFFD is held back while the
    last pieces are bytes of an unfinished character.
    """

    tokenizer: Tokenizer
    ids: list[int] = None  # type: ignore[assignment]
    emitted: str = ""      # everything emitted so far (and the primed text)
    prefix: int = 0        # window start: ids[prefix:read] were decoded as prefix_text
    read: int = 0          # ids[:read] are fully emitted
    prefix_text: str = ""

    def __post_init__(self) -> None:
        self.ids = []

    def prime(self, ids: list[int]) -> None:
        """Feed ids whose text is not to be emitted (e.g. the prompt); later chunks continue it.

        A primed list that ends inside a character leaves that character to the next chunks.
        """
        self.ids.extend(ids)
        self.emitted = self._complete(self.tokenizer.decode(self.ids), self.ids)
        self.read = len(self.ids) - self._held(self.tokenizer.decode(self.ids), self.ids)
        self.prefix = self._window_start(self.read - 1)
        self.prefix_text = self.tokenizer.decode(self.ids[self.prefix:self.read])

    def push(self, token_id: int) -> str:
        """Add one id; return the text that is now complete (possibly ``""``).

        Raises:
            LLMCLIError: ``token_id`` is outside the vocabulary.
        """
        self.ids.append(token_id)
        try:
            window = self.tokenizer.decode(self.ids[self.prefix:])
        except LLMCLIError:
            self.ids.pop()
            raise
        if not window.startswith(self.prefix_text):
            return self._resync()
        if self._held(window, self.ids):
            return ""
        chunk = window[len(self.prefix_text):]
        self.prefix, self.read = self._window_start(self.read), len(self.ids)
        self.prefix_text = self.tokenizer.decode(self.ids[self.prefix:self.read])
        self.emitted += chunk
        return chunk

    def flush(self) -> str:
        """Everything not yet emitted (call once at the end)."""
        window = self.tokenizer.decode(self.ids[self.prefix:])
        if not window.startswith(self.prefix_text):
            return self._resync(final=True)
        chunk = window[len(self.prefix_text):]
        self.prefix = self.read = len(self.ids)
        self.prefix_text = ""
        self.emitted += chunk
        return chunk

    def _window_start(self, index: int, max_back: int = 64) -> int:
        """``index`` moved back to a piece that sentencepiece decodes the same at the start of a
        sequence as in the middle: a text piece that does not begin with ``▁`` (the decoder
        drops leading whitespace at the start, and after a control token). Not a control,
        unknown or byte piece. Falls back to 0 (decode everything) if none is near."""
        index = max(0, index)
        for i in range(index, max(-1, index - max_back), -1):
            if i == 0:
                return 0
            tid = self.ids[i]
            tok = self.tokenizer
            if not (tok.is_control(tid) or tok.is_unknown(tid) or tok.is_byte(tid)
                    or tok.piece(tid).startswith("\u2581")):
                return i
        return 0

    def _held(self, text: str, ids: list[int]) -> int:
        """How many trailing U+FFFDs of ``text`` stand for bytes of an unfinished character
        (one per trailing byte piece, at most 3: a UTF-8 character has at most 4 bytes)."""
        held = 0
        while (held < 3 and len(text) > held and text[len(text) - 1 - held] == REPLACEMENT_CHAR
               and len(ids) > held and self.tokenizer.is_byte(ids[len(ids) - 1 - held])):
            held += 1
        return held

    def _complete(self, text: str, ids: list[int]) -> str:
        held = self._held(text, ids)
        return text[:len(text) - held]

    def _resync(self, final: bool = False) -> str:
        """Fallback (not seen in practice): decode everything and emit what differs from the
        text emitted so far, then restart the window at the end."""
        full = self.tokenizer.decode(self.ids)
        text = full if final else self._complete(full, self.ids)
        common = 0
        while common < min(len(text), len(self.emitted)) and text[common] == self.emitted[common]:
            common += 1
        chunk = text[common:]
        self.emitted = text
        self.read = len(self.ids) - (0 if final else self._held(full, self.ids))
        self.prefix = self._window_start(self.read - 1)
        self.prefix_text = self.tokenizer.decode(self.ids[self.prefix:self.read])
        return chunk
