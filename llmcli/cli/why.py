"""Commands that ask "why": ``attribute`` (which input tokens made the prediction) and
``compare`` (two models, or two prompts, position by position).

Thin wrappers: validate options, load, call :mod:`llmcli.inspection.attribution` /
:mod:`llmcli.inspection.compare`, show with :mod:`llmcli.render.attribution` /
:mod:`llmcli.render.compare`. torch is imported only once the options are valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from llmcli.cli.common import (DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, NoBosOpt, PictureForceOpt,
                               SaveHtmlOpt, SaveSvgOpt, SpecialOpt, TextPromptOpt, ThreadsOpt,
                               pick_prompt, read_prompt, resolve_model_dir)
from llmcli.errors import LLMCLIError, UsageError

TextArg = Annotated[Optional[str], typer.Argument(
    help="Text whose next-token prediction is explained; '-' or absent reads stdin (when piped).",
    show_default=False)]


# ----------------------------------------------------------------------------- loading
@dataclass
class Loaded:
    model_dir: Path
    tokenizer: Any
    config: Any
    model: Any = None


def check_model_options(dtype: str, threads: int | None) -> None:
    from llmcli.weights import DTYPES

    if dtype not in DTYPES:
        raise UsageError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    from llmcli.cli.common import check_threads

    check_threads(threads)


def load_side(model: Path | None, label: str = "") -> Loaded:
    """Tokenizer and config of a model directory (``-m``'s rules when ``model`` is None),
    the tokenizer checked against the embedding (:func:`llmcli.checks.check_vocab_fit`)."""
    from llmcli.checks import check_vocab_fit
    from llmcli.models import load_config
    from llmcli.tokenizer import load_tokenizer

    model_dir = resolve_model_dir(model)
    tokenizer = load_tokenizer(model_dir)
    config = load_config(model_dir / "config.json")
    check_vocab_fit(tokenizer, config, warn=lambda m: note(f"warning: {label}{m}"))
    return Loaded(model_dir, tokenizer, config)


def load_weights(side: Loaded, dtype: str, device: str, threads: int | None, label: str = "") -> Loaded:
    from llmcli.cli.common import set_threads
    from llmcli.weights import load_model

    set_threads(threads)
    side.model, side.config = load_model(side.model_dir, dtype=dtype, device=device,
                                         warn=lambda m: note(f"warning: {label}{m}"))
    return side


def note(message: str) -> None:
    from llmcli.cli.common import stderr_console

    stderr_console().print(message, markup=False)


def check_save_paths(save_svg: Path | None, save_html: Path | None, force: bool) -> None:
    """topk's and trace's rule: each path writable, and not both the same file (the HTML
    failed after the SVG was written, or with --force replaced it)."""
    from llmcli.cli.inspect import _check_pictures

    _check_pictures(save_svg, save_html, force)


def output_mode(json_flag: bool) -> str:
    from llmcli.render import make_stdout_safe
    from llmcli.render import output_mode as mode

    make_stdout_safe()
    return mode(json_flag)


# ----------------------------------------------------------------------------- attribute
def attribute_command(
    text: TextArg = None,
    prompt_opt: TextPromptOpt = None,
    model: ModelOpt = None,
    target: Annotated[Optional[str], typer.Option(
        "--target", help="The next token to explain (text such as ' Paris', or a vocabulary piece "
                         "as stored); default: the model's arg-max.", metavar="TOKEN",
        show_default=False)] = None,
    contrast: Annotated[Optional[str], typer.Option(
        "--contrast", help="Contrastive attribution: explain target versus this token (the "
                           "difference of their logits by default; Yin & Neubig 2022).",
        metavar="TOKEN", show_default=False)] = None,
    method: Annotated[str, typer.Option(
        "--method", help="input_x_gradient, occlusion or saliency (inseq's names and definitions).")
    ] = "input_x_gradient",
    attributed_fn: Annotated[Optional[str], typer.Option(
        "--attributed-fn", help="What is attributed: logprob (default), probability or logit of "
                                "the target; with --contrast the difference (default logit).",
        show_default=False)] = None,
    baseline: Annotated[str, typer.Option(
        "--baseline", help="occlusion: what replaces the left-out token: unk (the unknown token's "
                           "embedding, inseq's), zero (a zero vector) or remove (delete the token).")
    ] = "unk",
    save_svg: SaveSvgOpt = None,
    save_html: SaveHtmlOpt = None,
    force: PictureForceOpt = False,
    no_bos: NoBosOpt = False,
    special: SpecialOpt = False,
    json_out: JsonOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Which input tokens made the model predict its next token, and by how much.

    Attributes f, the target's log-probability at the position after TEXT (or, with
    --contrast, the target-minus-contrast logit difference), to every input token. Methods
    as inseq defines them (Sarti et al. 2023), on the input embeddings:
    input_x_gradient (x ⊙ ∂f/∂x), saliency (|∂f/∂x|), occlusion (f minus f with the token
    left out). Each token gets a signed value (its effect on f: red raised it, blue
    lowered it) and inseq's score (gradients: L2 norm over the embedding, normalised to sum
    1; occlusion: |value|); the table ranks tokens by score.

    JSON (--json): {"method", "attributed_fn", "inseq_attributed_fn", "f", "target": {"id",
    "piece", "text", "logit", "prob", "logprob", "rank"}, "contrast", "baseline", "tokens":
    [{"position", "id", "piece", "text", "value", "score"}], "ranking", "sum_values",
    "aggregation"}. --save-svg/--save-html write the coloured text and the ranked bars as a
    picture.

    Examples:

        llmcli attribute "ROMEO: What light through yonder window"

        llmcli attribute "To be, or not to" --target " be" --contrast " die"

        llmcli attribute "To be, or not to" --method occlusion --json
    """
    from llmcli.inspection.attribution import BASELINES, FUNCTIONS, METHODS

    method = method.replace("-", "_")
    if method not in METHODS:
        raise UsageError(f"--method: {method!r} is not one of {', '.join(METHODS)}")
    if attributed_fn is not None and attributed_fn not in FUNCTIONS:
        raise UsageError(f"--attributed-fn: {attributed_fn!r} is not one of {', '.join(FUNCTIONS)}")
    if baseline not in BASELINES:
        raise UsageError(f"--baseline: {baseline!r} is not one of {', '.join(BASELINES)}")
    if baseline != "unk" and method != "occlusion":
        raise UsageError("--baseline: only with --method occlusion")
    check_model_options(dtype, threads)
    check_save_paths(save_svg, save_html, force)
    source = read_prompt(pick_prompt(text, prompt_opt, "TEXT"), name="TEXT")
    side = load_side(model)
    ids = side.tokenizer.encode(source, add_bos=False if no_bos else None, special=special)
    if not ids:
        raise UsageError("TEXT: gives no tokens (empty text with --no-bos): nothing to attribute"
                         if no_bos else "TEXT: gives no tokens and the tokenizer adds no BOS token")
    context = side.config.max_position_embeddings
    if len(ids) > context:
        from llmcli.cli.common import context_field

        raise LLMCLIError(f"TEXT: {len(ids)} tokens is longer than the model's context of {context} "
                          f"tokens ({context_field(side.config)})")
    from llmcli.inspection.attribution import attribute, resolve_token

    rows = side.config.vocab_size
    target_id = None if target is None else resolve_token(side.tokenizer, ids, target, "--target", rows)
    contrast_id = None if contrast is None else resolve_token(side.tokenizer, ids, contrast, "--contrast",
                                                              rows)
    load_weights(side, dtype, device, threads)
    result = attribute(side.model, side.tokenizer, ids, method=method, target=target_id,
                       contrast=contrast_id, function=attributed_fn, baseline=baseline)
    from llmcli.render.attribution import emit_attribution

    emit_attribution(result, output_mode(json_out))
    save_pictures("attribution", result, save_svg, save_html, force)


def save_pictures(kind: str, result, save_svg: Path | None, save_html: Path | None, force: bool) -> None:
    """Write the SVG/HTML pictures of a result (``kind``: ``attribution`` or ``compare``)."""
    if save_svg is None and save_html is None:
        return
    if kind == "attribution":
        from llmcli.render.attribution import attribution_figure as figure
    else:
        from llmcli.render.compare import compare_figure as figure
    from llmcli.render.pictures import save_pictures as save

    save(figure(result), save_svg, save_html, force=force, note=note)


# ----------------------------------------------------------------------------- compare
def compare_command(
    args: Annotated[Optional[List[str]], typer.Argument(
        metavar="A B TEXT", help="Two model directories then the text; with --prompt-b only the "
                                     "text. No TEXT (or '-'): read stdin when piped.",
        show_default=False)] = None,
    model: ModelOpt = None,
    prompt_a: Annotated[Optional[str], typer.Option(
        "--prompt-a", help="Compare two prompts on one model (-m): side A reads this prompt, then "
                           "TEXT (default: nothing before TEXT).", show_default=False)] = None,
    prompt_b: Annotated[Optional[str], typer.Option(
        "--prompt-b", help="Side B's prompt; giving it (or --prompt-a) compares prompts instead of "
                           "models.", show_default=False)] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Candidates shown per side and position.")] = 3,
    rows: Annotated[int, typer.Option(
        "--rows", help="Positions shown in the table: all when there are at most N, else the N of "
                       "largest KL (0: all). JSON always has every position.", metavar="N")] = 40,
    ctx_size: Annotated[Optional[int], typer.Option(
        "-c", "--ctx-size", help="Window in tokens: longer texts are read in consecutive windows, "
                                 "each from an empty cache (default: the smaller model context).",
        metavar="N", show_default=False)] = None,
    dtype_b: Annotated[Optional[str], typer.Option(
        "--dtype-b", help="Compute dtype of B (default: --dtype), e.g. A A --dtype-b bfloat16.",
        show_default=False)] = None,
    save_svg: SaveSvgOpt = None,
    save_html: SaveHtmlOpt = None,
    force: PictureForceOpt = False,
    no_bos: NoBosOpt = False,
    special: SpecialOpt = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print JSON Lines: one object per position, then {\"summary\": ...}.")] = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Two models, or two prompts, compared position by position on one text.

    Two models: llmcli compare A B TEXT (two directories, e.g. a float32 model and its
    quantized or converted copy, or two checkpoints of one training run). Their tokenizers
    must give the same ids on TEXT. Every position's next-token distributions are compared:
    each side's top-k, KL(A‖B) = Σ p_A·(log p_A − log p_B) in nats (A is the reference: put
    the original first), ≠ where the arg-maxes differ. Two prompts: llmcli compare -m DIR
    --prompt-a P --prompt-b Q TEXT: side A reads P then TEXT, side B reads Q then TEXT (TEXT
    tokenized once on its own, without BOS, so both sides read the same tokens; a
    sentencepiece tokenizer gives it its leading space mark); compared are the
    predictions of TEXT's tokens, from the first (right after the prompt) to the one after
    the last. The summary line gives the
    mean KL, the top-1 agreement and each side's perplexity on the text. Long texts stream
    through in chunks with a progress bar (stderr, in a terminal).

    JSON (--json), one line each: {"index", "position", "next": {"id", "piece"} | null,
    "kl", "argmax_same", "a": {"top": [{"id", "piece", "prob", "logprob"}], "logprob_next"},
    "b": {...}}, then {"summary": {"mean_kl", "max_kl", "top1_agreement", "argmax_differs_at",
    "perplexity_a", "perplexity_b", "kl_direction", "kl_unit": "nats", ...}}.

    Examples:

        llmcli compare smol-f32 smol-q8 "The capital of France is"

        llmcli compare smol smol --dtype-b bfloat16 --rows 10 - < play.txt

        llmcli compare --prompt-a "KING:" --prompt-b "FOOL:" "My lord, the"
    """
    from llmcli.cli.common import check_range
    from llmcli.weights import DTYPES

    words = list(args or [])
    prompts = prompt_a is not None or prompt_b is not None
    if prompts and len(words) > 1:
        raise UsageError(f"with --prompt-a/--prompt-b give only TEXT (and the model with -m), "
                         f"got {len(words)} arguments")
    if not prompts:
        if len(words) < 2:
            raise UsageError("A B: give two model directories, then TEXT (or --prompt-b to "
                             "compare two prompts on one model)")
        if len(words) > 3:
            raise UsageError(f"give A B [TEXT]: got {len(words)} arguments (quote the text)")
        if model is not None:
            raise UsageError("-m: the two models are the arguments A and B; -m is for --prompt-b")
        from llmcli.render import clip

        for name, path in (("A", words[0]), ("B", words[1])):
            if not Path(path).exists():
                raise UsageError(f"{name}: no such model directory: {clip(repr(path), 60)} (usage: "
                                 "llmcli compare A B [TEXT]; two prompts: -m DIR --prompt-b ...)")
    check_model_options(dtype, threads)
    if dtype_b is not None and dtype_b not in DTYPES:
        raise UsageError(f"--dtype-b: {dtype_b!r} is not one of {', '.join(DTYPES)}")
    if prompts and dtype_b is not None:
        raise UsageError("--dtype-b: only when comparing two models")
    check_range("-k", k, 1)
    check_range("--rows", rows, 0)
    check_range("--ctx-size", ctx_size, 1)
    check_save_paths(save_svg, save_html, force)
    if prompts:
        setup = _prompt_sides(words[0] if words else None, model, prompt_a, prompt_b, no_bos, special,
                              dtype, device, threads, ctx_size)
    else:
        setup = _model_sides(words[0], words[1], words[2] if len(words) > 2 else None, no_bos, special,
                             dtype, dtype_b or dtype, device, threads, ctx_size)
    a, b, next_ids, summary, window = setup
    check_range("-k", k, 1, min(a.model.config.vocab_size, b.model.config.vocab_size))
    from llmcli.inspection.compare import compare
    from llmcli.render.compare import Kept, compare_plain, compare_rich, json_line

    mode = output_mode(json_out)
    kept = Kept(rows)
    try:
        with _progress(a.count, "compare") as advance:
            for d in compare(a, b, k=k, window=window, next_ids=next_ids, progress=advance):
                summary.add(d)
                kept.add(d)          # at most --rows positions (for the table and the pictures)
                if mode == "json":
                    json_line(d.to_dict())
    except KeyboardInterrupt:
        # Ctrl-C: --json still ends with its summary line (of the positions so far), as
        # generate --json ends with its last record; no table, no picture.
        if mode == "json":
            json_line({"summary": summary.to_dict() | {"interrupted": True}})
        raise
    if mode == "json":
        json_line({"summary": summary.to_dict()})
    elif mode == "rich":
        from llmcli.render import console

        compare_rich(summary, kept, console())
    else:
        import sys

        sys.stdout.write(compare_plain(summary, kept))
        sys.stdout.flush()
    save_pictures("compare", (summary, kept), save_svg, save_html, force)


def _model_sides(dir_a: str, dir_b: str, text: str | None, no_bos: bool, special: bool, dtype: str,
                 dtype_b: str, device: str, threads: int | None, ctx_size: int | None):
    from llmcli.inspection.compare import Side, Summary, first_difference, vocabulary_note

    source = read_prompt(text, name="TEXT")
    sa = load_side(Path(dir_a), label="A: ")
    sb = load_side(Path(dir_b), label="B: ")
    add = False if no_bos else None
    ids_a = sa.tokenizer.encode(source, add_bos=add, special=special)
    ids_b = sb.tokenizer.encode(source, add_bos=add, special=special)
    if not ids_a:
        raise UsageError("TEXT: gives no tokens: nothing to compare")
    at = first_difference(ids_a, ids_b)
    if at is not None:
        def tok(side, ids):
            return f"{side.tokenizer.piece(ids[at])!r} (id {ids[at]})" if at < len(ids) else "the end"

        raise LLMCLIError(f"A and B tokenize TEXT differently (token {at}: A {tok(sa, ids_a)}, B "
                          f"{tok(sb, ids_b)}); models are compared only on the same tokens")
    context = min(sa.config.max_position_embeddings, sb.config.max_position_embeddings)
    if ctx_size is not None and ctx_size > context:
        raise UsageError(f"--ctx-size: {ctx_size} is more than the models' context of {context} tokens")
    window = ctx_size or context
    summary = Summary(mode="models", label_a=str(sa.model_dir), label_b=str(sb.model_dir),
                      window=window, windows=-(-len(ids_a) // window))
    vocab = vocabulary_note(sa.tokenizer, sb.tokenizer, sa.config.vocab_size, sb.config.vocab_size)
    if vocab:
        summary.notes.append(vocab)
    load_weights(sa, dtype, device, threads, label="A: ")
    load_weights(sb, dtype_b, device, threads, label="B: ")
    if sa.model.dtype != sb.model.dtype:
        summary.label_a += f" ({str(sa.model.dtype).replace('torch.', '')})"
        summary.label_b += f" ({str(sb.model.dtype).replace('torch.', '')})"
    a = Side(str(sa.model_dir), sa.model, sa.tokenizer, ids_a)
    b = Side(str(sb.model_dir), sb.model, sb.tokenizer, ids_b)
    return a, b, None, summary, window


def _prompt_sides(text: str | None, model: Path | None, prompt_a: str | None, prompt_b: str | None,
                  no_bos: bool, special: bool, dtype: str, device: str, threads: int | None,
                  ctx_size: int | None):
    from llmcli.cli.common import _check_utf8
    from llmcli.inspection.compare import Side, Summary

    source = read_prompt(text, allow_empty=True, name="TEXT")
    for name, p in (("--prompt-a", prompt_a), ("--prompt-b", prompt_b)):
        if p is not None:
            _check_utf8(p, name)
    side = load_side(model)
    tok = side.tokenizer
    add = False if no_bos else None
    pa = tok.encode(prompt_a or "", add_bos=add, special=special)
    pb = tok.encode(prompt_b or "", add_bos=add, special=special)
    text_ids = tok.encode(source, add_bos=False, special=special) if source else []
    skip = 1 if min(len(pa), len(pb)) == 0 else 0     # a side with no prompt cannot predict token 0
    if len(text_ids) - skip < 0 or (skip and not text_ids):
        which = "--prompt-a" if not pa else "--prompt-b"
        raise UsageError(f"{which}: gives no tokens and there is no TEXT: nothing to compare")
    context = side.config.max_position_embeddings
    if ctx_size is not None and ctx_size > context:
        raise UsageError(f"--ctx-size: {ctx_size} is more than the model's context of {context} tokens")
    window = ctx_size or context
    for name, p in (("--prompt-a", pa), ("--prompt-b", pb)):
        if len(p) + len(text_ids) > window:
            raise LLMCLIError(f"{name}: the prompt and TEXT are {len(p) + len(text_ids)} tokens, more than "
                              f"the context of {window} tokens")
    load_weights(side, dtype, device, threads)
    from llmcli.render import clip

    a = Side(f"{prompt_a or ''!r}", side.model, tok, pa + text_ids, first=len(pa) - 1 + skip)
    b = Side(f"{prompt_b or ''!r}", side.model, tok, pb + text_ids, first=len(pb) - 1 + skip)
    next_ids = text_ids[skip:] + [None]
    summary = Summary(mode="prompts", label_a=clip(a.label, 60) + f" + TEXT on {side.model_dir}",
                      label_b=clip(b.label, 60) + f" + TEXT on {side.model_dir}", window=window)
    return a, b, next_ids, summary, window


class _progress:
    """A progress bar on stderr while positions are compared (only when stderr is a terminal;
    the context value is the callback given the number of positions done)."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.bar = total, what, None

    def __enter__(self):
        import sys

        try:
            tty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            tty = False
        if not tty or self.total < 2 * 64:
            return lambda done: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        from llmcli.cli.common import stderr_console

        self.bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=stderr_console(), transient=True)
        self.bar.start()
        task = self.bar.add_task(f"{self.what} (positions)", total=self.total)
        return lambda done: self.bar.update(task, completed=done)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def register(app: typer.Typer) -> None:
    app.command("attribute")(attribute_command)
    app.command("compare")(compare_command)
