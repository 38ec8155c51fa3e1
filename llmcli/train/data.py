"""Corpus preparation for ``llmcli train``: read text files (plain, in folders, or inside a
``.tar.gz`` source distribution), strip Project Gutenberg boilerplate, normalise layout.

Pure Python (no torch).
"""

from __future__ import annotations

import fnmatch
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from llmcli.errors import LLMCLIError

_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
# A speaker line in a play: a short name ending in a full stop on its own line, e.g. "Ber." or
# "Lady Montague." or "PROSPERO." (followed by the speech on the next line).
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'&\-]*(?: [A-Za-z'&\-]+){0,3}\.$")


@dataclass
class Document:
    """One work: ``name`` (file name) and its prepared ``text``."""

    name: str
    text: str


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header and footer if the markers are present."""
    start = _START.search(text)
    if start:
        text = text[start.end():]
    end = _END.search(text)
    if end:
        text = text[:end.start()]
    return text


def normalise(text: str, upper_speakers: bool = False) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row; optionally
    speaker names in capitals (``Ber.`` → ``BER.``) so every play has one convention."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    out: list[str] = []
    for i, line in enumerate(lines):
        if not line and (not out or not out[-1]):
            continue
        if (upper_speakers and _SPEAKER.match(line) and len(line) <= 32
                and (i == 0 or not lines[i - 1].strip())
                and i + 1 < len(lines) and lines[i + 1].strip()):
            line = line.upper()
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def _matches(path: str, include: str) -> bool:
    """``include`` is matched against the file name, or the whole path if it contains ``/``."""
    return fnmatch.fnmatch(path if "/" in include else Path(path).name, include)


def read_sources(sources: list[Path], include: str = "*.txt") -> list[Document]:
    """Read every file matching ``include`` from files, folders or ``.tar.gz`` archives.

    ``include`` is a glob matched against the file name, or against the whole path (inside the
    archive or below the folder) when it contains ``/``.

    Raises:
        LLMCLIError: a source does not exist, or nothing matched.
    """
    docs: dict[str, str] = {}
    for src in sources:
        src = Path(src)
        if not src.exists():
            raise LLMCLIError(f"{src}: no such file or directory")
        if src.is_dir():
            for path in sorted(src.rglob("*")):
                if path.is_file() and _matches(path.relative_to(src).as_posix(), include):
                    docs[path.name] = path.read_text(encoding="utf-8", errors="replace")
        elif src.name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(src) as tar:
                for member in sorted(tar.getmembers(), key=lambda m: m.name):
                    name = Path(member.name).name
                    if member.isfile() and _matches(member.name, include):
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                        docs[name] = data.decode("utf-8", errors="replace")
        else:
            docs[src.name] = src.read_text(encoding="utf-8", errors="replace")
    if not docs:
        raise LLMCLIError(f"no corpus files matching {include!r} in {', '.join(map(str, sources))}")
    return [Document(name, text) for name, text in sorted(docs.items())]


def prepare(docs: list[Document], upper_speakers: bool = False) -> list[Document]:
    """Apply :func:`strip_gutenberg` and :func:`normalise` to every document."""
    return [Document(d.name, normalise(strip_gutenberg(d.text), upper_speakers)) for d in docs]


def split_holdout(docs: list[Document], holdout: list[str]) -> tuple[list[Document], list[Document]]:
    """Split whole works into (train, validation) by file-name patterns in ``holdout``.

    Raises:
        LLMCLIError: a holdout pattern matches no document, or nothing is left to train on.
    """
    valid = []
    for pattern in holdout:
        matched = [d for d in docs if fnmatch.fnmatch(d.name, pattern)]
        if not matched:
            raise LLMCLIError(f"--holdout: {pattern!r} matches no corpus file")
        valid.extend(m for m in matched if m not in valid)
    train = [d for d in docs if d not in valid]
    if not train:
        raise LLMCLIError("--holdout: every corpus file is held out; nothing left to train on")
    return train, valid
