"""Nothing of the user's destroyed, no wrong number given quietly (issue 12).

Output files and directories: ``--save`` writes a regular file through a temporary file and
never replaces a device, pipe, symlink or (without ``--force``) an existing file, and respects
the umask; ``convert`` and ``train`` replace only an empty directory or one holding just the
files llmcli writes, never the current directory or one holding the source; ``train`` leaves
no temporary directory. Numbers: non-finite logits, tiny temperatures, weights in a dtype or
quantisation llmcli does not implement, and tokenizers that do not fit the embedding.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file, save_file

from conftest import make_checkpoint
from llmcli.errors import LLMCLIError

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Once upon a time there was a little girl"


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``llmcli ARGS`` in-process → ``(exit code, stdout, stderr)``."""
    from llmcli.cli.app import main

    def run(*args, stdin: str = ""):
        monkeypatch.setattr(sys, "argv", ["llmcli", *map(str, args)])
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        monkeypatch.delenv("LLMCLI_DEBUG", raising=False)
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_line_error(result, code: int, *parts: str) -> str:
    got, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _vocab(tokenizer_model: Path) -> int:
    return spm.SentencePieceProcessor(model_file=str(tokenizer_model)).get_piece_size()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer_model) -> Path:
    """A tiny random checkpoint with the 320-piece tokenizer (never modified by tests)."""
    tmp = tmp_path_factory.mktemp("safety")
    model_dir, _ = make_checkpoint(tmp, vocab_size=_vocab(tiny_tokenizer_model))
    shutil.copyfile(tiny_tokenizer_model, model_dir / "tokenizer.model")
    return model_dir


def _copy(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)
    return dest


def _edit_weights(model_dir: Path, edit) -> None:
    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def _edit_config(model_dir: Path, **changes) -> None:
    path = model_dir / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ============================================================================= --save
def test_save_refuses_a_pipe_and_keeps_it(tiny, cli, tmp_path):
    """A FIFO stands for every non-regular file (as root, `--save /dev/full` turned the device
    into a regular file); a real device is not used here, so that a regression cannot break
    the machine."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for cmd in ("logits", "embeddings"):
        for force in ([], ["--force"]):
            one_line_error(cli(cmd, "-m", tiny, TEXT, "--save", fifo, *force), 1, "--save",
                           str(fifo), "not a regular file")
            assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_save_refuses_a_symlink_and_keeps_its_target(tiny, cli, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    one_line_error(cli("logits", "-m", tiny, TEXT, "--save", link, "--force"), 1, "--save",
                   "symbolic link")
    assert link.is_symlink() and target.read_text() == "keep me"


def test_save_over_an_existing_file_needs_force(tiny, cli, tmp_path):
    path = tmp_path / "out.safetensors"
    path.write_bytes(b"old")
    for cmd in ("logits", "embeddings"):
        one_line_error(cli(cmd, "-m", tiny, TEXT, "--save", path), 1, "--save", "already exists",
                       "--force")
        assert path.read_bytes() == b"old"
    code, _, err = cli("logits", "-m", tiny, TEXT, "--save", path, "--force")
    assert code == 0, err
    assert "logits" in load_file(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_saved_file_mode_follows_the_umask(tiny, cli, tmp_path, mask):
    old = os.umask(mask)
    try:
        code, _, err = cli("embeddings", "-m", tiny, TEXT, "--save", tmp_path / "h.safetensors")
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "h.safetensors").stat().st_mode) == 0o666 & ~mask


def test_write_file_atomically_rules(tmp_path):
    """The library function that every single-file output goes through."""
    from llmcli.outputs import write_file_atomically

    def write(p: Path) -> None:
        p.write_text("new")

    path = tmp_path / "a.txt"
    write_file_atomically(path, write, option="--out")
    assert path.read_text() == "new"
    with pytest.raises(LLMCLIError, match="--out: .*already exists.*--force"):
        write_file_atomically(path, write, option="--out")
    path.write_text("old")
    write_file_atomically(path, write, option="--out", force=True)
    assert path.read_text() == "new"
    with pytest.raises(LLMCLIError, match="is a directory"):
        write_file_atomically(tmp_path, write, option="--out", force=True)

    def fail(p: Path) -> None:
        p.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(LLMCLIError, match="No space left"):
        write_file_atomically(path, fail, option="--out", force=True)
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


# ============================================================================= directories
def _llama2c_source(tmp_path: Path, tokenizer_model: Path) -> Path:
    """A small llama2.c checkpoint (random weights) for convert."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_convert import random_weights, write_llama2c

    w = random_weights(_vocab(tokenizer_model), 1, True)
    return write_llama2c(tmp_path / "m.bin", w, 1, True)


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_convert_force_never_deletes_unrelated_files(cli, tmp_path, tiny_tokenizer_model):
    src = _llama2c_source(tmp_path, tiny_tokenizer_model)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "config.json").write_text("{}")
    for force in ([], ["--force"]):
        one_line_error(cli("convert", src, out, "--tokenizer", tiny_tokenizer_model, *force), 1,
                       str(out), "notes.txt")
        assert (out / "notes.txt").read_text() == "keep me"
    assert _hidden(tmp_path) == []


def test_convert_replaces_an_empty_dir_and_its_own_output(cli, tmp_path, tiny_tokenizer_model):
    src = _llama2c_source(tmp_path, tiny_tokenizer_model)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = cli("convert", src, out, "--tokenizer", tiny_tokenizer_model)
    assert code == 0, err  # an empty directory holds nothing to lose: no --force needed
    written = sorted(p.name for p in out.iterdir())
    one_line_error(cli("convert", src, out, "--tokenizer", tiny_tokenizer_model), 1,
                   "already exists", "--force")
    code, _, err = cli("convert", src, out, "--tokenizer", tiny_tokenizer_model, "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == written and _hidden(tmp_path) == []
    mode = stat.S_IMODE((out / "model.safetensors").stat().st_mode)
    assert mode == 0o666 & ~_umask()


@pytest.mark.parametrize("where", [".", "..", "abs"])
def test_convert_never_replaces_the_current_directory(cli, tmp_path, tiny_tokenizer_model,
                                                      monkeypatch, where):
    src = _llama2c_source(tmp_path, tiny_tokenizer_model)
    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    target = str(work) if where == "abs" else where
    one_line_error(cli("convert", src, target, "--tokenizer", tiny_tokenizer_model, "--force"), 1,
                   "current directory")
    assert Path.cwd() == work and list(work.iterdir()) == []
    assert _hidden(work) == [] and _hidden(work.parent) == [] and _hidden(tmp_path / "work") == []


def test_convert_refuses_a_symlinked_out_dir(cli, tmp_path, tiny_tokenizer_model):
    src = _llama2c_source(tmp_path, tiny_tokenizer_model)
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    one_line_error(cli("convert", src, link, "--tokenizer", tiny_tokenizer_model, "--force"), 1,
                   "symbolic link")
    assert link.is_symlink() and list(real.iterdir()) == []


def test_save_model_keeps_unrelated_files_and_leaves_no_old_dir(tmp_path, tiny):
    from llmcli.weights import load_model, save_model

    model, config = load_model(tiny)
    out = tmp_path / "m"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(LLMCLIError, match="mine.txt"):
        save_model(model, config, out, force=True)
    assert (out / "mine.txt").read_text() == "keep me"
    (out / "mine.txt").unlink()
    save_model(model, config, out)
    with pytest.raises(LLMCLIError, match="already exists"):
        save_model(model, config, out)
    save_model(model, config, out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _llmcli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmcli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          timeout=300, cwd=ROOT)


QUICK = ["--vocab-size", "300", "--hidden-size", "16", "--intermediate-size", "32", "--layers", "1",
         "--heads", "2", "--context", "32", "--batch-size", "2", "--max-steps", "3",
         "--warmup-steps", "1", "--eval-interval", "3", "--eval-batches", "1", "--threads", "1"]


def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    line = "ROMEO. Love and death and the king's crown, sweet lady.\n"
    for i in range(2):
        (corpus / f"w{i}.txt").write_text(line * 40)
    return corpus


def test_train_refuses_unrelated_files_and_a_file_up_front(tmp_path):
    corpus = _corpus(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    for force in ([], ["--force"]):
        proc = _llmcli("train", corpus, "--holdout", "w1.txt", "-o", out, *QUICK, *force)
        assert proc.returncode == 1 and "thesis.tex" in proc.stderr, proc.stderr
        assert "training" not in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "thesis.tex").read_text() == "keep me"
    afile = tmp_path / "model.txt"
    afile.write_text("keep me")
    proc = _llmcli("train", corpus, "--holdout", "w1.txt", "-o", afile, *QUICK, "--force")
    assert proc.returncode == 1 and "not a directory" in proc.stderr, proc.stderr
    assert afile.read_text() == "keep me" and not (tmp_path / "model.txt.old").exists()
    proc = _llmcli("train", corpus, "--holdout", "w1.txt", "-o", corpus, *QUICK, "--force")
    assert proc.returncode == 1 and "contains the source" in proc.stderr
    assert (corpus / "w0.txt").is_file()


def test_train_leaves_no_temporary_directory_and_replaces_only_with_force(tmp_path):
    corpus = _corpus(tmp_path)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "out"
    env = {"TMPDIR": str(tmpdir)}
    proc = _llmcli("train", corpus, "--holdout", "w1.txt", "-o", out, *QUICK, env=env)
    assert proc.returncode == 0, proc.stderr
    ours = lambda: [p.name for p in tmpdir.iterdir() if p.name.startswith("llmcli")]  # noqa: E731
    assert ours() == [], "train left a temporary directory"  # (torch may keep its own caches)
    assert (out / "README.md").is_file() and (out / "training.json").is_file()
    proc = _llmcli("train", corpus, "--holdout", "w1.txt", "-o", out, *QUICK, env=env)
    assert proc.returncode == 1 and "already exists" in proc.stderr and "--force" in proc.stderr
    proc = _llmcli("train", corpus, "--holdout", "w1.txt", "-o", out, *QUICK, "--force", env=env)
    assert proc.returncode == 0, proc.stderr
    assert ours() == [] and _hidden(tmp_path) == []
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~_umask()


# ============================================================================= training
def test_diverging_training_stops_with_one_line(tmp_path):
    corpus = _corpus(tmp_path)
    proc = _llmcli("train", corpus, "--holdout", "w1.txt", "-o", tmp_path / "out", *QUICK,
                   "--lr", "1e30", "--max-steps", "6")
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--lr" in last and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
