"""``llmcli chat``: a conversation with an instruct model in the terminal, through its chat template."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from llmcli.cli.common import (CtxSizeOpt, DeviceOpt, DtypeOpt, ModelOpt, ThreadsOpt,
                               resolve_context, resolve_model_dir, set_threads, stderr_console)
from llmcli.cli.quant_option import QuantOpt
from llmcli.cli.sampling_options import (MaxTokensOpt, MinPOpt, RepeatPenaltyOpt, SeedOpt,
                                         StatsOpt, StopOpt, TempOpt, TopKOpt, TopPOpt,
                                         sampling_params)
from llmcli.errors import LLMCLIError, UsageError

SystemOpt = Annotated[Optional[str], typer.Option(
    "--system", help="System message: instructions the model reads before the conversation.",
    show_default=False)]

#: The commands typed at the prompt (a line that is exactly one of these, spaces aside).
COMMANDS = {"/reset": "forget the conversation (the --system message stays)",
            "/exit": "quit (also /quit and Ctrl-D)", "/quit": None,
            "/help": "list these commands"}

PROMPT = "> "


def chat_command(
    model: ModelOpt = None,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = 512,
    temp: TempOpt = 0.8,
    top_k: TopKOpt = 40,
    top_p: TopPOpt = 0.95,
    min_p: MinPOpt = 0.05,
    repeat_penalty: RepeatPenaltyOpt = 1.0,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    ctx_size: CtxSizeOpt = None,
    dtype: DtypeOpt = "auto",
    quant: QuantOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    stats: StatsOpt = False,
) -> None:
    """Talk with an instruct model: each line you type is a user message, the reply streams
    back, and the conversation is kept, all through the model's chat template.

    Type /reset to start over (the --system message stays), /exit or Ctrl-D to quit. Ctrl-C
    stops a reply and keeps the session (the part shown stays in the conversation). A reply
    ends at the template's end-of-turn token (e.g. <|im_end|>, <|eot_id|>) or EOS, after
    -n/--max-tokens, or at a --stop text. The sampling options are generate's.

    Each turn the whole conversation is rendered and read by the model again (no KV cache is
    kept between turns: simple, and quick for small models). When it outgrows the context,
    the oldest exchanges are dropped (a notice says so; the system message is kept). With
    -s/--seed, turn i uses seed + i, so the same inputs give the same conversation. When stdin
    is not a terminal, each line read is a message and only the replies are printed (one
    per line).

    Examples:

        llmcli chat -m smol --system "You are a concise assistant."

        printf 'What is 2+2?\\nAnd 3+3?\\n' | llmcli chat -m smol --temp 0
    """
    params = sampling_params(temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens)
    model_dir = resolve_model_dir(model)
    from llmcli.chat import load_chat_template

    template = load_chat_template(model_dir)
    err = stderr_console()
    session = ChatSession(model_dir, template, system, params, max_tokens, stop or [],
                          dtype=dtype, device=device, threads=threads, ctx_size=ctx_size,
                          warn=lambda m: err.print(f"warning: {m}", markup=False))
    interactive = _is_tty(sys.stdin)
    reader = _terminal_reader() if interactive else _piped_reader(sys.stdin)
    code = chat_loop(session, reader, sys.stdout, err, interactive=interactive, show_stats=stats)
    if code:
        raise typer.Exit(code)


class ChatSession:
    """A loaded model, its tokenizer and a :class:`~llmcli.chat.Conversation`: each
    :meth:`reply` renders the conversation with the new user message, encodes it (special
    tokens parsed, no BOS added: the template writes what the model needs) and returns the
    :class:`~llmcli.generation.Generation` of the answer; :meth:`record` keeps the answer.

    Raises (on construction):
        LLMCLIError: the model or tokenizer cannot be loaded, the vocabularies disagree, or
            the template fails on a first conversation (``--system`` and one user message),
            so that a template refusing a system message says so before the first turn.
    """

    def __init__(self, model_dir: Path, template, system: str | None, params, max_tokens: int,
                 stop: list[str], dtype: str = "auto", device: str = "cpu",
                 threads: int | None = None, warn: Callable[[str], None] | None = None,
                 ctx_size: int | None = None) -> None:
        from llmcli.chat import Conversation, end_of_turn

        self.conversation = Conversation(template, system)
        self.conversation.render(self.conversation.messages + [{"role": "user", "content": "Hello"}])
        t0 = time.perf_counter()
        set_threads(threads)
        from llmcli.tokenizer import load_tokenizer
        from llmcli.weights import load_model

        self.tokenizer = load_tokenizer(model_dir)
        self.model, self.config = load_model(model_dir, dtype=dtype, device=device, warn=warn)
        from llmcli.checks import check_vocab_fit

        check_vocab_fit(self.tokenizer, self.config, warn)  # as every model command
        self.load_seconds = time.perf_counter() - t0
        # -c/--ctx-size, else the model's; named in messages by its option or config field
        self.context, self.context_source = resolve_context(ctx_size, self.config)
        eos = list(self.config.eos_token_id) + list(getattr(self.tokenizer, "eos_ids", []) or [])
        self.end_of_turn = end_of_turn(template, self.tokenizer.token_to_id, eos)
        self.params = params
        self.max_tokens = max_tokens
        self.stop = list(stop) + self.end_of_turn.strings
        self.turn = 0

    def encode(self, text: str) -> list[int]:
        """Rendered chat text → ids: special tokens parsed, no BOS added."""
        return self.tokenizer.encode(text, add_bos=False, special=True)

    def reply(self, user: str):
        """``(generation, dropped)`` for the user message ``user``: iterate the generation for
        the reply's tokens; ``dropped`` old messages were left out to fit the context.

        Raises:
            LLMCLIError: the template fails, or the message does not fit the context (the
                conversation is then unchanged).
        """
        from llmcli.generation import Generation

        reply_room = self.context // 4  # -n -1: no limit, keep a quarter of the context
        reserve = max(1, reply_room if self.max_tokens < 0 else min(self.max_tokens, reply_room))
        ids, dropped = self.conversation.prompt(user, self.encode, self.context, reserve,
                                                    context_source=self.context_source)
        params = self.params
        if params.seed is not None:
            params = dataclasses.replace(params, seed=(params.seed + self.turn) % 2**63)
        self.turn += 1
        gen = Generation(self.model, self.tokenizer, ids, params, self.max_tokens, stop=self.stop,
                         eos_ids=self.end_of_turn.ids, context=self.context,
                         context_source=self.context_source)
        return gen, dropped

    def record(self, text: str) -> None:
        """Keep the assistant's reply ``text`` in the conversation."""
        self.conversation.add_reply(text)

    def reset(self) -> None:
        self.conversation.reset()


def chat_loop(session, read_line: Callable[[], str | None], out, err, interactive: bool,
              show_stats: bool = False) -> int:
    """Read user lines, stream replies to ``out``; notices go to ``err`` (a rich Console).

    ``read_line()`` returns the next input line without its newline, or ``None`` at the end
    of input (Ctrl-D); it may raise ``KeyboardInterrupt`` (Ctrl-C at the prompt: the line is
    dropped, the session goes on). ``session`` is a :class:`ChatSession` (or anything with
    its ``reply``/``record``/``reset`` methods and ``context``, ``max_tokens`` and
    ``end_of_turn`` attributes). A ``KeyboardInterrupt`` while a reply streams stops that reply; the text shown so
    far is kept as the assistant's turn. An error for one message (a template refusal, a
    message too long for the context) is printed and the session goes on when
    ``interactive``; otherwise (piped input) it ends the chat with exit code 1.

    Returns:
        The exit code: 0, or 1 after an error with piped input.
    """
    from llmcli.generation import STOP_CONTEXT, STOP_MAX_TOKENS, STOP_STRING

    def notice(text: str) -> None:
        err.print(f"[{text}]", markup=False)

    if interactive:
        notice("/reset clears the conversation, /exit or Ctrl-D quits, Ctrl-C stops a reply")
    while True:
        try:
            line = read_line()
        except KeyboardInterrupt:
            out.write("\n")
            out.flush()
            continue
        if line is None:
            if interactive:
                out.write("\n")
                out.flush()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in COMMANDS:
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                session.reset()
                notice("conversation cleared")
            else:
                notice(" · ".join(f"{name} {what}" for name, what in COMMANDS.items() if what))
            continue
        try:
            gen, dropped = session.reply(text)
        except KeyboardInterrupt:
            out.write("\n")
            out.flush()
            continue
        except LLMCLIError as exc:
            err.print(f"error: {exc}", markup=False)
            if interactive:
                continue
            return exc.exit_code
        if dropped:
            whose = ("the" if getattr(session, "context_source", "").startswith("-c")
                     else "the model's")
            notice(f"dropped the {dropped} oldest message{'s' * (dropped != 1)} to fit {whose} "
                   f"context of {session.context} tokens")
        parts: list[str] = []
        interrupted = False
        try:
            for event in gen:
                if event.text:
                    parts.append(event.text)
                    out.write(event.text)
                    out.flush()
        except KeyboardInterrupt:
            interrupted = True
        reply = "".join(parts)
        session.record(reply)
        if not reply.endswith("\n") or not reply:
            out.write("\n")
        out.flush()
        st = gen.stats
        if interrupted:
            notice("reply stopped")
        elif st.stop_reason == STOP_MAX_TOKENS and session.max_tokens > 0:
            notice(f"reply cut at -n/--max-tokens {session.max_tokens}")
        elif st.stop_reason == STOP_CONTEXT:
            notice(f"reply cut: context length of {session.context} tokens reached"
                   + (" (-c/--ctx-size)" if getattr(session, "context_source", "").startswith("-c") else ""))
        elif st.stop_reason == STOP_STRING and not session.end_of_turn.strings:
            notice("stopped: --stop string generated")
        if show_stats and not interrupted:
            err.print(f"prompt {st.prompt_tokens} tokens | first token {st.first_token_seconds * 1000:.1f} ms | "
                      f"generated {st.generated_tokens} tokens | decode {st.decode_tokens_per_second:.1f} tokens/s | "
                      f"stop: {st.stop_reason} | seed {st.seed}", markup=False)


def _is_tty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, AttributeError):
        return False


def _terminal_reader() -> Callable[[], str | None]:
    """A reader of lines typed at the terminal, after the prompt ``> `` (with line editing
    and history when ``readline`` exists); ``None`` at Ctrl-D. A line that is not valid
    UTF-8 is reported and read again."""
    try:
        import readline  # noqa: F401  (input() then edits lines and keeps a history)
    except ImportError:  # pragma: no cover - Windows
        pass

    def read() -> str | None:
        while True:
            try:
                return input(PROMPT)
            except EOFError:
                return None
            except UnicodeDecodeError as exc:
                sys.stderr.write(f"error: input: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x})\n")

    return read


def _piped_reader(stream) -> Callable[[], str | None]:
    """A reader of the lines of a piped stdin, decoded as UTF-8; ``None`` at the end.

    Raises (when reading):
        UsageError: a line is not valid UTF-8 (naming the line)."""
    buffer = getattr(stream, "buffer", None)
    number = 0

    def read() -> str | None:
        nonlocal number
        raw = buffer.readline() if buffer is not None else stream.readline()
        if not raw:
            return None
        number += 1
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UsageError(f"stdin: line {number} is not valid UTF-8 "
                                 f"(byte 0x{raw[exc.start]:02x})") from None
        return raw[:-1] if raw.endswith("\n") else raw

    return read


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_command)
