"""``llmcli generate`` end to end, as a user runs it: ``python -m llmcli`` in a subprocess.

Checks what the user sees: stdout carries only the generated text, stderr the notices; every
error is one line with no traceback and the documented exit code (1 for a bad file or
model, 2 for a bad option value, 130 when interrupted).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED
from test_generation import make_tiny_model_dir

pytest.importorskip("transformers")  # the tiny checkpoints are written with save_pretrained

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "shakespeare"
STORIES = SHARED / "fixtures" / "realmodels" / "stories260K-hf"
#: stories260K's greedy continuation of "Once upon a time" (llama2.c's reference output).
STORIES_CONTINUATION = ", there was a little girl named Lily. She loved to play outside in the park."

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def env_for(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLMCLI_MODEL", "LLMCLI_DEBUG", "PYTHONIOENCODING", "COLUMNS")}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def llmcli(*args: str, cwd: Path, input: str | None = None, env: dict | None = None,
           timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``python -m llmcli ARGS`` → completed process with text stdout/stderr.

    stdin is ``input`` when given, else ``/dev/null`` (never the test runner's terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "llmcli", *args], cwd=cwd, env=env or env_for(), timeout=timeout,
        input=input, stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True, text=True, encoding="utf-8", errors="replace")


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, repr(err)
    for needle in needles:
        assert needle in err, (needle, err)
    assert proc.stdout == "", proc.stdout


def need(path: Path, why: str) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing ({why})")
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random model directory, context 64."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("cli"), name="tiny")[0]


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory) -> Path:
    """A tiny random model with a long context, for generations that run until stopped."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("cli_long"), name="long",
                               max_position_embeddings=100_000)[0]


@pytest.fixture
def broken(tmp_path, tiny_dir):
    """``broken(edit)`` → a copy of the tiny model directory after ``edit(dir)``."""
    def make(edit) -> Path:
        target = tmp_path / "broken"
        shutil.copytree(tiny_dir, target)
        edit(target)
        return target
    return make


# ----------------------------------------------------------------------------- help
def test_help_exits_0_with_examples(tmp_path):
    for args in (["--help"], ["generate", "--help"]):
        proc = llmcli(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "Example" in proc.stdout
        assert 'llmcli generate "To be, or not to be, that is the question:" -n 66 -s 1' in proc.stdout
    text = llmcli("generate", "--help", cwd=tmp_path).stdout
    for option in ("--max-tokens", "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                   "--seed", "--stop", "--stats", "--echo", "--no-bos", "--threads"):
        assert option in text, option
    assert "newline" in text  # how an argument and stdin are joined


def test_help_prose_wraps_to_the_terminal_not_to_the_source(tmp_path):
    """Typer's rich help keeps every newline of a docstring: prose paragraphs are joined
    (reflow_help), so an 80-column terminal shows no ragged lines; examples keep their lines."""
    from llmcli.cli.app import reflow_help

    doc = "Summary.\n\nOne sentence\nsplit in the source.\n\nExamples:\n\n    llmcli a\n    llmcli b"
    assert reflow_help(doc) == ("Summary.\n\nOne sentence split in the source.\n\nExamples:\n\n"
                                "    llmcli a\n    llmcli b")
    proc = llmcli("topk", "--help", cwd=tmp_path, env=env_for(COLUMNS="80"))
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines()]
    # the docstring breaks its line after "-r/--rows only sets how"; at 80 columns it flows on
    assert not any(line.endswith("only sets how") for line in lines), proc.stdout
    assert 'llmcli topk "ROMEO:" --rows 8' in lines


@pytest.mark.parametrize("command", [[], ["generate"], ["tokenize"], ["topk"], ["train"]])
def test_help_shows_no_value_placeholder_for_flags(tmp_path, command):
    proc = llmcli(*command, "--help", cwd=tmp_path, env=env_for(COLUMNS="120"))
    assert proc.returncode == 0, proc.stderr
    assert "<bool>" not in proc.stdout, proc.stdout
    assert "--help" in proc.stdout


def test_help_with_an_ascii_stdout(tmp_path):
    proc = llmcli("generate", "--help", cwd=tmp_path, env=env_for(PYTHONIOENCODING="ascii"))
    assert proc.returncode == 0, proc.stderr
    assert "--temp" in proc.stdout


# ----------------------------------------------------------------------------- the default model
def test_default_model_greedy_and_seeded(tmp_path):
    need(DEFAULT_MODEL / "config.json", "the bundled model is committed with the repository")
    greedy = llmcli("generate", "ROMEO:", "-n", "20", "--temp", "0", cwd=tmp_path)
    assert greedy.returncode == 0, greedy.stderr
    assert greedy.stdout.strip()
    assert greedy.stderr == ""
    # a prompt from inside a scene: after "ROMEO:" alone the model is nearly sure of a title page
    runs = [llmcli("generate", "ROMEO.\nBut soft,", "-n", "20", "-s", seed, cwd=tmp_path)
            for seed in ("0", "0", "1")]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout.strip()
    assert runs[0].stdout != runs[2].stdout


# ----------------------------------------------------------------------------- a real model
def test_stories260k_known_continuation(tmp_path):
    need(STORIES, "shared fixtures live beside the clone")
    proc = llmcli("generate", "-m", str(STORIES), "Once upon a time", "--temp", "0", "-n", "20",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) > 40 and STORIES_CONTINUATION.startswith(proc.stdout), proc.stdout
    stopped = llmcli("generate", "-m", str(STORIES), "Once upon a time", "--temp", "0", "-n", "40",
                     "--stop", "Lily", "--stop", "park", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == ", there was a little girl named "
    assert "stop" in stopped.stderr


# ----------------------------------------------------------------------------- options
GREEDY = ("-n", "12", "--temp", "0")


def test_stdin_prompt_absent_or_dash_and_joined_with_the_argument(tmp_path, tiny_dir):
    m = ("-m", str(tiny_dir))
    direct = llmcli("generate", *m, *GREEDY, "Once upon a time", cwd=tmp_path)
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout
    absent = llmcli("generate", *m, *GREEDY, cwd=tmp_path, input="Once upon a time")
    dash = llmcli("generate", *m, *GREEDY, "-", cwd=tmp_path, input="Once upon a time")
    assert absent.stdout == dash.stdout == direct.stdout
    joined = llmcli("generate", *m, *GREEDY, "--echo", "ROMEO:", cwd=tmp_path, input="But soft")
    alone = llmcli("generate", *m, *GREEDY, "--echo", "ROMEO:\nBut soft", cwd=tmp_path)
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout == alone.stdout
    assert joined.stdout.startswith("ROMEO:\nBut soft")


def test_echo_and_stats(tmp_path, tiny_dir):
    m = ("-m", str(tiny_dir))
    plain = llmcli("generate", *m, *GREEDY, "Once upon a time", cwd=tmp_path)
    echoed = llmcli("generate", *m, *GREEDY, "Once upon a time", "--echo", cwd=tmp_path)
    stats = llmcli("generate", *m, *GREEDY, "Once upon a time", "--stats", cwd=tmp_path)
    assert plain.returncode == echoed.returncode == stats.returncode == 0, stats.stderr
    assert plain.stderr == ""
    assert echoed.stdout == "Once upon a time" + plain.stdout
    assert stats.stdout == plain.stdout  # timings go to stderr only
    line = stats.stderr.strip()
    assert "\n" not in line
    for figure in ("load", "prompt", "first token", "ms", "decode", "tokens/s", "generated 12 tokens"):
        assert figure in line, (figure, line)


def test_stop_string(tmp_path, tiny_dir):
    m = ("-m", str(tiny_dir))
    full = llmcli("generate", *m, "-n", "30", "--temp", "0", "Once upon a time", cwd=tmp_path).stdout
    stop = full[10:13]
    assert stop and full.find(stop) == 10, full
    proc = llmcli("generate", *m, "-n", "30", "--temp", "0", "Once upon a time", "--stop", stop,
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == full[:10]
    assert "[stopped: --stop string generated]" in proc.stderr


def test_llmcli_model_environment_variable(tmp_path, tiny_dir, long_dir):
    by_option = llmcli("generate", "-m", str(tiny_dir), *GREEDY, "Once", cwd=tmp_path)
    by_env = llmcli("generate", *GREEDY, "Once", cwd=tmp_path, env=env_for(LLMCLI_MODEL=str(tiny_dir)))
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == by_option.stdout
    # -m wins over the environment
    other = llmcli("generate", "-m", str(long_dir), *GREEDY, "Once", cwd=tmp_path,
                   env=env_for(LLMCLI_MODEL=str(tiny_dir)))
    assert other.stdout == llmcli("generate", "-m", str(long_dir), *GREEDY, "Once", cwd=tmp_path).stdout
    missing = llmcli("generate", *GREEDY, "Once", cwd=tmp_path,
                     env=env_for(LLMCLI_MODEL=str(tmp_path / "nowhere")))
    assert_one_line_error(missing, EXIT_ERROR, "nowhere")


@pytest.mark.parametrize("env", [dict(PYTHONIOENCODING="ascii"), dict(LC_ALL="C", LANG="C")],
                         ids=["ascii", "C-locale"])
def test_non_utf8_environments_do_not_crash(tmp_path, tiny_dir, env):
    params = ("-m", str(tiny_dir), "-n", "40", "--temp", "1.5", "-s", "3", "--echo", "Ça va? 日本 ->")
    proc = llmcli("generate", *params, cwd=tmp_path, env=env_for(**env))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout[1:].startswith("a va? ")  # "Ç" as itself or "?"
    stats = llmcli("generate", *params, "--stats", cwd=tmp_path, env=env_for(**env))
    assert stats.returncode == 0, stats.stderr


def test_closed_pipe_ends_quietly(tmp_path, long_dir):
    """``llmcli generate ... | head -c 10``: no traceback, no message, generation stops."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmcli", "generate", "-m", str(long_dir), "-n", "20000",
         "--temp", "0", "--top-k", "1", "Once upon a time"],
        cwd=tmp_path, env=env_for(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    first = proc.stdout.read(10)
    proc.stdout.close()  # what `head -c 10` does after ten bytes
    _, err = proc.communicate(timeout=120)
    assert first
    assert proc.returncode in (0, 1), (proc.returncode, err)
    assert err.decode() == "", err.decode()


def test_closed_pipe_in_a_shell_pipeline(tmp_path, tiny_dir):
    if not shutil.which("head") or not shutil.which("sh"):
        pytest.skip("needs sh and head")
    cmd = (f"'{sys.executable}' -m llmcli generate -m '{tiny_dir}' -n 60 --temp 0 'Once upon a time' "
           "2>err.txt | head -c 10 > out.txt")
    subprocess.run(["sh", "-c", cmd], cwd=tmp_path, env=env_for(), stdin=subprocess.DEVNULL,
                   timeout=180, check=True)
    assert len((tmp_path / "out.txt").read_bytes()) == 10
    assert "Traceback" not in (tmp_path / "err.txt").read_text()


def test_sigint_during_generation_exits_130(tmp_path, long_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmcli", "generate", "-m", str(long_dir), "-n", "90000",
         "--temp", "1", "-s", "1", "--ignore-eos", "Once upon a time"],
        cwd=tmp_path, env=env_for(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        assert proc.stdout.read(1)  # generation has started
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_sigint_during_json_ends_with_a_done_record_and_no_empty_line(tmp_path, long_dir):
    """Ctrl-C under --json: stdout stays JSON lines (no empty line written), and the last
    line is {"done": true, "stop": "interrupted", ...} with the tokens streamed so far."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmcli", "generate", "-m", str(long_dir), "-n", "90000",
         "--temp", "1", "-s", "1", "--ignore-eos", "--json", "Once upon a time"],
        cwd=tmp_path, env=env_for(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline()  # generation has started
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = (first + rest).decode(), err.decode()
    assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, err)
    assert "Traceback" not in err and "[interrupted]" in err, err
    lines = out.split("\n")
    assert lines[-1] == "" and "" not in lines[:-1], repr(out[-300:])
    records = [json.loads(line) for line in lines[:-1]]
    done = records[-1]
    assert done["done"] is True and done["stop"] == "interrupted" and done["seed"] == 1, done
    assert done["tokens"] >= len(records) - 1 >= 1 and all("id" in r for r in records[:-1])


def test_ignore_eos_runs_past_eos(tmp_path, long_dir):
    """A seed whose sample hits EOS early stops there, and with --ignore-eos runs to -n."""
    for seed in range(1, 40):
        base = llmcli("generate", "-m", str(long_dir), "-n", "300", "--temp", "1.5", "-s", str(seed),
                      "--stats", "Once", cwd=tmp_path)
        if "stop: eos" in base.stderr:
            break
    else:
        pytest.skip("no seed reached EOS")
    ignored = llmcli("generate", "-m", str(long_dir), "-n", "300", "--temp", "1.5", "-s", str(seed),
                     "--stats", "--ignore-eos", "Once", cwd=tmp_path)
    assert ignored.returncode == 0, ignored.stderr
    assert "stop: max_tokens" in ignored.stderr and "generated 300 tokens" in ignored.stderr
    assert ignored.stdout.startswith(base.stdout)


# ----------------------------------------------------------------------------- errors
def test_no_such_model_directory(tmp_path):
    assert_one_line_error(llmcli("generate", "-m", "no/such/dir", "hi", cwd=tmp_path), EXIT_ERROR,
                          "no/such/dir")


def test_missing_tokenizer(tmp_path, broken):
    model = broken(lambda d: (d / "tokenizer.model").unlink())
    assert_one_line_error(llmcli("generate", "-m", str(model), "hi", cwd=tmp_path), EXIT_ERROR,
                          "tokenizer.model")


def _truncate(d: Path) -> None:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:len(data) // 2])


def _lfs_pointer(d: Path) -> None:
    (d / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 1044992\n")


def _not_safetensors(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"PK\x03\x04" + os.urandom(2000))  # a zip (torch.save)


def _pickled_only(d: Path) -> None:
    (d / "model.safetensors").rename(d / "pytorch_model.bin")


def _bad_json(d: Path) -> None:
    (d / "config.json").write_text('{"model_type": "llama", "hidden_size": 32,')


def _not_llama(d: Path) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (d / "config.json").write_text(json.dumps(config))


def _bad_tokenizer(d: Path) -> None:
    (d / "tokenizer.model").write_bytes(b"not a sentencepiece model")


@pytest.mark.parametrize("edit, needle", [
    (_truncate, "model.safetensors"),
    (_lfs_pointer, "Git LFS"),
    (_not_safetensors, "not a safetensors file"),
    (_pickled_only, "pytorch_model.bin"),
    (_bad_json, "config.json"),
    (_not_llama, "mamba"),
    (_bad_tokenizer, "tokenizer.model"),
], ids=lambda v: getattr(v, "__name__", "")[1:] if callable(v) else "")
def test_broken_model_directories(tmp_path, broken, edit, needle):
    model = broken(edit)
    assert_one_line_error(llmcli("generate", "-m", str(model), "hi", cwd=tmp_path), EXIT_ERROR, needle)


@pytest.mark.parametrize("args, option", [
    (["--temp", "-1"], "--temp"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--min-p", "2"], "--min-p"),
    (["--min-p", "-0.5"], "--min-p"),
    (["--repeat-penalty", "0"], "--repeat-penalty"),
    (["--top-k", "-3"], "--top-k"),
    (["-n", "-2"], "--max-tokens"),                     # -1 is "no limit", as llama.cpp
    (["--threads", "0"], "--threads"),
    (["--dtype", "float8"], "--dtype"),
    (["--seed", "-5"], "--seed"),
])
def test_bad_option_values_are_usage_errors(tmp_path, tiny_dir, args, option):
    proc = llmcli("generate", "-m", str(tiny_dir), "hi", *args, cwd=tmp_path)
    assert_one_line_error(proc, EXIT_USAGE, option)


@pytest.mark.parametrize("args, needle", [
    (["generate", "hi", "-n", "abc"], "--max-tokens"),       # not an integer (click's check)
    (["generate", "hi", "--bogus"], "--bogus"),              # unknown option
    (["bogus"], "bogus"),                                     # unknown command
    (["convert"], "src"),                                     # missing argument
    (["generate", "hi", "--stop"], "--stop"),                # option without its value
])
def test_click_usage_errors_are_one_line(tmp_path, args, needle):
    """Errors found by click's parser, before llmcli's code runs, are one line too (Typer
    would print a boxed panel), exit code 2."""
    assert_one_line_error(llmcli(*args, cwd=tmp_path), EXIT_USAGE, needle)


def test_not_a_model_directory_says_why(tmp_path):
    """A folder holding a llama2.c/GGUF file instead of the HF layout, a file given as -m, and a
    bad $LLMCLI_MODEL: one line that says what is wrong and where the path came from."""
    folder = tmp_path / "llama2c"
    folder.mkdir()
    (folder / "stories.bin").write_bytes(b"\0" * 64)
    for command in (["generate", "hi"], ["tokenize", "hi"], ["info"]):
        proc = llmcli(command[0], "-m", str(folder), *command[1:], cwd=tmp_path)
        assert_one_line_error(proc, EXIT_ERROR, "no config.json", "stories.bin", "llmcli convert")
        proc = llmcli(command[0], "-m", str(folder / "stories.bin"), *command[1:], cwd=tmp_path)
        assert_one_line_error(proc, EXIT_ERROR, "is a file", "llmcli convert")
    proc = llmcli("generate", "hi", cwd=tmp_path, env=env_for(LLMCLI_MODEL=str(tmp_path / "nope")))
    assert_one_line_error(proc, EXIT_ERROR, "$LLMCLI_MODEL", "no such model directory")


def test_no_arguments_prints_the_help(tmp_path):
    proc = llmcli(cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE and "generate" in proc.stdout and proc.stderr == ""


def test_empty_prompt_with_no_bos(tmp_path, tiny_dir):
    assert_one_line_error(llmcli("generate", "-m", str(tiny_dir), "", "--no-bos", cwd=tmp_path),
                          EXIT_USAGE, "--no-bos")
    assert_one_line_error(llmcli("generate", "-m", str(tiny_dir), "--no-bos", cwd=tmp_path, input=""),
                          EXIT_USAGE, "--no-bos")


def test_empty_prompt_with_bos_continues_from_bos(tmp_path, tiny_dir):
    proc = llmcli("generate", "-m", str(tiny_dir), "", *GREEDY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout


def test_prompt_longer_than_the_context(tmp_path, tiny_dir):
    proc = llmcli("generate", "-m", str(tiny_dir), "Once upon a time " * 40, cwd=tmp_path)
    assert_one_line_error(proc, EXIT_ERROR, "longer than the model's context of 64")


def test_context_reached_is_reported_on_stderr(tmp_path, tiny_dir):
    proc = llmcli("generate", "-m", str(tiny_dir), "Once", "-n", "500", "--temp", "0", "--stats",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "context length of 64 tokens reached" in proc.stderr
    assert "stop: context" in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = llmcli("--debug", "generate", "-m", "no/such/dir", "hi", cwd=tmp_path)
    assert proc.returncode == EXIT_ERROR
    assert "Traceback" in proc.stderr and "LLMCLIError" in proc.stderr
    env = llmcli("generate", "-m", "no/such/dir", "hi", cwd=tmp_path, env=env_for(LLMCLI_DEBUG="1"))
    assert "Traceback" in env.stderr
    after = llmcli("generate", "-m", "no/such/dir", "hi", "--debug", cwd=tmp_path)  # anywhere
    assert after.returncode == EXIT_ERROR and "Traceback" in after.stderr
    text = llmcli("generate", "-m", "no/such/dir", "--", "--debug", cwd=tmp_path)  # after --: text
    assert text.returncode == EXIT_ERROR and "Traceback" not in text.stderr
