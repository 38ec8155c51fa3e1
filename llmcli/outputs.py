"""Writing output files and directories without destroying what the user has.

One rule for everything llmcli writes, so that a wrong output path never costs the user data.

Files (``--save PATH``; :func:`write_file_atomically`):

- the content goes to a temporary file in PATH's folder, which is renamed over PATH
  (``os.replace``) only when complete: an error or an interruption leaves PATH as it was and
  no partial file;
- PATH must be absent or a regular file: a directory, a device (``/dev/full``), a pipe, a
  socket or a symbolic link is refused, with or without ``--force`` (a link is not followed:
  give the file's real path);
- an existing PATH is replaced only with ``--force``;
- the new file gets the mode ``0o666`` minus the umask, as any file the shell creates.

Directories (``convert SRC OUT_DIR``, ``train -o DIR``, :func:`llmcli.weights.save_model`;
:func:`building_dir`):

- everything is written into a hidden temporary directory beside DIR (``.DIR.XXXX``), renamed
  into place at the end; the directory it replaces is deleted only after that;
- DIR may be absent or an empty directory; an existing, non-empty DIR is replaced only with
  ``--force``, and only when it holds nothing but the files llmcli writes into a model
  directory (:data:`MODEL_DIR_FILES`, with ``config.json`` or a tokenizer file among them):
  a model directory, never a
  folder of other files, which is refused even with ``--force``, naming a file it holds;
- never the current directory or one of its parents, a directory holding an input of the
  command (the source file, the corpus), a symbolic link, or something that is not a
  directory;
- modes ``0o777`` (directory) and ``0o666`` (files) minus the umask.

Errors are :class:`~llmcli.errors.LLMCLIError` lines naming the option and the path.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from llmcli.errors import LLMCLIError

#: The files llmcli (convert, train, save_model) writes into a model directory; a directory
#: holding only these (config.json or a tokenizer file among them) is one llmcli may replace
#: with --force.
MODEL_DIR_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "chat_template.jinja", "README.md", "training.json", "gguf_source.json",
})
#: One of these must be present (a vocabulary-only conversion writes no config.json).
_MODEL_DIR_MARKERS = ("config.json", "tokenizer.json", "tokenizer.model")
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode for a new file: ``0o666`` minus the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode for a new directory: ``0o777`` minus the umask."""
    return 0o777 & ~current_umask()


def _label(option: str | None, path: Path) -> str:
    return f"{option}: {path}" if option else str(path)


# ----------------------------------------------------------------------------- files
def check_output_file(path: Path | str, option: str = "--save", force: bool = False) -> Path:
    """Check that ``path`` may be written under the module's file rule (before any work).

    Raises:
        LLMCLIError: ``path`` is a symbolic link, a directory or another non-regular file; it
            exists and not ``force``; its folder is missing or not writable.
    """
    path = Path(path)
    label = _label(option, path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise LLMCLIError(f"{label}: cannot write here ({exc.strerror or exc})") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise LLMCLIError(f"{label}: is a symbolic link; give the file's real path "
                              "(llmcli does not write through links)")
        if stat.S_ISDIR(st.st_mode):
            example = {"--save-svg": "out.svg", "--save-html": "out.html"}.get(option or "",
                                                                            "out.safetensors")
            raise LLMCLIError(f"{label}: is a directory; give a file name such as {example}")
        if not stat.S_ISREG(st.st_mode):
            raise LLMCLIError(f"{label}: is not a regular file (a device, pipe or socket); "
                              "give a file name")
        if not force:
            raise LLMCLIError(f"{label}: already exists; use --force to replace it")
    parent = path.parent
    if not parent.is_dir():
        raise LLMCLIError(f"{option}: cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise LLMCLIError(f"{option}: cannot write {path}: folder {parent} is not writable")
    return path


def write_file_atomically(path: Path | str, write: Callable[[Path], None], option: str = "--save",
                          force: bool = False) -> Path:
    """Create or (with ``force``) replace the regular file ``path`` with what ``write(tmp)``
    writes to a temporary path in the same folder; see the module docstring for the rule.

    Raises:
        LLMCLIError: as :func:`check_output_file`, or the system refused a write (disk full,
            ...), naming ``option``; nothing is left behind and ``path`` is unchanged.
    """
    path = check_output_file(path, option, force)
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.chmod(tmp, file_mode())
        check_output_file(path, option, force)  # again: something may have appeared meanwhile
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise LLMCLIError(f"{option}: cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


# ----------------------------------------------------------------------------- directories
def _inside(path: Path, directory: Path) -> bool:
    path = path.resolve()
    return path == directory or directory in path.parents


def _written_by_llmcli(entry: Path) -> bool:
    return (entry.is_file() and not entry.is_symlink()
            and (entry.name in MODEL_DIR_FILES or _SHARD.fullmatch(entry.name) is not None))


def check_output_dir(out_dir: Path | str, option: str | None = None, force: bool = False,
                     inputs: Iterable[Path | str] = ()) -> Path:
    """Check ``out_dir`` against the module's directory rule (before any work) → its absolute
    path. ``inputs`` are the command's input files or folders, which it must not hold.

    Raises:
        LLMCLIError: ``out_dir`` is the current directory or a parent of it, holds an input, is
            a symbolic link or not a directory, holds files llmcli does not write, or is an
            existing model directory and not ``force``.
    """
    given = Path(out_dir)
    label = _label(option, given)
    out_dir = Path(os.path.abspath(given))
    if out_dir.is_symlink():
        raise LLMCLIError(f"{label}: is a symbolic link; give the directory itself")
    if not out_dir.exists():
        return out_dir
    if not out_dir.is_dir():
        raise LLMCLIError(f"{label}: exists and is not a directory; choose another directory")
    resolved = out_dir.resolve()
    if _inside(Path.cwd(), resolved):
        raise LLMCLIError(f"{label}: is the current directory or one of its parents; llmcli never "
                          "replaces it: give the name of a new directory")
    for item in inputs:
        if _inside(Path(item), resolved):
            raise LLMCLIError(f"{label}: contains the source {item}; llmcli never replaces a "
                              "directory holding its input: choose another directory")
    try:
        entries = sorted(out_dir.iterdir())
    except OSError as exc:
        raise LLMCLIError(f"{label}: cannot read the directory ({exc.strerror or exc})") from None
    if not entries:
        return out_dir
    foreign = [e.name for e in entries if not _written_by_llmcli(e)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise LLMCLIError(f"{label}: holds files llmcli did not write ({shown}); llmcli replaces "
                          "only an empty directory or a model directory it wrote: choose another "
                          "directory")
    if not any((out_dir / name).is_file() for name in _MODEL_DIR_MARKERS):
        raise LLMCLIError(f"{label}: holds {', '.join(e.name for e in entries[:3])} but no "
                          "config.json or tokenizer file: not a model directory llmcli wrote; "
                          "choose another directory")
    if not force:
        raise LLMCLIError(f"{label}: already exists; use --force to replace it")
    return out_dir


@contextmanager
def building_dir(out_dir: Path | str, option: str | None = None, force: bool = False,
                 inputs: Iterable[Path | str] = ()) -> Iterator[Path]:
    """``with building_dir(out) as tmp:`` write the files into ``tmp``; when the block ends
    without an error, ``tmp`` is renamed to ``out`` (replacing it under the module's rule,
    checked again at that moment). On an error or an interruption nothing is left.

    Raises:
        LLMCLIError: as :func:`check_output_dir`; the temporary directory cannot be made.
        OSError: from the final renames (callers name what they were writing).
    """
    inputs = list(inputs)
    out_dir = check_output_dir(out_dir, option, force, inputs)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise LLMCLIError(f"{_label(option, Path(out_dir))}: cannot create the directory "
                          f"({exc.strerror or exc})") from None
    try:
        yield tmp
        check_output_dir(out_dir, option, force, inputs)  # again: something may have appeared
        for path in tmp.iterdir():
            if path.is_file():
                path.chmod(file_mode())
        tmp.chmod(dir_mode())
        if out_dir.exists():
            _replace_dir(tmp, out_dir)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, out_dir: Path) -> None:
    """Move ``out_dir`` aside, ``new`` into its place, then delete the old one; if the second
    rename fails the old directory is put back."""
    aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    old = aside / out_dir.name
    os.replace(out_dir, old)
    try:
        os.replace(new, out_dir)
    except BaseException:
        try:
            os.replace(old, out_dir)
            os.rmdir(aside)
        except OSError:
            pass  # keep it in `aside` rather than lose it
        raise
    shutil.rmtree(aside, ignore_errors=True)
