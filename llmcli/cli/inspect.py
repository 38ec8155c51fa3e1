"""Inspection commands: tokenize, detokenize, embeddings, logits, topk, info, trace.

Thin wrappers: validate options, load, call :mod:`llmcli.inspection`, show with
:mod:`llmcli.render`. ``tokenize``, ``detokenize`` and ``info`` never import torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from llmcli.cli.common import (CtxSizeOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, NoBosOpt,
                               PictureForceOpt, SaveHtmlOpt, SaveSvgOpt, SpecialOpt, TextPromptOpt,
                               ThreadsOpt, check_range, context_phrase, pick_prompt, read_prompt,
                               resolve_context, resolve_model_dir)
from llmcli.cli.quant_option import QuantOpt
from llmcli.cli.sampling_options import MinPOpt, RepeatPenaltyOpt, TopKOpt, TopPOpt
from llmcli.errors import LLMCLIError, UsageError

TextArg = Annotated[Optional[str], typer.Argument(
    help="Text to inspect; '-' or absent reads stdin (when piped).", show_default=False)]
SaveOpt = Annotated[Optional[Path], typer.Option(
    "--save", help="Also write the full tensor to this new .safetensors file (atomically; an "
            "existing file needs --force).",
    show_default=False, metavar="FILE.safetensors")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="With --save: replace FILE if it exists (a regular file only).")]
RowsOpt = Annotated[int, typer.Option(
    "-r", "--rows", metavar="N", help="How many candidates (table rows) to show.")]
#: The old name of --rows (before --top-k existed here): accepted, not listed.
OldRowsOpt = Annotated[Optional[int], typer.Option("-k", "--k", hidden=True, show_default=False)]
# tokenize, detokenize and info never load weights (nor torch): these model options are still
# accepted (and checked) so that scripts passing them everywhere keep working, but not listed.
UnusedDtypeOpt = Annotated[str, typer.Option("--dtype", hidden=True)]
UnusedDeviceOpt = Annotated[str, typer.Option("--device", hidden=True)]
UnusedThreadsOpt = Annotated[Optional[int], typer.Option("--threads", hidden=True, show_default=False)]


# ----------------------------------------------------------------------------- loading
@dataclass
class _Loaded:
    model_dir: Path
    tokenizer: Any
    config: Any
    text: str
    ids: list[int]
    model: Any = None
    context: int = 0
    context_source: str = "max_position_embeddings"


def _check_light_options(dtype: str, threads: int | None) -> None:
    """Validate the model options that commands without weights still accept."""
    from llmcli.weights import DTYPES

    if dtype not in DTYPES:
        raise UsageError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    from llmcli.cli.common import check_threads

    check_threads(threads)


def _tokenizer(model: Path | None):
    from llmcli.tokenizer import load_tokenizer

    model_dir = resolve_model_dir(model)   # raises for a missing or non-model directory
    return model_dir, load_tokenizer(model_dir)


def _context_length(model_dir: Path) -> int | None:
    """The model's context length, or None when its config.json is missing or invalid."""
    from llmcli.models import load_config

    try:
        return load_config(model_dir / "config.json").max_position_embeddings
    except LLMCLIError:
        return None


def _rows(rows: int, old: int | None, default: int) -> tuple[int, str]:
    """``(rows, the option's name for messages)``: --rows, or its old name -k/--k."""
    if old is None:
        return rows, "-r/--rows"
    if rows != default:
        raise UsageError("-r/--rows: given twice (also as its old name -k/--k)")
    return old, "-k"


def _prepare(text_arg: str | None, model: Path | None, dtype: str, threads: int | None,
             no_bos: bool, special: bool = False, prompt_opt: str | None = None,
             ctx_size: int | None = None) -> _Loaded:
    """Read the text (TEXT or -p/--prompt), load tokenizer and config, encode and check the
    tokens fit the context (-c/--ctx-size, else the model's); no weights yet.

    ``_Loaded.context`` is the context length to use, ``context_source`` what sets it."""
    from llmcli.models import load_config

    _check_light_options(dtype, threads)
    text = read_prompt(pick_prompt(text_arg, prompt_opt, "TEXT"), name="TEXT")
    model_dir, tokenizer = _tokenizer(model)
    config = load_config(model_dir / "config.json")
    context, source = resolve_context(ctx_size, config)
    from llmcli.checks import check_vocab_fit

    check_vocab_fit(tokenizer, config, warn=lambda m: _note(f"warning: {m}"))
    ids = tokenizer.encode(text, add_bos=False if no_bos else None, special=special)
    if not ids:
        raise UsageError("TEXT: gives no tokens (empty text with --no-bos): nothing to run the model on"
                         if no_bos else "TEXT: gives no tokens and the tokenizer adds no BOS token")
    if len(ids) > context:
        raise LLMCLIError(f"TEXT: {len(ids)} tokens is longer than {context_phrase(context, source)}")
    return _Loaded(model_dir, tokenizer, config, text, ids, context=context, context_source=source)


def _load_weights(ctx: _Loaded, dtype: str, device: str, threads: int | None) -> _Loaded:
    from llmcli.cli.common import set_threads, stderr_console
    from llmcli.weights import load_model

    set_threads(threads)
    err = stderr_console()
    ctx.model, ctx.config = load_model(ctx.model_dir, dtype=dtype, device=device,
                                       warn=lambda m: err.print(f"warning: {m}", markup=False))
    return ctx


def _emit(kind: str, result, json_flag: bool, **options) -> None:
    from llmcli.render import emit, make_stdout_safe, output_mode

    make_stdout_safe()
    emit(kind, result, output_mode(json_flag), **options)


def _note(message: str) -> None:
    from llmcli.cli.common import stderr_console

    stderr_console().print(message, markup=False)


def _save(path: Path, tensors: dict, metadata: dict[str, str], what: str, force: bool) -> None:
    from llmcli.inspection.tensors import save_safetensors

    save_safetensors(path, tensors, metadata, force=force)
    shape = "×".join(str(d) for d in next(iter(tensors.values())).shape)
    _note(f"saved {what} ({shape}) to {path}")


def _check_pictures(svg: Path | None, html: Path | None, force: bool) -> None:
    """Fail before any work when a --save-svg/--save-html path may not be written."""
    from llmcli.render.pictures import check_picture_path

    if svg is not None and html is not None and Path(svg).absolute() == Path(html).absolute():
        raise UsageError(f"--save-svg and --save-html: {html} twice; give two different files")
    for path, option in ((svg, "--save-svg"), (html, "--save-html")):
        if path is not None:
            check_picture_path(path, option, force)


def _save_pictures(kind: str, result, text: str, svg: Path | None, html: Path | None,
                   force: bool) -> None:
    """Write the view's picture (:data:`llmcli.render.FIGURES`) to the files asked for."""
    if svg is None and html is None:
        return
    from llmcli.render import FIGURES
    from llmcli.render.pictures import save_pictures

    save_pictures(FIGURES[kind](result, text), svg, html, force=force, note=_note)


def _metadata(ctx: _Loaded, **extra: Any) -> dict[str, str]:
    import json

    meta = {"model": str(ctx.model_dir), "input_ids": json.dumps(ctx.ids),
            "pieces": json.dumps([ctx.tokenizer.piece(i) for i in ctx.ids], ensure_ascii=False)}
    meta.update({k: str(v) for k, v in extra.items()})
    return meta


# ----------------------------------------------------------------------------- tokenize
def tokenize_command(
    text: TextArg = None,
    prompt_opt: TextPromptOpt = None,
    model: ModelOpt = None,
    ids: Annotated[bool, typer.Option("--ids", help="Print only the token ids, space-separated.")] = False,
    count: Annotated[bool, typer.Option("--count", help="Print only the number of tokens.")] = False,
    no_bos: NoBosOpt = False,
    special: SpecialOpt = False,
    json_out: JsonOpt = False,
    dtype: UnusedDtypeOpt = "auto",
    device: UnusedDeviceOpt = "cpu",
    threads: UnusedThreadsOpt = None,
) -> None:
    """Split TEXT into tokens: position, id, piece, exact bytes, kind.

    The piece is as the vocabulary stores it: sentencepiece writes a space as ▁ and a byte as
    <0x0A>; byte-level BPE (tokenizer.json of Llama 3, Qwen, SmolLM, GPT-2) writes a space as
    Ġ, a newline as Ċ, and part of an emoji as ðŁ; the bytes column shows what it stands for.
    Special-token text such as <|im_end|> stays text unless --special. Also prints totals
    (tokens, characters, bytes) and checks that decode(encode(text)) == text, explaining any
    difference (e.g. the normalizer collapsing spaces). Loads only the tokenizer
    (tokenizer.json, else tokenizer.model; never torch), so a directory holding only
    tokenizer files works.

    JSON (--json): {"tokens": [{"position", "id", "piece", "bytes", "hex", "kind"}], "count",
    "ids", "characters", "utf8_bytes", "context_length", "roundtrip": {"ok", "decoded",
    "normalized", "notes"}, "tokenizer" (its kind), "special"}; a token's "bytes" is a list
    of ints (0-255) and "hex" the same bytes as a hex string.

    Examples:

        llmcli tokenize "To be, or not to be"

        llmcli tokenize --ids "Hello world" | llmcli detokenize

        cat play.txt | llmcli tokenize --count

        llmcli tokenize -m smol --special "<|im_start|>user"
    """
    from llmcli.inspection.tokens import tokenize_text

    if sum([ids, count, json_out]) > 1:
        raise UsageError("--ids, --count and --json: choose one")
    _check_light_options(dtype, threads)
    source = read_prompt(pick_prompt(text, prompt_opt, "TEXT"), name="TEXT")
    model_dir, tokenizer = _tokenizer(model)
    result = tokenize_text(tokenizer, source, add_bos=False if no_bos else None, special=special)
    result.context_length = _context_length(model_dir)
    if ids:
        sys.stdout.write(" ".join(str(i) for i in result.ids) + "\n")
    elif count:
        sys.stdout.write(f"{result.count}\n")
    else:
        _emit("tokenize", result, json_out)


def detokenize_command(
    token_ids: Annotated[Optional[List[str]], typer.Argument(
        metavar="ID...", help="Token ids (also comma-separated); absent: read them from stdin.",
        show_default=False)] = None,
    model: ModelOpt = None,
    special: Annotated[bool, typer.Option(
        "--special", help="Print control and special tokens as their text (<s>, <|im_end|>) "
                          "instead of nothing.")] = False,
    json_out: JsonOpt = False,
    dtype: UnusedDtypeOpt = "auto",
    device: UnusedDeviceOpt = "cpu",
    threads: UnusedThreadsOpt = None,
) -> None:
    """Turn token ids back into text (the inverse of tokenize).

    Piped, prints exactly the text (no newline added), so `tokenize --ids | detokenize`
    round-trips. Control and special tokens (BOS, EOS, <|im_end|>) decode to nothing unless
    --special, so `tokenize --special --ids | detokenize --special` round-trips too.

    JSON (--json): {"ids", "text", "count", "tokens": [{"position", "id", "piece", "bytes", "hex", "kind"}]}.

    Examples:

        llmcli detokenize 1 436 310 1979 534 333 295 310

        llmcli tokenize --ids "ROMEO:" | llmcli detokenize

        llmcli detokenize -m smol --special 1 4093 198
    """
    from llmcli.cli.common import _stdin_is_tty
    from llmcli.inspection.tokens import detokenize_ids, parse_ids

    _check_light_options(dtype, threads)
    words = list(token_ids or [])
    if not words and not _stdin_is_tty():
        words = [sys.stdin.read()]
    parsed = parse_ids(words)
    if not parsed:
        raise UsageError("ID: no token ids given (pass them as arguments or on stdin)")
    _, tokenizer = _tokenizer(model)
    _emit("detokenize", detokenize_ids(tokenizer, parsed, special=special), json_out)


# ----------------------------------------------------------------------------- embeddings
def embeddings_command(
    text: TextArg = None,
    prompt_opt: TextPromptOpt = None,
    model: ModelOpt = None,
    layer: Annotated[int, typer.Option(
        "--layer", help="Hidden state after L blocks: 0 = embedding output, N = num_hidden_layers = "
                        "after the final norm (transformers' output_hidden_states indexing).")] = 0,
    dims: Annotated[Optional[int], typer.Option(
        "--dims", metavar="N", show_default=False,
        help="How many leading values of each vector to show (default: as many as the terminal's "
             "width holds; 8 when piped).")] = None,
    neighbors: Annotated[int, typer.Option(
        "--neighbors", help="Also list the K nearest vocabulary tokens by cosine similarity "
                            "(against the embedding matrix); 0 = off.", metavar="K")] = 0,
    save: SaveOpt = None,
    force: ForceOpt = False,
    no_bos: NoBosOpt = False,
    special: SpecialOpt = False,
    json_out: JsonOpt = False,
    ctx_size: CtxSizeOpt = None,
    dtype: DtypeOpt = "auto",
    quant: QuantOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Each token's embedding row, or its hidden state after a given block.

    Shows the first --dims values and the L2 norm of each vector. Position is not part of the
    embedding: RoPE rotates queries and keys inside attention.

    JSON (--json): {"tokens": [{"position", "id", "piece"}], "layer", "vectors": [[...]] (full
    vectors), "norms", "neighbors"}. --save writes tensors "hidden_states" (tokens × hidden)
    and "input_ids".

    Examples:

        llmcli embeddings "ROMEO:" --dims 6 --neighbors 5

        llmcli embeddings "To be, or not to be" --layer 3 --save h3.safetensors
    """
    from llmcli.inspection.tensors import check_writable

    ctx = _prepare(text, model, dtype, threads, no_bos, special, prompt_opt, ctx_size)
    n = ctx.config.num_hidden_layers
    if not 0 <= layer <= n:
        raise UsageError(f"--layer: {layer} is out of range [0, {n}] (0 = embedding output, "
                         f"{n} = after the final norm)")
    if dims is not None:
        check_range("--dims", dims, 1, ctx.config.hidden_size)
    check_range("--neighbors", neighbors, 0, ctx.config.vocab_size)
    if save is not None:
        check_writable(save, force=force)
    _load_weights(ctx, dtype, device, threads)
    from llmcli.inspection.tensors import embeddings_report, forward, hidden_state

    _, capture = forward(ctx.model, ctx.ids, check_logits=False)  # the hidden state is checked
    result = embeddings_report(ctx.model, ctx.tokenizer, ctx.ids, capture, layer, neighbors)
    if save is not None:
        import torch

        _save(save, {"hidden_states": hidden_state(capture, layer),
                     "input_ids": torch.tensor(ctx.ids, dtype=torch.int64)},
              _metadata(ctx, layer=layer, layer_name=result.layer_name), f"hidden_states[{layer}]",
              force)
    _emit("embeddings", result, json_out, **({} if json_out else {"dims": dims}))


# ----------------------------------------------------------------------------- logits
def logits_command(
    text: TextArg = None,
    prompt_opt: TextPromptOpt = None,
    model: ModelOpt = None,
    top: Annotated[int, typer.Option("--top", help="Show the N highest and the N lowest logits.",
                                     metavar="N")] = 10,
    all_positions: Annotated[bool, typer.Option(
        "--all-positions", help="Show the logits after every position, not only the last.")] = False,
    save: SaveOpt = None,
    force: ForceOpt = False,
    no_bos: NoBosOpt = False,
    special: SpecialOpt = False,
    json_out: JsonOpt = False,
    ctx_size: CtxSizeOpt = None,
    dtype: DtypeOpt = "auto",
    quant: QuantOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Raw next-token logits (before softmax) after the last position of TEXT.

    Shows the top and bottom N with id and piece, and min/max/mean/std over the vocabulary.

    JSON (--json): {"tokens", "position", "logits": [...full vocabulary...], "top": [{"id",
    "piece", "logit"}], "bottom", "stats"}, plus "positions": [...] with --all-positions.
    --save writes tensors "logits" (positions × vocab) and "input_ids".

    Examples:

        llmcli logits "ROMEO:" --top 5

        llmcli logits "To be, or not" --all-positions --save logits.safetensors
    """
    from llmcli.inspection.tensors import check_writable

    ctx = _prepare(text, model, dtype, threads, no_bos, special, prompt_opt, ctx_size)
    check_range("--top", top, 1, ctx.config.vocab_size)
    if save is not None:
        check_writable(save, force=force)
    _load_weights(ctx, dtype, device, threads)
    from llmcli.inspection.tensors import forward, logits_report

    logits, _ = forward(ctx.model, ctx.ids)
    result = logits_report(ctx.tokenizer, ctx.ids, logits, top, all_positions)
    if save is not None:
        import torch

        _save(save, {"logits": logits, "input_ids": torch.tensor(ctx.ids, dtype=torch.int64)},
              _metadata(ctx), "logits", force)
    _emit("logits", result, json_out)


# ----------------------------------------------------------------------------- topk
def topk_command(
    text: TextArg = None,
    prompt_opt: TextPromptOpt = None,
    model: ModelOpt = None,
    rows: RowsOpt = 10,
    old_rows: OldRowsOpt = None,
    temp: Annotated[float, typer.Option("--temp", "--temperature",
                                        help="Temperature T: probabilities are softmax(logits / T).")] = 1.0,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 0.95,
    min_p: MinPOpt = 0.05,
    repeat_penalty: RepeatPenaltyOpt = 1.0,
    steps: Annotated[int, typer.Option("--steps", help="Repeat for N generated tokens (KV cache).",
                                       metavar="N")] = 1,
    seed: Annotated[Optional[int], typer.Option(
        "-s", "--seed", help="Sample each step's token with this seed (the sampling options applied, "
                             "as generate); without it the arg-max is chosen (greedy).",
        show_default=False)] = None,
    no_bos: NoBosOpt = False,
    special: SpecialOpt = False,
    json_out: JsonOpt = False,
    save_svg: SaveSvgOpt = None,
    save_html: SaveHtmlOpt = None,
    force: PictureForceOpt = False,
    ctx_size: CtxSizeOpt = None,
    dtype: DtypeOpt = "auto",
    quant: QuantOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """The most likely next tokens: probability bars, logprob, cumulative probability.

    Takes generate's sampling options (--temp, --top-k, --top-p, --min-p, --repeat-penalty,
    -s/--seed) and shows what they do: the probabilities are those after the repeat penalty
    and the temperature, it marks where --top-p and --min-p cut and says how many tokens
    sampling would draw from after all of them (--top-k included). -r/--rows only sets how
    many rows are shown. Gives the entropy in bits. With --steps N, repeats for N tokens,
    each chosen greedily or, with --seed, sampled as generate would.

    JSON (--json): {"steps": [{"candidates": [{"rank", "id", "piece", "logit", "prob", "logprob",
    "cumulative"}], "chosen": {"id", "piece", "prob", ...}, "entropy_bits", "top_p_keep",
    "min_p_keep", "kept"}], "tokens", "text" (the chosen tokens decoded, as generate prints
    them), ...}. --save-svg/--save-html draw the bars of every step (and the generated text
    coloured by probability) as a picture.

    Examples:

        llmcli topk "ROMEO:" --rows 8

        llmcli topk "To be, or not to" --steps 5 --temp 0.8 --top-k 40 -s 42

        llmcli topk "ROMEO:" --steps 3 --save-html topk.html
    """
    from llmcli.sampling import SamplingParams

    if not 0 < temp < float("inf"):
        raise UsageError(f"--temp: must be a finite number > 0 (probabilities are softmax(logits / T)), "
                         f"got {temp}")
    SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                   repeat_penalty=repeat_penalty, seed=seed).validate()
    k, rows_name = _rows(rows, old_rows, 10)
    if steps < 1:
        raise UsageError(f"--steps: must be at least 1, got {steps}")
    _check_pictures(save_svg, save_html, force)
    ctx = _prepare(text, model, dtype, threads, no_bos, special, prompt_opt, ctx_size)
    check_range(rows_name, k, 1, ctx.config.vocab_size)
    context = ctx.context
    if len(ctx.ids) + steps - 1 > context:
        raise UsageError(f"--steps: {len(ctx.ids)} prompt tokens + {steps - 1} generated exceed "
                         f"{context_phrase(context, ctx.context_source)}")
    _load_weights(ctx, dtype, device, threads)
    from llmcli.inspection.tensors import topk_report

    result = topk_report(ctx.model, ctx.tokenizer, ctx.ids, k, temperature=temp, top_p=top_p,
                         min_p=min_p, steps=steps, seed=seed,
                         eos_ids=ctx.tokenizer.eos_ids, top_k=top_k, repeat_penalty=repeat_penalty)
    _save_pictures("topk", result, ctx.text, save_svg, save_html, force)
    _emit("topk", result, json_out)


# ----------------------------------------------------------------------------- info
def info_command(
    model: ModelOpt = None,
    json_out: JsonOpt = False,
    dtype: UnusedDtypeOpt = "auto",
    device: UnusedDeviceOpt = "cpu",
    threads: UnusedThreadsOpt = None,
) -> None:
    """Describe a model directory: architecture, config, parameters, tensors, tokenizer.

    Parameter counts (total, embedding, per block), every tensor's shape, dtype and size, the
    tokenizer's vocabulary and special tokens, and the context length. Reads only the
    safetensors headers (fast; never torch).

    JSON (--json): {"model_dir", "architecture", "config", "derived", "context_length",
    "parameters": {"total", "embedding", "per_block", ...}, "tensors": [{"name", "shape",
    "dtype", "numel", "bytes"}], "weights_bytes", "tokenizer": {"vocab_size", "special", ...}}.

    Examples:

        llmcli info

        llmcli info -m path/to/llama-dir --json
    """
    from llmcli.inspection.info import model_info

    _check_light_options(dtype, threads)
    _emit("info", model_info(resolve_model_dir(model)), json_out)


# ----------------------------------------------------------------------------- trace
def trace_command(
    text: TextArg = None,
    prompt_opt: TextPromptOpt = None,
    model: ModelOpt = None,
    rows: Annotated[int, typer.Option(
        "-r", "--rows", metavar="N", help="Candidates shown per stage (logit lens, softmax).")] = 5,
    old_rows: OldRowsOpt = None,
    temp: Annotated[float, typer.Option("--temp", "--temperature",
                                        help="Temperature of the softmax shown.")] = 1.0,
    attention: Annotated[Optional[int], typer.Option(
        "--attention", help="Draw block L's attention pattern (0-based, as model.layers.L) as a heat map.",
        metavar="L", show_default=False)] = None,
    head: Annotated[Optional[int], typer.Option(
        "--head", help="With --attention: only head H (default: the mean of all heads).", metavar="H",
        show_default=False)] = None,
    no_bos: NoBosOpt = False,
    special: SpecialOpt = False,
    json_out: JsonOpt = False,
    save_svg: SaveSvgOpt = None,
    save_html: SaveHtmlOpt = None,
    force: PictureForceOpt = False,
    ctx_size: CtxSizeOpt = None,
    dtype: DtypeOpt = "auto",
    quant: QuantOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Walk one next-token prediction through every stage, in order.

    Tokens → embedding norms → for each block: the residual-stream norm, each attention head's
    most-attended token (for the last position) and the logit lens (the top tokens if the
    residual went through the final norm and lm_head there) → final logits → softmax top-k →
    the chosen (arg-max) token.

    JSON (--json): {"tokens", "embedding_norms", "layers": [{"layer", "residual_norm", "heads":
    [{"head", "position", "id", "piece", "weight"}], "lens": [...]}], "logits": {"stats", "top"},
    "top", "entropy_bits", "chosen", "attention": {"layer", "head", "weights"} | null}, and
    with a picture asked for "lens_grid": {"first_position", "layers": [{"layer", "name",
    "positions": [[{"id", "piece", "prob"}]]}]} (the logit lens at every position).
    --save-svg/--save-html draw the logit lens grid (blocks × positions, the top token and its
    probability), the --attention heat map and the softmax bars as a picture.

    Examples:

        llmcli trace "ROMEO:"

        llmcli trace "To be, or not to be" --attention 2 --head 1

        llmcli trace "ROMEO:" --attention 1 --save-svg trace.svg
    """
    if not 0 < temp < float("inf"):
        raise UsageError(f"--temp: must be a finite number > 0, got {temp}")
    if head is not None and attention is None:
        raise UsageError("--head: needs --attention L (the block whose heads to draw)")
    k, rows_name = _rows(rows, old_rows, 5)
    _check_pictures(save_svg, save_html, force)
    ctx = _prepare(text, model, dtype, threads, no_bos, special, prompt_opt, ctx_size)
    n, h = ctx.config.num_hidden_layers, ctx.config.num_attention_heads
    check_range(rows_name, k, 1, ctx.config.vocab_size)
    if attention is not None and not 0 <= attention < n:
        raise UsageError(f"--attention: {attention} is out of range [0, {n - 1}] (blocks are "
                         f"numbered from 0, as model.layers.L)")
    if head is not None and not 0 <= head < h:
        raise UsageError(f"--head: {head} is out of range [0, {h - 1}] ({h} attention heads)")
    _load_weights(ctx, dtype, device, threads)
    from llmcli.inspection.tensors import trace_report

    result = trace_report(ctx.model, ctx.tokenizer, ctx.ids, k=k, temperature=temp,
                          attention_layer=attention, head=head,
                          with_lens_grid=save_svg is not None or save_html is not None)
    _save_pictures("trace", result, ctx.text, save_svg, save_html, force)
    _emit("trace", result, json_out)


def register(app: typer.Typer) -> None:
    app.command("tokenize")(tokenize_command)
    app.command("detokenize")(detokenize_command)
    app.command("embeddings")(embeddings_command)
    app.command("logits")(logits_command)
    app.command("topk")(topk_command)
    app.command("info")(info_command)
    app.command("trace")(trace_command)
