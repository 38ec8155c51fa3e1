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


def test_output_dir_rule_cases(tmp_path):
    """The directory rule on its own: what is a model directory llmcli may replace."""
    from llmcli.outputs import check_output_dir

    def make(name, *files):
        d = tmp_path / name
        d.mkdir()
        for f in files:
            (d / f).write_text("x")
        return d

    ok = [make("model", "config.json", "model.safetensors", "tokenizer.model", "README.md"),
          make("vocab_only", "tokenizer.json", "tokenizer_config.json", "README.md"),
          make("sharded", "config.json", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "model.safetensors.index.json")]
    for d in ok:
        with pytest.raises(LLMCLIError, match="already exists.*--force"):
            check_output_dir(d, "-o")
        assert check_output_dir(d, "-o", force=True) == d
    assert check_output_dir(make("empty"), "-o") == tmp_path / "empty"
    with pytest.raises(LLMCLIError, match="no config.json or tokenizer file"):
        check_output_dir(make("readme_only", "README.md"), "-o", force=True)
    with pytest.raises(LLMCLIError, match=r"holds files llmcli did not write \(a.txt, b.txt, c.txt "
                                          r"and 1 more\)"):
        check_output_dir(make("mixed", "config.json", "a.txt", "b.txt", "c.txt", "d.txt"), "-o",
                         force=True)
    sub = make("with_subdir", "config.json")
    (sub / "checkpoints").mkdir()
    with pytest.raises(LLMCLIError, match="checkpoints"):
        check_output_dir(sub, "-o", force=True)


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
        (corpus / f"w{i}.txt").write_text(line * (40 + i))  # two different works (identical ones are read once)
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


# ============================================================================= non-finite
def _poisoned(tiny: Path, tmp_path: Path, name: str, value: float, rows=None) -> Path:
    model_dir = _copy(tiny, tmp_path / "poisoned")

    def edit(state):
        if rows is None:
            state[name][0, 0] = value
        else:
            state[name][rows] = value
    _edit_weights(model_dir, edit)
    return model_dir


MODEL_COMMANDS = [
    ("generate", "-n", "4", "--temp", "0"),
    ("generate", "-n", "4", "-s", "1"),
    ("logits",),
    ("logits", "--json"),
    ("topk",),
    ("topk", "--json"),
    ("topk", "--steps", "3", "-s", "2"),
    ("trace",),
    ("trace", "--json"),
]


@pytest.mark.parametrize("args", MODEL_COMMANDS, ids=" ".join)
def test_nan_weight_is_one_error_naming_the_first_block(tiny, cli, tmp_path, args):
    model_dir = _poisoned(tiny, tmp_path, "model.layers.1.mlp.down_proj.weight", float("nan"))
    n = len(spm.SentencePieceProcessor(model_file=str(tiny / "tokenizer.model")).encode(TEXT)) + 1
    message = one_line_error(cli(*args[:1], "-m", model_dir, TEXT, *args[1:]), 1,
                             "non-finite logits", "(model.layers.1.mlp first",
                             "model.layers.1.mlp.down_proj.weight holds nan")
    # the first position whose logits are non-finite: generate and topk compute only the
    # last one (KV cache); logits and trace compute every position
    first = n - 1 if args[0] in ("generate", "topk") else 0
    assert f"at position {first} " in message


def test_inf_embedding_row_is_found_at_the_embedding(tiny, cli, tmp_path):
    ids = spm.SentencePieceProcessor(model_file=str(tiny / "tokenizer.model")).encode(TEXT)
    model_dir = _poisoned(tiny, tmp_path, "model.embed_tokens.weight", float("inf"), rows=ids[2])
    for cmd in ("logits", "topk", "trace", "generate"):
        one_line_error(cli(cmd, "-m", model_dir, TEXT), 1, "non-finite",
                       "model.embed_tokens first, at position 3",
                       "tensor model.embed_tokens.weight holds inf")
    one_line_error(cli("embeddings", "-m", model_dir, TEXT, "--layer", "2"), 1,
                   "non-finite hidden state", "(model.embed_tokens first, at position 3)")
    sp = spm.SentencePieceProcessor(model_file=str(tiny / "tokenizer.model"))
    other = next(t for t in ("Max", "park", "dog", "sun", "Lily") if ids[2] not in sp.encode(t))
    code, _, err = cli("embeddings", "-m", model_dir, other)  # a text without that token
    assert code == 0, err
    one_line_error(cli("logits", "-m", model_dir, TEXT, "--save", tmp_path / "x.safetensors"), 1,
                   "non-finite")
    assert not (tmp_path / "x.safetensors").exists()


def test_float16_overflow_says_so(tiny, cli, tmp_path):
    """Weights that are fine in float32 but whose activations overflow float16's range
    (65504): the error names the block and the dtype; float32 works."""
    model_dir = _copy(tiny, tmp_path / "big")
    _edit_weights(model_dir, lambda s: s["model.layers.0.mlp.down_proj.weight"].mul_(1e5))
    code, _, err = cli("logits", "-m", model_dir, TEXT, "--dtype", "float32")
    assert code == 0, err
    message = one_line_error(cli("logits", "-m", model_dir, TEXT, "--dtype", "float16"), 1,
                             "non-finite logits", "float16")
    assert "model.layers.0" in message and "holds" not in message  # the weights fit float16


def test_non_finite_check_in_the_library(tiny):
    from llmcli.generation import Generation
    from llmcli.sampling import SamplingParams
    from llmcli.tokenizer import Tokenizer
    from llmcli.weights import load_model

    model, config = load_model(tiny)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[3, 3] = float("nan")
    tok = Tokenizer(tiny / "tokenizer.model")
    ids = tok.encode("Once upon")
    gen = Generation(model, tok, ids, SamplingParams(temperature=0), 5)
    with pytest.raises(LLMCLIError, match=rf"non-finite logits \(nan\) at position {len(ids) - 1} "
                                          r"\(model.layers.0.self_attn first"):
        list(gen)


def test_diverging_training_stops_with_one_line(tmp_path):
    corpus = _corpus(tmp_path)
    proc = _llmcli("train", corpus, "--holdout", "w1.txt", "-o", tmp_path / "out", *QUICK,
                   "--lr", "1e30", "--max-steps", "6")
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--lr" in last and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# ============================================================================= temperature
def test_tiny_temperature_is_the_greedy_limit():
    from llmcli.sampling import Sampler, SamplingParams, apply_temperature

    logits = torch.tensor([1.0, 7.5, -3.0, 7.25, 0.0])
    for t in (1e-38, 1e-45, 1e-30, 1e-3):
        scaled = apply_temperature(logits, t)
        probs = torch.softmax(scaled, dim=-1)
        assert not torch.isnan(probs).any(), t
        assert probs[1] == pytest.approx(1.0) and probs.argmax() == 1
        for seed in range(5):
            assert Sampler(SamplingParams(temperature=t, top_k=0, top_p=1.0, min_p=0.0,
                                          seed=seed))(logits) == 1
    neg = torch.tensor([-50.0, -60.0, -55.0])  # every logit / T underflows to -inf
    assert Sampler(SamplingParams(temperature=1e-40, seed=0))(neg) == 0
    ties = torch.tensor([2.0, 5.0, 5.0, 1.0])  # the limit is uniform over the tied maxima
    picks = {Sampler(SamplingParams(temperature=1e-38, top_k=0, top_p=1.0, min_p=0.0, seed=s))(ties)
             for s in range(40)}
    assert picks == {1, 2}


def test_tiny_temperature_across_commands(tiny, cli):
    m = ("-m", tiny)
    code, greedy, err = cli("generate", *m, TEXT, "-n", "8", "--temp", "0")
    assert code == 0, err
    for t in ("1e-38", "1e-45", "1e-300"):
        code, out, err = cli("generate", *m, TEXT, "-n", "8", "--temp", t, "-s", "3")
        assert code == 0 and out == greedy, (t, err)
        code, out, err = cli("topk", *m, TEXT, "--temp", t, "--json", "--steps", "3", "-s", "1")
        assert code == 0, err
        doc = json.loads(out)
        for step in doc["steps"]:
            assert step["candidates"][0]["prob"] == pytest.approx(1.0)
            assert step["entropy_bits"] == pytest.approx(0.0, abs=1e-9)
            assert step["chosen"]["rank"] == 0
        code, out, err = cli("trace", *m, TEXT, "--temp", t, "--json")
        assert code == 0, err
        assert json.loads(out)["top"][0]["prob"] == pytest.approx(1.0)


@pytest.mark.parametrize("cmd", ["generate", "topk", "trace"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_temperature_is_a_usage_error(tiny, cli, cmd, value):
    one_line_error(cli(cmd, "-m", tiny, TEXT, "--temp", value), 2, "--temp")


@pytest.mark.parametrize("option", ["--repeat-penalty", "--top-p", "--min-p"])
def test_non_finite_sampling_values_are_usage_errors(tiny, cli, option):
    one_line_error(cli("generate", "-m", tiny, TEXT, option, "inf"), 2, option)


# ============================================================================= dtypes
def load_error(path) -> str:
    from llmcli.weights import load_model

    with pytest.raises(LLMCLIError) as info:
        load_model(path, warn=lambda m: None)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_integer_weights_are_refused_naming_tensor_and_dtype(tiny, tmp_path):
    model_dir = _copy(tiny, tmp_path / "int")
    name = "model.layers.0.mlp.up_proj.weight"
    _edit_weights(model_dir, lambda s: s.__setitem__(name, (s[name] * 100).to(torch.int32)))
    message = load_error(model_dir)
    assert name in message and "int32" in message


def test_float8_with_scales_is_refused(tiny, tmp_path):
    model_dir = _copy(tiny, tmp_path / "fp8")
    name = "model.layers.1.self_attn.q_proj.weight"

    def edit(state):
        state[name] = state[name].to(torch.float8_e4m3fn)
        state[name + "_scale"] = torch.tensor(0.01)
    _edit_weights(model_dir, edit)
    message = load_error(model_dir)
    assert name in message and "float8_e4m3fn" in message


def test_scale_tensor_alone_is_refused(tiny, tmp_path):
    """A parameter of a module llmcli uses as a plain linear layer changes its maths: not an
    'unknown tensor' to ignore."""
    model_dir = _copy(tiny, tmp_path / "scale")
    _edit_weights(model_dir, lambda s: s.__setitem__("model.layers.0.mlp.down_proj.weight_scale",
                                                     torch.tensor(2.0)))
    message = load_error(model_dir)
    assert "model.layers.0.mlp.down_proj.weight_scale" in message


def test_bias_not_declared_in_the_config_is_refused(tiny, tmp_path):
    model_dir = _copy(tiny, tmp_path / "bias")
    _edit_weights(model_dir, lambda s: s.__setitem__("model.layers.0.self_attn.q_proj.bias",
                                                     torch.ones(32)))
    message = load_error(model_dir)
    assert "model.layers.0.self_attn.q_proj.bias" in message and "attention_bias" in message


def test_more_blocks_than_the_config_says_is_refused(tiny, tmp_path):
    model_dir = _copy(tiny, tmp_path / "deeper")
    _edit_weights(model_dir, lambda s: s.__setitem__("model.layers.2.mlp.up_proj.weight",
                                                     torch.ones(64, 32)))
    message = load_error(model_dir)
    assert "model.layers.2" in message and "num_hidden_layers" in message


@pytest.mark.parametrize("method", ["fp8", "gptq", "bitsandbytes"])
def test_quantization_config_is_refused(tiny, tmp_path, method, cli):
    model_dir = _copy(tiny, tmp_path / method)
    _edit_config(model_dir, quantization_config={"quant_method": method})
    message = load_error(model_dir)
    assert "quantization_config" in message and method in message
    one_line_error(cli("generate", "-m", model_dir, TEXT), 1, "quantization_config")


# ============================================================================= vocabulary fit
@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory) -> Path:
    buf = io.BytesIO()
    corpus = ["Once upon a time there was a little girl named Lily.", "She liked to play."]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus * 20), model_writer=buf,
                                   vocab_size=60, model_type="bpe", num_threads=1, minloglevel=2,
                                   hard_vocab_limit=False)
    path = tmp_path_factory.mktemp("small_tok") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


ALL_MODEL_COMMANDS = [("generate", "-n", "2"), ("embeddings",), ("logits",), ("topk",), ("trace",),
                      ("chat", "-n", "2", "--temp", "0")]
_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


def _run_model_command(cli, model_dir: Path, args):
    """``llmcli CMD -m DIR TEXT ARGS``; chat gets a minimal template and TEXT on stdin."""
    if args[0] == "chat":
        (model_dir / "tokenizer_config.json").write_text(json.dumps({"chat_template": _TEMPLATE}))
        return cli("chat", "-m", model_dir, *args[1:], stdin=TEXT + "\n")
    return cli(args[0], "-m", model_dir, TEXT, *args[1:])


@pytest.mark.parametrize("args", ALL_MODEL_COMMANDS, ids=" ".join)
def test_smaller_tokenizer_is_one_warning_line(tiny, cli, tmp_path, small_tokenizer, args):
    model_dir = _copy(tiny, tmp_path / "padded")
    shutil.copyfile(small_tokenizer, model_dir / "tokenizer.model")
    v = _vocab(small_tokenizer)
    code, _, err = _run_model_command(cli, model_dir, args)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert f"{v} pieces" in warnings[0] and "320" in warnings[0]


@pytest.mark.parametrize("args", ALL_MODEL_COMMANDS, ids=" ".join)
def test_larger_tokenizer_is_refused_everywhere(tiny, cli, tmp_path, small_tokenizer, args):
    model_dir = _copy(tiny, tmp_path / "small")
    v = _vocab(small_tokenizer)
    # the model has 40 rows: fewer than the 320-piece tokenizer
    _edit_config(model_dir, vocab_size=40)
    _edit_weights(model_dir, lambda s: [s.__setitem__(k, s[k][:40].clone()) for k in
                                        ("model.embed_tokens.weight", "lm_head.weight")])
    one_line_error(_run_model_command(cli, model_dir, args), 1, "320 pieces", "vocab_size 40")
    assert v  # (the small tokenizer is used by the warning test)
