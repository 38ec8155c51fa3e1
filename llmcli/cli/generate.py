"""``llmcli generate``: stream a continuation of a prompt from a model."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from llmcli.cli.common import (CtxSizeOpt, DeviceOpt, DtypeOpt, ModelOpt, PromptOpt, ThreadsOpt,
                               context_phrase, pick_prompt, read_prompt, resolve_context,
                               resolve_model_dir, seconds_since_process_start, set_threads,
                               stderr_console)
from llmcli.cli.quant_option import QuantOpt
from llmcli.cli.sampling_options import (MaxTokensOpt, MinPOpt, RepeatPenaltyOpt, SeedOpt,
                                         StatsOpt, StopOpt, TempOpt, TopKOpt, TopPOpt,
                                         sampling_params)
from llmcli.errors import UsageError
from llmcli.render import make_stdout_safe, write_json


def generate_command(
    prompt: Annotated[Optional[str], typer.Argument(
        help="Prompt text; '-' or absent reads stdin (when piped). With both, the argument comes "
             "first, then a newline, then stdin.", show_default=False)] = None,
    prompt_opt: PromptOpt = None,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 200,
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
    no_bos: Annotated[bool, typer.Option(
        "--no-bos", help="Add no special tokens (no BOS) before the prompt; by default the "
                         "tokenizer's own rule decides.")] = False,
    special: Annotated[bool, typer.Option(
        "--special", help="Parse special-token text in the prompt (<|im_start|>, <s>) as those "
                          "tokens, like llama.cpp's --parse-special; by default it is text.")] = False,
    chat: Annotated[Optional[str], typer.Option(
        "--chat", metavar="MESSAGE",
        help="Send MESSAGE as one user turn through the model's chat template and stream the "
             "reply ('-' reads stdin); it ends at the template's end-of-turn token.",
        show_default=False)] = None,
    system: Annotated[Optional[str], typer.Option(
        "--system", help="With --chat: a system message before the user's.", show_default=False)] = None,
    ignore_eos: Annotated[bool, typer.Option(
        "--ignore-eos", help="Do not stop at end-of-sequence tokens (as llama.cpp's --ignore-eos): "
                             "run until -n tokens, a --stop string or the context.")] = False,
    echo: Annotated[bool, typer.Option("--echo", help="Also print the prompt when stdout is not a terminal.")] = False,
    stats: StatsOpt = False,
    top_logprobs: Annotated[int, typer.Option(
        "--top-logprobs", metavar="K",
        help="After generating, list each token's logprob and its K most likely alternatives; in a "
             "terminal, colour streamed tokens by probability (green likely → red unlikely).")] = 0,
    show_tokens: Annotated[bool, typer.Option(
        "--show-tokens", help="Mark token boundaries in the streamed text (alternating colours in a "
                              "terminal, '|' between tokens when piped).")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help='Print one JSON object per generated token and line: {"id", "piece", "text", '
                       '"logprob", "top_logprobs": [{"id", "piece", "logprob"}]}, then a last '
                       'line {"done": true, "stop", "seed", "tokens", timings} (see below).')] = False,
) -> None:
    """Generate text that continues PROMPT, streaming tokens as they are produced.

    Sampling filters apply in this order: repeat penalty → temperature → top-k → top-p → min-p.
    -n -1 generates until an end-of-sequence token or the context (-c) is full.

    JSON (--json): one line per generated token, {"id", "piece", "text", "logprob",
    "top_logprobs": [{"id", "piece", "logprob"}]}, then one last line {"done": true, "stop":
    "eos" | "max_tokens" | "stop" | "context" | "interrupted", "seed", "tokens" (generated),
    "prompt_tokens", "load_seconds" (from process start), "prefill_seconds",
    "first_token_seconds", "decode_seconds", "decode_tokens_per_second" (null below 2
    tokens)}. Ctrl-C writes that last line too, with "stop": "interrupted", and exits 130.

    Examples:

        llmcli generate "To be, or not to be, that is the question:" -n 66 -s 1

        llmcli generate "ROMEO:" --temp 0 --stop "JULIET" --stats

        llmcli generate -p "ROMEO:" -n -1 -c 128 -t 2 --json

        echo "To be, or not to be" | llmcli generate -m path/to/llama-dir -s 42

        llmcli generate "ROMEO:" -n 20 --top-logprobs 3 --show-tokens

        llmcli generate -m smol --chat "What is 2+2?" --system "Answer briefly." --temp 0
    """
    params = sampling_params(temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens)
    prompt = pick_prompt(prompt, prompt_opt)
    if chat is not None:
        _check_chat_options(prompt, no_bos, special)
    elif system is not None:
        raise UsageError("--system: only with --chat (or use llmcli chat --system)")
    template = None
    if chat is not None:
        from llmcli.chat import load_chat_template

        model_dir = resolve_model_dir(model)
        template = load_chat_template(model_dir)
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": read_prompt(chat)}]
        text = template.render(messages, add_generation_prompt=True)
    else:
        text = read_prompt(prompt)
    if not text and no_bos:
        raise UsageError("PROMPT: empty prompt with --no-bos leaves nothing to continue")
    if top_logprobs < 0:
        raise UsageError(f"--top-logprobs: must be >= 0, got {top_logprobs}")
    run_generate(text, resolve_model_dir(model), params, max_tokens=max_tokens, stop=stop or [],
                 dtype=dtype, device=device, threads=threads,
                 add_bos=False if no_bos or template else None, special=special or bool(template),
                 echo=echo, show_stats=stats, top_logprobs=top_logprobs, show_tokens=show_tokens,
                 json_out=json_out, chat_template=template, ignore_eos=ignore_eos,
                 ctx_size=ctx_size)


def _check_chat_options(prompt: str | None, no_bos: bool, special: bool) -> None:
    """Usage errors for options that do not go with ``--chat``."""
    if prompt is not None:
        raise UsageError("--chat: give the message with --chat or as PROMPT, not both")
    if no_bos:
        raise UsageError("--no-bos: not with --chat (the chat template decides what comes first)")
    if special:
        raise UsageError("--special: not with --chat (the rendered template's special tokens are "
                         "always parsed)")


def run_generate(text: str, model_dir, params, max_tokens: int, stop: list[str], dtype: str,
                 device: str, threads: int | None, add_bos: bool | None, echo: bool, show_stats: bool,
                 top_logprobs: int = 0, show_tokens: bool = False, json_out: bool = False,
                 special: bool = False, chat_template=None, ignore_eos: bool = False,
                 ctx_size: int | None = None) -> None:
    """Load, generate and stream to stdout; notices and stats go to stderr.

    ``add_bos``/``special``: as :meth:`llmcli.tokenizer.Tokenizer.encode` (``None`` = the
    tokenizer's rule).

    ``chat_template``: the :class:`llmcli.chat.ChatTemplate` that rendered ``text`` (with
    ``--chat``): generation also stops at its end-of-turn tokens (and at turn markers that are
    not tokens, as text), and a prompt longer than the context is an error naming ``--chat``.

    ``top_logprobs``/``show_tokens``/``json_out``: see :class:`_TokenView` (inspection output);
    with ``json_out`` a last record :func:`done_record` follows the tokens (also after Ctrl-C).

    ``ctx_size``: ``-c/--ctx-size`` (see :func:`llmcli.cli.common.resolve_context`).
    ``max_tokens`` -1: no limit (until EOS or the context is full).

    The ``--stats`` "load" time is the wall time from process start (interpreter, imports of
    torch and the rest, weights, tokenizer) to a loaded model.
    """
    from rich.text import Text

    err = stderr_console()
    set_threads(threads)
    from llmcli.generation import STOP_CONTEXT, STOP_STRING, Generation
    from llmcli.tokenizer import load_tokenizer
    from llmcli.weights import load_model

    tokenizer = load_tokenizer(model_dir) if model_dir.is_dir() else None
    model, config = load_model(model_dir, dtype=dtype, device=device,
                               warn=lambda m: err.print(f"warning: {m}", markup=False))
    if tokenizer is None:  # pragma: no cover - load_model raised already
        return
    from llmcli.checks import check_vocab_fit

    check_vocab_fit(tokenizer, config, warn=lambda m: err.print(f"warning: {m}", markup=False))
    context, context_source = resolve_context(ctx_size, config)
    load_seconds = seconds_since_process_start()
    prompt_ids = tokenizer.encode(text, add_bos=add_bos, special=special)
    eos_ids = tokenizer.eos_ids
    if chat_template is not None:
        from llmcli.chat import end_of_turn

        turn_end = end_of_turn(chat_template, tokenizer.token_to_id, eos_ids)
        eos_ids, stop = turn_end.ids, list(stop) + turn_end.strings
        if len(prompt_ids) > context:
            from llmcli.errors import LLMCLIError
            raise LLMCLIError(f"--chat: the conversation is {len(prompt_ids)} tokens through the chat "
                              f"template, longer than {context_phrase(context, context_source)}")
    if top_logprobs > config.vocab_size:
        raise UsageError(f"--top-logprobs: {top_logprobs} is more than the vocabulary ({config.vocab_size})")
    view = _TokenView(tokenizer, top_logprobs, show_tokens, json_out)
    gen = Generation(model, tokenizer, prompt_ids, params, max_tokens, stop=stop,
                     eos_ids=[] if ignore_eos else eos_ids,
                     top_logprobs=top_logprobs, logprobs=view.wants_logprobs,
                     context=context, context_source=context_source)

    out = sys.stdout
    make_stdout_safe()
    tty = out.isatty()
    view.tty = tty
    if json_out:
        pass  # JSON lines only: no prompt echo
    elif tty:
        from rich.console import Console
        Console(highlight=False).print(Text(text, style="dim"), end="")
    elif echo:
        out.write(text)
    out.flush()
    ended_with_newline = text.endswith("\n") or not text or json_out
    try:
        for event in gen:
            if view.active:
                if view.write(event, out):
                    ended_with_newline = event.text.endswith("\n") or json_out
            elif event.text:
                out.write(event.text)
                out.flush()
                ended_with_newline = event.text.endswith("\n")
    except KeyboardInterrupt:
        if json_out:  # a last record, and no stray line: stdout stays JSON lines
            write_json(done_record(gen.stats, load_seconds, interrupted=True), out)
        elif tty and not ended_with_newline:
            out.write("\n")  # the shell's prompt on its own line; a pipe gets only the text
        out.flush()
        err.print("[interrupted]", markup=False)
        raise typer.Exit(130)
    except BrokenPipeError:
        # The reader went away (`| head -c 10`): stop quietly, like other Unix tools.
        _silence_stdout()
        raise typer.Exit(0)
    if tty and not ended_with_newline:
        out.write("\n")
    out.flush()
    view.finish(out, ended_with_newline)
    st = gen.stats
    if json_out:
        write_json(done_record(st, load_seconds), out)
    if st.stop_reason == STOP_STRING:
        err.print("[stopped: --stop string generated]", markup=False)
    elif st.stop_reason == STOP_CONTEXT:
        err.print(f"[stopped: context length of {context} tokens reached ({context_source})]",
                  markup=False)
    if show_stats:
        err.print(f"load {load_seconds:.2f} s | prompt {st.prompt_tokens} tokens | "
                  f"first token {st.first_token_seconds * 1000:.1f} ms | generated {st.generated_tokens} tokens | "
                  f"decode {st.decode_tokens_per_second:.1f} tokens/s | stop: {st.stop_reason} | seed {st.seed}",
                  markup=False)


def done_record(stats, load_seconds: float, interrupted: bool = False) -> dict:
    """The last ``--json`` line: ``{"done": true, "stop", "seed", "tokens", "prompt_tokens",
    "load_seconds", "prefill_seconds", "first_token_seconds", "decode_seconds",
    "decode_tokens_per_second"}`` from a :class:`llmcli.generation.GenerationStats` (seconds;
    tokens/s; ``stop`` is ``"interrupted"`` after Ctrl-C; a rate that is not defined, below 2
    tokens, is ``None``)."""
    import math

    rate = stats.decode_tokens_per_second
    return {"done": True, "stop": "interrupted" if interrupted else stats.stop_reason,
            "seed": stats.seed, "tokens": stats.generated_tokens,
            "prompt_tokens": stats.prompt_tokens, "load_seconds": round(load_seconds, 4),
            "prefill_seconds": round(stats.prefill_seconds, 6),
            "first_token_seconds": round(stats.first_token_seconds, 6),
            "decode_seconds": round(stats.decode_seconds, 6),
            "decode_tokens_per_second": round(rate, 3) if math.isfinite(rate) else None}


class _TokenView:
    """How ``--top-logprobs``, ``--show-tokens`` and ``--json`` show generated tokens.

    Streaming: in a terminal each token is coloured by its probability (with --top-logprobs)
    and/or alternately underlined (with --show-tokens); piped, --show-tokens writes ``|``
    between tokens; --json writes one JSON object per token and line instead of the text.
    After generation, --top-logprobs lists every token's logprob and alternatives
    (:func:`llmcli.render.logprobs_rich` / ``logprobs_plain``) unless --json.
    """

    def __init__(self, tokenizer, top_logprobs: int, show_tokens: bool, json_out: bool) -> None:
        self.tokenizer = tokenizer
        self.top_logprobs = top_logprobs
        self.show_tokens = show_tokens
        self.json_out = json_out
        self.active = bool(top_logprobs or show_tokens or json_out)
        self.wants_logprobs = self.active
        self.tty = False
        self.events: list[dict] = []
        self._console = None
        self._shown = 0  # chunks written (for alternating styles and separators)

    def _piece(self, token_id: int) -> str:
        from llmcli.inspection.tensors import piece_of

        return piece_of(self.tokenizer, token_id)

    def write(self, event, out) -> bool:
        """Show one event; True when text was written."""
        record = {"id": event.id, "piece": self._piece(event.id), "text": event.text,
                  "logprob": event.logprob,
                  "top_logprobs": [{"id": i, "piece": self._piece(i), "logprob": lp}
                                   for i, lp in event.top_logprobs]}
        self.events.append(record)
        if self.json_out:
            from llmcli.render import write_json

            write_json(record, out)
            return True
        if not event.text:
            return False
        if self.tty and not (self.show_tokens and os.environ.get("NO_COLOR")):
            self._write_rich(event, out)
        else:
            out.write(("|" if self.show_tokens and self._shown else "") + event.text)
            out.flush()
        self._shown += 1
        return True

    def _write_rich(self, event, out) -> None:
        import math

        from rich.console import Console
        from rich.text import Text

        from llmcli.render import prob_style

        if self._console is None:
            self._console = Console(file=out, highlight=False, soft_wrap=True)
        style = ""
        if self.top_logprobs and event.logprob is not None:
            style = prob_style(math.exp(event.logprob))
        if self.show_tokens:
            style += " underline" + (" on grey23" if self._shown % 2 else "")
        self._console.print(Text(event.text, style=style.strip()), end="", soft_wrap=True)
        out.flush()

    def finish(self, out, ended_with_newline: bool) -> None:
        """After generation: the per-token listing for --top-logprobs (not with --json)."""
        if not self.top_logprobs or self.json_out or not self.events:
            return
        from llmcli.render import logprobs_plain, logprobs_rich

        if self.tty:
            from rich.console import Console

            logprobs_rich(self.events, Console(file=out, highlight=False))
        else:
            out.write(("" if ended_with_newline else "\n") + "\n" + logprobs_plain(self.events))
        out.flush()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the flush at exit cannot fail on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
