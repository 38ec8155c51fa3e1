"""The ``llmcli`` Typer app: registers one module per command and turns errors into one line.

Data flows one way: CLI (this package) → load (weights, tokenizer) → compute (model,
generation, inspection) → render (rich or JSON).
"""

from __future__ import annotations

import errno
import inspect
import os
import sys
from typing import Annotated, Optional

import typer
import typer.core
import typer.main

from llmcli import __version__
from llmcli.errors import LLMCLIError
from llmcli.render import make_stdout_safe

app = typer.Typer(
    name="llmcli",
    help="Load Llama-family safetensors models, stream generated text, and look inside "
         "every step of next-token prediction.\n\nExample:\n\n    llmcli generate "
         "\"To be, or not to be, that is the question:\" -n 66 -s 1",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}

#: The click Typer runs on: recent Typer versions vendor it as ``typer._click``.
_click = getattr(typer.core, "_click", None) or typer.core.click


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    _state["debug"] = debug or bool(os.environ.get("LLMCLI_DEBUG"))


def _register() -> None:
    # One module per command; each exposes register(app).
    from llmcli.cli import chat, generate, train  # noqa: F401  (imports are cheap: no torch)

    generate.register(app)
    chat.register(app)
    train.register(app)
    for name in ("inspect", "convert", "why", "text"):
        try:
            module = __import__(f"llmcli.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"llmcli.cli.{name}":
                raise
            continue
        module.register(app)
    for command in app.registered_commands:
        if command.help is None and command.callback is not None:
            command.help = reflow_help(inspect.getdoc(command.callback) or "")


def reflow_help(doc: str) -> str:
    """A command docstring made ready for Typer's "rich" help, which keeps every newline:
    the lines of each prose paragraph are joined (so the help wraps to the terminal's width,
    not to the source's), while indented lines (examples) keep their own lines."""
    paragraphs = []
    for paragraph in doc.split("\n\n"):
        lines = paragraph.split("\n")
        if any(line.startswith("    ") for line in lines):
            paragraphs.append(paragraph)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


_register()


def command():
    """The click command Typer builds from ``app``, with one fix to its help: on/off flags
    (``--stats``, ``--json``, ``--help``, ...) show no ``<bool>`` value placeholder, since
    they take no value."""
    root = typer.main.get_command(app)

    def unlabel_flags(cmd, name: str) -> None:
        for param in cmd.params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        try:  # the --help option is made on first use; make it now, in a bare context
            ctx = _click.Context(cmd, info_name=name, help_option_names=["-h", "--help"])
            help_option = cmd.get_help_option(ctx)
            if help_option is not None and help_option.metavar is None:
                help_option.metavar = ""
        except Exception:  # a Typer/click version without these hooks: keep its own help
            pass
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            unlabel_flags(sub, sub_name)
        cmd.format_help = _with_help_layout(cmd.format_help)

    unlabel_flags(root, "llmcli")
    invoke = root.invoke

    def invoke_reporting_broken_pipe(ctx):
        # Typer catches an EPIPE OSError itself and exits 1 without a word; a reader that went
        # away (`| head -1`) is not an error: main() stops quietly with exit 0.
        try:
            return invoke(ctx)
        except BrokenPipeError:
            raise _ReaderGone() from None
        except KeyboardInterrupt:  # Typer would exit 130 without a word; say so, as generate does
            _stderr_line("[interrupted]")
            raise typer.Exit(130) from None

    root.invoke = invoke_reporting_broken_pipe
    return root


class _ReaderGone(Exception):
    """stdout's reader closed the pipe (a BrokenPipeError, re-raised past Typer's handler)."""


def _with_help_layout(format_help):
    """``format_help`` run with :func:`_install_help_layout` done first (rich is imported only
    when help is shown)."""
    def wrapped(ctx, formatter):
        _install_help_layout()
        return format_help(ctx, formatter)
    return wrapped


def _install_help_layout() -> None:
    """Make Typer's rich help keep option names whole in a narrow terminal.

    Typer (0.29) lays an option out in separate table columns (long names, short names,
    ``--no-`` names, type, help) that rich shrinks alike when the terminal is narrow, so at 80
    columns ``--space-after-newline`` became ``--space-after-n…``. Here each row's names are
    one cell, ``-n, --max-tokens`` with the ``--no-`` form on a line below, in a column as
    wide as its longest name that never wraps; the help column takes what is left and folds
    a long word (a default such as ``no-space-after-newline``) instead of cutting it. The
    commands table (two cells a row) is left as it is. Idempotent; a Typer without
    ``rich_utils.Table`` keeps its own layout.
    """
    try:
        import typer.rich_utils as rich_utils
        from rich.text import Text
    except ImportError:  # pragma: no cover - Typer without rich
        return
    base = getattr(rich_utils, "Table", None)
    if base is None or getattr(base, "_llmcli_layout", False):
        return

    def names(short, long, highlight) -> Text:
        """``"-n, --max-tokens"`` from Typer's ``","``-joined cells, highlighted as Typer does."""
        plain = [name for cell in (short, long) for name in str(cell or "").split(",") if name]
        return highlight(", ".join(plain))

    class OptionsTable(base):
        _llmcli_layout = True

        def add_row(self, *cells, **kwargs):
            if len(cells) not in (6, 7):  # not an options/arguments row
                return super().add_row(*cells, **kwargs)
            lead, (long, short, neg_long, neg_short, types, help_) = cells[:-6], cells[-6:]
            cell = names(short, long, getattr(rich_utils, "highlighter", Text))
            negative = names(neg_short, neg_long, getattr(rich_utils, "negative_highlighter", Text))
            if negative.plain:
                cell.append("\n")
                cell.append_text(negative)
            for item in getattr(help_, "renderables", [help_]):
                if isinstance(item, Text):
                    item.overflow = "fold"
            super().add_row(*lead, cell, types, help_, **kwargs)
            column = self.columns[len(lead)]
            column.no_wrap = True
            column.width = max([column.width or 0] + [len(line) for line in cell.plain.split("\n")])

    rich_utils.Table = OptionsTable


def main() -> None:
    """Console-script entry point: run the app, mapping errors to one-line messages.

    Exit codes: 0 success, 1 error (bad file, model, ...), 2 usage error, 130 interrupted.
    """
    args = sys.argv[1:]
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end] or bool(os.environ.get("LLMCLI_DEBUG"))
    if "--debug" in args[:end]:  # accepted anywhere before "--": move it to the root command
        args = ["--debug"] + [a for i, a in enumerate(args) if i >= end or a != "--debug"]
    make_stdout_safe()  # unencodable characters become '?' (PYTHONIOENCODING=ascii)
    try:
        # standalone_mode=False: click's usage errors come here (one line) instead of being
        # printed by Typer as a boxed panel; typer.Exit(code) comes back as the return value.
        code = command().main(args=args, prog_name="llmcli", standalone_mode=False)
    except _click.exceptions.UsageError as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            _stderr_line(f"error: {' '.join(exc.format_message().split())}{where}")
        sys.exit(exc.exit_code)
    except _click.exceptions.ClickException as exc:
        _stderr_line(f"error: {' '.join(exc.format_message().split())}")
        sys.exit(exc.exit_code)
    except typer.Abort:
        _stderr_line("aborted")
        sys.exit(1)
    except LLMCLIError as exc:
        if debug:
            raise
        _stderr_line(f"error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _stderr_line("")
        sys.exit(130)
    except (BrokenPipeError, _ReaderGone):
        _quiet_broken_pipe()
    except OSError as exc:  # the system refused a read or write: disk full, permissions, ...
        if debug:
            raise
        reason = exc.strerror or f"{type(exc).__name__}: {exc}"
        if exc.filename:
            _stderr_line(f"error: {exc.filename}: {reason}")
        elif exc.errno in _FULL:  # files llmcli writes are named (llmcli.outputs): this is stdout
            _stderr_line(f"error: stdout: {reason}")
        else:
            _stderr_line(f"error: {reason}")
        sys.exit(1)
    except Exception as exc:  # unexpected: still one line unless --debug
        if debug:
            raise
        _stderr_line(f"error: {type(exc).__name__}: {exc} (run `llmcli --debug ...` for a traceback)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


#: errno values of a write that found no room (``llmcli tokenize TEXT > /dev/full``).
_FULL = {getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name)}


def _stderr_line(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def _quiet_broken_pipe() -> None:
    # Python flushes stdout at exit; point it at devnull so that flush cannot fail again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except Exception:
        pass
    sys.exit(0)
