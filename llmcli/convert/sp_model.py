"""Build and check sentencepiece ``tokenizer.model`` files (serialized ``ModelProto``).

A GGUF file of a sentencepiece-tokenized Llama (``tokenizer.ggml.model == "llama"``) stores
each piece's text, score and type (llama.cpp ``convert_hf_to_gguf.py``
``_create_vocab_sentencepiece``); the normalisation rules and trainer options are not stored.
:func:`build_sp_model` writes them back as a ``ModelProto`` that encodes and decodes like the
original for the usual Llama settings: identity normalisation, a dummy prefix space, byte
fallback when all 256 ``<0xNN>`` pieces exist.

Token types are shared by llama.cpp (``gguf.TokenType``) and sentencepiece
(``ModelProto.SentencePiece.Type``): NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4,
UNUSED 5, BYTE 6.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llmcli.errors import LLMCLIError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"


@dataclass
class BuiltModel:
    """A serialized ``ModelProto`` (``data``) and the choices made while building it."""

    data: bytes
    model_type: str        # "BPE" or "UNIGRAM"
    byte_fallback: bool


def guess_model_type(scores: Sequence[float], types: Sequence[int]) -> str:
    """``"BPE"`` or ``"UNIGRAM"`` from the piece scores.

    sentencepiece BPE scores its merged pieces ``0, -1, -2, ...`` (minus the merge rank), so
    every NORMAL score is a whole number; unigram scores are log-probabilities, which are not.
    """
    normal = [s for s, t in zip(scores, types) if t == NORMAL]
    if normal and all(float(s).is_integer() for s in normal):
        return "BPE"
    return "UNIGRAM"


def build_sp_model(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int], *,
                   bos_id: int = 1, eos_id: int = 2, unk_id: int = 0, pad_id: int = -1,
                   add_dummy_prefix: bool = True, remove_extra_whitespaces: bool = False,
                   precompiled_charsmap: bytes | None = None, model_type: str | None = None,
                   source: str = "vocabulary") -> BuiltModel:
    """Pieces (id order) → a sentencepiece ``ModelProto``, checked by loading it.

    ``tokens``, ``scores`` and ``types`` have one entry per id. Type 0 (llama.cpp's
    "undefined") is written as NORMAL. The piece ``unk_id`` names becomes the one UNKNOWN
    piece (sentencepiece allows exactly one; other UNKNOWN pieces, such as Phi-3's
    ``[PAD...]`` padding, become UNUSED; without a valid ``unk_id`` the first UNKNOWN piece
    stays). ``model_type`` defaults to :func:`guess_model_type`. ``allow_whitespace_only_pieces``
    is set when the vocabulary has a piece of two or more ``▁`` (only trainers with that
    option produce them; it changes how runs of spaces are split into words).

    Raises:
        LLMCLIError: duplicate or empty pieces, no unknown piece, or a model sentencepiece
            rejects (message names ``source``).
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    n = len(tokens)
    types = [t if t in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL for t in types]
    if 0 <= unk_id < n and types[unk_id] != UNKNOWN:
        types[unk_id] = UNKNOWN  # e.g. Phi-3 marks <unk> CONTROL
    unknown = [i for i, t in enumerate(types) if t == UNKNOWN]
    if not unknown:
        raise LLMCLIError(f"{source}: the vocabulary has no unknown token, which sentencepiece requires")
    keep = unk_id if unk_id in unknown else unknown[0]
    for i in unknown:  # sentencepiece allows one; the rest (padding, e.g. Phi-3's [PAD...]) never encode
        if i != keep:
            types[i] = UNUSED
    seen: dict[str, int] = {}
    for i, piece in enumerate(tokens):
        if not piece:
            raise LLMCLIError(f"{source}: token {i} is empty; sentencepiece cannot store it")
        if piece in seen:
            raise LLMCLIError(f"{source}: tokens {seen[piece]} and {i} are both {piece!r}; "
                              "sentencepiece needs unique pieces")
        seen[piece] = i
    byte_pieces = {p for p, t in zip(tokens, types) if t == BYTE}
    byte_fallback = all(f"<0x{b:02X}>" in byte_pieces for b in range(256))
    kind = model_type or guess_model_type(scores, types)
    ws_only = any(len(p) > 1 and set(p) == {_SPACE} for p, t in zip(tokens, types)
                  if t in (NORMAL, USER_DEFINED))

    m = pb.ModelProto()
    for piece, score, typ in zip(tokens, scores, types):
        sp = m.pieces.add()
        sp.piece = piece
        sp.score = float(score)
        sp.type = typ
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE if kind == "BPE" else pb.TrainerSpec.UNIGRAM
    ts.vocab_size = n
    ts.byte_fallback = byte_fallback
    ts.allow_whitespace_only_pieces = ws_only
    unk = types.index(UNKNOWN)
    ts.unk_id, ts.unk_piece = unk, tokens[unk]
    for attr, idx in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id)):
        valid = 0 <= idx < n and idx != unk
        setattr(ts, f"{attr}_id", idx if valid else -1)
        if valid:
            setattr(ts, f"{attr}_piece", tokens[idx])
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = add_dummy_prefix
    ns.remove_extra_whitespaces = remove_extra_whitespaces
    ns.escape_whitespaces = True
    ns.precompiled_charsmap = precompiled_charsmap or b""
    data = m.SerializeToString()
    try:
        spm.SentencePieceProcessor().LoadFromSerializedProto(data)
    except (RuntimeError, OSError) as exc:
        raise LLMCLIError(f"{source}: the vocabulary does not make a valid sentencepiece model "
                          f"({str(exc).strip().splitlines()[-1]})") from None
    return BuiltModel(data, kind, byte_fallback)


def load_tokenizer_file(path: Path) -> tuple[bytes, int]:
    """Read a sentencepiece ``.model`` → ``(bytes, number of pieces)``.

    Raises:
        LLMCLIError: missing file, or not a sentencepiece model (llama2.c's own
            ``tokenizer.bin`` format is named in the message, since it is the usual mistake).
    """
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise LLMCLIError(f"{path}: " + ("not a regular file (a directory or a device)"
                                         if path.exists() else "tokenizer file not found"))
    data = path.read_bytes()
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except (RuntimeError, OSError):
        hint = (" (it looks like llama2.c's tokenizer.bin; pass the sentencepiece .model it was "
                "exported from)") if path.suffix == ".bin" else ""
        raise LLMCLIError(f"{path}: not a sentencepiece model{hint}") from None
    return data, sp.get_piece_size()
