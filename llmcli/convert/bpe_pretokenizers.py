"""How each ``tokenizer.ggml.pre`` name splits text before BPE, as ``tokenizers`` regexes.

A GGUF file names its pre-tokenizer (``tokenizer.ggml.pre``) but does not store it; llama.cpp
maps the name to a ``LLAMA_VOCAB_PRE_TYPE`` and a list of regexes (``src/llama-vocab.cpp``:
the name table in ``llama_vocab::impl::load`` and the regex lists in ``llm_tokenizer_bpe``).
:data:`PRE_TOKENIZERS` holds every name that table knows (llama.cpp as vendored by
``llama-cpp-python`` 0.3.36) and :data:`PRE_TYPES` the splitting of every type, written for
the ``tokenizers`` library's regex engine (Oniguruma):

* llama.cpp applies its regexes one after the other, each one splitting every piece the
  previous ones left into matches and the text between them; that is a ``tokenizers``
  ``Sequence`` of ``Split(Regex(r), behavior="isolated")``, followed by
  ``ByteLevel(use_regex=False)`` for byte-level vocabularies.
* Where llama.cpp rewrote a Hugging Face ``tokenizer.json`` regex for its own engine (it has
  no ``(?i:...)``, and emulates ``[\\p{Lu}...]`` classes with lookaheads), the original, which
  llama.cpp quotes beside its version, is used here: Oniguruma runs it as Hugging Face does.
* llama.cpp's hand-written splitters stand in for two regexes: ``\\p{Han}+`` (Kimi-K2: the
  ``tokenization_kimi.py`` regex llama.cpp quotes in ``src/unicode.cpp``, with Oniguruma's
  ``&&`` class intersection) and ``\\p{AFMoE_digits}`` (digit runs cut into groups of three
  from the right: ``\\p{N}{1,3}(?=(?:\\p{N}{3})*(?!\\p{N}))``).
* ``GPT2``'s regex gains GPT-2's final ``|\\s+`` (llama.cpp omits it; under isolated splitting
  both give the same pieces).

Flags per name (``PreTokenizerName``) follow the same table: ``ignore_merges`` (a whole word
that is in the vocabulary is one token), ``clean_spaces`` (``clean_up_tokenization_spaces``),
``add_bos``/``add_sep`` defaults, and whether the BOS id is disabled. ``normalizer`` adds what
the original ``tokenizer.json`` has and llama.cpp does not model (Qwen's NFC).
"""

from __future__ import annotations

from dataclasses import dataclass

_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
#: GPT-2's regex (the ``ByteLevel`` pre-tokenizer's built-in one).
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
#: llama.cpp's GPT-2 regex without the final ``|\s+`` (used inside its multi-regex lists).
_GPT2_LLAMACPP = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
          + _CONTRACTIONS + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
          r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS
          + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK3_MAIN = (r"[!" '"' r"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
                   r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+"
                   r"|\s+(?!\S)|\s+")
_CJK_DEEPSEEK = "[一-龥ࠀ-一가-\ud7ff]+"
_CJK_KANA = "[一-龥\u3040-ゟ゠-ヿ]+"
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"


@dataclass(frozen=True)
class PreType:
    """One ``LLAMA_VOCAB_PRE_TYPE``: its regexes in order, whether the vocabulary is
    byte-level (GPT-2's byte-to-unicode mapping) or raw UTF-8 with ``<0xNN>`` byte tokens,
    and where the regexes come from."""

    regexes: tuple[str, ...]
    byte_level: bool = True
    source: str = "llama.cpp"


PRE_TYPES: dict[str, PreType] = {
    "DEFAULT": PreType((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_LLAMACPP, r"\p{N}+", "[0-9][0-9][0-9]")),
    "LLAMA3": PreType((_LLAMA3,), source="tokenizer.json"),
    "JAIS2": PreType((_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                      r"[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)"
                      r"|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",),
                     source="tokenizer.json"),
    "DBRX": PreType((_LLAMA3,)),
    "SMAUG": PreType((_LLAMA3,)),
    "DEEPSEEK_LLM": PreType((
        r"[\r\n]",
        r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-"
        r"ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ"
        r"-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
        "\\s?[!-/:-~！-／：-～‘-‟\u3000-。]+",
        r"\s+$",
        _CJK_DEEPSEEK,
        r"\p{N}+")),
    "DEEPSEEK3_LLM": PreType((r"\p{N}{1,3}", _CJK_KANA, _DEEPSEEK3_MAIN)),
    "HUNYUAN_DENSE": PreType((r"\p{N}{1,3}", _CJK_KANA, _DEEPSEEK3_MAIN)),
    "JOYAI_LLM": PreType((r"\p{N}{1,3}", _CJK_KANA, _DEEPSEEK3_MAIN)),
    "HY_V4": PreType((r"\p{N}{1,3}", _CJK_KANA, _DEEPSEEK3_MAIN)),
    "SPARK2_5": PreType((
        r"\p{N}{1,3}", _CJK_KANA,
        r"[!" '"' r"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
        r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+",
        r"\p{N}")),
    "YOUTU": PreType((
        "[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|" + _CJK_KANA,
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        + _CONTRACTIONS + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
        r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS
        + r"?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")),
    "DEEPSEEK_CODER": PreType((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_DEEPSEEK, r"\p{N}")),
    "FALCON": PreType((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_LLAMACPP, "[0-9][0-9][0-9]")),
    "STARCODER": PreType((r"\p{N}", _GPT2_LLAMACPP)),
    "GPT2": PreType((GPT2_REGEX,), source="GPT-2's ByteLevel regex"),
    "QWEN2": PreType((_QWEN2,), source="tokenizer.json"),
    "QWEN35": PreType((_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                       r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
                      source="tokenizer.json"),
    "BLOOM": PreType((_BLOOM,)),
    "CHATGLM4": PreType((_LLAMA3,)),
    "VIKING": PreType((_BLOOM, r"\p{N}")),
    "TEKKEN": PreType((r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                       r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                       r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
                      source="tokenizer.json"),
    "CHAMELEON": PreType(("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                          r"([\t\n]|    |  )", r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", _GPT2_LLAMACPP)),
    "GPT4O": PreType((_GPT4O,), source="tokenizer.json"),
    # llama.cpp's own variant of GPT4O's regex "with \p{M} added": the original already has it.
    "GRANITE_EMB_MULTI": PreType((_GPT4O,), source="tokenizer.json"),
    "TINY_AYA": PreType((r"\d{1,3}(?=(?:\d{3})*\b)", _GPT4O),
                        source="tokenizer.json"),
    "KIMI_K2": PreType((
        r"[\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"
        r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+" + _CONTRACTIONS
        + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"
        r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*" + _CONTRACTIONS
        + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
        source="tokenization_kimi.py"),
    "SUPERBPE": PreType((r"\p{N}+", r"(?=(\d{3})+(?!\d))")),
    "BAILINGMOE": PreType((r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}"
                           r"| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",),
                          source="tokenizer.json"),
    "SEED_CODER": PreType((_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}"
                           r"| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",),
                          source="tokenizer.json"),
    "UFAKZEKA": PreType((r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                         r"|\s+(?!\S)|\s+",)),
    "GROK_2": PreType((_QWEN2,), source="tokenizer.json"),
    "AFMOE": PreType((
        r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))",
        "[一-鿿㐀-䶿豈-\ufaff\u3040-ゟ゠-ヿ･-ﾟ⼀-\u2fdfเ-\u0e7f\u0e80-\u0effក-\u17ffက-႟ꩠ-ꩿꧠ-\ua9ff"
        "가-\ud7afᄀ-ᇿ]+",
        _DEEPSEEK3_MAIN)),
    "LAGUNA": PreType((r"[^\n]+|[\n]+", _QWEN2)),
    "EXAONE_MOE": PreType((_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+"
                           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",),
                          source="tokenizer.json"),
    "MINICPM5": PreType((r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+"
                         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                        source="tokenizer.json"),
    # SentencePiece-style BPE on raw UTF-8 (spaces escaped as ▁, <0xNN> byte tokens).
    "GEMMA4": PreType((r"[^\n]+|[\n]+",), byte_level=False),
    "SARVAM_MOE": PreType((r"[^\n]+|[\n]+",), byte_level=False),
    "WHITESPACE": PreType((r"\S+",), byte_level=False),
}

#: Types whose regex list is another type's (one ``case`` group in llama.cpp's switch).
_SAME_REGEXES = {
    "MPT": "GPT2", "OLMO": "GPT2", "JAIS": "GPT2", "TRILLION": "GPT2", "GRANITE_DOCLING": "GPT2",
    "REFACT": "STARCODER", "COMMAND_R": "STARCODER", "SMOLLM": "STARCODER", "CODESHELL": "STARCODER",
    "EXAONE": "STARCODER", "MINERVA": "STARCODER", "MELLUM2": "STARCODER", "STABLELM2": "QWEN2",
    "HUNYUAN": "QWEN2", "SOLAR_OPEN": "QWEN2", "PORO": "BLOOM", "GPT3_FINNISH": "BLOOM",
    "MINIMAX_M2": "GPT4O",
}
for _alias, _same in _SAME_REGEXES.items():
    PRE_TYPES[_alias] = PRE_TYPES[_same]


@dataclass(frozen=True)
class PreTokenizerName:
    """What one ``tokenizer.ggml.pre`` value means to llama.cpp: its type and flags."""

    pre_type: str
    ignore_merges: bool = False
    clean_spaces: bool = True        # llama.cpp's BPE default
    add_bos: bool = False            # default when tokenizer.ggml.add_bos_token is absent
    add_sep: bool = False
    escape_whitespaces: bool = False
    no_bos: bool = False             # the BOS id is disabled (ChatGLM, GLM-4)
    normalizer: str | None = None    # from the original tokenizer.json


def _names(pre_type: str, *names: str, **flags) -> dict[str, PreTokenizerName]:
    return {n: PreTokenizerName(pre_type, **flags) for n in names}


#: Every ``tokenizer.ggml.pre`` value llama.cpp accepts for a BPE vocabulary.
PRE_TOKENIZERS: dict[str, PreTokenizerName] = {
    **_names("DEFAULT", "default"),
    **_names("MINICPM5", "minicpm5", ignore_merges=True),
    **_names("LLAMA3", "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
             "midm-2.0", "lfm2", "jina-v5-nano", ignore_merges=True, add_bos=True),
    **_names("DEEPSEEK_LLM", "deepseek-llm", clean_spaces=False),
    **_names("DEEPSEEK_CODER", "deepseek-coder", clean_spaces=False),
    **_names("DEEPSEEK3_LLM", "deepseek-v3", clean_spaces=False),
    **_names("SPARK2_5", "spark2_5", clean_spaces=False),
    **_names("YOUTU", "youtu", clean_spaces=False, ignore_merges=True),
    **_names("FALCON", "falcon"),
    **_names("MPT", "mpt"),
    **_names("STARCODER", "starcoder"),
    **_names("GPT2", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
             "a.x-4.0", "mellum", "modern-bert", "exaone4"),
    **_names("JAIS2", "jais-2"),
    **_names("GEMMA4", "gemma4", "granite-embed-multi-311m", escape_whitespaces=True),
    **_names("SARVAM_MOE", "sarvam-moe", escape_whitespaces=True, clean_spaces=False),
    **_names("GPT2", "jina-v1-en", "jina-v2-code", "roberta-bpe", add_sep=True),
    **_names("WHITESPACE", "whitespace"),
    **_names("REFACT", "refact"),
    **_names("COMMAND_R", "command-r", clean_spaces=False),
    **_names("QWEN2", "qwen2", clean_spaces=False, normalizer="NFC"),
    **_names("QWEN2", "deepseek-r1-qwen", "kormo", "f2llmv2", clean_spaces=False),
    **_names("QWEN35", "qwen35", clean_spaces=False, normalizer="NFC"),
    **_names("STABLELM2", "stablelm2"),
    **_names("OLMO", "olmo"),
    **_names("DBRX", "dbrx"),
    **_names("SMAUG", "smaug-bpe"),
    **_names("PORO", "poro-chat", clean_spaces=False),
    **_names("CHATGLM4", "chatglm-bpe", no_bos=True),
    **_names("CHATGLM4", "glm4", "glm5", no_bos=True, ignore_merges=True),
    **_names("VIKING", "viking", clean_spaces=False),
    **_names("JAIS", "jais"),
    **_names("TEKKEN", "tekken", clean_spaces=False, ignore_merges=True, add_bos=True),
    **_names("SMOLLM", "smollm", clean_spaces=False),
    **_names("CODESHELL", "codeshell"),
    **_names("BLOOM", "bloom"),
    **_names("GPT3_FINNISH", "gpt3-finnish"),
    **_names("EXAONE", "exaone"),
    **_names("GPT2", "exaone4"),
    **_names("EXAONE_MOE", "exaone-moe"),
    **_names("CHAMELEON", "chameleon", add_bos=True, clean_spaces=False),
    **_names("MINERVA", "minerva-7b"),
    **_names("QWEN2", "megrez"),
    **_names("GPT4O", "gpt-4o", "llama4", "kanana2", "talkie", clean_spaces=False),
    **_names("GRANITE_EMB_MULTI", "granite-embed-multi-97m", clean_spaces=False, ignore_merges=True),
    **_names("TINY_AYA", "tiny_aya", "cohere2moe", clean_spaces=False),
    **_names("SUPERBPE", "superbpe", clean_spaces=False),
    **_names("TRILLION", "trillion", clean_spaces=False),
    **_names("GRANITE_DOCLING", "granite-docling", clean_spaces=False),
    **_names("BAILINGMOE", "bailingmoe", "bailingmoe2", "llada-moe", clean_spaces=False),
    **_names("SEED_CODER", "seed-coder", clean_spaces=False),
    **_names("HUNYUAN", "hunyuan", clean_spaces=False),
    **_names("HUNYUAN_DENSE", "hunyuan-dense", clean_spaces=False),
    **_names("HY_V4", "hy_v4", clean_spaces=False),
    **_names("JOYAI_LLM", "joyai-llm", clean_spaces=False),
    **_names("KIMI_K2", "kimi-k2", clean_spaces=False),
    **_names("UFAKZEKA", "ufakzeka", clean_spaces=False),
    **_names("GROK_2", "grok-2", clean_spaces=False),
    **_names("AFMOE", "afmoe", clean_spaces=False),
    **_names("LAGUNA", "laguna", clean_spaces=False),
    **_names("MINIMAX_M2", "minimax-m2", clean_spaces=False),
    **_names("SOLAR_OPEN", "solar-open", clean_spaces=False),
    **_names("MELLUM2", "mellum2"),
}
