"""llmcli's quantized weights beside llama.cpp on the same quantization class, and their
quality cost (perplexity).

Decode (``tg``): 128 greedy one-token steps from BOS, tokens/s, at ``--threads`` (default 1):
llama.cpp's own ``llama-bench -p 0 -n 128 -r 1`` on a GGUF file, llmcli's generation loop
(``llmcli.generation.Generation``, sampling and detokenizing inside the time) in a worker
process that loads the model once. Engines are interleaved round by round in a rotating
order; figures are medians over ``--rounds``; ``load`` is the 1-minute load average.

Pairs compared (same blocks where it says "same"):

* ``110M`` (a random Llama in llama2.c's stories110M shape: dim 768, 12 layers, 12 heads,
  hidden 2048, vocab 32000, tied embeddings; written with transformers):
  F32 GGUF vs llmcli float32; Q8_0 GGUF vs ``--quant q8_0``; Q4_0 GGUF (output/embedding
  Q8_0) vs ``--quant q4_0``. The GGUFs are written here from llama.cpp's
  ``convert_hf_to_gguf.py`` F32 file with ``gguf.quants.quantize`` (``llama-quantize`` is not
  built); llmcli's ``quantize`` is bit-identical to it, so both compute with the same blocks.
* ``smollm2``: the real SmolLM2-135M-Instruct Q4_1 GGUF (``../shared/fixtures``) read by
  llama.cpp as it is, and by llmcli through ``llmcli convert --quant keep`` (its Q4_1 and
  Q8_0 blocks kept), beside llmcli float32 (``convert`` to float32).

Perplexity (``--ppl FILE``): ``llmcli perplexity --rule llama.cpp -c 512`` of FILE (default
``/usr/share/common-licenses/GPL-3``) in float32 and each ``--quant`` mode, for the bundled
model and SmolLM2 (float32 = its Q4_1 GGUF dequantized; also the kept blocks, and llama.cpp's
``llama-perplexity`` on the GGUF when built); prints a Markdown table.

    python benchmarks/bench_quant.py                      # decode, both models, 3 rounds
    python benchmarks/bench_quant.py --models smollm2 --rounds 5
    python benchmarks/bench_quant.py --ppl-only           # the perplexity table
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "fixtures"
CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
ANCHORS = CACHE_HOME / "llmcli-anchors"
TG = 128
SHAPE_110M = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=12, intermediate_size=2048)
SMOLLM2 = SHARED / "realmodels" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load1() -> float:
    return os.getloadavg()[0]


# ----------------------------------------------------------------------------- models
def random_110m(out: Path) -> None:
    """A random Llama in the stories110M shape (transformers, seed 0, Llama 2 tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = SHARED / "tokenizers" / "llama2" / "tokenizer.model"
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=1024, rms_norm_eps=1e-5,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, **SHAPE_110M)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float().eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.copyfile(tok, tmp / "tokenizer.model")
    tmp.rename(out)


def to_gguf_f32(hf_dir: Path, out: Path) -> None:
    script = ANCHORS / "src" / "convert_hf_to_gguf.py"
    env = dict(os.environ, PYTHONPATH=str(ANCHORS / "src" / "gguf-py"))
    tmp = out.with_name(out.name + ".tmp")
    subprocess.run([sys.executable, str(script), str(hf_dir), "--outtype", "f32", "--outfile",
                    str(tmp)], env=env, check=True, capture_output=True)
    tmp.rename(out)


def requantize_gguf(src: Path, out: Path, kind: str) -> None:
    """Copy the F32 GGUF ``src`` with its matrices quantized to ``kind`` (``Q8_0`` or
    ``Q4_0``; for Q4_0 the token embedding, which is also the output matrix, gets Q8_0, as
    SmolLM2's Q4_1 file has it) with ``gguf.quants.quantize``; 1-D tensors stay F32."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(src)
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    ftype = {"Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[kind]
    for field in reader.fields.values():
        if field.name in ("general.architecture", "general.file_type") or field.name.startswith("GGUF."):
            continue
        vt = field.types[0]
        sub = field.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vt, sub_type=sub)
    writer.add_file_type(ftype)
    datas = []
    for t in reader.tensors:
        data = np.asarray(t.data)
        if data.ndim == 2:
            q = gguf.GGMLQuantizationType.Q8_0 if (kind == "Q8_0" or t.name == "token_embd.weight") \
                else gguf.GGMLQuantizationType.Q4_0
            data = gguf.quants.quantize(data.astype(np.float32), q)
            writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, q)
        else:
            writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, t.tensor_type)
        datas.append(data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in datas:
        writer.write_tensor_data(data)
    writer.close()
    tmp.rename(out)


def llmcli_convert(gguf: Path, out: Path, *extra: str) -> None:
    r = subprocess.run([sys.executable, "-m", "llmcli", "convert", str(gguf), str(out), *extra],
                       cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llmcli convert {gguf.name} {' '.join(extra)}: {r.stderr.strip()}")


def pairs(name: str, cache: Path) -> list[tuple[str, Path | None, Path, str | None]]:
    """[(class, GGUF for llama.cpp, llmcli model dir, llmcli --quant)] for ``name``."""
    cache.mkdir(parents=True, exist_ok=True)
    if name == "110M":
        hf = cache / "llama-110M-random"
        if not hf.is_dir():
            log(f"writing {hf}")
            random_110m(hf)
        f32 = cache / "llama-110M-random-f32.gguf"
        if not f32.is_file():
            log(f"converting {hf.name} to {f32.name} (convert_hf_to_gguf.py)")
            to_gguf_f32(hf, f32)
        out = [("F32", f32, hf, None)]
        for kind, quant in (("Q8_0", "q8_0"), ("Q4_0", "q4_0")):
            g = cache / f"llama-110M-random-{kind}.gguf"
            if not g.is_file():
                log(f"writing {g.name} (gguf.quants.quantize)")
                requantize_gguf(f32, g, kind)
            out.append((kind, g, hf, quant))
        return out
    if name == "smollm2":
        if not SMOLLM2.is_file():
            log(f"{SMOLLM2}: missing; skipping smollm2")
            return []
        f32, kept = cache / "smollm2-135m-f32", cache / "smollm2-135m-q4_1-kept"
        if not f32.is_dir():
            llmcli_convert(SMOLLM2, f32, "--dtype", "float32")
        if not kept.is_dir():
            llmcli_convert(SMOLLM2, kept, "--quant", "keep")
        return [("F32 (dequantized Q4_1)", None, f32, None), ("Q4_1", SMOLLM2, kept, None)]
    raise SystemExit(f"--models: unknown {name!r} (110M, smollm2)")


# ----------------------------------------------------------------------------- workers
def worker(model_dir: str, quant: str) -> None:
    """Loads the model once, then answers one line per request: threads → tokens/s."""
    sys.path.insert(0, str(REPO))
    import torch

    from llmcli.generation import Generation
    from llmcli.sampling import SamplingParams
    from llmcli.tokenizer import load_tokenizer
    from llmcli.weights import load_model

    model, _ = load_model(model_dir, quant=None if quant == "-" else quant)
    tok = load_tokenizer(model_dir)
    bos = tok.bos_id if tok.bos_id is not None else 1

    def tg() -> float:
        t0 = last = time.perf_counter()
        for _ in Generation(model, tok, [bos], SamplingParams(temperature=0, seed=0), TG, eos_ids=[]):
            last = time.perf_counter()
        return TG / (last - t0)

    print("ready", flush=True)
    warm = set()
    for line in sys.stdin:
        torch.set_num_threads(int(line))
        if line not in warm:
            tg()
            warm.add(line)
        print(json.dumps(tg()), flush=True)


class Worker:
    def __init__(self, model_dir: Path, quant: str | None) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(model_dir), quant or "-"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"llmcli worker on {model_dir} failed to start")

    def tg(self, threads: int) -> float:
        self.proc.stdin.write(f"{threads}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def llama_bench(gguf: Path, threads: int) -> float:
    r = subprocess.run([str(ANCHORS / "bin" / "llama-bench"), "-m", str(gguf), "-p", "0", "-n", str(TG),
                        "-t", str(threads), "-r", "1", "-o", "json"], capture_output=True, text=True,
                       check=True)
    return float(json.loads(r.stdout)[0]["avg_ts"])


def bench(args) -> None:
    have_llama = (ANCHORS / "bin" / "llama-bench").is_file()
    if not have_llama:
        log(f"{ANCHORS / 'bin' / 'llama-bench'}: missing (build it with "
            "../shared/tools/build-llama-cpp.sh); llmcli alone is measured")
    for name in args.models:
        rows = pairs(name, Path(args.cache))
        engines = []
        for cls, gguf, model_dir, quant in rows:
            if gguf is not None and have_llama:
                engines.append((cls, "llama.cpp", gguf))
            engines.append((cls, "llmcli" + (f" --quant {quant}" if quant else ""), (model_dir, quant)))
        workers = {e: Worker(*e[2]) for e in engines if e[1].startswith("llmcli")}
        cells: dict = {}
        try:
            for rnd in range(args.rounds):
                order = engines[rnd % len(engines):] + engines[:rnd % len(engines)]
                for t in args.threads:
                    for e in order:
                        v = llama_bench(e[2], t) if e[1] == "llama.cpp" else workers[e].tg(t)
                        cells.setdefault((e, t), []).append((v, load1()))
                log(f"{name}: round {rnd + 1}/{args.rounds} (load {load1():.2f})")
        finally:
            for w in workers.values():
                w.close()
        print(f"\n## {name}: decode tg{TG}, tokens/s, median of {args.rounds} (load average)\n")
        print("| class | threads | llama.cpp | llmcli | ratio | llmcli mode |")
        print("|---|---|---|---|---|---|")
        for cls, gguf, model_dir, quant in rows:
            for t in args.threads:
                ours = [e for e in engines if e[0] == cls and e[1].startswith("llmcli")][0]
                theirs = [e for e in engines if e[0] == cls and e[1] == "llama.cpp"]
                o = cells[(ours, t)]
                ov, ol = statistics.median(v for v, _ in o), statistics.median(x for _, x in o)
                if theirs:
                    c = cells[(theirs[0], t)]
                    cv = statistics.median(v for v, _ in c)
                    print(f"| {cls} | {t} | {cv:.1f} | {ov:.1f} | {ov / cv:.2f} | {ours[1]} (load {ol:.1f}) |")
                else:
                    print(f"| {cls} | {t} | - | {ov:.1f} | - | {ours[1]} (load {ol:.1f}) |")


# ----------------------------------------------------------------------------- perplexity
def llmcli_ppl(model_dir: Path, text: str, quant: str | None, ctx: int) -> dict:
    """``llmcli perplexity --json --rule llama.cpp -c CTX`` (llama-perplexity's chunks)."""
    cmd = [sys.executable, "-m", "llmcli", "perplexity", "-m", str(model_dir), "-c", str(ctx),
           "--rule", "llama.cpp", "--json", "-t", "2", text]
    r = subprocess.run(cmd + (["--quant", quant] if quant else []), cwd=REPO, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def llama_ppl(gguf: Path, text: str, ctx: int) -> float | None:
    exe = ANCHORS / "bin" / "llama-perplexity"
    if not exe.is_file():
        return None
    r = subprocess.run([str(exe), "-m", str(gguf), "-f", text, "-c", str(ctx), "-t", "2", "-b", str(ctx)],
                       capture_output=True, text=True)
    for line in reversed(r.stderr.splitlines()):
        if "Final estimate: PPL =" in line:
            return float(line.split("=")[1].split()[0])
    return None


def ppl(args) -> None:
    """The perplexity table (Markdown) of float32 and each quantized mode."""
    text, cache = args.ppl, Path(args.cache)
    models = [("bundled (shakespeare, 5.3M)", REPO / "models" / "shakespeare", None)]
    if SMOLLM2.is_file():
        pairs("smollm2", cache)
        models.append(("SmolLM2-135M-Instruct", cache / "smollm2-135m-f32", cache / "smollm2-135m-q4_1-kept"))
    print(f"\nperplexity of {text}: llmcli perplexity --rule llama.cpp -c {args.ppl_ctx} "
          "(llama-perplexity's chunks)\n")
    print("| model | weights | perplexity | vs float32 |")
    print("|---|---|---|---|")
    for label, model_dir, kept in models:
        rows = [("float32", model_dir, None)] + [(m, model_dir, m) for m in ("q8_0", "q4_0", "q4_1")]
        if kept is not None:
            rows.append(("Q4_1 GGUF blocks kept (convert --quant keep)", kept, None))
        base = None
        for mode, d, quant in rows:
            p = llmcli_ppl(d, text, quant, args.ppl_ctx)["perplexity"]
            base = p if base is None else base
            rel = "" if mode == "float32" else f"{(p / base - 1) * 100:+.1f} %"
            print(f"| {label} | {mode} | {p:.3f} | {rel} |", flush=True)
        if kept is not None:
            ref = llama_ppl(SMOLLM2, text, args.ppl_ctx)
            if ref is not None:
                print(f"| {label} | llama.cpp llama-perplexity on the Q4_1 GGUF | {ref:.3f} | "
                      f"{(ref / base - 1) * 100:+.1f} % |", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="110M,smollm2", type=lambda s: s.split(","))
    ap.add_argument("--threads", default="1", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", default=str(CACHE_HOME / "llmcli-bench"))
    ap.add_argument("--ppl", nargs="?", const="/usr/share/common-licenses/GPL-3", default=None,
                    help="also compute the perplexity table on this text (default GPL-3)")
    ap.add_argument("--ppl-only", action="store_true", help="only the perplexity table")
    ap.add_argument("--ppl-ctx", type=int, default=512)
    args = ap.parse_args()
    if args.ppl_only and args.ppl is None:
        args.ppl = "/usr/share/common-licenses/GPL-3"
    if not args.ppl_only:
        bench(args)
    if args.ppl:
        ppl(args)


if __name__ == "__main__":
    main()
