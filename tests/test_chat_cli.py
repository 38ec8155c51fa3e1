"""``llmcli chat`` and ``llmcli generate --chat`` end to end, as a user runs them.

The model is a tiny random checkpoint with a sentencepiece tokenizer (tests/test_generation.py)
and a ChatML-like chat template added to its ``tokenizer_config.json``; its markers
(``<|im_start|>``, ``<|im_end|>``) are plain text to this tokenizer, its ``{{ bos_token }}``
(``<s>``) is the BOS control token. Replies are checked against transformers: the expected
prompt is written out by hand, encoded with sentencepiece itself, and continued greedily by
``transformers.generate``. The interactive loop is driven through piped stdin, through a
pseudo-terminal (prompt, /reset, Ctrl-C, Ctrl-D), and in-process for Ctrl-C in mid-reply.

:func:`chat_transcript` runs ``llmcli chat`` on any model directory, e.g. a converted SmolLM2,
and :func:`transformers_chat_reply` gives transformers' greedy reply to compare it with (checked
by hand on SmolLM2-135M-Instruct converted from its GGUF: two turns, identical).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli_generate import (DEFAULT_MODEL, EXIT_ERROR, EXIT_USAGE, assert_one_line_error,
                               env_for, llmcli)
from test_generation import make_tiny_model_dir

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

#: ChatML with BOS first; the markers are plain text for the tiny tokenizer.
CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chatml(messages: list[tuple[str, str]]) -> str:
    """The prompt :data:`CHATML` renders for ``messages`` with the assistant's header, written
    out by hand (an independent reference)."""
    return "<s>" + "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages) \
        + "<|im_start|>assistant\n"


def add_chat_template(model_dir: Path, template: str = CHATML, **extra) -> Path:
    """Write ``template`` (and ``extra`` entries) into ``model_dir/tokenizer_config.json``."""
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    config.update({"chat_template": template, "bos_token": "<s>", "eos_token": "</s>", **extra})
    path.write_text(json.dumps(config), encoding="utf-8")
    return model_dir


def make_chat_dir(tmp_path: Path, name: str = "chat", **overrides) -> tuple[Path, object]:
    """A tiny model directory with :data:`CHATML` → ``(dir, hf_model)``. Unknown, control
    (BOS/EOS) and byte pieces get zero logits, so greedy replies are made of text pieces and
    never end early at EOS (they run to ``-n``)."""
    model_dir, hf_model = make_tiny_model_dir(tmp_path, name=name, **overrides)
    with torch.no_grad():
        hf_model.lm_head.weight[:259] = 0
    hf_model.save_pretrained(str(model_dir), safe_serialization=True)
    return add_chat_template(model_dir), hf_model


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return make_chat_dir(tmp_path_factory.mktemp("chat"), max_position_embeddings=256)


SHORT_CONTEXT = 200  # one exchange of a few words is about 40 tokens with this tokenizer


@pytest.fixture(scope="module")
def short_dir(tmp_path_factory) -> Path:
    return make_chat_dir(tmp_path_factory.mktemp("short"), name="short",
                         max_position_embeddings=SHORT_CONTEXT)[0]


def reference_reply(model_dir: Path, hf_model, prompt: str, max_tokens: int) -> str:
    """transformers' greedy continuation of the chat ``prompt`` (``<s>`` → the BOS id, the
    rest encoded by sentencepiece), decoded by sentencepiece."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    assert prompt.startswith("<s>") and prompt.count("<s>") == 1
    ids = [sp.bos_id()] + sp.encode(prompt[len("<s>"):])
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False,
                                eos_token_id=sp.eos_id(), pad_token_id=sp.eos_id())
    new = [i for i in out[0, len(ids):].tolist() if i != sp.eos_id()]
    text = sp.decode(new)
    return text.split("<|im_end|>")[0]


def transformers_chat_reply(hf_model, hf_tokenizer, messages: list[dict], max_tokens: int,
                            eos_ids: list[int] | None = None) -> str:
    """transformers' greedy reply to ``messages``: ``apply_chat_template(tokenize=True,
    add_generation_prompt=True)``, ``generate(do_sample=False)`` stopping at ``eos_ids``
    (default: the tokenizer's EOS), decoded without special tokens. For a real model (e.g.
    SmolLM2 loaded from its GGUF), to compare with :func:`chat_transcript` or
    ``generate --chat``."""
    ids = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                           return_dict=False)
    eos_ids = eos_ids if eos_ids is not None else [hf_tokenizer.eos_token_id]
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([list(ids)]), max_new_tokens=max_tokens, do_sample=False,
                                eos_token_id=eos_ids, pad_token_id=eos_ids[0])
    new = [i for i in out[0, len(ids):].tolist() if i not in eos_ids]
    return hf_tokenizer.decode(new, skip_special_tokens=True)


def chat_transcript(model_dir: Path, lines: list[str], *args: str, cwd: Path,
                    timeout: float = 300) -> subprocess.CompletedProcess:
    """``llmcli chat -m model_dir ARGS`` with ``lines`` piped on stdin (one message each)."""
    return llmcli("chat", "-m", str(model_dir), *args, cwd=cwd, timeout=timeout,
                  input="".join(line + "\n" for line in lines))


def with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


# --------------------------------------------------------------------------- piped stdin

def test_piped_chat_equals_transformers_greedy(tmp_path, chat_dir):
    """Two turns with a system message: each reply is transformers' greedy continuation of
    the whole conversation so far, including the first reply."""
    model_dir, hf_model = chat_dir
    proc = chat_transcript(model_dir, ["Hello there", "Tell me a story"], "--system", "Be kind.",
                           "--temp", "0", "-n", "12", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    history = [("system", "Be kind."), ("user", "Hello there")]
    first = reference_reply(model_dir, hf_model, chatml(history), 12)
    history += [("assistant", first), ("user", "Tell me a story")]
    second = reference_reply(model_dir, hf_model, chatml(history), 12)
    assert first and second and first != second
    assert proc.stdout == with_newline(first) + with_newline(second)
    assert proc.stderr.count("[reply cut at -n/--max-tokens 12]") == 2
    assert "Traceback" not in proc.stderr


def test_reset_and_exit(tmp_path, chat_dir):
    model_dir, hf_model = chat_dir
    proc = chat_transcript(model_dir, ["Hi", "More please", "/reset", "Hi", "  /exit  ", "never read"],
                           "--temp", "0", "-n", "6", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = reference_reply(model_dir, hf_model, chatml([("user", "Hi")]), 6)
    second = reference_reply(model_dir, hf_model,
                             chatml([("user", "Hi"), ("assistant", first), ("user", "More please")]), 6)
    # after /reset the conversation starts again: the same reply to the same message
    assert proc.stdout == with_newline(first) + with_newline(second) + with_newline(first)
    assert "[conversation cleared]" in proc.stderr


def test_seeded_sampling_repeats_and_turns_differ(tmp_path, chat_dir):
    model_dir, _ = chat_dir
    runs = [chat_transcript(model_dir, ["Hi", "Hi"], "-s", "7", "--temp", "1.5", "--top-k", "0",
                            "--top-p", "1", "--min-p", "0", "-n", "10", cwd=tmp_path) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    other = chat_transcript(model_dir, ["Hi", "Hi"], "-s", "8", "--temp", "1.5", "--top-k", "0",
                            "--top-p", "1", "--min-p", "0", "-n", "10", cwd=tmp_path)
    assert other.stdout != runs[0].stdout


def test_stats_and_blank_lines(tmp_path, chat_dir):
    model_dir, _ = chat_dir
    proc = chat_transcript(model_dir, ["", "   ", "Hi"], "--temp", "0", "-n", "3", "--stats", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1
    assert "generated 3 tokens" in proc.stderr and "prompt " in proc.stderr


def test_oldest_turns_dropped_to_fit_the_context(tmp_path, short_dir):
    """A short context holds three or four short exchanges: later turns drop the oldest ones,
    say so, and go on."""
    messages = ["Once upon a time", "there was a girl", "named Lily", "she had a dog", "the end", "bye"]
    proc = chat_transcript(short_dir, messages, "--temp", "0", "-n", "8", "--system", "S", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[dropped the 2 oldest messages to fit the model's context of 200 tokens]" in proc.stderr
    assert proc.stderr.count("[reply cut at") == len(messages)


def test_message_too_long_for_the_context(tmp_path, short_dir):
    proc = chat_transcript(short_dir, ["Once upon a time " * 40], "--temp", "0", cwd=tmp_path)
    assert proc.returncode == EXIT_ERROR, proc.stderr
    assert proc.stderr.startswith("error: the conversation is ")
    assert f"context of {SHORT_CONTEXT} tokens" in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_invalid_utf8_on_stdin_is_a_usage_error(tmp_path, chat_dir):
    model_dir, _ = chat_dir
    proc = subprocess.run([sys.executable, "-m", "llmcli", "chat", "-m", str(model_dir), "--temp", "0", "-n", "2"],
                          input=b"Hi\n\xff\xfe\n", capture_output=True, cwd=tmp_path, env=env_for(), timeout=300)
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.decode().strip().splitlines()[-1] == \
        "error: stdin: line 2 is not valid UTF-8 (byte 0xff)"


# --------------------------------------------------------------------------- errors

def test_model_without_chat_template(tmp_path):
    expected = f"{DEFAULT_MODEL}: has no chat template (tokenizer_config.json chat_template)"
    proc = llmcli("chat", "-m", str(DEFAULT_MODEL), cwd=tmp_path, input="Hi\n")
    assert_one_line_error(proc, EXIT_ERROR, expected)
    proc = llmcli("generate", "-m", str(DEFAULT_MODEL), "--chat", "Hi", cwd=tmp_path)
    assert_one_line_error(proc, EXIT_ERROR, expected, "use generate without --chat")


@pytest.mark.parametrize("template, needle", [
    ("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}x",
     "the chat template refused the conversation: System role not supported"),
    ("{% for m in messages %}", "the chat template does not parse"),
])
def test_template_errors_before_loading(tmp_path, chat_dir, template, needle):
    model_dir = tmp_path / "bad"
    shutil.copytree(chat_dir[0], model_dir)
    add_chat_template(model_dir, template)
    for args in (["chat", "-m", str(model_dir), "--system", "S"],
                 ["generate", "-m", str(model_dir), "--system", "S", "--chat", "Hi"]):
        proc = llmcli(*args, cwd=tmp_path, input="Hi\n")
        assert_one_line_error(proc, EXIT_ERROR, f"{model_dir / 'tokenizer_config.json'} (chat_template): ", needle)


def test_bad_sampling_option_is_a_usage_error(tmp_path, chat_dir):
    proc = llmcli("chat", "-m", str(chat_dir[0]), "--top-p", "0", cwd=tmp_path, input="Hi\n")
    assert_one_line_error(proc, EXIT_USAGE, "--top-p: must be in (0, 1]")


# --------------------------------------------------------------------------- generate --chat

def test_generate_chat_equals_transformers_greedy(tmp_path, chat_dir):
    model_dir, hf_model = chat_dir
    proc = llmcli("generate", "-m", str(model_dir), "--chat", "Hello there", "--system", "Be kind.",
                  "--temp", "0", "-n", "12", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == reference_reply(model_dir, hf_model,
                                          chatml([("system", "Be kind."), ("user", "Hello there")]), 12)


def test_generate_chat_json_and_top_logprobs(tmp_path, chat_dir):
    model_dir, hf_model = chat_dir
    expected = reference_reply(model_dir, hf_model, chatml([("user", "Hi")]), 5)
    proc = llmcli("generate", "-m", str(model_dir), "--chat", "Hi", "--temp", "0", "-n", "5", "--json",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    *records, done = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 5 and "".join(r["text"] for r in records) == expected
    assert done["done"] is True and done["tokens"] == 5
    proc = llmcli("generate", "-m", str(model_dir), "--chat", "Hi", "--temp", "0", "-n", "5",
                  "--top-logprobs", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(expected)
    assert len(proc.stdout.splitlines()) > 5  # the per-token listing follows the text


def test_generate_chat_reads_stdin_and_echoes_the_template(tmp_path, chat_dir):
    model_dir, hf_model = chat_dir
    prompt = chatml([("user", "Hi from stdin")])
    proc = llmcli("generate", "-m", str(model_dir), "--chat", "-", "--temp", "0", "-n", "4", "--echo",
                  cwd=tmp_path, input="Hi from stdin")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == prompt + reference_reply(model_dir, hf_model, prompt, 4)


@pytest.mark.parametrize("args, needle", [
    (["PROMPT", "--chat", "Hi"], "--chat: give the message with --chat or as PROMPT, not both"),
    (["--system", "S", "Hi"], "--system: only with --chat"),
    (["--chat", "Hi", "--no-bos"], "--no-bos: not with --chat"),
    (["--chat", "Hi", "--special"], "--special: not with --chat"),
])
def test_generate_chat_usage_errors(tmp_path, chat_dir, args, needle):
    proc = llmcli("generate", "-m", str(chat_dir[0]), *args, cwd=tmp_path)
    assert_one_line_error(proc, EXIT_USAGE, needle)


def test_generate_chat_message_too_long(tmp_path, short_dir):
    proc = llmcli("generate", "-m", str(short_dir), "--chat", "Once upon a time " * 40, cwd=tmp_path)
    assert_one_line_error(proc, EXIT_ERROR, "--chat: the conversation is ", f"context of {SHORT_CONTEXT} tokens")


# --------------------------------------------------------------------------- a terminal

class Terminal:
    """``llmcli ARGS`` on a pseudo-terminal (stdin, stdout and stderr all on it; it is the
    process's controlling terminal, so Ctrl-C typed there is SIGINT)."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        # Not pty.fork(): it runs Python code in a child forked from this multi-threaded
        # process (torch's threads), which can deadlock before exec. subprocess forks and execs
        # in C; util-linux's `setsid -c` makes the pseudo-terminal the controlling terminal.
        if shutil.which("setsid") is None:
            pytest.skip("needs util-linux setsid")
        env = env_for(TERM="dumb", NO_COLOR="1")
        self.fd, slave = os.openpty()
        proc = subprocess.Popen(["setsid", "-c", sys.executable, "-m", "llmcli", *args], cwd=cwd,
                                env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.proc, self.pid = proc, proc.pid  # kept: a collected Popen may reap the child
        self.output = ""

    def read_until(self, needle: str, timeout: float = 120) -> str:
        """Read until ``needle`` appears after what earlier calls consumed; return the text up
        to and including it."""
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen; output so far: {self.output!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"{needle!r} not seen before exit; output: {self.output!r}")
                self.output += data.decode("utf-8", "replace").replace("\r\n", "\n")
        cut = self.output.index(needle) + len(needle)
        seen, self.output = self.output[:cut], self.output[cut:]
        return seen

    def read_some(self, timeout: float = 120) -> str:
        """Wait until the terminal has shown something not yet consumed; return its first character."""
        deadline = time.monotonic() + timeout
        while not self.output:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError("nothing shown")
            data = os.read(self.fd, 4096)
            if not data:
                raise AssertionError("the child closed the terminal")
            self.output += data.decode("utf-8", "replace").replace("\r\n", "\n")
        return self.output[0]

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # drain, so the child never blocks on a full terminal
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.output += os.read(self.fd, 4096).decode("utf-8", "replace")
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("llmcli did not exit")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_terminal_session(tmp_path, chat_dir):
    """Prompt, a reply, /reset, Ctrl-C at the prompt (the session goes on), Ctrl-D (exit 0)."""
    model_dir, hf_model = chat_dir
    first = reference_reply(model_dir, hf_model, chatml([("user", "Hi")]), 6)
    term = Terminal(["chat", "-m", str(model_dir), "--temp", "0", "-n", "6"], tmp_path)
    try:
        assert "/exit or Ctrl-D quits" in term.read_until("> ")
        term.send("Hi\n")
        shown = term.read_until("> ")
        assert first.replace("\r\n", "\n") in shown
        term.send("/reset\n")
        assert "[conversation cleared]" in term.read_until("> ")
        # Ctrl-C at the prompt drops the line. Sent once the line's echo shows that input() is
        # reading: a SIGINT that lands after the prompt is printed but before readline's select()
        # starts is only seen at the next key (CPython's readline loop), so the session would
        # wait for one (the terminal driver flushes the typed line on ^C).
        term.send("half a line")
        term.read_until("half a line")
        term.send("\x03")
        term.read_until("> ")
        term.send("Hi\n")
        assert first in term.read_until("> ")  # same reply: the history was cleared
        term.send("\x04")  # Ctrl-D
        assert term.wait() == 0
    finally:
        try:
            os.kill(term.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_terminal_ctrl_c_stops_a_long_reply(tmp_path):
    """Ctrl-C in mid-reply stops it and the prompt comes back; /exit then quits with 0."""
    model_dir, _ = make_chat_dir(tmp_path, name="long", max_position_embeddings=100_000)
    term = Terminal(["chat", "-m", str(model_dir), "--temp", "0", "-n", "90000"], tmp_path)
    try:
        term.read_until("> ")
        term.send("Hi\n")
        term.read_until("Hi\n")
        term.read_until(term.read_some())  # the reply has started to stream (90000 tokens take minutes)
        term.send("\x03")
        assert "[reply stopped]" in term.read_until("> ", timeout=30)
        term.send("/exit\n")
        assert term.wait() == 0
    finally:
        try:
            os.kill(term.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- the loop itself

class FakeSession:
    """Stands in for ChatSession: replies are fixed event lists; one may be interrupted."""

    context, max_tokens = 100, 50

    class _EOT:
        strings: list[str] = []

    end_of_turn = _EOT()

    def __init__(self, replies):
        self.replies = list(replies)
        self.recorded: list[str] = []
        self.resets = 0

    def reply(self, user):
        from llmcli.generation import GenerationStats, TokenEvent

        parts = self.replies.pop(0)

        class Gen:
            stats = GenerationStats(stop_reason="eos")

            def __iter__(self):
                for part in parts:
                    if part is KeyboardInterrupt:
                        raise KeyboardInterrupt
                    yield TokenEvent(0, part)

        return Gen(), 0

    def record(self, text):
        self.recorded.append(text)

    def reset(self):
        self.resets += 1


def test_loop_ctrl_c_mid_reply_keeps_the_shown_part(capsys):
    import io

    from rich.console import Console

    from llmcli.cli.chat import chat_loop

    session = FakeSession([["Hel", "lo", KeyboardInterrupt, "never"], ["Fine", ".\n"]])
    inputs = iter(["Hi", "How are you?", "/help", "/reset", "/quit", "unread"])
    out, err = io.StringIO(), io.StringIO()
    code = chat_loop(session, lambda: next(inputs), out, Console(file=err), interactive=True)
    assert code == 0
    assert session.recorded == ["Hello", "Fine.\n"]
    assert out.getvalue() == "Hello\nFine.\n"
    assert "[reply stopped]" in err.getvalue() and "/reset" in err.getvalue()
    assert session.resets == 1 and next(inputs) == "unread"


def test_loop_ctrl_c_at_the_prompt_and_end_of_input():
    import io

    from rich.console import Console

    from llmcli.cli.chat import chat_loop

    def reader():
        items = iter([KeyboardInterrupt, "Hi", None])

        def read():
            item = next(items)
            if item is KeyboardInterrupt:
                raise KeyboardInterrupt
            return item
        return read

    session = FakeSession([["ok"]])
    out = io.StringIO()
    assert chat_loop(session, reader(), out, Console(file=io.StringIO()), interactive=True) == 0
    assert out.getvalue() == "\nok\n\n" and session.recorded == ["ok"]
