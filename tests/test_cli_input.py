"""Input edge cases found by trying the CLI as a newcomer: invalid UTF-8, truncated weights in
``info``, a closed pipe, and the --debug hint."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "shakespeare"


def run(args, stdin=b"", **env):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "llmcli", *args], input=stdin, capture_output=True,
                          env=full_env, cwd=ROOT)


def one_line_error(proc, code):
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_invalid_utf8_argument_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "llmcli", "tokenize", "--ids", os.fsdecode(b"ab\xff")],
                          capture_output=True, cwd=ROOT)
    line = one_line_error(proc, 2)
    assert "TEXT: not valid UTF-8 (byte 0xff at character 2)" in line


def test_invalid_utf8_stdin_is_a_usage_error():
    line = one_line_error(run(["tokenize", "--ids"], stdin=b"\xff\xfe bad"), 2)
    assert "stdin: not valid UTF-8 (byte 0xff at offset 0)" in line


def test_stdin_is_read_as_utf8_bytes():
    proc = run(["tokenize", "--ids", "--no-bos"], stdin="héllo 🦙".encode())
    assert proc.returncode == 0, proc.stderr
    from llmcli.tokenizer import Tokenizer

    assert proc.stdout.decode().split() == [str(i) for i in Tokenizer(MODEL / "tokenizer.model").encode("héllo 🦙", add_bos=False)]


def test_empty_stdin_with_no_bos_is_one_usage_error():
    line = one_line_error(run(["generate", "--no-bos"], stdin=b""), 2)
    assert "empty prompt with --no-bos" in line


def test_info_reports_truncated_weights(tmp_path):
    bad = tmp_path / "trunc"
    bad.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(MODEL / name, bad / name)
    data = (MODEL / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 3])
    line = one_line_error(run(["info", "-m", str(bad)]), 1)
    assert "model.safetensors: truncated" in line


def test_closed_pipe_ends_quietly_with_exit_0():
    cmd = (f"{sys.executable} -m llmcli generate ROMEO: -n 400 -s 1 | head -c 10 >/dev/null; "
           "echo ${PIPESTATUS[0]}")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.stdout.decode().strip() == "0", proc.stderr
    assert b"Traceback" not in proc.stderr and b"Error" not in proc.stderr


def test_unexpected_error_hint_names_the_debug_flag(tmp_path):
    # A config.json whose JSON is a list is reported as an error naming the file, not a crash.
    bad = tmp_path / "m"
    bad.mkdir()
    (bad / "config.json").write_text("[1, 2]")
    shutil.copy(MODEL / "tokenizer.model", bad / "tokenizer.model")
    line = one_line_error(run(["generate", "hi", "-m", str(bad)]), 1)
    assert "config.json" in line


@pytest.mark.parametrize("flag", ["--ids", "--count"])
def test_tokenize_modes_work_without_a_model_forward(flag):
    proc = run(["tokenize", flag, "ROMEO:"])
    assert proc.returncode == 0 and proc.stdout.strip()


def test_ctrl_c_during_start_up_imports_exits_130_quietly(monkeypatch, capsys):
    import builtins
    import sys

    import llmcli.__main__ as entry

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "llmcli.cli.app":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "llmcli.cli.app", raising=False)
    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        entry.main()
    assert exit_info.value.code == 130 and capsys.readouterr().err == "\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("args", [["tokenize", "ROMEO:"], ["generate", "ROMEO:", "-n", "30", "-s", "1"]])
def test_a_full_disk_on_stdout_is_one_line(args):
    """Writing to a full device (`> /dev/full`): the system's reason on one line, exit 1, no
    exception class name and no traceback."""
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "llmcli", *args], stdout=full, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=ROOT)
    line = one_line_error(proc, 1)
    assert line == "error: stdout: No space left on device", line
