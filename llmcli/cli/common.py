"""Helpers shared by the command modules: model options, prompt input, consoles."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmcli.errors import LLMCLIError, UsageError

ModelOpt = Annotated[Optional[Path], typer.Option(
    "-m", "--model", help="Model directory (HF layout). Default: $LLMCLI_MODEL, else the bundled model.",
    show_default=False)]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="Compute dtype: auto|float32|bfloat16|float16 (auto = float32 on CPU).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or mps (when torch has them).")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads for torch (default: 1, which does not collapse on a busy machine).",
    show_default=False)]


def resolve_model_dir(model: Path | None) -> Path:
    """``-m`` if given, else ``$LLMCLI_MODEL``, else the bundled default model.

    Raises:
        LLMCLIError: the path given does not exist, is a file, or is a directory with neither
            ``config.json`` nor a tokenizer (``tokenizer.json``, ``tokenizer.model``) (the
            message says where the path came from,
            and suggests ``llmcli convert`` for a llama2.c ``.bin`` or a GGUF file).
    """
    from llmcli.paths import default_model_dir

    if model is not None:
        path, origin = Path(model), ""
    elif os.environ.get("LLMCLI_MODEL"):
        path, origin = Path(os.environ["LLMCLI_MODEL"]), " (from $LLMCLI_MODEL)"
    else:
        return default_model_dir()
    if path.is_file():
        raise LLMCLIError(f"{path}{origin}: is a file; give the model directory (Hugging Face layout: "
                          f"config.json, model.safetensors, tokenizer.json or tokenizer.model)"
                          f"{_convert_hint([path])}")
    if not path.is_dir():
        raise LLMCLIError(f"{path}{origin}: no such model directory")
    if not any((path / name).is_file() for name in ("config.json", "tokenizer.json", "tokenizer.model")):
        raise LLMCLIError(f"{path}{origin}: not a model directory in the Hugging Face layout "
                          f"(no config.json, no tokenizer.json, no tokenizer.model)"
                          f"{_convert_hint(sorted(path.glob('*')))}")
    return path


def _convert_hint(files: list[Path]) -> str:
    """A pointer to ``llmcli convert`` when ``files`` include llama2.c ``.bin`` or GGUF files."""
    convertible = [p.name for p in files if p.suffix in (".bin", ".gguf")]
    return (f"; {', '.join(convertible[:3])} can be converted to one with `llmcli convert` "
            "(see `llmcli convert --help`)" if convertible else "")


def read_prompt(prompt: str | None, allow_empty: bool = False) -> str:
    """The prompt text: the argument, stdin when the argument is ``-`` or absent and stdin is
    not a terminal, or both joined with a newline (argument first) when both are given.

    Never waits on a terminal's stdin.

    Raises:
        UsageError: no prompt at all (argument absent and stdin is a terminal).
    """
    stdin_text = None
    stdin_piped = not _stdin_is_tty()
    if prompt is not None and prompt != "-":
        _check_utf8(prompt, "PROMPT")
    if prompt == "-" or (prompt is None and stdin_piped):
        return _read_stdin() if stdin_piped else ""
    if prompt is None:
        if allow_empty:
            return ""
        raise UsageError("PROMPT: missing (give it as an argument, or pipe text on stdin)")
    if stdin_piped and os.environ.get("LLMCLI_JOIN_STDIN", "1") != "0":
        try:
            if not sys.stdin.closed and _stdin_has_data():
                stdin_text = _read_stdin()
        except (OSError, ValueError):
            stdin_text = None
    if stdin_text:
        return prompt + "\n" + stdin_text
    return prompt


def _check_utf8(text: str, name: str) -> None:
    """Raise :class:`UsageError` if ``text`` holds undecodable bytes (surrogate escapes that
    Python uses for invalid UTF-8 in command-line arguments)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else repr(bad)
        raise UsageError(f"{name}: not valid UTF-8 ({byte} at character {exc.start})") from None


def _read_stdin() -> str:
    """All of stdin, decoded as UTF-8 (strictly).

    Raises:
        UsageError: stdin is not valid UTF-8.
    """
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a replaced sys.stdin (tests): already text
        text = sys.stdin.read()
        _check_utf8(text, "stdin")
        return text
    data = buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"stdin: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is None or sys.stdin.isatty()
    except (ValueError, AttributeError):
        return True


def _stdin_has_data() -> bool:
    """True if stdin is a file or a pipe with data (or EOF) ready, without blocking long."""
    import select
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    if stat.S_ISREG(mode):
        return True
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        ready, _, _ = select.select([sys.stdin], [], [], 0.05)
        return bool(ready)
    return False


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default 1; see the benchmark notes in the README)."""
    import torch

    n = 1 if threads is None else threads
    if n < 1:
        raise UsageError(f"--threads: must be at least 1, got {n}")
    torch.set_num_threads(n)
    return n


def stderr_console():
    """A rich Console on stderr (respects NO_COLOR and non-terminals).

    Lines are never wrapped (``soft_wrap``): a notice or the ``--stats`` line stays one line
    in a log or a pipe, whatever the width of an 80-column default."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console():
    from rich.console import Console

    return Console(highlight=False)


def check_range(name: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    """Raise :class:`UsageError` naming option ``name`` if ``value`` is outside the range."""
    if value is None:
        return
    bad = ((lo is not None and (value <= lo if lo_open else value < lo))
           or (hi is not None and (value >= hi if hi_open else value > hi)))
    if bad:
        lo_s = "" if lo is None else ("(" if lo_open else "[") + str(lo)
        hi_s = "" if hi is None else str(hi) + (")" if hi_open else "]")
        raise UsageError(f"{name}: {value} is out of range {lo_s}, {hi_s}".replace(" , ", ", "))


__all__ = ["LLMCLIError", "UsageError", "resolve_model_dir", "read_prompt", "set_threads"]
