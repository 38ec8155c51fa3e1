"""Bad inputs found by trying every command as a newcomer and as an adversary (issues 12, 14).

Each test is a case that once failed: a closed pipe (exit 1 and no word), a device given as a
text file (read until memory ran out), a thread count that crashed torch's OpenMP, a range
message cut after its lower bound, ... Every bad input must give one line on stderr naming the
option or file, exit != 0, no traceback and nothing on stdout.

In-process (``llmcli.cli.app.main``) on the bundled model; no subprocess.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "shakespeare"


def one_line_error(result, code: int, *needles: str) -> str:
    rc, out, err = result
    assert rc == code, (rc, err)
    assert "Traceback" not in err and out == "", (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "--debug" not in lines[0], lines[0]    # an expected error, not an unexpected exception
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


class ClosedPipe(io.TextIOBase):
    """stdout whose reader (``| head -1``) went away after ``lines`` lines."""

    def __init__(self, lines: int = 1) -> None:
        self.left, self.text = lines, ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.text += s
        self.left -= s.count("\n")
        return len(s)

    def flush(self) -> None:
        if self.left <= 0:
            raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return False


# ----------------------------------------------------------------------------- closed pipes
@pytest.mark.parametrize("args", [
    ("score", "ROMEO:\nBut soft, what light through yonder window breaks?"),
    ("perplexity", "-"),
    ("tokenize", "ROMEO: Wherefore art thou?"),
])
def test_a_closed_pipe_is_a_quiet_exit_0(cli, args):
    """`llmcli score TEXT | head -1`: Typer caught the EPIPE itself and exited 1 without a
    word; like generate (and other Unix tools) the command stops quietly with exit 0."""
    stdin = "ROMEO:\nBut soft, what light through yonder window breaks?\n" if args[-1] == "-" else ""
    pipe = ClosedPipe(lines=1)
    rc, _, err = cli(*args, stdin=stdin, stdout=pipe)
    assert (rc, err) == (0, ""), (rc, err)
    assert pipe.text.count("\n") >= 1


# ----------------------------------------------------------------------------- devices as files
@pytest.mark.parametrize("args", [("perplexity", "/dev/zero"), ("score", "-f", "/dev/zero"),
                                  ("perplexity", "/dev/null")])
def test_a_device_is_not_read_as_a_text_file(cli, monkeypatch, args):
    """`perplexity /dev/zero` read the device until the kernel killed the process for memory;
    a device is refused without reading it (a pipe such as <(cmd) is still read)."""
    real = Path.read_bytes

    def read_bytes(self):
        assert not str(self).startswith("/dev/"), f"read {self}"
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    one_line_error(cli(*args), 1, args[-1], "is a device")


def test_a_pipe_is_still_read_as_a_text_file(cli, tmp_path):
    import os
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n"

    def writer():
        with open(fifo, "w") as f:
            f.write(text)

    thread = threading.Thread(target=writer)
    thread.start()
    rc, out, err = cli("score", "-f", fifo)
    thread.join(5)
    assert rc == 0, err
    assert out.count("\n") > 10 and "onder" in out


# ----------------------------------------------------------------------------- option ranges
@pytest.mark.parametrize("args", [
    ("generate", "ROMEO:", "-n", "2"), ("logits", "ROMEO:"), ("attribute", "ROMEO:"),
    ("perplexity", "-"), ("compare", str(MODEL), str(MODEL), "ROMEO:"),
])
def test_a_thread_count_far_above_any_cpu_is_refused(cli, monkeypatch, args):
    """`generate -t 100000` crashed the process in torch's OpenMP (segmentation fault, no
    message); it is refused, naming the option, before torch is asked."""
    import torch

    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    result = cli(*args, "-t", "100000", stdin="ROMEO: hi there\n")
    assert asked == [], asked
    one_line_error(result, 2, "--threads", "100000", "1024")


def test_train_threads_are_bounded_too(cli, tmp_path):
    corpus = tmp_path / "play.txt"
    corpus.write_text("ROMEO: hi\n" * 50)
    one_line_error(cli("train", corpus, "-o", tmp_path / "out", "--threads", "5000"), 2,
                   "--threads", "5000")
    assert not (tmp_path / "out").exists()


def test_a_range_with_one_bound_is_a_whole_sentence(cli):
    """compare -k 0 said "-k: 0 is out of range [1, " (the interval cut after its lower bound)."""
    line = one_line_error(cli("compare", MODEL, MODEL, "ROMEO: hi", "-k", "0"), 2, "-k")
    assert line == "error: -k: must be at least 1, got 0", line
    line = one_line_error(cli("compare", MODEL, MODEL, "ROMEO: hi", "--rows", "-1"), 2, "--rows")
    assert line == "error: --rows: must be at least 0, got -1", line


# ----------------------------------------------------------------------------- --save-* paths
@pytest.mark.parametrize("command,option,example", [
    ("topk", "--save-svg", "out.svg"), ("score", "--save-html", "out.html"),
    ("logits", "--save", "out.safetensors")])
def test_a_directory_as_save_path_suggests_a_name_of_its_kind(cli, tmp_path, command, option, example):
    """`--save-svg DIR` suggested "a file name such as out.safetensors"."""
    one_line_error(cli(command, "ROMEO: hi", option, tmp_path), 1, option, "is a directory", example)
    assert list(tmp_path.iterdir()) == []


class FullDevice(ClosedPipe):
    """stdout on a full disk (``> /dev/full``): every write fails with ENOSPC."""

    def write(self, s: str) -> int:
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        self.write("")


@pytest.mark.parametrize("args", [("tokenize", "ROMEO:"), ("score", "ROMEO: hi"), ("info",)])
def test_a_full_stdout_is_named(cli, args):
    """`llmcli tokenize TEXT > /dev/full` said only "error: No space left on device"."""
    one_line_error(cli(*args, stdout=FullDevice()), 1, "stdout", "No space left on device")


# ----------------------------------------------------------------------------- narrow terminals
class Terminal(io.StringIO):
    """stdout that says it is a terminal (its width comes from COLUMNS)."""

    def isatty(self) -> bool:
        return True


def _terminal_lines(cli, monkeypatch, width: int, *args: str) -> list[str]:
    import re

    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    screen = Terminal()
    rc, _, err = cli(*args, stdout=screen)
    assert rc == 0, err
    text = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", screen.getvalue())
    lines = text.split("\n")
    assert max(len(line) for line in lines) <= width, [l for l in lines if len(l) > width][:2]
    return lines


@pytest.mark.parametrize("width", [40, 80])
def test_attribute_table_keeps_its_numbers_whole_in_a_narrow_terminal(cli, monkeypatch, width):
    """At 40 columns every pos, id, value and score cell of attribute's table was "…": the
    bars, then the ids, give way first."""
    import json

    text = "ROMEO: What light through yonder window"
    doc = json.loads(cli("attribute", text, "--json")[1])
    lines = _terminal_lines(cli, monkeypatch, width, "attribute", text)
    assert not any("…" in line for line in lines), [l for l in lines if "…" in l][:3]
    for t in doc["tokens"]:
        assert any(f"{t['value']:+.4f}" in line and f"{t['score']:.4f}" in line
                   for line in lines), t
    if width == 80:   # room for the ids and the bars
        assert any("█" in line for line in lines)
        assert any(str(t["id"]) in line for t in doc["tokens"] for line in lines if t["id"] > 1000)


@pytest.mark.parametrize("width", [40, 80])
def test_compare_table_keeps_positions_and_kl_whole_in_a_narrow_terminal(cli, monkeypatch, width):
    """At 40 columns compare's pos, next and KL cells were "…": the candidates wrap instead."""
    lines = _terminal_lines(cli, monkeypatch, width, "compare", MODEL, MODEL, "ROMEO: But soft")
    rows = [line.split() for line in lines if line[:5].strip().isdigit()]
    assert [int(r[0]) for r in rows] == list(range(len(rows))) and len(rows) >= 6
    assert all(r[2] == "0" for r in rows), rows   # KL(A‖A) = 0, whole


# ----------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_in_score_json_leaves_a_document_that_parses(cli, monkeypatch, tmp_path):
    """Ctrl-C during `score --json` left stdout cut inside the "content" array (no summary,
    not JSON) and said nothing: the document is closed with "interrupted": true, stderr says
    [interrupted], exit 130, no picture."""
    import json

    import llmcli.inspection.score as S

    real = S.score_tokens

    def interrupted(*args, **kwargs):
        for i, t in enumerate(real(*args, **kwargs)):
            if i == 5:
                raise KeyboardInterrupt
            yield t

    monkeypatch.setattr(S, "score_tokens", interrupted)
    svg = tmp_path / "s.svg"
    rc, out, err = cli("score", "ROMEO:\nBut soft, what light through yonder window breaks?",
                       "--json", "--save-svg", svg)
    assert (rc, err.strip()) == (130, "[interrupted]"), (rc, err)
    doc = json.loads(out)
    assert len(doc["content"]) == 5 and doc["summary"]["interrupted"] is True
    assert doc["summary"]["tokens"] == 5
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_says_interrupted(cli, monkeypatch):
    """Ctrl-C in perplexity (or any command without its own handler) exited 130 silently."""
    import llmcli.inspection.perplexity as PP

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PP, "perplexity", boom)
    rc, out, err = cli("perplexity", "-", stdin="ROMEO:\nBut soft, what light through yonder\n" * 3)
    assert (rc, out, err.strip()) == (130, "", "[interrupted]"), (rc, out, err)


# ----------------------------------------------------------------------------- llama.cpp's flags
def test_attribute_and_score_take_p_and_perplexity_takes_f(cli, tmp_path):
    """-p/--prompt (as generate, topk, trace, ...) was "No such option: -p" in attribute and
    score; perplexity lacked llama-perplexity's -f FILE."""
    text = "ROMEO:\nBut soft, what light through yonder window breaks?"
    for command in ("attribute", "score"):
        positional = cli(command, text, "--json")
        assert positional[0] == 0, positional[2]
        assert cli(command, "-p", text, "--json")[1] == positional[1]
        assert cli(command, "--prompt", text, "--json")[1] == positional[1]
        one_line_error(cli(command, "-p", text, text), 2, "-p/--prompt", "not both")
    play = tmp_path / "play.txt"
    play.write_text(text + "\n")
    positional = cli("perplexity", play, "--json")
    assert positional[0] == 0, positional[2]
    assert cli("perplexity", "-f", play, "--json")[1] == positional[1]
    one_line_error(cli("perplexity", "-f", play, play), 2, "-f/--file", "not both")


def test_train_takes_t_and_c_as_every_other_command(cli, tmp_path):
    """train had --threads and --context but not -t and -c (every model command has -t, and
    -c/--ctx-size is llama.cpp's context flag)."""
    corpus = tmp_path / "play.txt"
    corpus.write_text("ROMEO: hi\n" * 50)
    one_line_error(cli("train", corpus, "-o", tmp_path / "out", "-t", "0"), 2, "--threads")
    one_line_error(cli("train", corpus, "-o", tmp_path / "out", "-c", "0"), 2, "--context")
    one_line_error(cli("train", corpus, "-o", tmp_path / "out", "--ctx-size", "0"), 2, "--context")


# ----------------------------------------------------------------------------- argument names
@pytest.mark.parametrize("args", [("logits",), ("attribute",), ("compare", str(MODEL), str(MODEL)),
                                  ("tokenize",), ("score",)])
def test_missing_text_names_the_commands_argument(cli, monkeypatch, args):
    """With stdin a terminal and no text, attribute, compare and the inspection commands said
    "PROMPT: missing", an argument they do not have (theirs is TEXT)."""
    monkeypatch.setattr("llmcli.cli.common._stdin_is_tty", lambda: True)
    one_line_error(cli(*args), 2, "TEXT: missing")


def test_generate_still_names_its_prompt(cli, monkeypatch):
    monkeypatch.setattr("llmcli.cli.common._stdin_is_tty", lambda: True)
    one_line_error(cli("generate"), 2, "PROMPT: missing")


# ----------------------------------------------------------------------------- numbers in tables
@pytest.mark.parametrize("command", ["topk", "trace"])
def test_huge_logprobs_keep_the_table_narrow(cli, command):
    """--temp 1e-38 (the greedy limit) gives logprobs near -3e38; printed with 4 decimals they
    were 45 characters wide ("-307759761810302677895779488236417581056.0000") and pushed the
    table past 80 columns. They are written in 4 significant digits, still exact to that."""
    import re

    rc, out, err = cli(command, "ROMEO:", "--temp", "1e-38", "--rows", "3")
    assert rc == 0, err
    table = [line for line in out.splitlines() if re.match(r"\s+[23]\s+\d+\s", line)]
    assert len(table) == 2, out
    for line in table:
        assert len(line) <= 80 and re.search(r"-\d\.\d{3}e\+38\b", line), line


def test_ctrl_c_in_compare_json_still_ends_with_the_summary(cli, monkeypatch):
    """Ctrl-C during `compare --json` (JSON Lines) ended without its summary line."""
    import json

    import llmcli.inspection.compare as C

    real = C.compare

    def interrupted(*args, **kwargs):
        for i, d in enumerate(real(*args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt
            yield d

    monkeypatch.setattr(C, "compare", interrupted)
    rc, out, err = cli("compare", MODEL, MODEL, "ROMEO: But soft, what light", "--json")
    assert (rc, err.strip()) == (130, "[interrupted]"), (rc, err)
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 4 and records[-1]["summary"]["interrupted"] is True
    assert records[-1]["summary"]["positions"] == 3


@pytest.mark.parametrize("command", [("attribute", "ROMEO:"), ("compare", str(MODEL), str(MODEL), "ROMEO:"),
                                     ("topk", "ROMEO:"), ("score", "ROMEO: hi")])
def test_the_same_picture_path_twice_is_refused_before_any_work(cli, tmp_path, monkeypatch, command):
    """attribute and compare wrote the SVG, then failed on the HTML (or, with --force,
    replaced the SVG by the HTML); score compared the paths as written (a.svg vs ./dir/a.svg)."""
    monkeypatch.chdir(tmp_path)
    for force in ([], ["--force"]):
        one_line_error(cli(*command, "--save-svg", "same.svg", "--save-html", tmp_path / "same.svg", *force),
                       2, "--save-svg and --save-html", "two different files")
        assert list(tmp_path.iterdir()) == []


def test_weights_or_tokenizer_that_are_not_files_are_named(cli, tmp_path):
    """model.safetensors that is a directory (said "no model.safetensors"), and convert's
    --tokenizer given a device (said "tokenizer file not found")."""
    import shutil

    model = tmp_path / "m"
    shutil.copytree(MODEL, model, ignore=shutil.ignore_patterns("model.safetensors"))
    (model / "model.safetensors").mkdir()
    code, out, err = cli("logits", "-m", model, "ROMEO:")
    assert code == 1 and out == "" and "Traceback" not in err, err
    assert err.strip().splitlines() == [f"error: {model / 'model.safetensors'}: a directory, not a safetensors file"]

    from llmcli.convert.sp_model import load_tokenizer_file
    from llmcli.errors import LLMCLIError

    with pytest.raises(LLMCLIError, match="^/dev/zero: not a regular file"):
        load_tokenizer_file(Path("/dev/zero"))
