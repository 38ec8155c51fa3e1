"""Whole-process wall time of `llmcli tokenize` and `llmcli detokenize`.

Both commands load only ``tokenizer.model`` (sentencepiece, never torch), so the floor is a
Python process that imports sentencepiece; ``import torch`` is timed too, as the cost they
avoid. Each command runs ``--reps`` times (after one warm-up run); the median and the minimum
are printed, with the ratio of the median to the floor's.

    python benchmarks/bench_tokenize.py [-m MODEL_DIR] [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside 😀."


def _default_model() -> str | None:
    env = os.environ.get("LLMCLI_MODEL")
    if env:
        return env
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "models" / "shakespeare",
                      here.parent / "shared" / "fixtures" / "realmodels" / "stories260K-hf"):
        if (candidate / "tokenizer.model").is_file():
            return str(candidate)
    return None


def _llmcli() -> list[str]:
    script = Path(sys.executable).parent / "llmcli"
    if script.is_file():
        return [str(script)]
    found = shutil.which("llmcli")
    return [found] if found else [sys.executable, "-m", "llmcli"]


def _time(cmd: list[str], reps: int, env: dict) -> list[float]:
    def once() -> float:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=env)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()[-500:]}")
        return elapsed

    once()  # warm the page cache
    return [once() for _ in range(reps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default=_default_model(), help="model directory with tokenizer.model")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--text", default=TEXT)
    args = parser.parse_args()
    if not args.model:
        raise SystemExit("no model found: pass -m MODEL_DIR")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    cli = _llmcli()
    ids = subprocess.run(cli + ["tokenize", "-m", args.model, "--ids", args.text], capture_output=True,
                         text=True, env=env, check=True, stdin=subprocess.DEVNULL).stdout.split()
    cases = [
        ("python -c 'import sentencepiece' (floor)", [sys.executable, "-c", "import sentencepiece"]),
        ("python -c 'import torch' (avoided)", [sys.executable, "-c", "import torch"]),
        ("llmcli tokenize TEXT", cli + ["tokenize", "-m", args.model, args.text]),
        ("llmcli tokenize --ids TEXT", cli + ["tokenize", "-m", args.model, "--ids", args.text]),
        (f"llmcli detokenize ({len(ids)} ids)", cli + ["detokenize", "-m", args.model, *ids]),
    ]
    print(f"model: {args.model}\ntext: {len(args.text)} characters, {len(ids)} tokens; "
          f"{args.reps} runs each (after a warm-up), wall time of the whole process\n")
    floor = None
    print(f"{'command':<42} {'median ms':>10} {'min ms':>8} {'× floor':>8}")
    for name, cmd in cases:
        times = _time(cmd, args.reps, env)
        med = statistics.median(times)
        floor = floor or med
        print(f"{name:<42} {med * 1000:>10.1f} {min(times) * 1000:>8.1f} {med / floor:>8.2f}")


if __name__ == "__main__":
    main()
