"""The tokenizer.json kind against its references: transformers' ``AutoTokenizer`` and the raw
``tokenizers`` library, on the real Llama 3 and Qwen3 tokenizers of ../shared (skipped when
absent); the sentencepiece kind against the same directory's tokenizer.json; streaming
against whole decode; the CLI on a directory holding only tokenizer files.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import unicodedata
import warnings
from pathlib import Path

import pytest

from conftest import shared_path
from llmcli.errors import LLMCLIError
from llmcli.tokenizer import REPLACEMENT_CHAR, Tokenizer, load_tokenizer
from llmcli.tokenizer.stream import incomplete_utf8_tail

FAMILIES = ["llama3", "qwen3"]

#: Text that trips tokenizers up: emoji (ZWJ sequences, flags, skin tones), CJK, combining
#: marks (decomposed and precomposed), digits, contractions, code with tabs and newlines, runs
#: of spaces, special-token text, leading/trailing spaces, right-to-left scripts, controls.
CORPUS = [
    "Hello world",
    "Hello, World! How's it going?",
    " leading space", "  two leading spaces", "trailing space ", "trailing spaces   ",
    "   ", " ", "\n", "\n\n\n", "\t", "\r\n",
    "🦙", "🦙🦙🦙", "👨‍👩‍👧‍👦 family", "🇫🇷🇯🇵 flags", "👍🏽 thumbs", "😀😃😄😁😆",
    "世界你好", "日本語のテキストです。", "한국어 텍스트", "中文 English 混合 text",
    "e\u0301 cafe\u0301 café", "a\u0300\u0301\u0302\u0303", "\u0301 lone combining mark",
    "Ǆ ǅ ǆ ﬁ ﬂ Ⅻ ①", "ｆｕｌｌｗｉｄｔｈ",
    "1234567", "3.14159 1,000,000 12:30 2024-01-01", "0123456789012345678901234567890",
    "don't I'll you're we've she'd it's DON'T I'LL", "'s 't 're 've 'm 'll 'd",
    "def f(x):\n\treturn x  +  1\n\n\nclass A:\n    pass\n",
    "if (a &&  b) { return c; }  // comment\t\ttabs",
    "<|im_end|>", "hi <|im_start|>user\nHello<|im_end|>\n", "<|begin_of_text|>x<|eot_id|>",
    "<|endoftext|><|endoftext|>", "<s> </s> <unk>", "<|im_end", "|im_end|>", "<<|im_end|>>",
    "مرحبا بالعالم", "שלום עולם", "mixed עברית and English",
    "\x00\x01\x1b[31m ansi", "\u200b zero width \ufeff bom", "\U0001F600\U0001F64F",
    "a" * 300, "ab " * 50, "!!!???...,,,", "Ġ Ċ ▁ fake markers",
    "",
]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def tokdir(family) -> Path:
    return shared_path("fixtures", "tokenizers", family)


@pytest.fixture(scope="module")
def ours(tokdir):
    return load_tokenizer(tokdir)


@pytest.fixture(scope="module")
def hf(tokdir):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(str(tokdir))


@pytest.fixture(scope="module")
def raw(tokdir):
    from tokenizers import Tokenizer as RustTokenizer

    return RustTokenizer.from_file(str(tokdir / "tokenizer.json"))


# ----------------------------------------------------------------------------- ids
def test_kind_and_special_tokens_equal_transformers(ours, hf, tokdir):
    assert ours.kind == "tokenizer.json" and ours.path == tokdir / "tokenizer.json"
    assert ours.vocab_size == len(hf)
    assert ours.bos_id == hf.bos_token_id
    assert ours.eos_id == hf.eos_token_id
    assert ours.eos_ids == [hf.eos_token_id]  # no config.json/generation_config.json here
    # add_bos is what transformers' encode adds by default: both fixtures add nothing
    assert ours.add_bos == (hf("x")["input_ids"][:1] == [hf.bos_token_id])
    assert not ours.add_bos
    special = set(ours.special_ids())
    assert special and special <= set(hf.added_tokens_decoder)
    assert all(ours.token_kind(i) == "special" and ours.token_bytes(i) == b"" for i in special)


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_ids_equal_transformers_and_tokenizers(ours, hf, raw, text):
    # typed special tokens stay text = transformers' split_special_tokens=True
    assert ours.encode(text) == hf(text, split_special_tokens=True)["input_ids"]
    assert ours.encode(text, add_bos=False) == hf(text, add_special_tokens=False,
                                                  split_special_tokens=True)["input_ids"]
    # --special: parsed as transformers does by default
    assert ours.encode(text, special=True) == hf(text)["input_ids"]
    raw.encode_special_tokens = True
    assert ours.encode(text, add_bos=False) == raw.encode(text, add_special_tokens=False).ids
    raw.encode_special_tokens = False
    assert ours.encode(text, add_bos=False, special=True) == raw.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_decode_equals_transformers_and_roundtrips(ours, hf, raw, text):
    for special in (False, True):
        ids = ours.encode(text, special=special)
        got = ours.decode(ids, skip_special=not special)
        assert got == hf.decode(ids, skip_special_tokens=not special)
        assert got == raw.decode(ids, skip_special_tokens=not special)
        # byte-level BPE loses nothing but what the normalizer changed (Qwen3: NFC)
        expected = text if raw.normalizer is None else unicodedata.normalize("NFC", text)
        assert got == expected
    assert ours.decode(ours.encode(text, special=True)) == hf.decode(
        hf(text)["input_ids"], skip_special_tokens=True)


def test_special_flag_changes_only_special_token_text(ours):
    for name in ("<|im_end|>", "<|eot_id|>", "<|begin_of_text|>", "<|endoftext|>"):
        tid = ours.token_to_id(name)
        if tid is None:
            continue
        assert ours.encode(name, add_bos=False, special=True) == [tid]
        plain = ours.encode(name, add_bos=False)
        assert tid not in plain and len(plain) > 1
        assert "".join(ours.piece(i) for i in plain) == name  # printable ASCII maps to itself


def test_add_bos_true_puts_bos_first(ours):
    if ours.bos_id is None:  # Qwen3 has no BOS token
        assert ours.encode("hi", add_bos=True) == ours.encode("hi", add_bos=False)
        return
    assert ours.encode("hi", add_bos=True) == [ours.bos_id] + ours.encode("hi", add_bos=False)
    assert ours.encode("", add_bos=True) == [ours.bos_id]


# ----------------------------------------------------------------------------- pieces and bytes
def test_every_token_bytes_decode_like_the_library(ours, raw):
    """token_bytes of each id, decoded with U+FFFD for invalid UTF-8, is the library's decode of
    that id alone (which applies the ByteLevel decoder): every id of the vocabulary."""
    special = set(ours.special_ids())
    for i in range(ours.vocab_size):
        if i in special:
            continue
        assert ours.token_bytes(i).decode("utf-8", errors="replace") == raw.decode([i]), (i, ours.piece(i))
        assert ours.piece(i) == raw.id_to_token(i)
        assert ours.token_kind(i) == "normal"


def test_byte_level_pieces_are_shown_as_stored(ours):
    ids = ours.encode(" the\n 🦙", add_bos=False)
    pieces = [ours.piece(i) for i in ids]
    assert pieces[0] == "Ġthe" and ours.token_bytes(ids[0]) == b" the"
    assert "Ċ" in "".join(pieces)
    assert b"".join(ours.token_bytes(i) for i in ids) == " the\n 🦙".encode()
    # the emoji is split across tokens: some token holds only part of its 4 bytes
    assert any(not _is_utf8(ours.token_bytes(i)) for i in ids)


@pytest.mark.parametrize("seed", range(3))
def test_token_bytes_concatenate_to_decode(ours, seed):
    rng = random.Random(seed)
    special = set(ours.special_ids())
    for _ in range(200):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randrange(1, 12))]
        data = b"".join(ours.token_bytes(i) for i in ids)
        assert data.decode("utf-8", errors="replace") == ours.decode(ids)
        ids = [i for i in ids if i not in special]
        assert ours.decode(ids) == ours.decode(ids, skip_special=False)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ----------------------------------------------------------------------------- streaming
def _stream(tok, ids, prime=None, skip_special=True) -> list[str]:
    stream = tok.stream(skip_special=skip_special)
    if prime:
        stream.prime(prime)
    return [stream.push(i) for i in ids] + [stream.flush()]


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_stream_of_real_text_never_splits_a_character(ours, text):
    ids = ours.encode(text, special=True)
    chunks = _stream(ours, ids)
    assert "".join(chunks) == ours.decode(ids)
    whole = ours.decode(ids)
    if REPLACEMENT_CHAR not in whole:  # no chunk shows half a character as U+FFFD
        assert not any(REPLACEMENT_CHAR in c for c in chunks), chunks
    chunks = _stream(ours, ids, skip_special=False)
    assert "".join(chunks) == ours.decode(ids, skip_special=False)
    # primed with the first half, the chunks continue it
    half = len(ids) // 2
    stream = ours.stream()
    stream.prime(ids[:half])
    rest = "".join(stream.push(i) for i in ids[half:]) + stream.flush()
    assert stream.emitted == whole
    assert whole.endswith(rest)


def _partial_ids(tok, limit: int = 4000) -> list[int]:
    """Ids whose bytes are not whole UTF-8 (pieces of emoji, CJK, accented letters)."""
    return [i for i in range(min(tok.vocab_size, 150_000))
            if tok.token_kind(i) == "normal" and not _is_utf8(tok.token_bytes(i))][:limit]


@pytest.mark.parametrize("seed", range(4))
def test_stream_random_and_adversarial_ids_equal_decode(ours, seed):
    rng = random.Random(seed)
    partial = _partial_ids(ours)
    special = ours.special_ids()
    assert len(partial) > 100
    for n in range(150):
        ids = []
        for _ in range(rng.randrange(1, 40)):
            r = rng.random()
            ids.append(rng.choice(partial) if r < 0.5 else rng.choice(special) if r < 0.6
                       else rng.randrange(ours.vocab_size))
        for skip in (True, False):
            chunks = _stream(ours, ids, skip_special=skip)
            assert "".join(chunks) == ours.decode(ids, skip_special=skip), ids
        prime = ids[:rng.randrange(len(ids) + 1)]
        stream = ours.stream()
        stream.prime(prime)
        out = "".join(stream.push(i) for i in ids[len(prime):]) + stream.flush()
        assert stream.emitted == ours.decode(ids)
        assert ours.decode(ids).endswith(out)


def test_stream_holds_an_emoji_until_it_is_whole(ours):
    ids = ours.encode("a🦙b", add_bos=False)
    chunks = _stream(ours, ids)
    assert "".join(chunks) == "a🦙b"
    assert "🦙" in chunks and REPLACEMENT_CHAR not in "".join(chunks)
    assert chunks.count("") >= 1  # at least one push held part of the emoji back


def test_stream_window_stays_short(ours):
    """The decoder's window moves on: its start follows the end of a long generation."""
    ids = ours.encode("The quick brown fox jumps over the lazy dog. " * 40, add_bos=False)
    stream = ours.stream()
    for i in ids:
        stream.push(i)
    assert len(ids) - stream.start < 16
    assert stream.emitted + stream.flush() == ours.decode(ids)


@pytest.mark.parametrize("data", [b"", b"a", b"\xc3", b"\xc3\xa9", b"\xe4\xb8", b"\xe4\xb8\x96",
                                  b"\xf0\x9f\xa6", b"\xf0\x9f\xa6\x99", b"\x80", b"a\xff",
                                  b"\xf0", b"\xed\xa0", b"\xc0"])
def test_incomplete_utf8_tail(data):
    """An incomplete tail is exactly what an incremental UTF-8 decoder keeps pending."""
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    dec.decode(data)
    pending = dec.getstate()[0]
    assert incomplete_utf8_tail(data) == (len(pending) > 0 and data.endswith(pending)
                                          and pending[0] not in (0xC0, 0xC1) and pending[0] <= 0xF4)


# ----------------------------------------------------------------------------- configs and BOS
def _copy(src: Path, dst: Path, **config) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    tc = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    tc.update(config)
    (dst / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
    return dst


def _auto(path: Path):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(str(path))


def test_template_post_processor_adds_bos_as_transformers(tmp_path):
    """Later Llama 3 releases ship a TemplateProcessing post-processor that adds
    <|begin_of_text|>; add_bos follows it, ids equal transformers'."""
    src = shared_path("fixtures", "tokenizers", "llama3")
    d = _copy(src, tmp_path / "l3")
    spec = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                 "tokens": ["<|begin_of_text|>"]}}}
    (d / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    ours, hf = load_tokenizer(d), _auto(d)
    assert ours.add_bos and ours.bos_id == 128000
    for text in CORPUS[:20]:
        assert ours.encode(text) == hf(text, split_special_tokens=True)["input_ids"]
        assert ours.encode(text)[0] == 128000
        assert ours.encode(text, add_bos=True) == ours.encode(text)  # not twice
        assert ours.encode(text, add_bos=False) == hf(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("value", [True, False])
def test_add_bos_token_in_config_follows_transformers(tmp_path, value):
    """transformers (>= 5) takes BOS from tokenizer.json's post-processor and ignores
    tokenizer_config.json's add_bos_token when a tokenizer.json exists; so do we."""
    d = _copy(shared_path("fixtures", "tokenizers", "llama3"), tmp_path / "l3", add_bos_token=value)
    ours, hf = load_tokenizer(d), _auto(d)
    for text in ("hello", " x", ""):
        assert ours.encode(text) == hf(text, split_special_tokens=True)["input_ids"]


def test_bos_eos_from_configs(tmp_path):
    """AddedToken dicts in tokenizer_config.json, eos ids from generation_config.json and
    config.json (all of them end generation), bos from config.json when no file names one."""
    src = shared_path("fixtures", "tokenizers", "llama3")
    d = _copy(src, tmp_path / "l3", bos_token={"content": "<|begin_of_text|>", "lstrip": False,
                                              "__type": "AddedToken"},
              eos_token={"content": "<|eot_id|>", "__type": "AddedToken"})
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
    (d / "config.json").write_text(json.dumps({"eos_token_id": 128008}))
    tok = load_tokenizer(d)
    assert (tok.bos_id, tok.eos_id) == (128000, 128009)
    assert tok.eos_ids == [128009, 128001, 128008]
    hf = _auto(d)
    assert (tok.bos_id, tok.eos_id) == (hf.bos_token_id, hf.eos_token_id)

    q = _copy(shared_path("fixtures", "tokenizers", "qwen3"), tmp_path / "q3")
    (q / "config.json").write_text(json.dumps({"bos_token_id": 151643, "eos_token_id": 151645}))
    tok = load_tokenizer(q)
    assert tok.bos_id is None  # tokenizer_config.json says bos_token: null, as transformers
    tc = json.loads((q / "tokenizer_config.json").read_text())
    del tc["bos_token"]
    (q / "tokenizer_config.json").write_text(json.dumps(tc))
    assert load_tokenizer(q).bos_id == 151643  # no file names one: config.json's


def test_bad_tokenizer_files(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "tokenizer.json").write_text("{not json")
    with pytest.raises(LLMCLIError, match="tokenizer.json: the tokenizers library cannot read it"):
        load_tokenizer(d)
    (d / "tokenizer.json").write_text(json.dumps({"model": {"type": "Nope"}}))
    with pytest.raises(LLMCLIError, match="tokenizer.json"):
        load_tokenizer(d)
    good = _copy(shared_path("fixtures", "tokenizers", "qwen3"), tmp_path / "q", eos_token="<|no such|>")
    with pytest.raises(LLMCLIError, match="eos_token '<\\|no such\\|>' is not in the vocabulary"):
        load_tokenizer(good)
    (good / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(LLMCLIError, match="tokenizer_config.json: expected a JSON object"):
        load_tokenizer(good)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LLMCLIError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(empty)


# ----------------------------------------------------------------------------- both files
@pytest.fixture(scope="module")
def both(tmp_path_factory) -> Path:
    """A directory with Llama 2's tokenizer.model and the tokenizer.json transformers converts
    from it (with BOS added, as Meta's Llama-2-hf tokenizer.json does)."""
    src = shared_path("fixtures", "tokenizers", "llama2", "tokenizer.model")
    pytest.importorskip("transformers")
    d0 = tmp_path_factory.mktemp("sp")
    shutil.copy(src, d0 / "tokenizer.model")
    (d0 / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "add_bos_token": True}))
    hf = _auto(d0)
    d = tmp_path_factory.mktemp("both")
    hf.save_pretrained(str(d))
    shutil.copy(src, d / "tokenizer.model")
    return d


#: Text on which sentencepiece and transformers' conversion of it agree. They part at
#: leading whitespace (the converted Metaspace pre-tokenizer adds no ``▁`` to a text that
#: starts with a space, sentencepiece adds one), at a run of spaces before a word (BPE by
#: merge rank gives ``▁▁`` ``+``, sentencepiece by piece score ``▁`` ``▁+``) and after a
#: parsed special token (sentencepiece starts each stretch with its dummy ``▁``).
AGREE = [t for t in CORPUS if t and not t[0].isspace() and "  " not in t]


def test_both_files_tokenizer_json_wins_and_ids_agree(both):
    tok = load_tokenizer(both)
    sp = Tokenizer(both / "tokenizer.model")
    assert tok.kind == "tokenizer.json" and sp.kind == "sentencepiece"
    assert (tok.bos_id, tok.eos_id, tok.vocab_size, tok.add_bos) == (sp.bos_id, sp.eos_id, sp.vocab_size, sp.add_bos)
    hf = _auto(both)
    for text in AGREE:
        assert tok.encode(text) == sp.encode(text) == hf(text, split_special_tokens=True)["input_ids"], text
        ids = tok.encode(text)
        assert tok.decode(ids) == sp.decode(ids)
    for i in range(tok.vocab_size):
        assert tok.piece(i) == sp.piece(i)
        assert tok.token_bytes(i) == sp.token_bytes(i), i
        assert tok.token_kind(i) == sp.token_kind(i) or (tok.token_kind(i), sp.token_kind(i)) == ("special", "control")
    assert len(AGREE) > 40
    # where they part (documented): a leading space, and a run of spaces
    assert tok.encode(" x") == hf(" x")["input_ids"] != sp.encode(" x")
    assert tok.encode("x  +") == hf("x  +")["input_ids"] != sp.encode("x  +")


@pytest.mark.parametrize("seed", range(2))
def test_stream_equals_decode_for_the_converted_sentencepiece(both, seed):
    """A Metaspace/ByteFallback/Strip decoder (Llama 2 as tokenizer.json): byte pieces,
    leading-space stripping."""
    tok = load_tokenizer(both)
    rng = random.Random(seed)
    byte_ids = [i for i in range(tok.vocab_size) if tok.token_kind(i) == "byte"]
    assert len(byte_ids) == 256
    for _ in range(200):
        ids = [rng.choice(byte_ids) if rng.random() < 0.5 else rng.randrange(tok.vocab_size)
               for _ in range(rng.randrange(1, 30))]
        assert "".join(_stream(tok, ids)) == tok.decode(ids), ids
    for text in CORPUS:
        ids = tok.encode(text)
        chunks = _stream(tok, ids)
        assert "".join(chunks) == tok.decode(ids)
        if REPLACEMENT_CHAR not in tok.decode(ids):
            assert not any(REPLACEMENT_CHAR in c for c in chunks)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def tokonly(tmp_path, family) -> Path:
    """A directory holding only tokenizer.json and tokenizer_config.json."""
    return _copy(shared_path("fixtures", "tokenizers", family), tmp_path / family)


def test_cli_tokenize_detokenize_on_tokenizer_only_directory(cli, tokonly, hf):
    text = "Hello 🦙 世界\n\tdon't <|im_end|><|end_of_text|>"  # one is special in each
    want = hf(text, split_special_tokens=True)["input_ids"]
    code, out, err = cli("tokenize", "-m", tokonly, "--ids", text)
    assert (code, err) == (0, "") and [int(w) for w in out.split()] == want
    code, out, _ = cli("tokenize", "-m", tokonly, "--count", text)
    assert out == f"{len(want)}\n"
    code, out, _ = cli("tokenize", "-m", tokonly, "--json", text)
    doc = json.loads(out)
    assert doc["ids"] == want and doc["roundtrip"]["ok"] and doc["tokenizer"] == "tokenizer.json"
    assert [t["piece"] for t in doc["tokens"]] == hf.convert_ids_to_tokens(want)
    assert b"".join(bytes(t["bytes"]) for t in doc["tokens"]) == text.encode()
    special = hf(text)["input_ids"]
    code, out, _ = cli("tokenize", "-m", tokonly, "--ids", "--special", text)
    assert [int(w) for w in out.split()] == special != want
    code, out, _ = cli("tokenize", "-m", tokonly, "--ids", "--no-bos", text)
    assert [int(w) for w in out.split()] == hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    code, out, _ = cli("detokenize", "-m", tokonly, *map(str, want))
    assert (code, out) == (0, text)
    code, out, _ = cli("detokenize", "-m", tokonly, *map(str, special))
    assert out == hf.decode(special, skip_special_tokens=True)
    code, out, _ = cli("detokenize", "-m", tokonly, "--special", *map(str, special))
    assert out == hf.decode(special) == text
    code, out, _ = cli("detokenize", "-m", tokonly, "--json", *map(str, want))
    assert json.loads(out)["text"] == text
    code, out, _ = cli("tokenize", "-m", tokonly, text)  # the table
    assert code == 0 and "ĠðŁ" in out and "20 f0 9f" in out


def test_cli_table_shows_byte_level_pieces_and_bytes(cli, tokonly):
    code, out, _ = cli("tokenize", "-m", tokonly, " the\nend")
    assert code == 0
    rows = {line.split()[2]: line.split()[3:-1] for line in out.splitlines()[1:]
            if line.strip() and line.split()[0].isdigit()}
    assert rows["Ġthe"] == ["20", "74", "68", "65"]
    assert any(k.startswith("Ċ") for k in rows)


def test_cli_tokenizer_only_directory_never_imports_torch(tokonly):
    d = str(tokonly)
    code = (
        "import sys\n"
        "from llmcli.cli.app import main\n"
        f"for args in (['tokenize', '-m', {d!r}, 'Hello 🦙', '--json'],\n"
        f"             ['tokenize', '-m', {d!r}, '--special', '<|im_end|>'],\n"
        f"             ['detokenize', '-m', {d!r}, '9707', '11162']):\n"
        "    sys.argv = ['llmcli', *args]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "    print()\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('TORCH', bad[:3])\n"
        "sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "TORCH []" in proc.stdout


def test_cli_model_commands_need_config(cli, tokonly):
    code, _, err = cli("logits", "-m", tokonly, "hi")
    assert code == 1 and "config.json" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- a model with a tokenizer.json
@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    """A random tiny Llama whose directory holds a byte-level BPE tokenizer.json trained here
    (GPT-2 style: ByteLevel pre-tokenizer and decoder, 400 ids, two special tokens) →
    ``(model_dir, hf_model)``."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, trainers

    from conftest import make_checkpoint

    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["Once upon a time there was a little girl named Lily. 🦙 世界", "def f(x):\n\treturn x"]
    rust.train_from_iterator(corpus * 50, trainer=trainer)
    model_dir, hf_model = make_checkpoint(tmp_path_factory.mktemp("bpe"), vocab_size=rust.get_vocab_size(),
                                          bos_token_id=None, eos_token_id=0)
    rust.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
         "eos_token": "<|endoftext|>", "clean_up_tokenization_spaces": False}))
    return model_dir, hf_model


def _run(*args, cwd):
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "llmcli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=180,
                          stdin=subprocess.DEVNULL)


def test_generate_with_a_tokenizer_json_model_equals_transformers(bpe_model, tmp_path):
    import torch

    model_dir, hf_model = bpe_model
    hf_tok = _auto(model_dir)
    prompt = "Once upon a time 🦙"
    prompt_ids = hf_tok(prompt)["input_ids"]
    assert prompt_ids == load_tokenizer(model_dir).encode(prompt)
    proc = _run("generate", "-m", model_dir, prompt, "-n", "24", "--temp", "0", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    *events, done = [json.loads(line) for line in proc.stdout.splitlines()]
    assert done["done"] is True and done["tokens"] == len(events)  # the last line: stop, timings
    ids = [e["id"] for e in events]
    with torch.no_grad():
        want = hf_model.generate(torch.tensor([prompt_ids]), max_new_tokens=24, do_sample=False,
                                 eos_token_id=0, pad_token_id=0)[0, len(prompt_ids):].tolist()
    assert ids == want[:len(ids)] and (len(ids) == 24 or want[len(ids) - 1] == 0)
    tok = load_tokenizer(model_dir)
    assert [e["piece"] for e in events] == [tok.piece(i) for i in ids]
    assert "".join(e["text"] for e in events) == tok.decode(ids)
    plain = _run("generate", "-m", model_dir, prompt, "-n", "24", "--temp", "0", cwd=tmp_path)
    assert plain.returncode == 0 and plain.stdout.rstrip("\n") == tok.decode(ids).rstrip("\n")
    special = _run("tokenize", "-m", model_dir, "--ids", "--special", "x<|im_end|>", cwd=tmp_path)
    assert special.stdout.split()[-1] == str(tok.token_to_id("<|im_end|>"))
    topk = _run("topk", "-m", model_dir, "--special", "--json", "x<|im_end|>", cwd=tmp_path)
    assert topk.returncode == 0, topk.stderr
    assert json.loads(topk.stdout)["tokens"][-1]["piece"] == "<|im_end|>"
