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

from llmcli.cli.common import (DeviceOpt, DtypeOpt, ModelOpt, ThreadsOpt, read_prompt,
                               resolve_model_dir)
from llmcli.errors import LLMCLIError, UsageError

TextArg = Annotated[Optional[str], typer.Argument(
    help="Text whose next-token prediction is explained; '-' or absent reads stdin (when piped).",
    show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NoBosOpt = Annotated[bool, typer.Option(
    "--no-bos", help="Add no special tokens (no BOS) before the text; by default the tokenizer's "
                     "own rule decides.")]
SpecialOpt = Annotated[bool, typer.Option(
    "--special", help="Parse special-token text such as <|im_end|> as those tokens (like llama.cpp's "
                      "--parse-special).")]
SaveSvgOpt = Annotated[Optional[Path], typer.Option(
    "--save-svg", help="Also write the view as a self-contained SVG picture to this new file.",
    metavar="FILE.svg", show_default=False)]
SaveHtmlOpt = Annotated[Optional[Path], typer.Option(
    "--save-html", help="Also write the view as a self-contained HTML page to this new file.",
    metavar="FILE.html", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="With --save-*: replace an existing file.")]


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
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: must be at least 1, got {threads}")


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
    from llmcli.render.pictures import check_picture_path

    if save_svg is not None:
        check_picture_path(save_svg, "--save-svg", force)
    if save_html is not None:
        check_picture_path(save_html, "--save-html", force)


def output_mode(json_flag: bool) -> str:
    from llmcli.render import make_stdout_safe
    from llmcli.render import output_mode as mode

    make_stdout_safe()
    return mode(json_flag)


# ----------------------------------------------------------------------------- attribute
def attribute_command(
    text: TextArg = None,
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
    force: ForceOpt = False,
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
    source = read_prompt(text)
    side = load_side(model)
    ids = side.tokenizer.encode(source, add_bos=False if no_bos else None, special=special)
    if not ids:
        raise UsageError("TEXT: gives no tokens (empty text with --no-bos): nothing to attribute"
                         if no_bos else "TEXT: gives no tokens and the tokenizer adds no BOS token")
    context = side.config.max_position_embeddings
    if len(ids) > context:
        raise LLMCLIError(f"TEXT: {len(ids)} tokens is longer than the model's context of {context} "
                          "tokens (max_position_embeddings)")
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


def register(app: typer.Typer) -> None:
    app.command("attribute")(attribute_command)
