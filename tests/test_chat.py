"""Chat templates (llmcli/chat.py) against transformers' ``apply_chat_template``.

The reference is transformers itself (a test-only dependency): for the real templates of
SmolLM2, Llama 3 and Qwen3 (``../shared`` fixtures; those tests skip without it), and for small
templates written here to exercise each helper transformers gives templates (``tojson``,
``namespace``, ``dict``, ``raise_exception``, loop controls, ``{% generation %}``, whitespace
control), rendered by a transformers tokenizer built in memory.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime
from pathlib import Path

import pytest

from conftest import shared_path
from llmcli.chat import (ChatTemplate, end_of_turn, find_chat_template, load_chat_template,
                         special_tokens)
from llmcli.errors import LLMCLIError

transformers = pytest.importorskip("transformers")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Conversations every real template is checked on: one user turn, a system message, several
#: turns, and non-ASCII text (accents, CJK, emoji, RTL, a combining mark).
CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is 2+2?"}],
    "system": [{"role": "system", "content": "You are a terse assistant."},
               {"role": "user", "content": "What is 2+2?"}],
    "multi_turn": [{"role": "system", "content": "Answer in one word."},
                   {"role": "user", "content": "Capital of France?"},
                   {"role": "assistant", "content": "Paris."},
                   {"role": "user", "content": "And of Italy?"},
                   {"role": "assistant", "content": "Rome."},
                   {"role": "user", "content": "  And Spain?  \n"}],
    "non_ascii": [{"role": "user", "content": "Café déjà vu — 日本語のテキスト 😀👍🏽 שלום e\u0301 <b>&amp;</b>"},
                  {"role": "assistant", "content": "Très bien ! 你好。"},
                  {"role": "user", "content": "Ça va ? \t tabs\nand lines"}],
}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --- the real templates ------------------------------------------------------------------

def gguf_chat_dir(tmp_path: Path) -> Path:
    """A directory holding SmolLM2's chat template and special tokens, read from its GGUF
    metadata with the gguf package (what ``llmcli convert`` writes to tokenizer_config.json)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(shared_path("fixtures", "realmodels", "smollm2-135m-instruct", SMOLLM2_GGUF)))
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    config = {"chat_template": fields["tokenizer.chat_template"].contents(),
              "bos_token": tokens[fields["tokenizer.ggml.bos_token_id"].contents()],
              "eos_token": tokens[fields["tokenizer.ggml.eos_token_id"].contents()]}
    out = tmp_path / "smollm2"
    out.mkdir()
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """name -> (llmcli ChatTemplate, transformers tokenizer) for SmolLM2, Llama 3, Qwen3."""
    from transformers import AutoTokenizer

    out = {}
    for name in ("llama3", "qwen3"):
        directory = shared_path("fixtures", "tokenizers", name)
        out[name] = (load_chat_template(directory), _quiet(AutoTokenizer.from_pretrained, str(directory)))
    smol_dir = shared_path("fixtures", "realmodels", "smollm2-135m-instruct")
    ours = load_chat_template(gguf_chat_dir(tmp_path_factory.mktemp("chat")))
    out["smollm2"] = (ours, _quiet(AutoTokenizer.from_pretrained, str(smol_dir), gguf_file=SMOLLM2_GGUF))
    return out


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", ["smollm2", "llama3", "qwen3"])
def test_real_template_renders_like_transformers(real, name, conversation, add_generation_prompt):
    ours, reference = real[name]
    messages = CONVERSATIONS[conversation]
    expected = reference.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    assert ours.render(messages, add_generation_prompt=add_generation_prompt) == expected
    assert messages == CONVERSATIONS[conversation]  # not modified


def test_real_special_tokens_match_transformers(real):
    for name, (ours, reference) in real.items():
        if name == "smollm2":  # our test directory has only bos/eos (the GGUF has more ids)
            assert ours.special_tokens == {k: reference.special_tokens_map[k] for k in ("bos_token", "eos_token")}
        else:
            assert ours.special_tokens == reference.special_tokens_map, name


def test_qwen3_thinking_switch_and_reasoning_like_transformers(real):
    """Template variables passed by the caller (Qwen3's ``enable_thinking``) and an assistant
    message with ``<think>`` reasoning, which Qwen3's template takes apart."""
    ours, reference = real["qwen3"]
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "<think>\nThe user greets.\n</think>\n\nHello!"},
                {"role": "user", "content": "Bye"}]
    for kwargs in ({}, {"enable_thinking": False}, {"enable_thinking": True}):
        expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        assert ours.render(messages, add_generation_prompt=True, **kwargs) == expected
    assert "<think>\n\n</think>" in ours.render(messages, enable_thinking=False)


def test_real_end_of_turn_ids(real):
    """Llama 3 ends turns with <|eot_id|> (its eos_token is <|end_of_text|>); Qwen3 and SmolLM2
    with <|im_end|>, their eos_token. Ids from the tokenizers' own vocabularies."""
    for name, expected_texts in (("llama3", ["<|end_of_text|>", "<|eot_id|>"]),
                                 ("qwen3", ["<|im_end|>"]), ("smollm2", ["<|im_end|>"])):
        ours, reference = real[name]
        vocab = reference.get_vocab()
        eot = end_of_turn(ours, vocab.get, eos_ids=[])
        assert eot.ids == [vocab[t] for t in expected_texts], name
        assert eot.strings == []
    ours, reference = real["llama3"]
    eot = end_of_turn(ours, reference.get_vocab().get, eos_ids=[128001, 128009, 128008])
    assert eot.ids == [128001, 128009, 128008]  # config ids first, no duplicates


# --- the helpers transformers gives templates, on templates written here ---------------------

def reference_tokenizer(**special):
    """A transformers tokenizer built in memory (word-level, a few words): renders any
    template with transformers' own environment."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|im_end|>": 3, "hello": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    special = special or {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return _quiet(PreTrainedTokenizerFast, tokenizer_object=backend, **special)


FEATURE_TEMPLATES = {
    "tojson": "{% for m in messages %}{{ m | tojson }}|{{ m.content | tojson(indent=2) }}|"
              "{{ {'b': 1, 'a': [1, 2]} | tojson(sort_keys=True, separators=(',', ':')) }}\n{% endfor %}",
    "namespace_loopcontrols": "{% set ns = namespace(n=0, last='') %}{% for m in messages %}"
                              "{% if m.role == 'system' %}{% continue %}{% endif %}"
                              "{% set ns.n = ns.n + 1 %}{% set ns.last = m.content %}"
                              "{% if ns.n > 2 %}{% break %}{% endif %}[{{ m.role }}]{% endfor %}"
                              "{{ ns.n }} {{ ns.last }}",
    "dict": "{% set d = dict(a=1, b='x') %}{{ d.a }}{{ d['b'] }}{{ dict.fromkeys(['k'], 0) | tojson }}"
            "{% for m in messages %}{{ m.items() | list | length }}{% endfor %}",
    "whitespace": "{% for m in messages %}\n    {% if m.role == 'user' %}\n        U: {{ m.content }}\n"
                  "    {% else %}\n        A: {{ m.content }}\n    {% endif %}\n{% endfor %}\n"
                  "{%- if add_generation_prompt %}  A:{% endif %}",
    "generation_tag": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
                      "{{ m.content }}{{ eos_token }}{% endgeneration %}{% else %}{{ m.content }}"
                      "{% endif %}{% endfor %}",
    "special_tokens": "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}|"
                      "{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}",
    "strftime": "{{ strftime_now('%Y') }}{% for m in messages %}{{ m.content | trim }}{% endfor %}",
    "none_dropped": "{% for m in messages %}{{ m.role }}:{{ 'content' in m }}:{{ m.name is defined }};{% endfor %}",
}

FEATURE_MESSAGES = [{"role": "system", "content": "Be <brief> & kind."},
                    {"role": "user", "content": "  Grüße, 世界! \"quoted\" 😀  "},
                    {"role": "assistant", "content": "Hello.", "name": None},
                    {"role": "user", "content": "Again?"},
                    {"role": "user", "content": None}]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("name", sorted(FEATURE_TEMPLATES))
def test_template_helpers_like_transformers(name, add_generation_prompt):
    template = FEATURE_TEMPLATES[name]
    reference = reference_tokenizer()
    messages = FEATURE_MESSAGES if name == "none_dropped" else FEATURE_MESSAGES[:4]
    expected = reference.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    ours = ChatTemplate(template, "test", special_tokens=dict(reference.special_tokens_map))
    assert ours.render(messages, add_generation_prompt=add_generation_prompt) == expected
    if name == "strftime":
        assert expected.startswith(str(datetime.now().year))


def test_tojson_keeps_non_ascii_and_html_characters():
    """transformers' tojson is json.dumps(ensure_ascii=False); jinja's own would escape < > &."""
    out = ChatTemplate("{{ messages[0].content | tojson }}", "t").render(
        [{"role": "user", "content": "<a & b> é 😀"}])
    assert out == '"<a & b> é 😀"'


# --- where the template and special tokens come from ------------------------------------------

def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_saved_by_transformers_loads_the_same(tmp_path):
    """transformers 5 saves a template as chat_template.jinja beside tokenizer_config.json."""
    from transformers import AutoTokenizer

    reference = reference_tokenizer(bos_token="<s>", eos_token="</s>")
    reference.chat_template = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
    reference.save_pretrained(str(tmp_path / "saved"))
    ours = load_chat_template(tmp_path / "saved")
    reloaded = _quiet(AutoTokenizer.from_pretrained, str(tmp_path / "saved"))
    messages = CONVERSATIONS["multi_turn"]
    assert ours.render(messages) == reloaded.apply_chat_template(messages, tokenize=False)
    assert ours.source.endswith("chat_template.jinja")


def test_template_file_precedence_like_transformers(tmp_path):
    """chat_template.jinja and additional_chat_templates/*.jinja replace tokenizer_config.json's
    chat_template; a list in the config picks 'default'."""
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    reference_tokenizer().save_pretrained(str(base))
    config = json.loads((base / "tokenizer_config.json").read_text())
    messages = CONVERSATIONS["user"]
    cases = {
        "config_string": ({"chat_template": "C:{{ messages[0].content }}"}, {}),
        "config_list": ({"chat_template": [{"name": "tool_use", "template": "T"},
                                           {"name": "default", "template": "D:{{ bos_token }}"}]}, {}),
        "jinja_wins": ({"chat_template": "C"}, {"chat_template.jinja": "J:{{ eos_token }}"}),
        "extra_dir": ({"chat_template": "C"}, {"chat_template.jinja": "J",
                                               "additional_chat_templates/rag.jinja": "R"}),
        "extra_default": ({}, {"additional_chat_templates/default.jinja": "XD",
                               "additional_chat_templates/other.jinja": "XO"}),
    }
    for name, (config_extra, files) in cases.items():
        directory = tmp_path / name
        directory.mkdir()
        for f in ("tokenizer.json",):
            (directory / f).write_bytes((base / f).read_bytes())
        write(directory / "tokenizer_config.json", {**config, **config_extra})
        for rel, text in files.items():
            write(directory / rel, text)
        reference = _quiet(AutoTokenizer.from_pretrained, str(directory))
        expected = reference.apply_chat_template(messages, tokenize=False)
        assert load_chat_template(directory).render(messages) == expected, name


def test_legacy_files(tmp_path):
    """chat_template.json (processors' legacy file) is used when nothing else has a template;
    special_tokens_map.json overrides tokenizer_config.json without added_tokens_decoder;
    AddedToken objects count by their content."""
    write(tmp_path / "chat_template.json", {"chat_template": "L{{ bos_token }}{{ eos_token }}{{ pad_token }}"})
    write(tmp_path / "tokenizer_config.json",
          {"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False},
           "eos_token": "</s>", "unk_token": None, "image_token": "<image>",
           "add_bos_token": True, "extra_special_tokens": {"audio_token": {"content": "<audio>"}}})
    write(tmp_path / "special_tokens_map.json", {"eos_token": {"content": "<|im_end|>"}, "pad_token": "<pad>"})
    template = load_chat_template(tmp_path)
    assert template.render(CONVERSATIONS["user"]) == "L<s><|im_end|><pad>"
    assert template.special_tokens == {"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>",
                                       "image_token": "<image>", "audio_token": "<audio>"}
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {}
    write(tmp_path / "tokenizer_config.json", config)
    assert special_tokens(tmp_path)["eos_token"] == "</s>"
    write(tmp_path / "tokenizer_config.json", {"chat_template": "C"})
    assert load_chat_template(tmp_path).template == "C"  # the config wins over chat_template.json


# --- end of turn ------------------------------------------------------------------------------

def test_end_of_turn_plain_text_markers_are_stop_strings():
    template = ChatTemplate("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                            "{% endfor %}<|im_start|>assistant\n", "t", {"eos_token": "</s>"})
    vocab = {"</s>": 2}
    eot = end_of_turn(template, vocab.get, eos_ids=[2])
    assert eot.ids == [2] and eot.strings == ["<|im_end|>"]
    eot = end_of_turn(template, {"</s>": 2, "<|im_end|>": 7}.get, eos_ids=[5])
    assert eot.ids == [5, 2, 7] and eot.strings == []


# --- errors -----------------------------------------------------------------------------------

def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_no_template_is_one_line_error(tmp_path):
    write(tmp_path / "tokenizer_config.json", {"bos_token": "<s>"})
    with pytest.raises(LLMCLIError) as exc:
        load_chat_template(tmp_path)
    assert one_line(exc) == (f"{tmp_path}: has no chat template (tokenizer_config.json chat_template); "
                             "use generate without --chat")
    assert find_chat_template(tmp_path / "missing") is None
    repo_model = Path(__file__).resolve().parents[1] / "models" / "shakespeare"
    assert find_chat_template(repo_model) is None


@pytest.mark.parametrize("template, needles", [
    ("{% for m in messages %}{{ m.content }", ["does not parse", "line 1"]),
    ("{% if messages[0].role != 'system' %}{{ raise_exception('Conversation must start\nwith system') }}{% endif %}",
     ["refused the conversation: Conversation must start with system"]),
    ("{{ messages[0].content.nope.deeper }}", ["failed: UndefinedError"]),
    ("{{ ''.__class__.__mro__ }}", ["failed: SecurityError"]),
    ("{{ messages.append(1) }}", ["failed: SecurityError"]),
    ("{% set ns = namespace(_x=1) %}", ["failed: SecurityError", "underscore"]),
    ("{{ messages[0].content + 1 }}", ["failed: TypeError"]),
    ("{{ messages[5] }}{{ messages[5].x }}", ["failed: UndefinedError"]),
])
def test_template_errors_are_one_line(tmp_path, template, needles):
    path = write(tmp_path / "tokenizer_config.json", {"chat_template": template})
    with pytest.raises(LLMCLIError) as exc:
        load_chat_template(tmp_path).render(CONVERSATIONS["user"])
    text = one_line(exc)
    assert text.startswith(f"{path} (chat_template): ")
    for needle in needles:
        assert needle in text


def test_raise_exception_like_transformers_refusal():
    """The same template raises in transformers (jinja2 TemplateError) and here."""
    template = "{{ raise_exception('no system messages') if messages[0].role == 'system' }}"
    with pytest.raises(Exception, match="no system messages"):
        reference_tokenizer().apply_chat_template(CONVERSATIONS["system"], chat_template=template, tokenize=False)
    with pytest.raises(LLMCLIError, match="no system messages"):
        ChatTemplate(template, "t").render(CONVERSATIONS["system"])
    assert ChatTemplate(template, "t").render(CONVERSATIONS["user"]) == ""


@pytest.mark.parametrize("files, needle", [
    ({"tokenizer_config.json": "{not json"}, "tokenizer_config.json: not valid JSON"),
    ({"tokenizer_config.json": "[1]"}, "tokenizer_config.json: not a JSON object"),
    ({"tokenizer_config.json": {"chat_template": 3}}, "chat_template must be a string or a list"),
    ({"tokenizer_config.json": {"chat_template": [{"name": "a"}]}}, "chat_template must be a string or a list"),
    ({"tokenizer_config.json": {"chat_template": [{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]}},
     "chat templates named a, b and none named 'default'"),
    ({"chat_template.json": {"template": "x"}}, "chat_template.json: expected an object"),
    ({"special_tokens_map.json": "{", "chat_template.jinja": "x"}, "special_tokens_map.json: not valid JSON"),
])
def test_bad_files_are_one_line_errors(tmp_path, files, needle):
    for name, data in files.items():
        write(tmp_path / name, data)
    with pytest.raises(LLMCLIError) as exc:
        load_chat_template(tmp_path)
    assert needle in one_line(exc)


def test_bad_utf8_template_file(tmp_path):
    (tmp_path / "chat_template.jinja").write_bytes(b"ok \xff")
    with pytest.raises(LLMCLIError, match="chat_template.jinja: not valid UTF-8"):
        load_chat_template(tmp_path)


def test_empty_conversation_is_an_error():
    with pytest.raises(LLMCLIError, match="empty conversation"):
        ChatTemplate("x", "t").render([])


def test_chat_module_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, llmcli.chat as c; t = c.ChatTemplate('{{ messages[0].content }}', 't');"
            "assert t.render([{'role': 'user', 'content': 'x'}]) == 'x'; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the encoded prompt ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama3", "qwen3"])
def test_encoded_chat_equals_transformers_tokenize(real, name):
    """Rendered, then encoded with special tokens parsed and no BOS added (what chat and
    generate --chat feed the model) = ``apply_chat_template(tokenize=True)``."""
    from llmcli.tokenizer import load_tokenizer

    ours, reference = real[name]
    tokenizer = load_tokenizer(shared_path("fixtures", "tokenizers", name))
    for messages in CONVERSATIONS.values():
        expected = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                 return_dict=False)
        text = ours.render(messages, add_generation_prompt=True)
        assert tokenizer.encode(text, add_bos=False, special=True) == list(expected)


# --- the conversation: history and fitting the context --------------------------------------

def char_tokens(text: str) -> list[int]:
    """One token per character: lengths are easy to reason about."""
    return [ord(c) for c in text]


TURNS = ChatTemplate("{% for m in messages %}[{{ m.role[0] }}:{{ m.content }}]{% endfor %}"
                     "{% if add_generation_prompt %}[a:{% endif %}", "t")


def test_conversation_history_and_reset():
    from llmcli.chat import Conversation

    chat = Conversation(TURNS, system="S")
    ids, dropped = chat.prompt("hi", char_tokens, context=100)
    assert "".join(map(chr, ids)) == "[s:S][u:hi][a:" and dropped == 0
    chat.add_reply("yo")
    ids, _ = chat.prompt("more", char_tokens, context=100)
    assert "".join(map(chr, ids)) == "[s:S][u:hi][a:yo][u:more][a:"
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "S"}]
    assert Conversation(TURNS).messages == []


def test_conversation_drops_oldest_exchanges_keeps_system():
    from llmcli.chat import Conversation

    chat = Conversation(TURNS, system="S")
    for user, reply in (("one", "1"), ("two", "2"), ("three", "3")):
        chat.prompt(user, char_tokens, context=1000)
        chat.add_reply(reply)
    full = "[s:S][u:one][a:1][u:two][a:2][u:three][a:3][u:four][a:"
    ids, dropped = chat.prompt("four", char_tokens, context=len(full) + 5, reserve=5)
    assert "".join(map(chr, ids)) == full and dropped == 0
    chat.messages = chat.messages[:-1]  # take "four" back
    # 5 tokens short: the oldest exchange (user one + its reply) goes, the system message stays
    ids, dropped = chat.prompt("four", char_tokens, context=len(full), reserve=5)
    assert "".join(map(chr, ids)) == "[s:S][u:two][a:2][u:three][a:3][u:four][a:" and dropped == 2
    assert chat.messages[0] == {"role": "system", "content": "S"} and len(chat.messages) == 6


def test_conversation_too_long_leaves_history_unchanged():
    from llmcli.chat import Conversation

    chat = Conversation(TURNS)
    chat.prompt("one", char_tokens, context=100)
    chat.add_reply("1")
    before = list(chat.messages)
    with pytest.raises(LLMCLIError) as exc:
        chat.prompt("x" * 200, char_tokens, context=100)
    assert "is 207 tokens with this message" in one_line(exc) and "context of 100 tokens" in str(exc.value)
    assert chat.messages == before
    # it fits once the old exchange is gone, though not with the reserve: sent anyway
    ids, dropped = chat.prompt("x" * 90, char_tokens, context=100, reserve=50)
    assert dropped == 2 and len(ids) == 97  # [u:x…x][a:
