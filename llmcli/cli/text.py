"""Commands over a whole text: ``perplexity`` and ``score``.

Thin wrappers, as :mod:`llmcli.cli.inspect`: read and check the options and the text, load the
tokenizer, config and weights (the same options and loading as the inspection commands),
compute with :mod:`llmcli.inspection.perplexity` / :mod:`llmcli.inspection.score`, show with
:mod:`llmcli.render.score`. Torch is imported only once the options are checked.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmcli.cli.common import (DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, NoBosOpt, PictureForceOpt,
                               SaveHtmlOpt, SaveSvgOpt, SpecialOpt, TextPromptOpt, ThreadsOpt,
                               context_field, read_prompt)
from llmcli.cli.quant_option import QuantOpt
from llmcli.errors import LLMCLIError, UsageError

ContextOpt = Annotated[Optional[int], typer.Option(
    "-c", "--context", "--ctx-size",
    help="Tokens per window C (default: 512, or the model's context if smaller).",
    metavar="N", show_default=False)]
StrideOpt = Annotated[Optional[int], typer.Option(
    "--stride", help="How far each window moves, S ≤ C (default: C/2): each token is scored "
                     "once with at least C-S tokens of history.", metavar="N", show_default=False)]
BatchOpt = Annotated[int, typer.Option(
    "-b", "--batch-size", help="Tokens per forward pass (memory: N × vocabulary × 4 bytes of "
                               "logits).", metavar="N")]

DEFAULT_CONTEXT = 512


# ----------------------------------------------------------------------------- helpers
def read_text_file(path: Path, name: str = "FILE") -> str:
    """The UTF-8 text of ``path``.

    Raises:
        LLMCLIError: missing, a directory, a device or socket (``/dev/zero`` would be read
        until memory runs out; a pipe such as ``<(cmd)`` is read), unreadable or not UTF-8
        (naming ``name`` and path).
    """
    import stat

    try:
        mode = Path(path).stat().st_mode
    except OSError:
        mode = None  # read_bytes below names the problem
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISFIFO(mode)):
        raise LLMCLIError(f"{name}: {path}: is a device or socket, not a text file")
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise LLMCLIError(f"{name}: {path}: no such file") from None
    except IsADirectoryError:
        raise LLMCLIError(f"{name}: {path}: is a directory, not a text file") from None
    except OSError as exc:
        raise LLMCLIError(f"{name}: {path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LLMCLIError(f"{name}: {path}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at "
                          f"offset {exc.start})") from None


class _Progress:
    """A progress bar of scored tokens on stderr: only on a terminal, only once the work has
    taken ``delay`` seconds, gone when done (``transient``)."""

    def __init__(self, delay: float = 0.5, label: str = "scoring") -> None:
        from llmcli.cli.common import stderr_console

        self.console = stderr_console()
        self.delay, self.label = delay, label
        self.start = time.monotonic()
        self.progress = None
        self.task = None

    def __call__(self, done: int, total: int) -> None:
        if not self.console.is_terminal:
            return
        if self.progress is None:
            if time.monotonic() - self.start < self.delay:
                return
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.progress = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("tokens"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total)
        self.progress.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _load(text: str, source: str, model: Path | None, dtype: str, device: str,
          threads: int | None, no_bos: bool, special: bool, what: str):
    """Tokenizer, config and ids of ``text`` (at least two tokens), then the weights."""
    from llmcli.checks import check_vocab_fit
    from llmcli.cli.inspect import _Loaded, _load_weights, _note, _tokenizer
    from llmcli.models import load_config

    model_dir, tokenizer = _tokenizer(model)
    config = load_config(model_dir / "config.json")
    check_vocab_fit(tokenizer, config, warn=lambda m: _note(f"warning: {m}"))
    ids = tokenizer.encode(text, add_bos=False if no_bos else None, special=special)
    if len(ids) < 2:
        raise UsageError(f"{source}: gives {len(ids)} token{'s' if len(ids) != 1 else ''}; "
                         f"{what} needs at least 2 (one to predict from, one to predict)")
    ctx = _Loaded(model_dir, tokenizer, config, text, ids)
    return ctx, (lambda: _load_weights(ctx, dtype, device, threads))


def _window_options(context: int | None, stride: int | None, batch: int, model_context: int,
                    minimum: int = 2, field: str = "max_position_embeddings") -> tuple[int, int | None]:
    """Check --context/--stride/--batch-size against each other and the model → (C, S)."""
    if batch < 1:
        raise UsageError(f"--batch-size: must be at least 1, got {batch}")
    c = min(DEFAULT_CONTEXT, model_context) if context is None else context
    if c < minimum:
        raise UsageError(f"--context: must be at least {minimum}, got {c}")
    if c > model_context:
        raise UsageError(f"--context: {c} is longer than the model's context of {model_context} "
                         f"tokens ({field} in config.json)")
    if stride is not None:
        if stride < 1:
            raise UsageError(f"--stride: must be at least 1, got {stride}")
        if stride > c:
            raise UsageError(f"--stride: {stride} is larger than --context {c} (tokens between "
                             "windows would never be scored)")
    return c, stride


def _text_source(file: Path | None, text: str | None = None) -> tuple[str, str]:
    """(text, name for errors) from FILE, ``-``/stdin or a TEXT argument."""
    if file is not None and str(file) != "-":
        body = read_text_file(file)
        if not body:
            raise LLMCLIError(f"FILE: {file} is empty: no text to score")
        return body, f"FILE {file}"
    body = read_prompt(text if text is not None else "-", allow_empty=True)
    name = "stdin" if text in (None, "-") else "TEXT"
    if not body and name == "stdin":
        from llmcli.cli.common import _stdin_is_tty

        if _stdin_is_tty():
            raise UsageError("FILE: missing (give a file, or pipe text on stdin)")
        raise LLMCLIError("stdin: empty: no text to score")
    return body, name


# ----------------------------------------------------------------------------- perplexity
def perplexity_command(
    file: Annotated[Optional[Path], typer.Argument(
        help="Text file (UTF-8); '-' or absent reads stdin (when piped).", show_default=False)] = None,
    file_opt: Annotated[Optional[Path], typer.Option(
        "-f", "--file", help="The file as an option (as llama-perplexity's -f): the same as FILE.",
        show_default=False, metavar="FILE")] = None,
    model: ModelOpt = None,
    context: ContextOpt = None,
    stride: StrideOpt = None,
    rule: Annotated[str, typer.Option(
        "--rule", help="sliding (Hugging Face's sliding window) or llama.cpp (llama-perplexity's "
                       "chunks: the second half of each scored).")] = "sliding",
    chunks: Annotated[Optional[int], typer.Option(
        "--chunks", help="With --rule llama.cpp: score only the first N chunks (llama-perplexity's "
                         "--chunks).", metavar="N", show_default=False)] = None,
    batch: BatchOpt = 512,
    no_bos: NoBosOpt = False,
    special: SpecialOpt = False,
    json_out: JsonOpt = False,
    dtype: DtypeOpt = "auto",
    quant: QuantOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Perplexity of a text file: exp(mean negative log-likelihood per token), with its
    standard error, nats/token, bits/character and bits/byte.

    --rule sliding (default; Hugging Face's "Perplexity of fixed-length models"): windows of
    C tokens moving by S; every token after the first is scored once, with C-S to C-1
    tokens of history. --rule llama.cpp: llama-perplexity's rule, for numbers comparable
    with it: non-overlapping chunks of C tokens (BOS put first in each when the tokenizer
    adds BOS; the tail that fills no chunk dropped; 2 C tokens at least), only the second
    half of each chunk scored; one trailing newline of the file is dropped, as
    llama-perplexity -f does.

    ± is llama-perplexity's standard error: PPL × σ/√(n-1), σ the standard deviation of the
    per-token NLL (tokens taken as independent). bits/character = total NLL in bits / the
    characters of the text that the scored tokens decode to (the whole text when every
    token is scored): unlike per-token numbers, it compares across tokenizers. Memory stays
    bounded: logits of at most --batch-size tokens at a time, one float kept per token. A
    progress bar shows on a terminal's stderr.

    JSON (--json): {"perplexity", "perplexity_stderr", "nats_per_token",
    "nats_per_token_stderr", "bits_per_token", "bits_per_character", "bits_per_byte",
    "tokens", "scored", "characters", "bytes", "text_characters", "rule", "context",
    "stride", "add_bos", "model", "windows": [{"start", "end", "first", "scored", "nll"}]}.

    Examples:

        llmcli perplexity play.txt

        llmcli perplexity -m smol -c 256 --rule llama.cpp -f LICENSE.txt

        cat notes.txt | llmcli perplexity -c 128 --stride 64 --json
    """
    from llmcli.cli.inspect import _check_light_options
    from llmcli.inspection.perplexity import RULES

    _check_light_options(dtype, threads)
    if file is not None and file_opt is not None:
        raise UsageError("-f/--file: give the file once, as FILE or with -f/--file, not both")
    file = file_opt if file_opt is not None else file
    if rule not in RULES:
        raise UsageError(f"--rule: {rule!r} is not one of {', '.join(RULES)}")
    if rule == "llama.cpp" and stride is not None:
        raise UsageError("--stride: the llama.cpp rule has no stride (its chunks do not overlap); "
                         "use --rule sliding")
    if chunks is not None:
        if rule != "llama.cpp":
            raise UsageError("--chunks: only with --rule llama.cpp (the sliding rule has windows, "
                             "not chunks)")
        if chunks < 1:
            raise UsageError(f"--chunks: must be at least 1, got {chunks}")
    text, source = _text_source(file)
    if rule == "llama.cpp" and text.endswith("\n"):
        text = text[:-1]
    ctx, load_weights = _load(text, source, model, dtype, device, threads, no_bos, special,
                              "perplexity")
    c, s = _window_options(context, stride, batch, ctx.config.max_position_embeddings,
                           field=context_field(ctx.config),
                           minimum=4 if rule == "llama.cpp" else 2)
    n = len(ctx.ids)
    if rule == "llama.cpp" and n < 2 * c:
        raise UsageError(f"{source}: {n} tokens; --rule llama.cpp needs at least 2 × --context = "
                         f"{2 * c} tokens (as llama-perplexity)")
    add_bos = not no_bos and ctx.tokenizer.add_bos and ctx.tokenizer.bos_id is not None
    load_weights()
    from llmcli.inspection.perplexity import perplexity

    progress = _Progress()
    try:
        result = perplexity(ctx.model, ctx.tokenizer, ctx.ids, rule=rule, context=c, stride=s,
                            batch=batch, add_bos=add_bos, text_characters=len(text),
                            model_name=str(ctx.model_dir), chunks=chunks, on_progress=progress)
    finally:
        progress.close()
    from llmcli.render import console, make_stdout_safe, output_mode, write_json
    from llmcli.render.score import perplexity_plain, perplexity_rich

    make_stdout_safe()
    mode = output_mode(json_out)
    if mode == "json":
        write_json(result.to_dict())
    elif mode == "rich":
        perplexity_rich(result, console())
    else:
        sys.stdout.write(perplexity_plain(result))
        sys.stdout.flush()


# ----------------------------------------------------------------------------- score
def score_command(
    text: Annotated[Optional[str], typer.Argument(
        help="Text to score; '-' or absent reads stdin (when piped).", show_default=False)] = None,
    file: Annotated[Optional[Path], typer.Option(
        "-f", "--file", help="Read the text from this file (UTF-8) instead.", show_default=False,
        metavar="FILE")] = None,
    prompt_opt: TextPromptOpt = None,
    model: ModelOpt = None,
    color_by: Annotated[str, typer.Option(
        "--color-by", help="Colour tokens by rank (GLTR's buckets: top-1, top-10, top-100, "
                           "beyond) or by prob (probability).")] = "rank",
    top_logprobs: Annotated[int, typer.Option(
        "--top-logprobs", help="Alternatives listed per token in --json (0-20).",
        metavar="N")] = 5,
    context: ContextOpt = None,
    stride: StrideOpt = None,
    batch: BatchOpt = 512,
    save_svg: SaveSvgOpt = None,
    save_html: SaveHtmlOpt = None,
    force: PictureForceOpt = False,
    no_bos: NoBosOpt = False,
    special: SpecialOpt = False,
    json_out: JsonOpt = False,
    dtype: DtypeOpt = "auto",
    quant: QuantOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Score every token of a text: its logprob, rank and the entropy of the prediction.

    In a terminal, the text coloured by rank bucket (GLTR, Gehrmann et al. 2019: top-1,
    top-10, top-100, beyond) or, with --color-by prob, by probability, with a legend; piped,
    one annotated line per token (position, id, text, logprob, prob, rank, entropy in bits,
    bucket) and a summary line. The first token has no prediction (nothing before it): it is
    uncoloured, '-' in the listing and null in JSON. Texts longer than the context are
    scored with sliding windows (-c/--stride, as perplexity), streamed with a progress bar.

    JSON (--json), OpenAI-style: {"model", "context", "stride", "content": [{"position",
    "id", "token", "piece", "text", "bytes", "logprob", "rank", "bucket", "entropy" (nats),
    "entropy_bits", "top_logprobs": [{"token", "logprob", "bytes", "id"}]}], "summary":
    {"tokens", "scored", "mean_logprob", "perplexity", "buckets", "bucket_fractions"}};
    the first token's logprob, rank, bucket and entropy are null, its top_logprobs [].

    Examples:

        llmcli score "To be, or not to be, that is the question"

        llmcli score -f speech.txt --color-by prob --save-html speech.html

        llmcli score "ROMEO:" --json --top-logprobs 3 | jq .summary
    """
    from llmcli.cli.inspect import _check_light_options
    from llmcli.render.score import COLOR_BY

    _check_light_options(dtype, threads)
    from llmcli.cli.common import pick_prompt

    text = pick_prompt(text, prompt_opt, "TEXT")
    if color_by not in COLOR_BY:
        raise UsageError(f"--color-by: {color_by!r} is not one of {', '.join(COLOR_BY)}")
    if not 0 <= top_logprobs <= 20:
        raise UsageError(f"--top-logprobs: {top_logprobs} is out of range [0, 20]")
    if file is not None and text is not None:
        raise UsageError("TEXT and --file: give one")
    pictures = _check_pictures(save_svg, save_html, force)
    if file is not None:
        source_text, source = _text_source(file)
    else:
        source_text = read_prompt(text, allow_empty=True, name="TEXT")
        source = "stdin" if text in (None, "-") else "TEXT"
        if not source_text and text is None:
            from llmcli.cli.common import _stdin_is_tty

            if _stdin_is_tty():
                raise UsageError("TEXT: missing (give it as an argument, with --file, or on stdin)")
    ctx, load_weights = _load(source_text, source, model, dtype, device, threads, no_bos,
                              special, "score")
    c, s = _window_options(context, stride, batch, ctx.config.max_position_embeddings,
                           field=context_field(ctx.config))
    load_weights()
    from llmcli.inspection.score import ScoreSummary, score_tokens
    from llmcli.render import console, make_stdout_safe, output_mode
    from llmcli.render import score as R

    make_stdout_safe()
    mode = output_mode(json_out)
    con = console() if mode == "rich" else None
    if con is not None and con.no_color:
        mode = "plain"           # NO_COLOR: the colours are the view; list the tokens instead
    summary = ScoreSummary()
    spans = R.SpanCollector() if (mode == "rich" or pictures) else None
    writer = (R.ScoreJsonWriter(sys.stdout, {"model": str(ctx.model_dir), "context": c,
                                             "stride": s if s is not None else max(1, c // 2)})
              if mode == "json" else R.ScorePlainWriter(sys.stdout) if mode == "plain" else None)
    progress = _Progress()
    try:
        for t in score_tokens(ctx.model, ctx.tokenizer, ctx.ids, context=c, stride=s,
                              top_logprobs=top_logprobs if mode == "json" else 0, batch=batch,
                              on_progress=progress):
            summary.add(t)
            if spans is not None:
                spans.add(t)
            if writer is not None:
                writer.add(t)
    except KeyboardInterrupt:
        # Ctrl-C: --json's document is closed (the tokens so far, "interrupted": true in the
        # summary) so that stdout still parses; no picture is written.
        if isinstance(writer, R.ScoreJsonWriter):
            writer.close(summary, interrupted=True)
        raise
    finally:
        progress.close()
    if writer is not None:
        writer.close(summary)
    collected = spans.close() if spans is not None else []
    if mode == "rich":
        R.score_rich(collected, summary, con, color_by)
    if pictures:
        from llmcli.render import clip, visible

        title = str(file) if file is not None else clip(visible(source_text), 48)
        _save_pictures(collected, summary, color_by, save_svg, save_html, force, title)


def _check_pictures(save_svg: Path | None, save_html: Path | None, force: bool) -> bool:
    """Check the --save-* paths before any work; True when a picture is asked for."""
    if save_svg is None and save_html is None:
        return False
    from llmcli.cli.inspect import _check_pictures as check  # one rule for every view

    check(save_svg, save_html, force)
    return True


def _save_pictures(spans, summary, color_by: str, save_svg, save_html, force: bool,
                   source: str) -> None:
    from llmcli.cli.inspect import _note
    from llmcli.render import pictures as P
    from llmcli.render.score import score_figure

    P.save_pictures(score_figure(spans, summary, color_by, source), save_svg, save_html,
                    force=force, note=_note)


def register(app: typer.Typer) -> None:
    app.command("perplexity")(perplexity_command)
    app.command("score")(score_command)
