"""Helpers shared by the command modules: model options, prompt input, consoles."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmcli.errors import LLMCLIError, UsageError

#: When this module was first imported (perf_counter seconds): the fallback start of
#: :func:`seconds_since_process_start`.
_IMPORTED_AT = time.perf_counter()

ModelOpt = Annotated[Optional[Path], typer.Option(
    "-m", "--model", help="Model directory (HF layout). Default: $LLMCLI_MODEL, else the bundled model.",
    show_default=False)]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="Compute dtype: auto|float32|bfloat16|float16 (auto = float32 on CPU).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or mps (when torch has them).")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "-t", "--threads", help="CPU threads for torch (default: 1, which does not collapse on a busy machine).",
    show_default=False)]
PromptOpt = Annotated[Optional[str], typer.Option(
    "-p", "--prompt", help="The prompt as an option (as llama.cpp's -p): the same as PROMPT; give one "
                           "or the other.", show_default=False)]
CtxSizeOpt = Annotated[Optional[int], typer.Option(
    "-c", "--ctx-size", metavar="N",
    help="Context length to use, in tokens (as llama.cpp's -c): at most the model's "
         "(max_position_embeddings, n_positions for GPT-2); default or 0: the model's.",
    show_default=False)]


# Options shared by the commands that read a text (inspect, text, why).
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print JSON instead of a table (its fields are described above).")]
NoBosOpt = Annotated[bool, typer.Option(
    "--no-bos", help="Add no special tokens (no BOS) before the text; by default the tokenizer's "
                     "own rule decides (a tokenizer.json may add none).")]
SpecialOpt = Annotated[bool, typer.Option(
    "--special", help="Parse special-token text such as <|im_end|> or <s> as those tokens (like "
                      "llama.cpp's --parse-special); by default it is plain text.")]
TextPromptOpt = Annotated[Optional[str], typer.Option(
    "-p", "--prompt", help="The text as an option (as llama.cpp's -p): the same as TEXT; give one "
                           "or the other.", show_default=False)]
SaveSvgOpt = Annotated[Optional[Path], typer.Option(
    "--save-svg", help="Also draw the view as a self-contained SVG picture in this new file "
                       "(atomically; an existing file needs --force).",
    show_default=False, metavar="FILE.svg")]
SaveHtmlOpt = Annotated[Optional[Path], typer.Option(
    "--save-html", help="Also draw the view as a self-contained HTML page (inline CSS, no "
                        "scripts) in this new file (atomically; an existing file needs --force).",
    show_default=False, metavar="FILE.html")]
PictureForceOpt = Annotated[bool, typer.Option(
    "--force", help="With --save-svg/--save-html: replace the file if it exists (a regular file only).")]


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


def read_prompt(prompt: str | None, allow_empty: bool = False, name: str = "PROMPT") -> str:
    """The prompt text: the argument, stdin when the argument is ``-`` or absent and stdin is
    not a terminal, or both joined with a newline (argument first) when both are given.

    Never waits on a terminal's stdin. ``name`` is the argument's name in errors (``TEXT``).

    Raises:
        UsageError: no prompt at all (argument absent and stdin is a terminal).
    """
    stdin_text = None
    stdin_piped = not _stdin_is_tty()
    if prompt is not None and prompt != "-":
        _check_utf8(prompt, name)
    if prompt == "-" or (prompt is None and stdin_piped):
        return _read_stdin() if stdin_piped else ""
    if prompt is None:
        if allow_empty:
            return ""
        raise UsageError(f"{name}: missing (give it as an argument, or pipe text on stdin)")
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


def pick_prompt(positional: str | None, option: str | None, name: str = "PROMPT") -> str | None:
    """The prompt given as the ``name`` argument or as ``-p/--prompt`` (one of them, or neither).

    Raises:
        UsageError: both were given.
    """
    if positional is not None and option is not None:
        raise UsageError(f"-p/--prompt: give the prompt once, as {name} or with -p/--prompt, not both")
    return option if option is not None else positional


def context_field(config) -> str:
    """The config.json field that holds ``config``'s context length: ``max_position_embeddings``,
    or ``n_positions`` for GPT-2 (what the family's file really calls it)."""
    name = getattr(config, "_field_name", None)
    return name("max_position_embeddings") if callable(name) else "max_position_embeddings"


def context_phrase(context: int, source: str) -> str:
    """``"the model's context of N tokens (max_position_embeddings)"``, or ``"the context of N
    tokens (-c/--ctx-size)"`` when ``-c`` set it: for messages about what does not fit."""
    whose = "the context" if source.startswith("-c") else "the model's context"
    return f"{whose} of {context} tokens ({source})"


def resolve_context(ctx_size: int | None, config) -> tuple[int, str]:
    """``(context length, where it comes from)`` for ``-c/--ctx-size`` on a model ``config``.

    ``None`` or 0 is the model's context length (``config.max_position_embeddings``), named by
    its config.json field (:func:`context_field`); a smaller N is N, named ``-c/--ctx-size``.

    Raises:
        UsageError: N is negative or more than the model's context length (naming both).
    """
    model_context = config.max_position_embeddings
    field = context_field(config)
    if ctx_size is None or ctx_size == 0:
        return model_context, field
    if ctx_size < 0:
        raise UsageError(f"-c/--ctx-size: must be >= 1 (or 0 = the model's {model_context}), "
                         f"got {ctx_size}")
    if ctx_size > model_context:
        raise UsageError(f"-c/--ctx-size: {ctx_size} is more than the model's context of "
                         f"{model_context} tokens ({field} in config.json)")
    return ctx_size, "-c/--ctx-size"


def seconds_since_process_start() -> float:
    """Wall-clock seconds since this process started: interpreter start-up and every import
    (torch's included) count.

    Linux: from the start time in ``/proc/self/stat`` (clock ticks since boot, usually 10 ms)
    against ``CLOCK_BOOTTIME``; elsewhere, or when that reading is implausible, from when
    :mod:`llmcli.cli.common` was first imported (before torch, which is imported later).
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")   # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
        if 0 <= age and age >= time.perf_counter() - _IMPORTED_AT - 0.05:
            return age
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    return time.perf_counter() - _IMPORTED_AT


#: The most torch threads ``-t/--threads`` asks for: far more than any CPU has; torch's OpenMP
#: crashes the process (segmentation fault) or fails to start threads far above it.
MAX_THREADS = 1024


def check_threads(threads: int | None, name: str = "--threads") -> None:
    """Raise :class:`UsageError` naming ``name`` unless ``threads`` is None or in [1, MAX_THREADS]."""
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise UsageError(f"{name}: must be at least 1, got {threads}" if threads < 1 else
                         f"{name}: {threads} is more than {MAX_THREADS} (this machine has "
                         f"{os.cpu_count() or '?'} CPUs)")


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default 1; see the benchmark notes in the README).

    Raises:
        UsageError: ``threads`` below 1 or above :data:`MAX_THREADS`.
    """
    import torch

    n = 1 if threads is None else threads
    check_threads(n)
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
        if hi is None:  # a bound on one side only: no half-written interval ("[1, ")
            raise UsageError(f"{name}: must be {'more than' if lo_open else 'at least'} {lo}, "
                             f"got {value}")
        if lo is None:
            raise UsageError(f"{name}: must be {'less than' if hi_open else 'at most'} {hi}, "
                             f"got {value}")
        lo_s = ("(" if lo_open else "[") + str(lo)
        hi_s = str(hi) + (")" if hi_open else "]")
        raise UsageError(f"{name}: {value} is out of range {lo_s}, {hi_s}")


__all__ = ["LLMCLIError", "UsageError", "resolve_model_dir", "read_prompt", "set_threads"]
