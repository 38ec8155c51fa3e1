"""Train a small Llama on prepared text: sentencepiece tokenizer → model → HF-layout directory.

The loop is the standard recipe for small GPT-style models (as in nanoGPT's ``train.py``):
random windows of the token stream, AdamW with decoupled weight decay on matrices only,
linear warm-up then cosine decay, residual/embedding dropout, periodic evaluation on held-out
works, and early stopping that keeps the weights with the best validation loss.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from llmcli.train.data import Document


@dataclass
class TrainSettings:
    """Hyper-parameters of ``llmcli train`` (units: tokens, steps, seconds)."""

    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    context: int = 256
    batch_size: int = 16
    max_steps: int = 4000
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    dropout: float = 0.1
    eval_interval: int = 100
    eval_batches: int = 20
    patience: int = 5
    max_minutes: float = 55.0
    seed: int = 1337
    threads: int = 2
    precision: str = "float32"  # "bfloat16": bf16 autocast for matmuls, float32 master weights
    space_after_newline: bool = False  # tokenizer: line-initial words get "▁" (see train_tokenizer)


@dataclass
class TrainResult:
    """Figures of a finished run (losses are nats per token unless named ``bpc``)."""

    steps: int
    seconds: float
    best_step: int
    train_loss: float
    valid_loss: float
    valid_bpc: float
    valid_perplexity: float
    valid_chars: int
    valid_tokens: int
    parameters: int
    history: list[dict] = field(default_factory=list)


def train_tokenizer(docs: list[Document], vocab_size: int, out_prefix: Path, threads: int = 2,
                    space_after_newline: bool = False) -> Path:
    """Train a byte-fallback BPE sentencepiece model on the lines of ``docs``.

    Settings follow Llama 2's tokenizer (identity normalisation, no whitespace collapsing,
    split digits, byte fallback so any text encodes; ``\n`` becomes ``<0x0A>``).

    With ``space_after_newline``, the tokenizer's normaliser turns every ``\n`` into
    ``\n`` + space and its denormaliser turns it back (sentencepiece's
    ``normalization_rule_tsv`` / ``denormalization_rule_tsv``), so a word at the start of a
    line is encoded as ``▁word``, the piece it has inside a line and the one it was trained
    on, instead of a second set of space-less pieces. Decoding is unchanged: ``decode(encode(t))
    == t`` for every text.

    Returns the path of the ``.model`` file.
    """
    import sentencepiece as spm

    def lines():
        for d in docs:
            for line in d.text.split("\n"):
                if line.strip():
                    yield line

    rules = {"normalization_rule_name": "identity"}
    if space_after_newline:
        norm, denorm = Path(str(out_prefix) + ".norm.tsv"), Path(str(out_prefix) + ".denorm.tsv")
        norm.write_text("0A\t0A 20\n", encoding="ascii")     # codepoints: "\n" → "\n "
        denorm.write_text("0A 20\t0A\n", encoding="ascii")   # "\n " → "\n"
        rules = {"normalization_rule_tsv": str(norm), "denormalization_rule_tsv": str(denorm)}
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines(), model_prefix=str(out_prefix), model_type="bpe",
        vocab_size=vocab_size, character_coverage=1.0, byte_fallback=True, split_digits=True,
        remove_extra_whitespaces=False, **rules,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, num_threads=threads, max_sentence_length=16384, minloglevel=2)
    return Path(str(out_prefix) + ".model")


def lr_at(step: int, s: TrainSettings, elapsed: float = 0.0) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr``.

    The decay's progress is the larger of the step fraction and the fraction of the time
    budget (``elapsed`` seconds of ``max_minutes``) used, so that on a slow or busy machine the
    schedule still reaches ``min_lr`` when the time budget ends the run.
    """
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    by_steps = (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps)
    by_time = elapsed / (s.max_minutes * 60) if s.max_minutes > 0 else 0.0
    progress = min(1.0, max(by_steps, by_time))
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1 + math.cos(math.pi * progress))


def evaluate_bpc(model, tokenizer, docs: list[Document], context: int) -> tuple[float, int, int]:
    """Total nats over the held-out ``docs`` → ``(nats, characters, tokens)``.

    Each document is encoded whole with BOS and scored with a sliding window of ``context``
    tokens and stride ``context // 2`` (every token scored once, with at least half a window of
    context after the first). Bits per character = nats / characters / ln 2, independent of
    the tokenizer.
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    nats, chars, tokens = 0.0, 0, 0
    stride = context // 2
    with torch.inference_mode():
        for d in docs:
            ids = torch.tensor(tokenizer.encode(d.text, add_bos=True))
            chars += len(d.text)
            n = len(ids)
            scored = 1  # position 0 (BOS) is never predicted
            start = 0
            while scored < n:
                end = min(start + context + 1, n)
                window = ids[start:end]
                logits = model(window[None, :-1])[0]                          # (W, V)
                losses = F.cross_entropy(logits.float(), window[1:], reduction="none")
                first_new = scored - start - 1  # index in losses of the first unscored target
                nats += losses[first_new:].sum().item()
                tokens += len(losses) - first_new
                scored = end
                start = max(0, end - 1 - (context - stride))
    return nats, chars, tokens


def train(train_docs: list[Document], valid_docs: list[Document], out_dir: Path,
          settings: TrainSettings, on_progress: Callable[[dict], None] | None = None,
          log: Callable[[str], None] = print, command: str = "",
          data_info: dict | None = None, force: bool = False, inputs=()) -> TrainResult:
    """Train tokenizer and model; write the best model to ``out_dir`` (HF layout).

    ``data_info`` (sources, include pattern, preparation flags) is recorded in
    ``training.json`` for the model card. ``on_progress`` receives
    ``{"step", "max_steps", "loss", "lr"}`` each step, and ``log``
    one line per evaluation. ``out_dir`` is written by :func:`llmcli.weights.save_model`
    (``force`` and ``inputs``: :mod:`llmcli.outputs`' rule). The tokenizer is trained in a
    temporary directory that is removed at the end, whatever happens.
    Returns the run's :class:`TrainResult`.

    Raises:
        LLMCLIError: the loss became non-finite (training diverged), or ``out_dir`` may not
            be written.
    """
    import shutil
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="llmcli-train-"))
    try:
        return _train(train_docs, valid_docs, out_dir, settings, on_progress, log, command,
                      data_info, force, list(inputs), workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _train(train_docs, valid_docs, out_dir, settings, on_progress, log, command, data_info,
           force, inputs, workdir: Path) -> TrainResult:
    import copy

    import torch
    import torch.nn.functional as F

    from llmcli.config import LlamaConfig
    from llmcli.errors import LLMCLIError
    from llmcli.models.llama import LlamaForCausalLM
    from llmcli.train.ops import prepare_for_training
    from llmcli.tokenizer import Tokenizer
    from llmcli.weights import save_model

    s = settings
    torch.manual_seed(s.seed)
    torch.set_num_threads(s.threads)
    tok_path = train_tokenizer(train_docs, s.vocab_size, workdir / "tokenizer", s.threads,
                               space_after_newline=s.space_after_newline)
    tok = Tokenizer(tok_path)

    def stream(docs):
        ids: list[int] = []
        for d in docs:
            ids += tok.encode(d.text, add_bos=True) + [tok.eos_id]
        return torch.tensor(ids, dtype=torch.long)

    train_ids, valid_ids = stream(train_docs), stream(valid_docs)
    log(f"corpus: {len(train_docs)} train works ({sum(len(d.text) for d in train_docs):,} chars, "
        f"{len(train_ids):,} tokens), {len(valid_docs)} held-out works "
        f"({sum(len(d.text) for d in valid_docs):,} chars, {len(valid_ids):,} tokens)")

    config = LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads, max_position_embeddings=s.context,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tok.bos_id, eos_token_id=[tok.eos_id], torch_dtype="float32")
    model = LlamaForCausalLM(config)
    _init_weights(model, config)
    prepare_for_training(model, s.dropout)
    n_params = model.num_parameters()
    log(f"model: {n_params:,} parameters")

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=s.lr, betas=(0.9, 0.95), eps=1e-8)
    if s.precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be float32 or bfloat16, got {s.precision!r}")

    def autocast():
        # bf16 matmuls (about 2x faster on CPUs with AVX512-BF16/AMX); weights, optimizer
        # state and the loss stay float32. The final held-out evaluation is always float32.
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.precision == "bfloat16")

    gen = torch.Generator().manual_seed(s.seed)
    eval_gen = torch.Generator().manual_seed(s.seed + 1)
    eval_starts = {
        "train": torch.randint(0, len(train_ids) - s.context - 1, (s.eval_batches * s.batch_size,), generator=eval_gen),
        "valid": torch.randint(0, len(valid_ids) - s.context - 1, (s.eval_batches * s.batch_size,), generator=eval_gen),
    }

    def batch(data, starts):
        x = torch.stack([data[i:i + s.context] for i in starts.tolist()])
        y = torch.stack([data[i + 1:i + s.context + 1] for i in starts.tolist()])
        return x, y

    def estimate(split):
        data = train_ids if split == "train" else valid_ids
        model.eval()
        total = 0.0
        with torch.inference_mode():
            for b in range(s.eval_batches):
                x, y = batch(data, eval_starts[split][b * s.batch_size:(b + 1) * s.batch_size])
                with autocast():
                    logits = model(x)
                total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).item()
        model.train()
        return total / s.eval_batches

    best = (float("inf"), 0, None, float("nan"))
    history: list[dict] = []
    bad_evals = 0
    t0 = time.perf_counter()
    model.train()
    step = 0
    for step in range(1, s.max_steps + 1):
        lr = lr_at(step - 1, s, time.perf_counter() - t0)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = batch(train_ids, torch.randint(0, len(train_ids) - s.context - 1, (s.batch_size,), generator=gen))
        with autocast():
            logits = model(x)                                                # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        if not math.isfinite(loss_value := loss.item()):
            raise LLMCLIError(f"training diverged: the loss is {loss_value} at step {step} "
                              f"(learning rate {lr:.3g}); try a lower --lr (now {s.lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if on_progress:
            on_progress({"step": step, "max_steps": s.max_steps, "loss": loss_value, "lr": lr})
        elapsed = time.perf_counter() - t0
        out_of_time = elapsed > s.max_minutes * 60 - 20  # leave time for the final evaluation
        if step % s.eval_interval == 0 or step == s.max_steps or out_of_time:
            tr, va = estimate("train"), estimate("valid")
            history.append({"step": step, "seconds": round(elapsed, 1), "train_loss": round(tr, 4),
                            "valid_loss": round(va, 4), "lr": lr})
            mark = ""
            if va < best[0]:
                best = (va, step, copy.deepcopy(model.state_dict()), tr)
                bad_evals = 0
                mark = " *"
            else:
                bad_evals += 1
            log(f"step {step:5d}  {elapsed / 60:5.1f} min  train {tr:.4f}  valid {va:.4f}  lr {lr:.2e}{mark}")
            if bad_evals >= s.patience:
                log(f"early stop: validation loss has not improved for {s.patience} evaluations")
                break
            if out_of_time:
                log(f"stopping: time budget of {s.max_minutes} minutes reached")
                break
    seconds = time.perf_counter() - t0
    if best[2] is None:
        raise LLMCLIError(f"training diverged: no evaluation gave a finite held-out loss "
                          f"(last: {history[-1]['valid_loss'] if history else 'none'}); try a lower --lr")
    model.load_state_dict(best[2])
    model.eval()
    nats, chars, ntok = evaluate_bpc(model, tok, valid_docs, s.context)
    bpc = nats / chars / math.log(2)
    result = TrainResult(
        steps=step, seconds=round(seconds, 1), best_step=best[1], train_loss=round(best[3], 4),
        valid_loss=round(nats / ntok, 4), valid_bpc=round(bpc, 4),
        valid_perplexity=round(math.exp(nats / ntok), 2), valid_chars=chars, valid_tokens=ntok,
        parameters=n_params, history=history)
    log(f"held-out: {bpc:.4f} bits/char, {nats / ntok:.4f} nats/token "
        f"(perplexity {math.exp(nats / ntok):.2f}) over {chars:,} chars")
    record = {"settings": asdict(s), "result": asdict(result), "command": command, "data": data_info or {},
              "machine": machine_info(),
              "train_works": [d.name for d in train_docs], "valid_works": [d.name for d in valid_docs]}
    save_model(model, config, out_dir, tokenizer_model=tok_path,
               extra_files={"training.json": json.dumps(record, indent=2) + "\n"},
               force=force, option="-o", inputs=inputs)
    return result


def machine_info() -> dict:
    """``{"cpu": model name, "cpus": logical CPU count}`` of this machine, for the model card."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count()}


def _init_weights(model, config) -> None:
    """GPT-2 style initialisation: N(0, 0.02), output projections scaled by 1/√(2·layers)."""
    import torch

    std = 0.02
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            scale = 1 / math.sqrt(2 * config.num_hidden_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
            torch.nn.init.normal_(p, mean=0.0, std=std * scale)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)
