"""``llmcli generate``: stream a continuation of a prompt from a model."""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated, List, Optional

import typer

from llmcli.cli.common import (DeviceOpt, DtypeOpt, ModelOpt, ThreadsOpt, read_prompt,
                               resolve_model_dir, set_threads, stderr_console)
from llmcli.errors import UsageError
from llmcli.render import make_stdout_safe


def generate_command(
    prompt: Annotated[Optional[str], typer.Argument(
        help="Prompt text; '-' or absent reads stdin (when piped). With both, the argument comes "
             "first, then a newline, then stdin.", show_default=False)] = None,
    model: ModelOpt = None,
    max_tokens: Annotated[int, typer.Option("-n", "--max-tokens", help="Most tokens to generate.")] = 200,
    temp: Annotated[float, typer.Option("--temp", "--temperature", help="Temperature; 0 = greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens (0 = off).")] = 40,
    top_p: Annotated[float, typer.Option("--top-p", help="Keep the smallest set with this much probability (1 = off).")] = 0.95,
    min_p: Annotated[float, typer.Option("--min-p", help="Drop tokens below min_p × the top probability (0 = off).")] = 0.05,
    repeat_penalty: Annotated[float, typer.Option("--repeat-penalty", help="Penalise tokens already seen (1 = off).")] = 1.0,
    seed: Annotated[Optional[int], typer.Option("-s", "--seed", help="Random seed (same seed and options → same text).",
                                                show_default=False)] = None,
    stop: Annotated[Optional[List[str]], typer.Option("--stop", help="Stop when this text is generated (repeatable; not printed).",
                                                      show_default=False)] = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    no_bos: Annotated[bool, typer.Option(
        "--no-bos", help="Add no special tokens (no BOS) before the prompt; by default the "
                         "tokenizer's own rule decides.")] = False,
    special: Annotated[bool, typer.Option(
        "--special", help="Parse special-token text in the prompt (<|im_start|>, <s>) as those "
                          "tokens, like llama.cpp's --parse-special; by default it is text.")] = False,
    echo: Annotated[bool, typer.Option("--echo", help="Also print the prompt when stdout is not a terminal.")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Print timings to stderr.")] = False,
    top_logprobs: Annotated[int, typer.Option(
        "--top-logprobs", metavar="K",
        help="After generating, list each token's logprob and its K most likely alternatives; in a "
             "terminal, colour streamed tokens by probability (green likely → red unlikely).")] = 0,
    show_tokens: Annotated[bool, typer.Option(
        "--show-tokens", help="Mark token boundaries in the streamed text (alternating colours in a "
                              "terminal, '|' between tokens when piped).")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help='Print one JSON object per generated token and line: {"id", "piece", "text", '
                       '"logprob", "top_logprobs": [{"id", "piece", "logprob"}]}.')] = False,
) -> None:
    """Generate text that continues PROMPT, streaming tokens as they are produced.

    Sampling filters apply in this order: repeat penalty → temperature → top-k → top-p → min-p.

    Examples:

        llmcli generate "ROMEO:" -n 60

        llmcli generate "ROMEO:" --temp 0 --stop "JULIET" --stats

        echo "To be, or not to be" | llmcli generate -m path/to/llama-dir -s 42

        llmcli generate "ROMEO:" -n 20 --top-logprobs 3 --show-tokens
    """
    from llmcli.sampling import SamplingParams

    params = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=repeat_penalty, seed=seed)
    params.validate()
    if max_tokens < 0:
        raise UsageError(f"--max-tokens: must be >= 0, got {max_tokens}")
    text = read_prompt(prompt)
    if not text and no_bos:
        raise UsageError("PROMPT: empty prompt with --no-bos leaves nothing to continue")
    if top_logprobs < 0:
        raise UsageError(f"--top-logprobs: must be >= 0, got {top_logprobs}")
    run_generate(text, resolve_model_dir(model), params, max_tokens=max_tokens, stop=stop or [],
                 dtype=dtype, device=device, threads=threads,
                 add_bos=False if no_bos else None, special=special, echo=echo,
                 show_stats=stats, top_logprobs=top_logprobs, show_tokens=show_tokens,
                 json_out=json_out)


def run_generate(text: str, model_dir, params, max_tokens: int, stop: list[str], dtype: str,
                 device: str, threads: int | None, add_bos: bool | None, echo: bool, show_stats: bool,
                 top_logprobs: int = 0, show_tokens: bool = False, json_out: bool = False,
                 special: bool = False) -> None:
    """Load, generate and stream to stdout; notices and stats go to stderr.

    ``add_bos``/``special``: as :meth:`llmcli.tokenizer.Tokenizer.encode` (``None`` = the
    tokenizer's rule).

    ``top_logprobs``/``show_tokens``/``json_out``: see :class:`_TokenView` (inspection output).
    """
    from rich.text import Text

    err = stderr_console()
    t0 = time.perf_counter()
    set_threads(threads)
    from llmcli.generation import STOP_CONTEXT, STOP_STRING, Generation
    from llmcli.tokenizer import load_tokenizer
    from llmcli.weights import load_model

    tokenizer = load_tokenizer(model_dir) if model_dir.is_dir() else None
    model, config = load_model(model_dir, dtype=dtype, device=device,
                               warn=lambda m: err.print(f"warning: {m}", markup=False))
    if tokenizer is None:  # pragma: no cover - load_model raised already
        return
    if tokenizer.vocab_size > config.vocab_size:
        from llmcli.errors import LLMCLIError
        raise LLMCLIError(f"{tokenizer.path}: vocabulary of {tokenizer.vocab_size} pieces does not fit "
                          f"the model's vocab_size {config.vocab_size}")
    load_seconds = time.perf_counter() - t0
    prompt_ids = tokenizer.encode(text, add_bos=add_bos, special=special)
    if top_logprobs > config.vocab_size:
        raise UsageError(f"--top-logprobs: {top_logprobs} is more than the vocabulary ({config.vocab_size})")
    view = _TokenView(tokenizer, top_logprobs, show_tokens, json_out)
    gen = Generation(model, tokenizer, prompt_ids, params, max_tokens, stop=stop,
                     eos_ids=tokenizer.eos_ids,
                     top_logprobs=top_logprobs, logprobs=view.wants_logprobs)

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
        out.write("\n")
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
    if st.stop_reason == STOP_STRING:
        err.print("[stopped: --stop string generated]", markup=False)
    elif st.stop_reason == STOP_CONTEXT:
        err.print(f"[stopped: context length of {config.max_position_embeddings} tokens reached]", markup=False)
    if show_stats:
        err.print(f"load {load_seconds:.2f} s | prompt {st.prompt_tokens} tokens | "
                  f"first token {st.first_token_seconds * 1000:.1f} ms | generated {st.generated_tokens} tokens | "
                  f"decode {st.decode_tokens_per_second:.1f} tokens/s | stop: {st.stop_reason} | seed {st.seed}",
                  markup=False)


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
