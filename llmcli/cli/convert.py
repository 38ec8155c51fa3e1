"""``llmcli convert``: a llama2.c checkpoint or GGUF file → an HF-layout model directory."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer


def convert_command(
    src: Annotated[Path, typer.Argument(
        help="llama2.c checkpoint (.bin, legacy or version 1) or GGUF file (llama architecture, "
             "or vocabulary only).",
        show_default=False)],
    out_dir: Annotated[Path, typer.Argument(
        help="Model directory to create (config.json, model.safetensors, tokenizer.model or "
             "tokenizer.json, README.md).",
        show_default=False)],
    source_format: Annotated[Optional[str], typer.Option(
        "--from", help="Source format, llama2c or gguf (default: detected from the file's header).",
        show_default=False)] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(
        "--tokenizer", help="sentencepiece tokenizer.model to copy (required for llama2.c; for GGUF "
                            "it replaces the embedded vocabulary).", show_default=False)] = None,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Weights dtype: auto|float32|float16|bfloat16 (auto = the source's; float32 "
                        "for quantized GGUF).")] = "auto",
    quant: Annotated[str, typer.Option(
        "--quant", help="none: every tensor as float (--dtype); keep: a GGUF's Q8_0, Q4_0 and "
                        "Q4_1 matrices kept as blocks (llmcli computes with them; transformers "
                        "cannot load the result).")] = "none",
    force: Annotated[bool, typer.Option(
        "--force", help="Replace OUT_DIR if it is a model directory (only files llmcli writes); "
                        "a directory holding other files is never replaced.")] = False,
) -> None:
    """Convert a llama2.c checkpoint or a GGUF file into a model directory llmcli and
    transformers load.

    The format is detected from the file's header (--from forces it). q/k weights are permuted from interleaved RoPE to Hugging Face's rotate-half layout. Quantized GGUF tensors (Q4_0 ... Q8_0, K-quants, I-quants) are dequantized with the gguf package; info shows each tensor's GGUF type. A GGUF vocabulary becomes tokenizer.model (sentencepiece) or tokenizer.json (byte-level BPE with its pre-tokenizer, WordPiece), with the chat template in tokenizer_config.json; a vocabulary-only GGUF gives a tokenizer-only directory. Pickled PyTorch files are refused (llmcli never unpickles).

    Example:

        llmcli convert stories260K.bin stories260K --tokenizer tok512.model

        llmcli convert stories260K.gguf stories260K-gguf

        llmcli convert SmolLM2-135M-Instruct.Q4_1.gguf smol

        llmcli convert SmolLM2-135M-Instruct.Q4_1.gguf smol-q4 --quant keep
    """
    from llmcli.cli.common import set_threads, stderr_console
    from llmcli.convert import convert

    set_threads(1)
    console = stderr_console()
    progress = _LazyProgress(console)
    command = "llmcli " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        result = convert(src, out_dir, source_format=source_format, tokenizer=tokenizer, dtype=dtype,
                         force=force, command=command, on_progress=progress, quant=quant)
    finally:
        progress.close()
    console.print(f"converted {src} ({result.format}) → {result.out_dir}: {result.num_tensors} tensors, "
                  f"{result.num_parameters:,} parameters, {result.dtype}", markup=False, soft_wrap=True)


class _LazyProgress:
    """A rich progress bar on stderr that appears only once work has taken ``delay`` seconds
    (and only on a terminal); one bar per phase."""

    def __init__(self, console, delay: float = 0.5) -> None:
        self.console = console
        self.delay = delay
        self.start = time.monotonic()
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.console.is_terminal:
            return
        if self.progress is None:
            if time.monotonic() - self.start < self.delay:
                return
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self.progress = Progress(TextColumn("{task.description:<10}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(),
                                     console=self.console, transient=True)
            self.progress.start()
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_command)
