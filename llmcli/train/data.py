"""Corpus preparation for ``llmcli train``: read text files (plain, in folders, or inside a
``.tar.gz`` source distribution), drop duplicates, strip Project Gutenberg boilerplate,
normalise layout, and split off the held-out text (whole works, or a fraction of each).

Pure Python (no torch).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llmcli.errors import LLMCLIError

_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
# A speaker line in a play: a short name ending in a full stop on its own line, e.g. "Ber." or
# "Lady Montague." or "PROSPERO." (followed by the speech on the next line).
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'&\-]*(?: [A-Za-z'&\-]+){0,3}\.$")
#: Notes about dropped files beyond this many are summed up in one line.
MAX_NOTES = 5


@dataclass
class Document:
    """One work: ``name`` (its file name, or its path when two files share a name), its
    prepared ``text``, ``path`` (inside its folder or archive, for ``/`` globs), ``origin``
    (where it was read, for messages) and ``aliases`` (names of the duplicate files dropped in
    its favour: a ``--holdout`` glob matching one of them holds this document out)."""

    name: str
    text: str
    path: str = ""
    origin: str = ""
    aliases: tuple[str, ...] = ()


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


#: Starts of files that are not UTF-8 text, and what to say about them.
_NOT_TEXT = (
    (b"\xff\xfe", "UTF-16 text, not UTF-8: convert it (iconv -f utf-16 -t utf-8)"),
    (b"\xfe\xff", "UTF-16 text, not UTF-8: convert it (iconv -f utf-16 -t utf-8)"),
    (b"\x1f\x8b", "gzip-compressed: decompress it (gunzip), or give a .tar.gz archive"),
    (b"BZh", "bzip2-compressed: decompress it (bunzip2)"),
    (b"\xfd7zXZ\x00", "xz-compressed: decompress it (unxz)"),
    (b"PK\x03\x04", "a zip archive: unzip it and give the folder"),
)


def decode_text(data: bytes, origin: str) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark removed).

    Raises:
        LLMCLIError: ``data`` is UTF-16, compressed or an archive (:data:`_NOT_TEXT`), not
            UTF-8 (naming ``origin``, the first bad byte and its offset) or holds NUL bytes
            (a binary file); text is never silently replaced by U+FFFD.
    """
    for magic, what in _NOT_TEXT:
        if data.startswith(magic):
            raise LLMCLIError(f"{origin}: {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LLMCLIError(
            f"{origin}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start:,}); "
            "convert it (e.g. iconv -f latin1 -t utf-8) or leave it out with --include") from None
    if "\x00" in text:
        raise LLMCLIError(f"{origin}: holds NUL bytes (at offset {data.index(0):,}): a binary "
                          "file, not text; leave it out with --include")
    return text.removeprefix("\ufeff")


def read_sources(sources: list[Path], include: str = "*.txt",
                 note: Callable[[str], None] | None = None) -> list[Document]:
    """Read every file matching ``include`` from files, folders or ``.tar.gz`` archives.

    ``include`` is a glob matched against the file name, or against the whole path (inside the
    archive or below the folder) when it contains ``/``. Duplicates are read once: the same
    file reached twice (a symbolic link, a file given both alone and in its folder; compared
    by resolved path) and byte-identical files (compared by SHA-256). The first in the order
    of ``sources`` (sorted within a folder or archive) is kept, and ``note`` gets one line per
    dropped file (at most :data:`MAX_NOTES`, then a count). A document is named by its file
    name, or by its path when two different files share a name.

    Raises:
        LLMCLIError: a source does not exist or is not a regular file, folder or readable
            tar archive, a file is not UTF-8 text (see :func:`decode_text`), or nothing
            matched.
    """
    entries: list[tuple[str, str, str, bytes]] = []  # (identity, path, origin, data)
    for src in sources:
        src = Path(src)
        if not src.exists():
            raise LLMCLIError(f"{src}: no such file or directory")
        if src.is_dir():
            for path in sorted(src.rglob("*")):
                rel = path.relative_to(src).as_posix()
                if path.is_file() and _matches(rel, include):
                    entries.append((os.path.realpath(path), rel, str(path), path.read_bytes()))
        elif not src.is_file():  # a device (/dev/zero), a pipe: reading might never end
            raise LLMCLIError(f"{src}: not a regular file, folder or .tar.gz archive")
        elif src.name.endswith((".tar.gz", ".tgz", ".tar")):
            try:
                with tarfile.open(src) as tar:
                    for member in sorted(tar.getmembers(), key=lambda m: m.name):
                        if member.isfile() and _matches(member.name, include):
                            data = tar.extractfile(member).read()  # type: ignore[union-attr]
                            entries.append((f"{os.path.realpath(src)}:{member.name}", member.name,
                                            f"{src}:{member.name}", data))
            except (tarfile.TarError, EOFError, OSError) as exc:
                reason = str(exc).strip().splitlines()[-1].lstrip("- ") or type(exc).__name__
                raise LLMCLIError(f"{src}: not a readable tar archive ({reason})") from None
        else:
            entries.append((os.path.realpath(src), src.name, str(src), src.read_bytes()))
    kept: list[tuple[str, str, str]] = []  # (path, origin, text)
    aliases: list[list[str]] = []
    by_identity: dict[str, int] = {}
    by_hash: dict[str, int] = {}
    dropped: list[str] = []
    for identity, path, origin, data in entries:
        digest = hashlib.sha256(data).hexdigest()
        if identity in by_identity or digest in by_hash:
            same_file = identity in by_identity
            first = by_identity[identity] if same_file else by_hash[digest]
            if origin != kept[first][1]:  # the very same argument twice needs no note
                dropped.append(f"note: left out {origin}: "
                               f"{'the same file as' if same_file else 'the same bytes as'} "
                               f"{kept[first][1]}")
            aliases[first].append(Path(path).name)
            continue
        by_identity[identity] = by_hash[digest] = len(kept)
        kept.append((path, origin, decode_text(data, origin)))
        aliases.append([])
    if note:
        for line in dropped[:MAX_NOTES]:
            note(line)
        if len(dropped) > MAX_NOTES:
            note(f"note: left out {len(dropped) - MAX_NOTES} more duplicate files")
    if not kept:
        raise LLMCLIError(f"no corpus files matching {include!r} in {', '.join(map(str, sources))}")
    names = [Path(path).name for path, _, _ in kept]
    name_count, path_count = Counter(names), Counter(path for path, _, _ in kept)
    docs = []
    for (path, origin, text), name, alias in zip(kept, names, aliases):
        if name_count[name] > 1:  # by the path in its folder or archive, else where it was read
            name = path if path_count[path] == 1 else origin
        docs.append(Document(name, text, path, origin,
                             tuple(a for a in dict.fromkeys(alias) if a != name)))
    return sorted(docs, key=lambda d: d.name)


def prepare(docs: list[Document], upper_speakers: bool = False,
            note: Callable[[str], None] | None = None) -> list[Document]:
    """Apply :func:`strip_gutenberg` and :func:`normalise` to every document; documents left
    without text are dropped, with one ``note`` line naming them.

    Raises:
        LLMCLIError: no document has any text (naming the files).
    """
    out, empty = [], []
    for d in docs:
        text = normalise(strip_gutenberg(d.text), upper_speakers)
        if text.strip():
            out.append(Document(d.name, text, d.path, d.origin, d.aliases))
        else:
            empty.append(d.origin or d.name)
    shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
    if not out:
        raise LLMCLIError(f"{shown}: no text to train on (empty or only blank lines"
                          f"{', after removing the Project Gutenberg header' if any(_START.search(d.text) for d in docs) else ''})")
    if empty and note:
        note(f"note: left out {shown}: no text (empty or only blank lines)")
    return out


def _selected(doc: Document, pattern: str) -> bool:
    if "/" in pattern:
        return fnmatch.fnmatch(doc.path, pattern)
    return any(fnmatch.fnmatch(name, pattern) for name in (doc.name, Path(doc.path).name, *doc.aliases))


def split_holdout(docs: list[Document], holdout: list[str]) -> tuple[list[Document], list[Document]]:
    """Split whole works into (train, validation) by file-name patterns in ``holdout``
    (matched as ``--include`` is; a pattern naming a dropped duplicate holds out the copy
    that was kept).

    Raises:
        LLMCLIError: a holdout pattern matches no document, or nothing is left to train on.
    """
    chosen: set[int] = set()  # indices in docs
    for pattern in holdout:
        matched = {i for i, d in enumerate(docs) if _selected(d, pattern)}
        if not matched:
            raise LLMCLIError(f"--holdout: {pattern!r} matches no corpus file")
        chosen |= matched
    valid = [d for i, d in enumerate(docs) if i in chosen]
    train = [d for i, d in enumerate(docs) if i not in chosen]
    if not train:
        raise LLMCLIError("--holdout: every corpus file is held out; nothing left to train on")
    return train, valid


def _cut(text: str, fraction: float) -> int:
    """Where to cut ``text`` so that about ``fraction`` of its characters come after: the
    start of a paragraph (after a blank line) nearest the target within half the held-out
    length, else the nearest line start, else the nearest word start, else the character.
    0 when the text is too short to give anything."""
    n = len(text)
    hold = round(n * fraction)
    if hold < 1 or n < 2:
        return 0
    target = n - hold
    lines = [m.end() for m in re.finditer("\n", text) if 0 < m.end() < n]
    paragraphs = [i for i in lines if text[i - 2:i] == "\n\n"]
    for candidates, window in ((paragraphs, hold / 2), (lines, n),
                               ([m.start() for m in re.finditer(r"(?<=\s)\S", text)], n)):
        near = [i for i in candidates if abs(i - target) <= window]
        if near:
            return min(near, key=lambda i: (abs(i - target), i))
    return target


def split_fraction(docs: list[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    """Hold out about ``fraction`` of the text for validation, deterministically.

    A document of several lines gives its last ``fraction`` of characters, cut at a line start
    (at a paragraph start when one is near: see :func:`_cut`), named ``NAME (lines A-B)``;
    the rest stays in training, so the two parts of every document together are its text.
    Documents of a single line are whole-document units: when there are at least
    ``round(1 / fraction)`` of them, every that-many-th (in name order) is held out whole;
    otherwise each is cut at a word boundary (``NAME (from character C)``).

    Returns (train, valid); the texts of each document's parts concatenate to the original.

    Raises:
        LLMCLIError: nothing could be held out (the text is too short), or nothing is left to
            train on, naming ``--valid-fraction``.
    """
    if not 0 < fraction < 1:
        raise LLMCLIError(f"--valid-fraction: must be between 0 and 1, got {fraction}")
    train: list[Document] = []
    valid: list[Document] = []
    single = [i for i, d in enumerate(docs) if d.text.rstrip("\n").count("\n") == 0]
    every = max(2, round(1 / fraction))
    whole = set(single[every - 1::every]) if len(single) >= every else set()
    single = set(single)
    for i, d in enumerate(docs):
        if i in whole:
            valid.append(d)
            continue
        if whole and i in single:
            train.append(d)
            continue
        cut = _cut(d.text, fraction)
        if cut <= 0:
            train.append(d)
            continue
        if i in single:
            label = f"{d.name} (from character {cut + 1:,})"
        else:
            first = d.text.count("\n", 0, cut) + 1
            label = f"{d.name} (lines {first:,}-{d.text.count(chr(10)):,})"
        train.append(Document(d.name, d.text[:cut], d.path, d.origin, d.aliases))
        valid.append(Document(label, d.text[cut:], d.path, d.origin))
    if not valid:
        chars = sum(len(d.text) for d in docs)
        raise LLMCLIError(f"--valid-fraction: {fraction * 100:g}% of {', '.join(d.name for d in docs[:3])}"
                          f"{' ...' if len(docs) > 3 else ''} ({chars:,} characters) is too little to "
                          "hold out: give more text, or hold out a whole work with --holdout")
    if not train:
        raise LLMCLIError(f"--valid-fraction: {fraction:g} holds out every corpus file; nothing "
                          "left to train on")
    return train, valid
