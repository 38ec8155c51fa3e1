"""llmcli beside llama.cpp (``llama-bench``) and transformers on the same weights, in one run.

Measures, on the same CPU and the same weights, interleaved round by round (every engine runs
once per round, in a rotating order, so a change in the machine's load touches all alike):

* decode ``tg128``: 128 one-token steps from an empty context, tokens/s (llama.cpp's own
  ``llama-bench -p 0 -n 128``; llmcli's generation loop from BOS, greedy, EOS ignored, so
  its sampling and detokenizing are inside the time; transformers' ``generate``);
* prefill ``pp512``: one forward over 512 prompt tokens (logits of the last one), tokens/s;

at each ``--threads`` count; then, once per round too:

* TTFT: time to first token after a 64-token prompt (llmcli and transformers: prefill and
  first sample; llama.cpp: its pp64 time, the prefill alone, a lower bound);
* start-up: wall time of ``llmcli generate -m MODEL -n 1`` against ``python -c "import torch"``;
* peak RSS of a 16-token generation in a fresh process (llmcli's CLI, a transformers script,
  ``llama-bench``) against the size of the weights.

Models (``--models``): ``stories260K`` (real, ``../shared/fixtures``), ``15M`` and ``110M``
(random Llamas in the llama2.c stories15M/110M shapes, written once with transformers'
``save_pretrained`` into ``--cache`` and converted to GGUF F32 with llama.cpp's
``convert_hf_to_gguf.py``), ``smollm2`` (the real SmolLM2-135M-Instruct Q4_1 GGUF of
``../shared/fixtures``: llama.cpp reads it as it is, llmcli and transformers the float32
directory ``llmcli convert`` makes of it; with llmcli's ``--quant`` mode when it exists, that
too). llama.cpp's binaries come from ``../shared/tools/build-llama-cpp.sh``
(``$XDG_CACHE_HOME/llmcli-anchors/bin``, or ``--llama-bin``); without them the llama.cpp column
is left out with a message.

    python benchmarks/bench_llamacpp.py                       # everything, 3 rounds (~15 min)
    python benchmarks/bench_llamacpp.py --quick               # stories260K + 15M, 2 rounds (~3 min)
    python benchmarks/bench_llamacpp.py --models 110M --threads 1,2 --rounds 5 --tests tg

Figures are medians over rounds; ``load`` is the 1-minute load average during the row (this
machine is shared: ratios measured in the same run are what counts).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "fixtures"
CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
ANCHORS = CACHE_HOME / "llmcli-anchors"

#: random Llama shapes (llama2.c's stories15M and stories110M; Llama 2's 32000-token vocabulary)
SHAPES = {
    "15M": dict(hidden_size=288, num_hidden_layers=6, num_attention_heads=6, intermediate_size=768),
    "110M": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048),
}
ALL_MODELS = ("stories260K", "15M", "110M", "smollm2")
ALL_TESTS = ("tg", "pp", "ttft", "startup", "rss")
TG, PP, TTFT_PROMPT, RSS_TOKENS = 128, 512, 64, 16


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load1() -> float:
    return os.getloadavg()[0]


# ----------------------------------------------------------------------------- models
@dataclass
class Model:
    name: str
    hf_dir: Path          # what llmcli and transformers load (float32 safetensors)
    gguf: Path | None     # what llama.cpp loads
    gguf_kind: str = "F32"
    #: llmcli --quant modes to add, each with llama.cpp's GGUF of the same quantization (or None)
    quant: list[tuple[str, Path | None]] = field(default_factory=list)


def _random_llama(name: str, out: Path) -> None:
    """A random Llama of ``SHAPES[name]`` written with transformers, with Llama 2's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = SHARED / "tokenizers" / "llama2" / "tokenizer.model"
    if not tok.is_file():
        raise SystemExit(f"{tok}: missing (the random shapes use Llama 2's tokenizer from ../shared)")
    shape = SHAPES[name]
    cfg = LlamaConfig(vocab_size=32000, num_key_value_heads=shape["num_attention_heads"],
                      max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, **shape)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.copyfile(tok, tmp / "tokenizer.model")
    tmp.rename(out)


def _to_gguf(hf_dir: Path, out: Path, outtype: str = "f32") -> bool:
    script = ANCHORS / "src" / "convert_hf_to_gguf.py"
    if not script.is_file():
        log(f"  {script}: missing, so no GGUF of {hf_dir.name} for llama.cpp")
        return False
    env = dict(os.environ, PYTHONPATH=str(ANCHORS / "src" / "gguf-py"))
    tmp = out.with_name(out.name + ".tmp")
    r = subprocess.run([sys.executable, str(script), str(hf_dir), "--outtype", outtype,
                        "--outfile", str(tmp)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        log(f"  convert_hf_to_gguf.py failed on {hf_dir}: {r.stderr.strip().splitlines()[-1:]}")
        return False
    tmp.rename(out)
    return True


def has_quant(mode: str) -> bool:
    """Whether this checkout's llmcli has ``--quant mode`` (``load_model(quant=...)``)."""
    import inspect

    from llmcli.weights import load_model

    if "quant" not in inspect.signature(load_model).parameters:
        return False
    try:
        from llmcli.quant import MODES
    except ImportError:
        return False
    return mode in MODES


def prepare(name: str, cache: Path) -> Model | None:
    """The model ``name``, made in ``cache`` on first use; None (with a message) if impossible."""
    cache.mkdir(parents=True, exist_ok=True)
    if name == "stories260K":
        hf, gguf = SHARED / "realmodels" / "stories260K-hf", SHARED / "realmodels" / "stories260K" / "stories260K.gguf"
        if not hf.is_dir():
            log(f"  {hf}: missing (../shared absent?); skipping stories260K")
            return None
        return Model(name, hf, gguf if gguf.is_file() else None)
    if name in SHAPES:
        hf = cache / f"llama-{name}-random"
        if not hf.is_dir():
            log(f"  writing a random Llama in the {name} shape to {hf}")
            _random_llama(name, hf)
        gguf = cache / f"llama-{name}-random-f32.gguf"
        if not gguf.is_file():
            log(f"  converting {hf.name} to {gguf.name} with llama.cpp's convert_hf_to_gguf.py")
            _to_gguf(hf, gguf)
        quant = []
        if name == "110M" and has_quant("q8_0"):
            q8 = cache / f"llama-{name}-random-q8_0.gguf"
            if not q8.is_file():
                log(f"  converting {hf.name} to {q8.name} (Q8_0)")
                _to_gguf(hf, q8, "q8_0")
            quant.append(("q8_0", q8 if q8.is_file() else None))
        return Model(name, hf, gguf if gguf.is_file() else None, quant=quant)
    if name == "smollm2":
        gguf = SHARED / "realmodels" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not gguf.is_file():
            log(f"  {gguf}: missing; skipping smollm2")
            return None
        hf = cache / "smollm2-135m-instruct-f32"
        if not hf.is_dir():
            log(f"  llmcli convert {gguf.name} -> {hf}")
            r = subprocess.run([sys.executable, "-m", "llmcli", "convert", str(gguf), str(hf),
                                "--dtype", "float32"], capture_output=True, text=True, cwd=REPO)
            if r.returncode != 0:
                log(f"  llmcli convert failed: {r.stderr.strip()}")
                return None
        return Model(name, hf, gguf, "Q4_1", quant=[("q4_1", None)] if has_quant("q4_1") else [])
    raise SystemExit(f"--models: unknown model {name!r} (choose from {', '.join(ALL_MODELS)})")


def weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


# ----------------------------------------------------------------------------- workers
# A worker is this script run with --worker ENGINE MODEL_DIR [QUANT]: it loads the model
# once and answers JSON requests on stdin, one per line: {"test": "tg"|"pp"|"ttft", "threads": n}.
def _worker(engine: str, model_dir: str, quant: str | None) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    torch.manual_seed(0)
    if engine == "llmcli":
        from llmcli.cli.common import set_threads
        from llmcli.generation import Generation
        from llmcli.sampling import SamplingParams
        from llmcli.tokenizer import load_tokenizer
        from llmcli.weights import load_model

        model, config = load_model(model_dir, **({"quant": quant} if quant else {}))
        tokenizer = load_tokenizer(model_dir)
        vocab, bos = config.vocab_size, (tokenizer.bos_id if tokenizer.bos_id is not None else 1)

        def tg(n: int) -> float:
            t0, last = time.perf_counter(), 0.0
            for _ in Generation(model, tokenizer, [bos], SamplingParams(temperature=0, seed=0), n,
                                eos_ids=[]):
                last = time.perf_counter()
            return n / (last - t0)

        def pp(ids: list[int]) -> float:
            with torch.inference_mode():
                cache = model.new_cache(1, len(ids) + 1)
                x = torch.tensor([ids])
                t0 = time.perf_counter()
                model(x, cache=cache, last_only=True)
                return len(ids) / (time.perf_counter() - t0)

        def ttft(ids: list[int]) -> float:
            g = Generation(model, tokenizer, ids, SamplingParams(temperature=0, seed=0), 1, eos_ids=[])
            for _ in g:
                pass
            return g.stats.first_token_seconds

        threads = set_threads
    else:
        sys.path.insert(0, str(HERE))
        from bench_generate import _Clock, load_transformers

        hf = load_transformers(Path(model_dir))
        vocab = hf.config.vocab_size
        bos = hf.config.bos_token_id if hf.config.bos_token_id is not None else 1

        def generate(ids: list[int], n: int) -> tuple[float, list[float]]:
            clock = _Clock()
            x = torch.tensor([ids])
            t0 = time.perf_counter()
            with torch.inference_mode():
                hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                            min_new_tokens=n, use_cache=True, streamer=clock, pad_token_id=0)
            return t0, clock.times

        def tg(n: int) -> float:
            t0, times = generate([bos], n)
            return n / (times[-1] - t0)

        def pp(ids: list[int]) -> float:
            x = torch.tensor([ids])
            with torch.inference_mode():
                t0 = time.perf_counter()
                hf(x, use_cache=True, logits_to_keep=1)
                return len(ids) / (time.perf_counter() - t0)

        def ttft(ids: list[int]) -> float:
            t0, times = generate(ids, 1)
            return times[0] - t0

        threads = torch.set_num_threads
    gen = torch.Generator().manual_seed(0)
    prompts = {n: torch.randint(3, vocab, (n,), generator=gen).tolist() for n in (PP, TTFT_PROMPT)}
    warmed = set()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        threads(req["threads"])
        test = req["test"]
        fn = {"tg": lambda: tg(TG), "pp": lambda: pp(prompts[PP]),
              "ttft": lambda: ttft(prompts[TTFT_PROMPT])}[test]
        if (test, req["threads"]) not in warmed:
            fn()
            warmed.add((test, req["threads"]))
        # the short tests are repeated (median) so that one preemption does not decide them
        reps = {"tg": 1, "pp": 3, "ttft": 5}[test]
        print(json.dumps({"value": statistics.median(fn() for _ in range(reps))}), flush=True)


class Worker:
    """A worker process (see :func:`_worker`)."""

    def __init__(self, engine: str, model_dir: Path, quant: str | None = None) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, str(model_dir)]
        if quant:
            cmd.append(quant)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=REPO)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {engine} {model_dir} {quant or ''} failed to start")

    def ask(self, test: str, threads: int) -> float:
        self.proc.stdin.write(json.dumps({"test": test, "threads": threads}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("worker died")
        return json.loads(line)["value"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# ----------------------------------------------------------------------------- llama.cpp
def llama_bench(bindir: Path, gguf: Path, p: int, n: int, threads: int) -> float:
    """tokens/s of one ``llama-bench`` repetition (pp``p`` when n == 0, else tg``n``)."""
    r = subprocess.run([str(bindir / "llama-bench"), "-m", str(gguf), "-p", str(p), "-n", str(n),
                        "-t", str(threads), "-r", "1", "-o", "json"],
                       capture_output=True, text=True, check=True)
    return float(json.loads(r.stdout)[0]["avg_ts"])


#: runs argv[1:] and prints its wall time and peak RSS as JSON: a small process forks the
#: command, so the peak is the command's own (a child forked from this big process would
#: count this process's resident pages until its exec)
_LAUNCH = """import json, os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(json.dumps({"wall": time.perf_counter() - t, "rss": usage.ru_maxrss * 1024,
                  "rc": os.waitstatus_to_exitcode(status)}))
"""


def _wait_rss(cmd: list[str], **kw) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of ``cmd`` run to completion (see :data:`_LAUNCH`)."""
    r = subprocess.run([sys.executable, "-c", _LAUNCH, *cmd], capture_output=True, text=True, **kw)
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        out = {"rc": r.returncode}
    if out["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed: {r.stderr.strip()[-300:]}")
    return out["wall"], out["rss"]


_HF_RSS = """import sys, torch
sys.path.insert(0, {here!r})
from bench_generate import load_transformers
from pathlib import Path
m = load_transformers(Path(sys.argv[1]))
torch.set_num_threads(1)
x = torch.tensor([[m.config.bos_token_id or 1]])
with torch.inference_mode():
    m.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens={n},
               min_new_tokens={n}, pad_token_id=0)
"""


def llmcli_cmd(model_dir: Path, n: int, quant: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "llmcli", "generate", "-m", str(model_dir), "-p", "Once",
           "-n", str(n), "--temp", "0", "--ignore-eos"]
    return cmd + (["--quant", quant] if quant else [])


# ----------------------------------------------------------------------------- the run
@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)
        self.loads.append(load1())

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def load(self) -> float:
        return statistics.median(self.loads) if self.loads else float("nan")


def engines_of(model: Model, bindir: Path | None, transformers: bool) -> list[tuple[str, str | None]]:
    engines = [("llama.cpp", None)] if bindir and model.gguf else []
    engines += [("llama.cpp", q) for q, g in model.quant if bindir and g]
    engines.append(("llmcli", None))
    engines += [("llmcli", q) for q, _ in model.quant]
    if transformers:
        engines.append(("transformers", None))
    return engines


def label(engine: tuple[str, str | None]) -> str:
    if engine[0] == "llama.cpp":
        return "llama.cpp" + (f" {engine[1].upper()}" if engine[1] else "")
    return engine[0] + (f" {engine[1]}" if engine[1] else "")


def gguf_of(model: Model, engine) -> Path:
    return dict(model.quant).get(engine[1]) if engine[1] else model.gguf


def run_model(model: Model, args, bindir: Path | None) -> dict:
    """Every test on one model, interleaved round by round → {(test, threads, engine): Cell}."""
    engines = engines_of(model, bindir, not args.no_transformers)
    workers = {}
    for e in engines:
        if e[0] != "llama.cpp" and ({"tg", "pp", "ttft"} & set(args.tests)):
            log(f"  starting {label(e)} on {model.hf_dir.name}")
            workers[e] = Worker("llmcli" if e[0] == "llmcli" else "transformers", model.hf_dir, e[1])
    cells: dict = {}
    try:
        for rnd in range(args.rounds):
            order = engines[rnd % len(engines):] + engines[:rnd % len(engines)]
            for t in args.threads:
                for test in [x for x in ("tg", "pp", "ttft") if x in args.tests]:
                    for e in order:
                        cell = cells.setdefault((test, t, e), Cell())
                        if e[0] == "llama.cpp":
                            p, n = {"tg": (0, TG), "pp": (PP, 0), "ttft": (TTFT_PROMPT, 0)}[test]
                            v = llama_bench(bindir, gguf_of(model, e), p, n, t)
                            cell.add(TTFT_PROMPT / v if test == "ttft" else v)
                        else:
                            cell.add(workers[e].ask(test, t))
            if "startup" in args.tests:
                for what in ("import torch", "llmcli"):
                    cmd = ([sys.executable, "-c", "import torch"] if what == "import torch"
                           else llmcli_cmd(model.hf_dir, 1))
                    cells.setdefault(("startup", 1, what), Cell()).add(_wait_rss(cmd, cwd=REPO)[0])
            if "rss" in args.tests and rnd == 0:
                for e in engines:
                    if e[0] == "llama.cpp":
                        cmd = [str(bindir / "llama-bench"), "-m", str(gguf_of(model, e)), "-p", "0",
                               "-n", str(RSS_TOKENS), "-t", "1", "-r", "1"]
                    elif e[0] == "llmcli":
                        cmd = llmcli_cmd(model.hf_dir, RSS_TOKENS, e[1]) + ["--threads", "1"]
                    else:
                        cmd = [sys.executable, "-c", _HF_RSS.format(here=str(HERE), n=RSS_TOKENS),
                               str(model.hf_dir)]
                    cells.setdefault(("rss", 1, e), Cell()).add(_wait_rss(cmd, cwd=REPO)[1])
            log(f"  {model.name}: round {rnd + 1}/{args.rounds} done (load {load1():.2f})")
    finally:
        for w in workers.values():
            w.close()
    return {"engines": engines, "cells": cells}


def fmt(v: float, unit: str = "") -> str:
    if v != v:   # nan
        return "-"
    return f"{v:.0f}{unit}" if v >= 100 else f"{v:.1f}{unit}" if v >= 10 else f"{v:.2f}{unit}"


def report(model: Model, result: dict, args) -> list[str]:
    """The model's section of the output: one row per test, thread count and engine."""
    engines, cells = result["engines"], result["cells"]
    ref = ("llama.cpp", None)
    lines = [f"\n## {model.name}: {model.hf_dir}"]
    if model.gguf:
        lines.append(f"   llama.cpp reads {model.gguf.name} ({model.gguf_kind})")
    lines.append(f"{'test':<7}{'thr':>4}  {'engine':<18}{'tok/s':>9}{'ms/tok':>8}"
                 f"{'÷ llama.cpp':>13}{'load':>7}")
    for test in [x for x in ("tg", "pp") if x in args.tests]:
        name = f"{test}{TG if test == 'tg' else PP}"
        for t in args.threads:
            for k, e in enumerate(engines):
                c = cells[(test, t, e)]
                base = cells.get((test, t, ("llama.cpp", e[1]))) or cells.get((test, t, ref))
                ratio = f"{c.median / base.median:.2f}×" if base and e[0] != "llama.cpp" else ""
                lines.append(f"{name if k == 0 else '':<7}{t if k == 0 else '':>4}  {label(e):<18}"
                             f"{fmt(c.median):>9}{1e3 / c.median:>8.2f}{ratio:>13}{c.load:>7.2f}")
    if "ttft" in args.tests:
        lines.append(f"time to first token after a {TTFT_PROMPT}-token prompt, ms "
                     f"(llama.cpp: its pp{TTFT_PROMPT} time, the prefill alone)")
        for t in args.threads:
            parts = [f"{label(e)} {fmt(cells[('ttft', t, e)].median * 1e3)}" for e in engines]
            load = statistics.median(x for e in engines for x in cells[("ttft", t, e)].loads)
            lines.append(f"  {t} thread(s): " + ", ".join(parts) + f" (load {load:.2f})")
    if "startup" in args.tests:
        imp, ours = cells[("startup", 1, "import torch")], cells[("startup", 1, "llmcli")]
        lines.append(f"start-up: `llmcli generate -n 1` {ours.median:.2f} s, `python -c \"import torch\"` "
                     f"{imp.median:.2f} s: +{ours.median - imp.median:.2f} s (goal ≤ +0.5 s; "
                     f"load {ours.load:.2f})")
    if "rss" in args.tests:
        wb = weights_bytes(model.hf_dir)
        parts = []
        for e in engines:
            c = cells.get(("rss", 1, e))
            if c:
                parts.append(f"{label(e)} {c.median / 2**20:.0f} MiB")
        gg = f"; GGUF {model.gguf.stat().st_size / 2**20:.0f} MiB" if model.gguf else ""
        lines.append(f"peak RSS ({RSS_TOKENS} tokens, 1 thread): " + ", ".join(parts)
                     + f"; float32 weights {wb / 2**20:.0f} MiB{gg}")
        ours = cells.get(("rss", 1, ("llmcli", None)))
        if ours:
            lines.append(f"  llmcli: weights + {(ours.median - wb) / 2**20:.0f} MiB (goal ≤ + 300 MiB)")
    if model.quant:
        lines.append("(a quantized llmcli column is divided by llama.cpp's GGUF of the same "
                     "quantization when there is one, otherwise by the first column)")
    return lines


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--models", default=",".join(ALL_MODELS),
                        help=f"comma-separated, from {','.join(ALL_MODELS)}")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tests", default=",".join(ALL_TESTS), help=f"from {','.join(ALL_TESTS)}")
    parser.add_argument("--quick", action="store_true", help="stories260K and 15M, 2 rounds")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--cache", type=Path, default=CACHE_HOME / "llmcli-bench",
                        help="where the random models and GGUFs are written (default: %(default)s)")
    parser.add_argument("--llama-bin", type=Path, default=ANCHORS / "bin")
    args = parser.parse_args()
    if args.quick:
        args.models, args.rounds = "stories260K,15M", 2
    args.threads = [int(t) for t in args.threads.split(",")]
    args.tests = args.tests.split(",")
    bad = set(args.tests) - set(ALL_TESTS)
    if bad:
        raise SystemExit(f"--tests: unknown {', '.join(sorted(bad))} (choose from {', '.join(ALL_TESTS)})")
    sys.path.insert(0, str(REPO))

    bindir = args.llama_bin if (args.llama_bin / "llama-bench").is_file() else None
    if bindir is None:
        log(f"llama.cpp: no {args.llama_bin / 'llama-bench'} (build it with "
            "../shared/tools/build-llama-cpp.sh); the llama.cpp column is left out")
    import platform

    import torch
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    out = [f"# llmcli vs llama.cpp vs transformers, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
           f"CPU: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}; load at start {load1():.2f}; "
           f"medians of {args.rounds} interleaved rounds"]
    print("\n".join(out), flush=True)
    for name in args.models.split(","):
        log(f"{name}:")
        model = prepare(name, args.cache)
        if model is None:
            continue
        result = run_model(model, args, bindir)
        lines = report(model, result, args)
        print("\n".join(lines), flush=True)
    print(f"\n(load at end {load1():.2f})")


if __name__ == "__main__":
    main()
