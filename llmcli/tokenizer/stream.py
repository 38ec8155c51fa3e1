"""Streaming decode for any :class:`~llmcli.tokenizer.Tokenizer`: text chunks, fed one id at a
time, that add up to the whole decode exactly and never split a UTF-8 character."""

from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"


def incomplete_utf8_tail(data: bytes) -> bool:
    """Whether ``data`` ends inside a UTF-8 character: its last 1-3 bytes are a lead byte and
    fewer continuation bytes than the lead byte announces (RFC 3629's table)."""
    for back in range(1, min(3, len(data)) + 1):
        b = data[-back]
        if 0x80 <= b <= 0xBF:  # continuation byte: keep looking for the lead
            continue
        need = 2 if 0xC2 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF4 else 0
        return need > back
    return False


class StreamDecoder:
    """Turns token ids, fed one at a time, into text chunks for streaming output.

    The concatenation of every chunk returned by :meth:`push` and :meth:`flush` equals
    ``tokenizer.decode(all_ids)`` exactly (after :meth:`prime`, the chunks continue the primed
    text: ``decode(primed + pushed)`` = ``decode(primed)``'s emitted part + chunks). While the
    last tokens end inside a UTF-8 character (byte-fallback pieces, or byte-level BPE tokens
    that hold part of an emoji or CJK character), the trailing U+FFFD they decode to is held
    back until the character completes — or turns out invalid, when the tokenizer's own U+FFFD
    is emitted.

    Method (after Hugging Face text-generation-inference's ``decode_token``): decode only a
    short window ``ids[start:]`` and emit what it adds to the text already emitted from that
    window. The window moves forward to a token at which decoding gives the same text as in
    the middle of a sequence (:meth:`Tokenizer._stream_start_ok`: not special, whole UTF-8,
    no leading space that a decoder's strip rule would drop), and only after checking that
    ``decode(ids[start:j]) + decode(ids[j:]) == decode(ids[start:])``; so the cost per token
    does not grow with the length of the generation. If a decoder ever changes text already
    emitted, the decoder resynchronises on the whole decode (not seen with real tokenizers).
    """

    def __init__(self, tokenizer, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.emitted = ""      # everything emitted so far (and the primed text)
        self.start = 0         # window start
        self.window_done = ""  # the part of decode(ids[start:]) already emitted

    def prime(self, ids: list[int]) -> None:
        """Feed ids whose text is not to be emitted (e.g. the prompt); later chunks continue it.

        A primed list that ends inside a character leaves that character to the next chunks.
        """
        self.ids.extend(int(i) for i in ids)
        self._advance(final=False)

    def push(self, token_id: int) -> str:
        """Add one id; return the text that is now complete (possibly ``""``).

        Raises:
            LLMCLIError: ``token_id`` is outside the vocabulary.
        """
        self.tokenizer._check_ids([token_id])
        self.ids.append(int(token_id))
        return self._advance(final=False)

    def flush(self) -> str:
        """Everything not yet emitted (call once at the end)."""
        chunk = self._advance(final=True)
        full = self._decode(self.ids)
        if full != self.emitted and full.startswith(self.emitted):  # safety net, never seen
            chunk += full[len(self.emitted):]
            self.emitted = full
        return chunk

    # ------------------------------------------------------------------------------------------

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer._decode(ids, self.skip_special)

    def _held(self, text: str) -> int:
        """How many trailing characters of ``text`` to hold back: the trailing U+FFFDs while the
        last tokens' bytes end inside a UTF-8 character."""
        if not text.endswith(REPLACEMENT_CHAR):
            return 0
        tail = b""
        for tid in reversed(self.ids[max(self.start, len(self.ids) - 16):]):
            kind = self.tokenizer.token_kind(tid)
            if kind in ("control", "special") and self.skip_special:
                continue  # decodes to nothing: the bytes around it join up
            if kind in ("control", "special", "unknown"):
                break
            tail = self.tokenizer.token_bytes(tid) + tail
            if len(tail) >= 3:  # an unfinished character is at most 3 bytes
                break
        if not incomplete_utf8_tail(tail):
            return 0
        return len(text) - len(text.rstrip(REPLACEMENT_CHAR))

    def _ready(self, window: str) -> str:
        """The part of ``window`` that later tokens cannot change: without the U+FFFDs of an
        unfinished character, and, for tokenizers whose decoder fuses a run of byte pieces
        (``tokenizers``' ByteFallback turns the whole run into U+FFFDs when it is not valid
        UTF-8, so a later byte can change an earlier one), without a trailing run of byte
        pieces."""
        ready = window[:len(window) - self._held(window)]
        if getattr(self.tokenizer, "_byte_runs_fuse", False):
            k, run_has_bytes = len(self.ids), False
            while k > self.start:
                kind = self.tokenizer.token_kind(self.ids[k - 1])
                if kind == "byte":
                    run_has_bytes = True
                elif not (kind in ("control", "special") and self.skip_special):
                    break
                k -= 1
            if run_has_bytes:
                head = self._decode(self.ids[self.start:k])
                if not window.startswith(head):
                    return self.window_done
                if len(head) < len(ready):
                    ready = head
        return ready if len(ready) >= len(self.window_done) else self.window_done

    def _advance(self, final: bool) -> str:
        window = self._decode(self.ids[self.start:])
        if not window.startswith(self.window_done):
            return self._resync(final)
        ready = window if final else self._ready(window)
        chunk = ready[len(self.window_done):]
        self.window_done = ready
        self.emitted += chunk
        if not final:
            self._slide(window)
        return chunk

    def _slide(self, window: str, max_back: int = 8) -> None:
        """Move the window start to the latest safe token whose text is all emitted."""
        tok = self.tokenizer
        n = len(self.ids)
        for j in range(n - 1, max(self.start, n - 1 - max_back), -1):
            if not tok._stream_start_ok(self.ids[j]):
                continue
            head = self._decode(self.ids[self.start:j])
            if len(head) > len(self.window_done) or head + self._decode(self.ids[j:]) != window:
                return
            self.start = j
            self.window_done = self.window_done[len(head):]
            return

    def _resync(self, final: bool) -> str:
        """Fallback: decode everything, emit what differs from the text emitted so far, and
        restart the window at the end."""
        full = self._decode(self.ids)
        self.start = 0
        ready = full if final else full[:len(full) - self._held(full)]
        common = 0
        while common < min(len(ready), len(self.emitted)) and ready[common] == self.emitted[common]:
            common += 1
        chunk = ready[common:]
        self.emitted = ready
        self.window_done = ready
        return chunk
