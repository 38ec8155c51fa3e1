"""llmcli.tokenizer against sentencepiece itself, and the streaming decoder's guarantees.

Each test runs on a sentencepiece model trained here (``tiny_tokenizer_model``, byte fallback)
and on Llama 2's ``tokenizer.model`` from the shared fixtures (skipped when absent).
"""

from __future__ import annotations

import random

import pytest
import sentencepiece as spm

from conftest import shared_path
from llmcli.errors import LLMCLIError
from llmcli.tokenizer import REPLACEMENT_CHAR, Tokenizer

TRICKY = [
    "", " ", "  ", "   ", "hello", " hello", "hello ", "  two leading", "two trailing  ",
    "a   b    c", "\n", "line1\nline2\n\n", "\n\nstarts with newlines", "\ttab\t", " \n \t ",
    "\r\n", "emoji 😀🎉", "👍🏽 skin tone", "👨‍👩‍👧 family ZWJ", "🤖", "中文字符测试", "日本語のテキスト",
    "한국어", "e\u0301 combining acute", "a\u0308\u0323 two marks", "ｆｕｌｌｗｉｄｔｈ　１２３",
    "1234567890", "3.14159 and 2,000,000", "<s>", "</s>", "<s>hello</s>", " <s> ", "<unk>",
    "<0x41>", "Ω≈ç√∫ ü ö ä ß", "𝕳𝖊𝖑𝖑𝖔 math letters", "\ufeffBOM", "Once upon a time, Lily 🐶!",
]


@pytest.fixture(params=["trained", "llama2"])
def tok(request, tiny_tokenizer_model) -> Tokenizer:
    if request.param == "trained":
        return Tokenizer(tiny_tokenizer_model)
    return Tokenizer(shared_path("fixtures", "tokenizers", "llama2", "tokenizer.model"))


def reference(tok: Tokenizer) -> spm.SentencePieceProcessor:
    """A separate, plain sentencepiece processor for the same file."""
    return spm.SentencePieceProcessor(model_file=str(tok.path))


# ----------------------------------------------------------------------------- encode/decode
@pytest.mark.parametrize("text", TRICKY)
def test_encode_matches_sentencepiece(tok, text):
    sp = reference(tok)
    assert tok.encode(text, add_bos=False) == sp.encode(text)
    assert tok.encode(text) == [sp.bos_id()] + sp.encode(text)


@pytest.mark.parametrize("text", TRICKY)
def test_bos_exactly_once_and_no_control_ids_from_text(tok, text):
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.eos_id not in ids
    assert not any(tok.is_control(i) for i in ids[1:]), [tok.piece(i) for i in ids]
    assert not any(tok.is_unknown(i) for i in ids)  # byte fallback covers everything


@pytest.mark.parametrize("text", TRICKY)
def test_decode_round_trip(tok, text):
    sp = reference(tok)
    ids = tok.encode(text)
    assert tok.decode(ids) == sp.decode(ids) == text
    assert tok.decode(ids + [tok.eos_id]) == text  # control ids decode to nothing


@pytest.mark.parametrize("text", [t for t in TRICKY if t])
def test_token_bytes_concatenate_to_text(tok, text):
    """Pieces carry the dummy-prefix space that decode() strips from the first one."""
    ids = tok.encode(text)
    assert b"".join(tok.token_bytes(i) for i in ids) == (" " + text).encode("utf-8")


def test_typed_special_tokens_are_text(tok):
    ids = tok.encode("<s></s>", add_bos=False)
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == "<s></s>"


def test_empty(tok):
    assert tok.encode("") == [tok.bos_id]
    assert tok.encode("", add_bos=False) == []
    assert tok.decode([]) == ""
    assert tok.decode([tok.bos_id]) == ""


@pytest.mark.parametrize("make_ids", [lambda v: [-1], lambda v: [v], lambda v: [5, v + 7]],
                         ids=["negative", "vocab_size", "far"])
def test_decode_outside_vocab_raises(tok, make_ids):
    ids = make_ids(tok.vocab_size)
    with pytest.raises(LLMCLIError, match="outside the vocabulary"):
        tok.decode(ids)
    stream = tok.stream()
    before = "".join(stream.push(i) for i in ids[:-1])
    with pytest.raises(LLMCLIError, match="outside the vocabulary"):
        stream.push(ids[-1])
    hello = tok.encode("hello", add_bos=False)  # the stream goes on without the bad id
    after = "".join(stream.push(i) for i in hello) + stream.flush()
    assert before + after == tok.decode(ids[:-1] + hello)


def test_missing_or_invalid_model_file(tmp_path):
    with pytest.raises(LLMCLIError, match="tokenizer.model"):
        Tokenizer(tmp_path / "tokenizer.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\x00\x01 not a protobuf \xff" * 10)
    with pytest.raises(LLMCLIError, match="bad.model"):
        Tokenizer(bad)


# ----------------------------------------------------------------------------- streaming
def stream_chunks(tok: Tokenizer, ids: list[int], prime: list[int] | None = None) -> list[str]:
    """Every chunk push() returns, then flush()'s."""
    stream = tok.stream()
    if prime:
        stream.prime(prime)
    chunks = [stream.push(i) for i in ids]
    chunks.append(stream.flush())
    return chunks


@pytest.mark.parametrize("text", TRICKY)
def test_stream_equals_decode(tok, text):
    ids = tok.encode(text) + [tok.eos_id]
    chunks = stream_chunks(tok, ids)
    assert "".join(chunks).encode("utf-8") == tok.decode(ids).encode("utf-8")
    assert not any(REPLACEMENT_CHAR in c for c in chunks), chunks


def test_stream_holds_split_emoji_until_complete(tok):
    ids = tok.encode("a😀b", add_bos=False)
    pieces = [tok.piece(i) for i in ids]
    assert ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"] == [p for p in pieces if p.startswith("<0x")]
    chunks = stream_chunks(tok, ids)
    first_byte = pieces.index("<0xF0>")
    assert chunks[first_byte:first_byte + 3] == ["", "", ""]
    assert chunks[first_byte + 3].endswith("😀")
    assert "".join(chunks) == "a😀b"


def test_stream_ends_on_incomplete_character(tok):
    """An unfinished character at the very end comes out of flush(), as decode() gives it."""
    ids = tok.encode("x", add_bos=False) + [tok.sp.piece_to_id("<0xF0>"), tok.sp.piece_to_id("<0x9F>")]
    chunks = stream_chunks(tok, ids)
    assert "".join(chunks) == tok.decode(ids) == "x" + REPLACEMENT_CHAR * 2
    assert REPLACEMENT_CHAR not in "".join(chunks[:-1])


def test_stream_random_ids(tok):
    """Any id sequence (bytes in any order, controls, unk): chunks always add up to decode()."""
    rng = random.Random(0)
    byte_ids = [i for i in range(tok.vocab_size) if tok.is_byte(i)]
    special = [tok.bos_id, tok.eos_id, tok.unk_id]
    for _ in range(150):
        ids = []
        for _ in range(rng.randint(1, 25)):
            r = rng.random()
            ids.append(rng.choice(byte_ids) if r < 0.5 else rng.choice(special) if r < 0.6
                       else rng.randrange(tok.vocab_size))
        assert "".join(stream_chunks(tok, ids)) == tok.decode(ids), [tok.piece(i) for i in ids]


def test_stream_valid_text_never_shows_replacement(tok):
    """Random valid text (including multi-byte characters) streams without U+FFFD."""
    rng = random.Random(1)
    alphabet = list("ab ,.\n\t") + ["é", "ß", "中", "文", "😀", "🐶", "\u0301", "　", "１"]
    for _ in range(60):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
        ids = tok.encode(text)
        chunks = stream_chunks(tok, ids)
        assert "".join(chunks) == text
        assert not any(REPLACEMENT_CHAR in c for c in chunks)


@pytest.mark.parametrize("prompt,continuation", [
    ("Once upon a time", " there was a dog 🐶."), ("Hello", "\n\n中文 ok"), ("", "Start"),
    ("emoji at the end 😀", " and more"), ("spaces  ", "  after")])
def test_prime_then_push_continues_without_repeating_prompt(tok, prompt, continuation):
    prompt_ids = tok.encode(prompt)
    gen_ids = tok.encode(continuation, add_bos=False)
    chunks = stream_chunks(tok, gen_ids, prime=prompt_ids)
    whole = tok.decode(prompt_ids + gen_ids)
    assert whole.startswith(tok.decode(prompt_ids))
    assert "".join(chunks) == whole[len(tok.decode(prompt_ids)):]
    assert not any(REPLACEMENT_CHAR in c for c in chunks)


def test_prime_ending_mid_character(tok):
    """A primed id list that stops inside a character (e.g. a prompt given as ids)."""
    emoji = [tok.sp.piece_to_id(f"<0x{b:02X}>") for b in "🐶".encode("utf-8")]
    prompt = tok.encode("dog") + emoji[:2]
    rest = emoji[2:] + tok.encode("!", add_bos=False)
    chunks = stream_chunks(tok, rest, prime=prompt)
    whole = tok.decode(prompt + rest)
    assert whole == "dog🐶 !"
    assert "".join(chunks) == "🐶 !"
