"""Flags people type from llama.cpp, and help that says only what a command uses (issue 12).

``-p/--prompt``, ``-c/--ctx-size``, ``-t/--threads``, ``-n -1``; ``topk`` with generate's
sampling options and ``-r/--rows`` for its row count; ``tokenize``/``detokenize``/``info``
without torch's options (and without torch); ``--stats`` load time from process start; the
last ``generate --json`` record; help at 80 columns under a pseudo-terminal; the context
errors naming the family's real config field (``n_positions`` for GPT-2).

In-process (``llmcli.cli.app.main``) on the bundled model unless a subprocess is the point.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmcli.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "shakespeare"
#: When this module was imported: the test process is at least this old at any later time.
IMPORTED = time.perf_counter()


def one_line_error(result, code: int, *needles: str) -> str:
    rc, out, err = result
    assert rc == code, (rc, err)
    assert "Traceback" not in err and out == "", (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def json_lines(out: str) -> list[dict]:
    assert out.endswith("\n") and "\n\n" not in out, repr(out[-200:])
    return [json.loads(line) for line in out.splitlines()]


# ----------------------------------------------------------------------------- -p/--prompt
@pytest.mark.parametrize("command", ["generate", "tokenize", "logits", "topk", "trace", "embeddings"])
def test_prompt_option_is_the_positional_prompt(cli, command):
    extra = {"generate": ["-n", "4", "--temp", "0"], "logits": ["--top", "2"], "topk": ["--rows", "2"],
             "trace": ["--rows", "2"], "embeddings": ["--dims", "2"], "tokenize": []}[command]
    positional = cli(command, "ROMEO:", *extra, "--json")
    assert positional[0] == 0, positional[2]
    option = cli(command, "-p", "ROMEO:", *extra, "--json")
    long_option = cli(command, "--prompt", "ROMEO:", *extra, "--json")
    strip = (lambda out: out) if command != "generate" else (
        lambda out: [r for r in json_lines(out) if not r.get("done")])  # timings differ
    assert option[0] == long_option[0] == 0, option[2]
    assert strip(option[1]) == strip(long_option[1]) == strip(positional[1])
    one_line_error(cli(command, "ROMEO:", "-p", "JULIET:", *extra), 2, "-p/--prompt", "not both")


def test_prompt_option_with_chat_message_is_refused(cli):
    one_line_error(cli("generate", "-p", "hi", "--chat", "hello"), 2, "--chat", "not both")


# ----------------------------------------------------------------------------- -c/--ctx-size
def test_ctx_size_above_the_models_context_is_one_line(cli):
    for command in ("generate", "logits", "topk", "trace", "embeddings"):
        one_line_error(cli(command, "ROMEO:", "-c", "100000"), 2,
                       "-c/--ctx-size: 100000 is more than the model's context of 512 tokens",
                       "max_position_embeddings")
    one_line_error(cli("generate", "ROMEO:", "--ctx-size", "-3"), 2, "-c/--ctx-size", "-3")


def test_ctx_size_limits_the_prompt_and_the_steps(cli):
    ids = Tokenizer(MODEL / "tokenizer.model").encode("ROMEO:")          # 6 tokens with BOS
    one_line_error(cli("logits", "ROMEO:", "-c", str(len(ids) - 1)), 1,
                   f"TEXT: {len(ids)} tokens is longer than the context of {len(ids) - 1} tokens "
                   "(-c/--ctx-size)")
    one_line_error(cli("generate", "ROMEO:", "-c", str(len(ids) - 1)), 1,
                   f"the prompt is {len(ids)} tokens, longer than the context of {len(ids) - 1} "
                   "tokens (-c/--ctx-size)")
    one_line_error(cli("topk", "ROMEO:", "-c", str(len(ids) + 1), "--steps", "3"), 2,
                   "--steps", f"the context of {len(ids) + 1} tokens (-c/--ctx-size)")
    code, out, _ = cli("topk", "ROMEO:", "-c", str(len(ids) + 1), "--steps", "2", "--json")
    assert code == 0 and len(json.loads(out)["steps"]) == 2
    code, out, _ = cli("logits", "ROMEO:", "-c", "0", "--json")   # 0 = the model's (llama.cpp)
    assert code == 0, out


def test_until_eos_or_the_context_with_n_minus_1(cli):
    """-n -1 with -c 20: generation runs until the context is full (EOS ignored): 20 positions
    fed, the last token sampled from the 20th: 20 - 6 + 1 tokens after the 6-token prompt."""
    code, out, err = cli("generate", "ROMEO:", "-n", "-1", "-c", "20", "--ignore-eos", "-s", "3",
                         "--json")
    assert code == 0, err
    records = json_lines(out)
    done = records[-1]
    assert done["done"] is True and done["stop"] == "context" and done["tokens"] == 20 - 6 + 1
    assert len(records) == done["tokens"] + 1 and done["prompt_tokens"] == 6
    assert "context length of 20 tokens reached (-c/--ctx-size)" in err
    code, out, err = cli("generate", "ROMEO:", "-n", "-1", "-c", "40", "-s", "3", "--json")
    assert code == 0 and json_lines(out)[-1]["stop"] in ("eos", "context"), err
    one_line_error(cli("generate", "ROMEO:", "-n", "-2"), 2, "-n/--max-tokens", "-1", "-2")
    one_line_error(cli("chat", "-n", "-5"), 2, "-n/--max-tokens")


def test_threads_short_flag(cli):
    one_line_error(cli("generate", "ROMEO:", "-t", "0"), 2, "--threads: must be at least 1")
    one_line_error(cli("logits", "ROMEO:", "-t", "0"), 2, "--threads")


# ----------------------------------------------------------------------------- topk
def test_topk_takes_generates_sampling_options(cli):
    text = "ROMEO: Romeo, Romeo"
    ids = Tokenizer(MODEL / "tokenizer.model").encode(text)
    code, out, err = cli("logits", text, "--json")
    assert code == 0, err
    raw = json.loads(out)["logits"]
    code, out, err = cli("topk", text, "--rows", "6", "--top-k", "3", "--top-p", "1", "--min-p", "0",
                         "--repeat-penalty", "1.5", "--json")
    assert code == 0, err
    step = json.loads(out)["steps"][0]
    assert len(step["candidates"]) == 6          # the rows
    assert step["kept"] == 3                     # what sampling draws from: --top-k 3
    seen = set(ids)
    for cand in step["candidates"]:              # the penalty, applied as generate applies it
        want = raw[cand["id"]]
        if cand["id"] in seen:
            want = want / 1.5 if want > 0 else want * 1.5
        assert cand["logit"] == pytest.approx(want, rel=1e-5, abs=1e-5), cand
    assert any(c["id"] in seen for c in step["candidates"])   # the penalty mattered here


def test_topk_seeded_choice_equals_generate(cli):
    """With a seed, topk --steps samples what generate samples (same options, same seed)."""
    opts = ["--temp", "0.9", "--top-k", "5", "--top-p", "0.9", "--min-p", "0.02",
            "--repeat-penalty", "1.3", "-s", "11"]
    code, out, err = cli("topk", "ROMEO:", "--steps", "6", *opts, "--json")
    assert code == 0, err
    chosen = [s["chosen"]["id"] for s in json.loads(out)["steps"]]
    code, out, err = cli("generate", "ROMEO:", "-n", "6", *opts, "--json")
    assert code == 0, err
    assert [r["id"] for r in json_lines(out)[:-1]][:len(chosen)] == chosen


def test_topk_rows_are_not_top_k(cli):
    code, out, _ = cli("topk", "ROMEO:", "-r", "4", "--json")
    assert code == 0 and len(json.loads(out)["steps"][0]["candidates"]) == 4
    code, out, _ = cli("topk", "ROMEO:", "-k", "3", "--json")        # the old name still works
    assert code == 0 and len(json.loads(out)["steps"][0]["candidates"]) == 3
    one_line_error(cli("topk", "ROMEO:", "-k", "3", "--rows", "4"), 2, "-r/--rows")
    code, out, _ = cli("trace", "ROMEO:", "--rows", "3", "--json")
    assert code == 0 and len(json.loads(out)["top"]) == 3
    help_text = cli("topk", "--help")[1]
    assert "--rows" in help_text and "--top-k" in help_text and "--repeat-penalty" in help_text
    assert not re.search(r"(^|\s)-k\b|--k\b", help_text), help_text


# ----------------------------------------------------------------------------- torch-free commands
@pytest.mark.parametrize("command", ["tokenize", "detokenize", "info"])
def test_torch_free_commands_do_not_list_torch_options(cli, command):
    code, out, _ = cli(command, "--help")
    assert code == 0
    for option in ("--dtype", "--device", "--threads"):
        assert option not in out, option
    code, out, _ = cli("logits", "--help")
    assert "--dtype" in out and "--threads" in out


def test_torch_free_commands_do_not_import_torch(tmp_path):
    script = (
        "import sys\n"
        "from llmcli.cli.app import main\n"
        "for args in (['tokenize', 'ROMEO:'], ['detokenize', '1', '436', '310'], ['info'],\n"
        "             ['tokenize', '--dtype', 'float32', 'x']):\n"
        "    sys.argv = ['llmcli', *args]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (args, exc.code)\n"
        "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3])\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False []", proc.stdout[-500:]


# ----------------------------------------------------------------------------- --stats load
def _process_age() -> float:
    """Seconds since this process started, from /proc (Linux; the test skips elsewhere)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, AttributeError, ValueError, IndexError):
        pytest.skip("needs /proc/self/stat and CLOCK_BOOTTIME")


def test_stats_load_counts_from_process_start(cli):
    """In this process torch was imported long before: a load time from process start is at
    least this process's age when the test began (it was the model load alone before)."""
    age = _process_age()
    assert age >= time.perf_counter() - IMPORTED
    code, out, err = cli("generate", "ROMEO:", "-n", "2", "--stats", "--json")
    assert code == 0, err
    load = float(re.search(r"load ([0-9.]+) s", err).group(1))
    assert load >= age - 0.01, (load, age)
    assert json_lines(out)[-1]["load_seconds"] >= age
    from llmcli.cli.common import seconds_since_process_start

    assert abs(seconds_since_process_start() - _process_age()) < 0.05


# ----------------------------------------------------------------------------- --json
def test_json_ends_with_a_done_record(cli):
    code, out, err = cli("generate", "ROMEO:", "-n", "5", "-s", "7", "--json")
    assert code == 0, err
    records = json_lines(out)
    assert [set(r) >= {"id", "piece", "text", "logprob"} for r in records[:-1]] == [True] * 5
    done = records[-1]
    assert done["done"] is True and done["stop"] == "max_tokens" and done["seed"] == 7
    assert done["tokens"] == 5 and done["prompt_tokens"] == 6
    for key in ("load_seconds", "prefill_seconds", "first_token_seconds", "decode_seconds"):
        assert isinstance(done[key], float) and done[key] >= 0, key
    assert done["decode_tokens_per_second"] > 0
    code, out, _ = cli("generate", "ROMEO:", "-n", "1", "-s", "7", "--json")
    assert json_lines(out)[-1]["decode_tokens_per_second"] is None   # one token: no rate
    help_text = " ".join(cli("generate", "--help")[1].split())
    assert '"done": true' in help_text and '"interrupted"' in help_text


# ----------------------------------------------------------------------------- detokenize example
def test_detokenize_help_example_decodes_to_text_with_the_bundled_model(cli):
    from llmcli.cli.inspect import detokenize_command

    examples = re.findall(r"^\s*llmcli detokenize ((?:\d+ ?)+)$", detokenize_command.__doc__, re.M)
    assert examples, detokenize_command.__doc__
    ids = [int(i) for i in examples[0].split()]
    code, out, err = cli("detokenize", *map(str, ids))
    assert code == 0, err
    assert out.strip() == "To be, or not to be"
    tokenizer = Tokenizer(MODEL / "tokenizer.model")
    assert tokenizer.encode(out.strip()) == ids


# ----------------------------------------------------------------------------- GPT-2 context field
@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    import shutil

    from test_families import make_family_checkpoint

    model_dir, _ = make_family_checkpoint(tmp_path_factory.mktemp("gpt2"), "gpt2",
                                          vocab_size=2048)      # n_positions 64
    shutil.copyfile(MODEL / "tokenizer.model", model_dir / "tokenizer.model")  # 2048 pieces
    return model_dir


def test_context_errors_name_n_positions_for_gpt2(cli, gpt2_dir):
    long_text = " ".join(["word"] * 200)
    for command in ("generate", "logits"):
        line = one_line_error(cli(command, "-m", gpt2_dir, long_text), 1)
        assert "(n_positions)" in line and "max_position_embeddings" not in line, line
    line = one_line_error(cli("generate", "-m", gpt2_dir, "hi", "-c", "65"), 2)
    assert "64 tokens (n_positions in config.json)" in line, line
    for command in ("attribute",):
        line = one_line_error(cli(command, "-m", gpt2_dir, long_text), 1)
        assert "(n_positions" in line and "max_position_embeddings" not in line, (command, line)
    line = one_line_error(cli("perplexity", "-m", gpt2_dir, "--context", "65", "-", stdin=long_text), 2)
    assert "64 tokens (n_positions in config.json)" in line, line


# ----------------------------------------------------------------------------- help at 80 columns
def test_every_commands_help_keeps_option_names_whole_at_80_columns(tmp_path):
    """Under a pseudo-terminal 80 columns wide (rich's own layout, not the piped one), every
    option name of every command is printed whole: no '…', every name present."""
    import pty

    from llmcli.cli.app import command

    root = command()
    commands = sorted(root.commands)
    assert {"generate", "chat", "train", "tokenize", "info", "trace", "convert"} <= set(commands)
    script = ("import sys\nfrom llmcli.cli.app import main\n"
              "for name in sys.argv[1:]:\n"
              "    sys.argv = ['llmcli', name, '--help']\n"
              "    print('=== ' + name, flush=True)\n"
              "    try:\n        main()\n    except SystemExit:\n        pass\n")
    main_fd, child_fd = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(COLUMNS="80", LINES="50", TERM="xterm", OMP_NUM_THREADS="1", NO_COLOR="1")
    proc = subprocess.Popen(["setsid", "-c", sys.executable, "-c", script, *commands],
                            stdin=child_fd, stdout=child_fd, stderr=child_fd, cwd=tmp_path, env=env)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            data = os.read(main_fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(main_fd)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    text = text.replace("\r\n", "\n")
    sections = dict(re.findall(r"=== (\w+)\n(.*?)(?==== |\Z)", text, re.S))
    assert sorted(sections) == commands, text[:2000]
    for name, help_text in sections.items():
        lines = help_text.splitlines()
        assert max(len(line) for line in lines) <= 80, (name, max(lines, key=len))
        cmd = root.commands[name]
        for param in cmd.params:
            if getattr(param, "hidden", False) or not getattr(param, "opts", None):
                continue
            for opt in (*param.opts, *param.secondary_opts):
                if opt.startswith("-"):
                    assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", help_text), \
                        (name, opt, help_text)
        for line in lines:
            if line.lstrip("│ ").startswith("-"):
                assert "…" not in line.split("  ")[0], (name, line)


# ----------------------------------------------------------------------------- README's first command
def _looks_like_a_list_of_persons(text: str) -> bool:
    """A rough check: three name-only (capitals) lines in a row, or the words of a title page
    or a list of persons (PERSONAE, "Son to", SCENE, ACT, ...)."""
    run = longest = 0
    for line in (line.strip() for line in text.split("\n")):
        if not line:
            continue
        letters = re.sub(r"[^A-Za-z]", "", line)
        run = run + 1 if letters.isupper() or re.match(r"^[A-Z][A-Z ,.'-]+,", line) else 0
        longest = max(longest, run)
    return longest >= 3 or bool(re.search(
        r"PERSONAE|Son to|Daughter|Persons|SCENE|ACT |Shakespeare|THE END|Contents", text))


def test_readme_first_command_prints_verse_as_shown(cli):
    """The command of "Install and generate (one command)" prints what the README shows under
    Usage, which is verse; its prompt continues as verse for nearly every seed (the bare
    "ROMEO:" it replaced gave a list of persons for about a third of them)."""
    import shlex

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    one_command = re.search(r"## Install and generate.*?```sh\n(.*?)\n```", readme, re.S).group(1)
    command = one_command.split("&&")[-1].strip()
    args = shlex.split(command)
    assert args[:2] == ["llmcli", "generate"] and "-s" in args, command
    sample = re.search(rf"```console\n\$ {re.escape(command)}\n(.*?)\n(?:\$ |```)", readme, re.S)
    assert sample, f"the README's Usage shows no output of {command!r}"
    code, out, err = cli(*args[1:])
    assert code == 0, err
    assert out.rstrip("\n") == sample.group(1).rstrip("\n")
    assert not _looks_like_a_list_of_persons(out) and out.count("\n") >= 4, out
    prompt = args[2]
    lists = 0
    for seed in range(1, 11):
        code, out, _ = cli("generate", prompt, "-n", "60", "-s", str(seed))
        lists += _looks_like_a_list_of_persons(out)
    assert lists <= 1, lists


# ----------------------------------------------------------------------------- chat -c and -n -1
@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from test_chat_cli import make_chat_dir

    return make_chat_dir(tmp_path_factory.mktemp("chatflags"), max_position_embeddings=256)[0]


def test_chat_ctx_size_and_no_reply_limit(cli, chat_model):
    one_line_error(cli("chat", "-m", chat_model, "-c", "257", stdin="Hi\n"), 2,
                   "-c/--ctx-size: 257 is more than the model's context of 256 tokens")
    # -n -1: the reply runs until the context (-c 60) is full; the tiny model never says EOS
    code, out, err = cli("chat", "-m", chat_model, "-c", "60", "-n", "-1", "--temp", "0",
                         "--stats", stdin="Hi\n")
    assert code == 0, err
    assert "reply cut: context length of 60 tokens reached (-c/--ctx-size)" in err, err
    generated = int(re.search(r"generated (\d+) tokens", err).group(1))
    prompt = int(re.search(r"prompt (\d+) tokens", err).group(1))
    assert prompt + generated == 61 and out.strip(), (prompt, generated)
    line = one_line_error(cli("chat", "-m", chat_model, "-c", "20", stdin="Hi there, how are you\n"),
                          1)
    assert "the context of 20 tokens (-c/--ctx-size)" in line, line
