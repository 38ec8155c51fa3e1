"""Time to first token and decode speed: llmcli's generation loop vs transformers' ``generate``.

Both run in this process on the same checkpoint: greedy, batch 1, CPU, float32, KV cache on,
the same prompt and the same number of new tokens (EOS ignored: ``eos_ids=[]`` for llmcli,
``min_new_tokens`` for transformers). Each is timed from the call that starts generation:

* TTFT (time to first token): until the first generated token is available (llmcli: the
  first event; transformers: the first token handed to a streamer);
* decode tokens/s: (new tokens - 1) / (time of the last token - time of the first).

Every configuration gets one warm-up run, then ``--reps`` runs; medians are printed. The
table is repeated with a second process spinning one core ("busy"), which shows what extra
threads are worth on a shared machine (the reason ``--threads`` defaults to 1).

    python benchmarks/bench_generate.py [-m MODEL_DIR] [-n 128] [--reps 5] [--threads 1,2]
                                        [--no-busy] [--general-path] [--profile]

Results (2026-12-01; 2-core AMD EPYC VM, torch 2.13 CPU, transformers 5.24; bundled
shakespeare model, 5.3 M parameters; 28-token prompt, 128 new tokens; medians of 7):

    threads  machine  llmcli TTFT / tok/s   transformers TTFT / tok/s   llmcli advantage
    1        idle     5.3 ms / 838          7.2 ms / 394                1.36x / 2.13x
    2        idle     4.1 ms / 920          5.7 ms / 399                1.37x / 2.31x
    1        busy     5.2 ms / 867          7.2 ms / 407                1.38x / 2.13x
    2        busy     8.1 ms / 217          12.9 ms / 141               (both collapse 2-3x)

``--general-path`` (llmcli without the one-token fast path: checkpoint-layout weights,
separate q/k/v and gate/up matmuls, module by module) decoded at 468-523 tok/s. The fast path
(``llmcli/fastpath.py``: ``install`` and ``LlamaStyleDecoder``) stores every matrix transposed so
BLAS runs its fast layout (about 2x faster one-token matmuls on this CPU; the 21 MB of weights
stay in L3), fuses q/k/v and gate/up, and runs the step as straight-line code. With another
process busy on one core, two threads run 2-3x slower than one: hence ``--threads 1`` by
default. Prefill (TTFT) is compute-bound and gains less.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and"


@dataclass
class Timing:
    ttft: float          # seconds
    tokens_per_s: float  # decode
    ids: list[int]


def _timing(t_start: float, times: list[float], ids: list[int]) -> Timing:
    decode = times[-1] - times[0]
    return Timing(times[0] - t_start, (len(times) - 1) / decode if decode > 0 else float("nan"), ids)


def run_llmcli(model, tokenizer, prompt_ids: list[int], n: int) -> Timing:
    from llmcli.generation import Generation
    from llmcli.sampling import SamplingParams

    times, ids = [], []
    t_start = time.perf_counter()
    for event in Generation(model, tokenizer, prompt_ids, SamplingParams(temperature=0, seed=0), n,
                            eos_ids=[]):
        times.append(time.perf_counter())
        ids.append(event.id)
    return _timing(t_start, times, ids)


class _Clock:
    """A transformers streamer that notes when each new token arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.ids: list[int] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())
        self.ids.extend(value.flatten().tolist())

    def end(self) -> None:
        pass


def run_transformers(hf_model, prompt_ids: list[int], n: int) -> Timing:
    clock = _Clock()
    x = torch.tensor([prompt_ids])
    t_start = time.perf_counter()
    with torch.inference_mode():
        hf_model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                          min_new_tokens=n, use_cache=True, streamer=clock, pad_token_id=0)
    return _timing(t_start, clock.times, clock.ids)


def measure(fns, reps: int) -> list[tuple[float, float, list[int]]]:
    """One warm-up run of each function, then ``reps`` rounds running each once in turn (so
    that a change in the machine's load affects both alike) → for each function: median TTFT
    (s), median decode tokens/s, the generated ids."""
    for fn in fns:
        fn()
    runs = [[] for _ in fns]
    for _ in range(reps):
        for fn, out in zip(fns, runs):
            out.append(fn())
    return [(statistics.median(r.ttft for r in out), statistics.median(r.tokens_per_s for r in out),
             out[0].ids) for out in runs]


def load_transformers(model_dir: Path):
    import inspect

    from transformers import LlamaForCausalLM, PreTrainedModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    kw = "dtype" if "dtype" in inspect.signature(PreTrainedModel.from_pretrained).parameters else "torch_dtype"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LlamaForCausalLM.from_pretrained(str(model_dir), **{kw: torch.float32})
    model.generation_config.eos_token_id = None
    return model.eval()


def spinner() -> subprocess.Popen:
    """A second process keeping one core busy (stopped by the caller)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def table(rows: list[tuple], reps: int) -> str:
    head = f"{'load':<6}{'threads':>8}  {'':<15}{'TTFT ms':>9}{'decode tok/s':>14}"
    lines = [head, "-" * len(head)]
    for load, threads, ours, ref, general in rows:
        lines.append(f"{load:<6}{threads:>8}  {'llmcli':<15}{ours[0] * 1e3:>9.2f}{ours[1]:>14.1f}")
        if general is not None:
            lines.append(f"{'':<6}{'':>8}  {'llmcli general':<15}{general[0] * 1e3:>9.2f}{general[1]:>14.1f}")
        lines.append(f"{'':<6}{'':>8}  {'transformers':<15}{ref[0] * 1e3:>9.2f}{ref[1]:>14.1f}")
        lines.append(f"{'':<6}{'':>8}  {'ratio':<15}{ref[0] / ours[0]:>8.2f}x{ours[1] / ref[1]:>13.2f}x")
    lines.append(f"(medians of {reps} runs after a warm-up; ratio = llmcli's advantage: "
                 "transformers TTFT / llmcli TTFT, llmcli tokens/s / transformers tokens/s)")
    return "\n".join(lines)


def profile_llmcli(model, tokenizer, prompt_ids: list[int], n: int) -> None:
    import cProfile
    import pstats

    run_llmcli(model, tokenizer, prompt_ids, n)
    prof = cProfile.Profile()
    prof.enable()
    run_llmcli(model, tokenizer, prompt_ids, n)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", type=Path, default=None,
                        help="model directory (default: the bundled model)")
    parser.add_argument("-p", "--prompt", default=PROMPT)
    parser.add_argument("-n", "--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--no-busy", action="store_true", help="skip the busy-machine table")
    parser.add_argument("--general-path", action="store_true",
                        help="also time llmcli without the fused one-token decoding path "
                             "(separate q/k/v and gate/up matmuls, module by module)")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of one llmcli generation (1 thread)")
    args = parser.parse_args()

    from llmcli.paths import default_model_dir
    from llmcli.tokenizer import load_tokenizer
    from llmcli.weights import load_model

    model_dir = args.model or default_model_dir()
    model, config = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    hf_model = load_transformers(model_dir)
    general_model = None
    if args.general_path:
        from llmcli.models import model_class

        general_model = model_class(config)(config).eval()   # no fast path: the readable forward
        general_model.load_state_dict(model.state_dict())
    prompt_ids = tokenizer.encode(args.prompt)
    n = min(args.new_tokens, config.max_position_embeddings - len(prompt_ids))
    threads = [int(t) for t in args.threads.split(",")]
    print(f"model {model_dir}: {model.num_parameters():,} parameters, {config.num_hidden_layers} layers, "
          f"hidden {config.hidden_size}, vocab {config.vocab_size}; prompt {len(prompt_ids)} tokens, "
          f"{n} new tokens; torch {torch.__version__}, float32, greedy, KV cache")

    rows, same = [], True
    for load in ("idle", "busy") if not args.no_busy else ("idle",):
        spin = spinner() if load == "busy" else None
        try:
            for t in threads:
                torch.set_num_threads(t)
                fns = [lambda: run_llmcli(model, tokenizer, prompt_ids, n),
                       lambda: run_transformers(hf_model, prompt_ids, n)]
                if general_model is not None:
                    fns.append(lambda: run_llmcli(general_model, tokenizer, prompt_ids, n))
                ours, ref, *general = measure(fns, args.reps)
                same &= ours[2] == ref[2] and all(g[2] == ref[2] for g in general)
                rows.append((load, t, ours, ref, general[0] if general else None))
                print(f"  {load} {t} thread(s): llmcli {ours[1]:.1f} tok/s, transformers {ref[1]:.1f} tok/s",
                      file=sys.stderr)
        finally:
            if spin is not None:
                spin.kill()
                spin.wait()
    print(table(rows, args.reps))
    print(f"greedy tokens identical: {'yes' if same else 'NO'}")
    if args.profile:
        torch.set_num_threads(1)
        profile_llmcli(model, tokenizer, prompt_ids, n)


if __name__ == "__main__":
    main()
