"""A GGUF vocabulary (``tokenizer.ggml.*``) → Hugging Face tokenizer files.

llama.cpp's converter (``convert_hf_to_gguf.py``) stores a tokenizer as arrays of tokens,
token types, scores or merges, special token ids and flags; ``src/llama-vocab.cpp`` says how
llama.cpp reads them back. :func:`build_vocab` rebuilds, per ``tokenizer.ggml.model``:

* ``llama`` (sentencepiece): ``tokenizer.model`` (:func:`~llmcli.convert.sp_model.build_sp_model`).
* ``gpt2`` (byte-level BPE): ``tokenizer.json``, built with the ``tokenizers`` library: a
  ``BPE`` model whose vocabulary is every token at its id and whose merges are
  ``tokenizer.ggml.merges`` in order; the pre-tokenizer of ``tokenizer.ggml.pre``
  (:mod:`llmcli.convert.bpe_pretokenizers`: a ``Sequence`` of isolating ``Split`` regexes, then
  ``ByteLevel(use_regex=False)``); a ``ByteLevel`` decoder; CONTROL tokens (type 3) as special
  added tokens and USER_DEFINED tokens (type 4) as ordinary added tokens, both matched in the
  text before pre-tokenization, as llama.cpp and Hugging Face do.
* ``bert`` (WordPiece): ``tokenizer.json`` with ``BertNormalizer`` + ``BertPreTokenizer`` +
  ``WordPiece``. llama.cpp stores WordPiece tokens in "phantom space" form (a word-initial
  piece ``▁the``, a continuation ``ing`` for Hugging Face's ``##ing``); that is undone.

Every kind also gets ``tokenizer_config.json``: ``bos_token``/``eos_token``/``unk_token``/
``pad_token`` strings, ``add_bos_token``/``add_eos_token`` (``tokenizer.ggml.add_bos_token``
etc., else llama.cpp's default for the model and pre-tokenizer), ``clean_up_tokenization_spaces``,
``chat_template`` (``tokenizer.chat_template``) and ``tokenizer_class``. The BOS/EOS rule is
also in ``tokenizer.json``'s post-processor (a ``TemplateProcessing`` when something is added),
so ``tokenizers`` and transformers add the same tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llmcli.errors import LLMCLIError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
#: ``tokenizer.ggml.model`` values :func:`build_vocab` converts.
SUPPORTED_MODELS = ("llama", "gpt2", "bert")
_SPACE = "\u2581"


@dataclass
class VocabFiles:
    """Tokenizer files rebuilt from a GGUF vocabulary, and what was done to make them.

    files: file name → contents (``tokenizer.json`` or ``tokenizer.model``, and
        ``tokenizer_config.json``).
    kind: ``"sentencepiece"``, ``"bpe"`` or ``"wordpiece"``.
    vocab_size: number of token ids.
    bos_token_id / eos_token_ids: for ``generation_config.json`` and ``config.json``
        (eos: ``tokenizer.ggml.eos_token_id`` then the end-of-turn/-message ids, when set).
    pad_token_id: or None.
    notes: sentences for README.md.
    """

    files: dict[str, bytes]
    kind: str
    vocab_size: int
    bos_token_id: int | None
    eos_token_ids: list[int]
    pad_token_id: int | None = None
    notes: list[str] = field(default_factory=list)


def build_vocab(path, meta: dict[str, Any], context_length: int | None = None) -> VocabFiles:
    """Rebuild the tokenizer of GGUF metadata ``meta`` (``tokenizer.ggml.*`` keys).

    ``path`` names the file in messages; ``context_length`` becomes ``model_max_length``.

    Raises:
        LLMCLIError: a tokenizer model other than :data:`SUPPORTED_MODELS`, a pre-tokenizer
            llama.cpp does not know, missing tokens or merges, arrays whose lengths differ,
            duplicate tokens, or a vocabulary ``tokenizers``/sentencepiece rejects.
    """
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model is None:
        raise LLMCLIError(f"{path}: tokenizer.ggml.model is missing; pass --tokenizer")
    if model not in SUPPORTED_MODELS:
        kind = {"t5": "T5 unigram", "rwkv": "RWKV", "plamo2": "PLaMo-2", "gemma4": "Gemma 4 BPE",
                "no_vocab": "no vocabulary", "none": "no vocabulary", "ugm": "unigram",
                "hybriddna": "HybridDNA", "whitespace": "whitespace"}.get(model, "unknown")
        raise LLMCLIError(f"{path}: tokenizer.ggml.model {model!r} ({kind}) is not supported "
                          f"(supported: {', '.join(SUPPORTED_MODELS)}); pass a sentencepiece model "
                          "with --tokenizer")
    if not tokens:
        raise LLMCLIError(f"{path}: tokenizer.ggml.tokens is missing; pass --tokenizer")
    n = len(tokens)
    types = meta.get("tokenizer.ggml.token_type")
    if types is None:
        types = [NORMAL] * n
    if len(types) != n:
        raise LLMCLIError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
    specials = _special_ids(path, meta, model, n)
    if model == "llama":
        return _sentencepiece(path, meta, tokens, types, specials, context_length)
    if model == "gpt2":
        return _bpe(path, meta, tokens, types, specials, context_length)
    return _wordpiece(path, meta, tokens, types, specials, context_length)


# ----------------------------------------------------------------------------- special ids
#: llama.cpp's default special ids per tokenizer model (``llama_vocab::impl::load``).
_DEFAULT_IDS = {
    "llama": {"bos": 1, "eos": 2, "unknown": 0},
    "bert": {"bos": 101, "unknown": 100, "seperator": 102, "padding": 0, "mask": 103},
    "gpt2": {"bos": 11, "eos": 11},
}
_ID_KEYS = ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "cls", "mask")


def _special_ids(path, meta: dict, model: str, n: int) -> dict[str, int | None]:
    """``tokenizer.ggml.<name>_token_id`` for each special token (llama.cpp's defaults when
    absent; ``seperator`` is GGUF's spelling). An id outside the vocabulary disables it, as in
    llama.cpp."""
    out: dict[str, int | None] = {}
    for key in _ID_KEYS:
        value = meta.get(f"tokenizer.ggml.{key}_token_id", _DEFAULT_IDS[model].get(key))
        out[key] = value if isinstance(value, int) and 0 <= value < n else None
    if model == "bert" and "tokenizer.ggml.bos_token_id" not in meta and out["cls"] is not None:
        out["bos"] = out["cls"]  # BERT's "BOS" is [CLS]
    return out


def _flag(meta: dict, key: str, default: bool) -> bool:
    value = meta.get(f"tokenizer.ggml.{key}")
    return default if value is None else bool(value)


def _eos_ids(specials: dict) -> list[int]:
    ids = []
    for key in ("eos", "eot", "eom"):
        if specials[key] is not None and specials[key] not in ids:
            ids.append(specials[key])
    return ids


def _config(tokens: list[str], specials: dict, *, tokenizer_class: str, add_bos: bool,
            add_eos: bool, clean_spaces: bool, chat_template: str | None,
            context_length: int | None, extra: dict | None = None) -> bytes:
    """``tokenizer_config.json`` as transformers reads it."""
    def name(key):
        i = specials.get(key)
        return None if i is None else tokens[i]

    cfg: dict[str, Any] = {"tokenizer_class": tokenizer_class,
                           "bos_token": name("bos"), "eos_token": name("eos"),
                           "unk_token": name("unknown"), "pad_token": name("padding"),
                           "add_bos_token": add_bos, "add_eos_token": add_eos,
                           "clean_up_tokenization_spaces": clean_spaces}
    if context_length:
        cfg["model_max_length"] = context_length
    cfg.update(extra or {})
    if chat_template:
        cfg["chat_template"] = chat_template
    return (json.dumps(cfg, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _chat_template(path, meta: dict, notes: list[str]) -> str | None:
    template = meta.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise LLMCLIError(f"{path}: tokenizer.chat_template is not a string")
    named = sorted(k for k in meta if k.startswith("tokenizer.chat_template."))
    if named:
        notes.append("Named chat templates (" + ", ".join(k.split(".", 2)[2] for k in named)
                     + ") were not copied; only the default tokenizer.chat_template is.")
    if template:
        notes.append("tokenizer_config.json's chat_template is tokenizer.chat_template from the "
                     "file, unchanged.")
    return template or None


def _check_unique(path, tokens: list[str], what: str) -> None:
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise LLMCLIError(f"{path}: tokens {seen[t]} and {i} are both {t!r}; a {what} "
                              "vocabulary needs unique tokens")
        seen[t] = i


def _post_processor(tokens: list[str], specials: dict, add_bos: bool, add_eos: bool,
                    add_sep: bool, path):
    """``TemplateProcessing`` adding BOS / EOS / SEP around the text, or None."""
    from tokenizers import processors

    before, after = [], []
    for key, on, where in (("bos", add_bos, before), ("eos", add_eos, after),
                           ("seperator", add_sep, after)):
        if not on:
            continue
        if specials[key] is None:
            raise LLMCLIError(f"{path}: tokenizer.ggml.add_{'sep' if key == 'seperator' else key}"
                              f"_token is true but there is no {key} token id")
        where.append(specials[key])
    if not before and not after:
        return None
    names = [tokens[i] for i in before], [tokens[i] for i in after]
    single = " ".join(names[0] + ["$A:0"] + names[1])
    pair = " ".join(names[0] + ["$A:0"] + names[1] + names[0] + ["$B:1"] + names[1])
    used = {tokens[i]: i for i in before + after}
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(used.items()))


def _add_tokens(tok, path, tokens: list[str], types: list[int], *, normalized_default: bool) -> list[int]:
    """Add CONTROL (special) and USER_DEFINED tokens to ``tok`` at their ids → the ids."""
    from tokenizers import AddedToken

    added = [i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED)]
    special = [AddedToken(tokens[i], special=True, normalized=False) for i in added if types[i] == CONTROL]
    user = [AddedToken(tokens[i], special=False, normalized=normalized_default)
            for i in added if types[i] == USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)
    for i in added:
        if tok.token_to_id(tokens[i]) != i:  # ids are kept because every token is in the model's vocab
            raise LLMCLIError(f"{path}: added token {tokens[i]!r} would get id "
                              f"{tok.token_to_id(tokens[i])} instead of {i}")
    return added


# ----------------------------------------------------------------------------- gpt2 (BPE)
def _bpe(path, meta, tokens, types, specials, context_length) -> VocabFiles:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from llmcli.convert.bpe_pretokenizers import PRE_TOKENIZERS, PRE_TYPES

    notes: list[str] = []
    n = len(tokens)
    pre_name = meta.get("tokenizer.ggml.pre")
    if pre_name is None:
        pre_name = "default"
        notes.append("tokenizer.ggml.pre is absent: llama.cpp's 'default' pre-tokenizer was used "
                     "(llama.cpp warns that this degrades quality; the original split is unknown).")
    if pre_name not in PRE_TOKENIZERS:
        raise LLMCLIError(f"{path}: tokenizer.ggml.pre {pre_name!r} is not a pre-tokenizer llama.cpp "
                          "knows, so how the original split text is unknown")
    name = PRE_TOKENIZERS[pre_name]
    pre = PRE_TYPES[name.pre_type]
    merges_raw = meta.get("tokenizer.ggml.merges")
    if not merges_raw:
        raise LLMCLIError(f"{path}: tokenizer.ggml.merges is missing; a BPE vocabulary needs its merges")
    _check_unique(path, tokens, "BPE")
    merges = []
    for k, m in enumerate(merges_raw):
        cut = m.find(" ", 1)  # llama.cpp: the first space after the first character
        if cut < 0:
            raise LLMCLIError(f"{path}: tokenizer.ggml.merges[{k}] {m!r} is not 'left right'")
        merges.append((m[:cut], m[cut + 1:]))
    vocab = {t: i for i, t in enumerate(tokens)}
    byte_fallback = not pre.byte_level and all(f"<0x{b:02X}>" in vocab for b in range(256))
    try:
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=name.ignore_merges,
                           byte_fallback=byte_fallback, fuse_unk=False)
    except Exception as exc:
        raise LLMCLIError(f"{path}: the BPE vocabulary and merges do not fit together ({exc})") from None
    tok = Tokenizer(model)
    norms = []
    if name.normalizer == "NFC":
        norms.append(normalizers.NFC())
    if name.escape_whitespaces:
        norms.append(normalizers.Replace(" ", _SPACE))
    if norms:
        tok.normalizer = norms[0] if len(norms) == 1 else normalizers.Sequence(norms)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
    if pre.byte_level:
        splits.append(pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False))
        tok.decoder = decoders.ByteLevel()
    else:
        parts = [decoders.Replace(_SPACE, " ")] if name.escape_whitespaces else []
        tok.decoder = decoders.Sequence(parts + [decoders.ByteFallback(), decoders.Fuse()])
    tok.pre_tokenizer = splits[0] if len(splits) == 1 else pre_tokenizers.Sequence(splits)
    added = _add_tokens(tok, path, tokens, types, normalized_default=True)

    if name.no_bos:
        specials["bos"] = None
    add_bos = _flag(meta, "add_bos_token", name.add_bos)
    add_eos = _flag(meta, "add_eos_token", False)
    add_sep = _flag(meta, "add_sep_token", name.add_sep)
    if add_sep and specials["seperator"] is None and "tokenizer.ggml.add_sep_token" not in meta:
        add_sep = False
        notes.append(f"llama.cpp appends a separator token for '{pre_name}', but the file names "
                     "none (tokenizer.ggml.seperator_token_id): nothing is appended.")
    post = _post_processor(tokens, specials, add_bos, add_eos, add_sep, path)
    tok.post_processor = post if post is not None else processors.ByteLevel(trim_offsets=False)
    template = _chat_template(path, meta, notes)
    kinds = f"{sum(t == CONTROL for t in types)} control, {sum(t == USER_DEFINED for t in types)} user-defined"
    notes.insert(0, (
        f"tokenizer.json was rebuilt from the GGUF vocabulary: byte-level BPE, {n} tokens, "
        f"{len(merges)} merges, {len(added)} added tokens ({kinds}); pre-tokenizer "
        f"'{pre_name}' = llama.cpp's {name.pre_type} ({len(pre.regexes)} regex"
        f"{'es' if len(pre.regexes) > 1 else ''}, from {pre.source})"
        + (", ignore_merges" if name.ignore_merges else "")
        + (f", {name.normalizer} normalization" if name.normalizer else "")
        + (", raw UTF-8 with byte fallback" if not pre.byte_level else "") + "."))
    notes.append(_bos_note(meta, add_bos, add_eos, specials, tokens))
    config = _config(tokens, specials, tokenizer_class="PreTrainedTokenizerFast", add_bos=add_bos,
                     add_eos=add_eos, clean_spaces=name.clean_spaces, chat_template=template,
                     context_length=context_length)
    return VocabFiles({"tokenizer.json": tok.to_str(pretty=False).encode("utf-8"),
                       "tokenizer_config.json": config}, "bpe", n, specials["bos"],
                      _eos_ids(specials), specials["padding"], notes)


def _bos_note(meta, add_bos, add_eos, specials, tokens) -> str:
    def src(key):
        return "from the file" if f"tokenizer.ggml.{key}" in meta else "llama.cpp's default"

    def name(key):
        return "none" if specials[key] is None else f"{tokens[specials[key]]!r} = {specials[key]}"

    return (f"BOS {name('bos')}, EOS {name('eos')}; add_bos_token {str(add_bos).lower()} "
            f"({src('add_bos_token')}), add_eos_token {str(add_eos).lower()} ({src('add_eos_token')}).")


# ----------------------------------------------------------------------------- bert (WordPiece)
def _wordpiece(path, meta, tokens, types, specials, context_length) -> VocabFiles:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    n = len(tokens)
    notes: list[str] = []
    hf = []
    for t in tokens:  # undo convert_hf_to_gguf's phantom-space form
        if t.startswith(_SPACE):
            hf.append(t[1:])
        elif t.startswith("[") and t.endswith("]"):
            hf.append(t)
        else:
            hf.append("##" + t)
    _check_unique(path, hf, "WordPiece")
    if specials["unknown"] is None:
        raise LLMCLIError(f"{path}: a WordPiece vocabulary needs an unknown token "
                          "(tokenizer.ggml.unknown_token_id)")
    model = models.WordPiece({t: i for i, t in enumerate(hf)}, unk_token=hf[specials["unknown"]],
                             max_input_chars_per_word=100)
    tok = Tokenizer(model)
    lowercase = _flag(meta, "normalizer.lowercase", True)
    strip = _flag(meta, "normalizer.strip_accents", lowercase)
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=strip, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    added = _add_tokens(tok, path, hf, types, normalized_default=False)
    add_bos = _flag(meta, "add_bos_token", True)
    add_eos = _flag(meta, "add_eos_token", False)
    add_sep = _flag(meta, "add_sep_token", True)
    post = _post_processor(hf, specials, add_bos, add_eos, add_sep, path)
    if post is not None:
        tok.post_processor = post
    template = _chat_template(path, meta, notes)
    notes.insert(0, f"tokenizer.json was rebuilt from the GGUF vocabulary: WordPiece, {n} tokens "
                    f"(llama.cpp's '▁word'/'piece' form turned back into 'word'/'##piece'), "
                    f"{len(added)} special tokens, BertNormalizer (lowercase {str(lowercase).lower()}, "
                    f"strip_accents {str(strip).lower()}) and BertPreTokenizer, as Hugging Face's BERT "
                    "tokenizers; llama.cpp's own WordPiece differs in details (no 100-character word limit).")
    notes.append(_bos_note(meta, add_bos, add_eos, specials, hf)
                 + f" SEP {'added' if add_sep else 'not added'}.")
    extra = {"do_lower_case": lowercase}
    for key, hf_key in (("seperator", "sep_token"), ("cls", "cls_token"), ("mask", "mask_token")):
        if specials[key] is not None:
            extra[hf_key] = hf[specials[key]]
    config = _config(hf, specials, tokenizer_class="PreTrainedTokenizerFast", add_bos=add_bos,
                     add_eos=add_eos, clean_spaces=True, chat_template=template,
                     context_length=context_length, extra=extra)
    return VocabFiles({"tokenizer.json": tok.to_str(pretty=False).encode("utf-8"),
                       "tokenizer_config.json": config}, "wordpiece", n, specials["bos"],
                      _eos_ids(specials) or ([specials["seperator"]] if specials["seperator"] is not None else []),
                      specials["padding"], notes)


# ----------------------------------------------------------------------------- llama (SPM)
def _sentencepiece(path, meta, tokens, types, specials, context_length) -> VocabFiles:
    from llmcli.convert.sp_model import build_sp_model

    n = len(tokens)
    notes: list[str] = []
    scores = meta.get("tokenizer.ggml.scores")
    model_type = None
    if scores is None:
        # sentencepiece's BPE trainer writes pieces in merge order with score -(id - offset);
        # scoring by id reproduces that order. A unigram model cannot be rebuilt without scores.
        scores = [0.0 if types[i] != NORMAL else -float(i) for i in range(n)]
        model_type = "BPE"
    elif len(scores) != n:
        raise LLMCLIError(f"{path}: tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
    add_prefix = _flag(meta, "add_space_prefix", True)
    remove_ws = _flag(meta, "remove_extra_whitespaces", False)
    charsmap = meta.get("tokenizer.ggml.precompiled_charsmap")
    built = build_sp_model(
        tokens, scores, types, bos_id=_or(specials["bos"]), eos_id=_or(specials["eos"]),
        unk_id=_or(specials["unknown"]), pad_id=_or(specials["padding"]), model_type=model_type,
        add_dummy_prefix=add_prefix, remove_extra_whitespaces=remove_ws,
        precompiled_charsmap=bytes(charsmap) if charsmap else None, source=str(path))
    how = ("tokenizer.ggml.scores is absent, so the type could not be inferred: it was assumed to "
           "be BPE, and each normal piece was scored minus its id (the merge order sentencepiece's "
           "BPE trainer writes pieces in); if the original was a unigram model, this tokenizer "
           "segments differently — pass the original with --tokenizer"
           if model_type else
           f"sentencepiece {built.model_type} inferred from the scores (whole numbers = BPE)")
    notes.append(
        f"tokenizer.model was built from the GGUF vocabulary ({n} pieces; {how}; byte_fallback "
        f"{str(built.byte_fallback).lower()}, add_dummy_prefix {str(add_prefix).lower()}, "
        f"remove_extra_whitespaces {str(remove_ws).lower()}"
        + ("" if "tokenizer.ggml.remove_extra_whitespaces" in meta else
           " (not recorded in the file; llama.cpp's behaviour)") + ").")
    add_bos = _flag(meta, "add_bos_token", True)
    add_eos = _flag(meta, "add_eos_token", False)
    notes.append(_bos_note(meta, add_bos, add_eos, specials, tokens))
    template = _chat_template(path, meta, notes)
    # PreTrainedTokenizerFast, not LlamaTokenizer: transformers 5 converts tokenizer.model for
    # it with sentencepiece's own rules (46/46 on llama.cpp's llama-spm and phi-3 tests), while
    # its LlamaTokenizer rewrites the whitespace handling (31/46).
    config = _config(tokens, specials, tokenizer_class="PreTrainedTokenizerFast", add_bos=add_bos,
                     add_eos=add_eos, clean_spaces=False, chat_template=template,
                     context_length=context_length)
    return VocabFiles({"tokenizer.model": built.data, "tokenizer_config.json": config},
                      "sentencepiece", n, specials["bos"], _eos_ids(specials), specials["padding"],
                      notes)


def _or(i: int | None) -> int:
    return -1 if i is None else i
