"""Train a small Llama on prepared text: sentencepiece tokenizer → model → HF-layout directory.

The loop is the standard recipe for small GPT-style models (as in nanoGPT's ``train.py``):
random windows of the token stream, AdamW with decoupled weight decay on matrices only,
linear warm-up then cosine decay, residual/embedding dropout, periodic evaluation on held-out
works, and early stopping that keeps the weights with the best validation loss.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from llmcli.errors import LLMCLIError, UsageError
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
    stop: str = ""  # what ended the loop: "max-steps", "early-stop" or "time" (the budget)


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
        # sentencepiece skips sentences over max_sentence_length bytes: a longer line is given
        # in parts of at most 4,000 characters (16,000 bytes), split at a space where there is
        # one, which is dropped: the next part's dummy prefix gives its first word the "▁word"
        # piece it has inside the line
        for d in docs:
            for line in d.text.split("\n"):
                while len(line) > 4000:
                    space = line.rfind(" ", 1, 4000)
                    cut = space if space > 0 else 4000
                    yield line[:cut]
                    line = line[cut + (space > 0):]
                if line.strip():
                    yield line

    rules = {"normalization_rule_name": "identity"}
    if space_after_newline:
        norm, denorm = Path(str(out_prefix) + ".norm.tsv"), Path(str(out_prefix) + ".denorm.tsv")
        norm.write_text("0A\t0A 20\n", encoding="ascii")     # codepoints: "\n" → "\n "
        denorm.write_text("0A 20\t0A\n", encoding="ascii")   # "\n " → "\n"
        rules = {"normalization_rule_tsv": str(norm), "denormalization_rule_tsv": str(denorm)}
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(), model_prefix=str(out_prefix), model_type="bpe",
            vocab_size=vocab_size, character_coverage=1.0, byte_fallback=True, split_digits=True,
            remove_extra_whitespaces=False, **rules,
            add_dummy_prefix=True, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2,
            pad_id=-1, num_threads=threads, max_sentence_length=16384, minloglevel=2)
    except RuntimeError as exc:
        # sentencepiece's own checks, as one line naming the option (its message names
        # src/trainer_interface.cc and a C++ condition)
        message = str(exc)
        chars = sum(len(d.text) for d in docs)
        if most := re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message):
            raise UsageError(f"--vocab-size: {vocab_size} is more pieces than sentencepiece can make "
                             f"from this training text ({chars:,} characters): at most {most.group(2)}; "
                             "give a smaller --vocab-size or more text") from None
        if "sentences_.empty()" in message:
            raise LLMCLIError("the training text has no line to train the tokenizer on") from None
        raise LLMCLIError(f"sentencepiece could not train the tokenizer: {' '.join(message.split())}") from None
    return Path(str(out_prefix) + ".model")


def lr_at(step: int, s: TrainSettings, elapsed: float = 0.0, time_budget: float | None = None) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr``.

    The decay's progress is the larger of the step fraction and the fraction of the time
    budget used (``elapsed`` seconds of ``time_budget``, by default ``max_minutes``; the
    trainer gives the training loop's share of the budget), so that on a slow or busy machine
    the schedule still reaches ``min_lr`` when the time budget ends the run.
    """
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    by_steps = (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps)
    budget = s.max_minutes * 60 if time_budget is None else time_budget
    by_time = elapsed / budget if budget > 0 else 0.0
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
          data_info: dict | None = None, force: bool = False, inputs=(),
          deadline: float | None = None, corpus: str = "the corpus") -> TrainResult:
    """Train tokenizer and model; write the best model with its card to ``out_dir``.

    The run, from this call (or from ``deadline - max_minutes``: the CLI passes the command's
    start) to ``out_dir`` in place, fits in ``settings.max_minutes``; see :class:`Clock`.
    Before the first step, and before ``log`` gets its first line, the data and options are
    checked (:func:`_check_tokens`, the card's prompts against the context, the budget against
    one step plus what the end needs): a problem is one error naming the option or ``corpus``,
    and nothing is written.

    ``data_info`` (sources, include pattern, preparation flags, how the held-out text was
    chosen) is recorded in ``training.json`` for the model card. ``on_progress`` receives
    ``{"step", "max_steps", "loss", "lr", "fraction", "remaining_s"}`` each step
    (``fraction`` of the run done, by steps or by the time budget, whichever is further;
    ``remaining_s``: seconds until the model is written, never past the budget), and ``log``
    one line per evaluation. The model and its card (``README.md``, samples from the model
    loaded as ``llmcli generate`` loads it) are staged in a temporary directory and moved
    into ``out_dir`` together under :mod:`llmcli.outputs`' rule (``force``, ``inputs``), so
    ``out_dir`` is complete or absent. The temporary directory is removed whatever happens.
    torch's thread count is restored at the end.

    Returns the run's :class:`TrainResult`.

    Raises:
        UsageError: an option does not fit the data (``--context``, ``--vocab-size``,
            ``--max-minutes``), named.
        LLMCLIError: the corpus is too small (naming ``corpus``), the loss became non-finite
            (training diverged), or ``out_dir`` may not be written.
    """
    import shutil
    import tempfile

    import torch

    if deadline is None:
        deadline = time.monotonic() + settings.max_minutes * 60
    threads = torch.get_num_threads()
    workdir = Path(tempfile.mkdtemp(prefix="llmcli-train-"))
    try:
        return _train(train_docs, valid_docs, out_dir, settings, on_progress, log, command,
                      data_info, force, list(inputs), workdir, deadline, corpus)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        torch.set_num_threads(threads)


#: Factor on the measured time of the run's end (final evaluation, card samples, writing),
#: and seconds added, so that a busier moment at the end still fits the budget.
END_SAFETY = 1.25
END_MARGIN_S = 0.3


class Clock:
    """The time budget of a run: ``deadline`` (``time.monotonic()`` seconds) and running
    estimates, in seconds, of one optimiser step (the slowest of the last 5), one evaluation
    (train and valid estimates; the last one measured) and the end of the run (final
    held-out evaluation, the card's samples, writing the directory: measured on the model
    before training by :func:`_measure_end`, padded by :data:`END_SAFETY` and
    :data:`END_MARGIN_S`, and scaled up by how much slower the recent steps are than the step
    measured with it, from 1 to 4 times, for a machine that became busier).

    The loop takes another step only if that step, an evaluation and the end still fit before
    the deadline, so the run ends within the budget as long as the estimates hold.
    """

    def __init__(self, deadline: float, step_s: float, eval_s: float, end_s: float) -> None:
        self.deadline = deadline
        self.first_step_s = step_s
        self.steps = [step_s]
        self.eval_s = eval_s
        self.measured_end_s = end_s

    @property
    def step_s(self) -> float:
        return max(self.steps[-5:])

    @property
    def end_s(self) -> float:
        recent = sorted(self.steps[-5:])[len(self.steps[-5:]) // 2]
        slower = min(4.0, max(1.0, recent / self.first_step_s)) if self.first_step_s > 0 else 1.0
        return self.measured_end_s * slower * END_SAFETY + END_MARGIN_S

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def fits_another_step(self) -> bool:
        return self.left() >= self.step_s + self.eval_s + self.end_s

    def remaining(self, steps_left: int, evals_left: int) -> float:
        """Seconds until the run ends: the steps and evaluations left and the end, capped by
        the deadline."""
        recent = self.steps[-20:]
        by_steps = steps_left * sum(recent) / len(recent) + evals_left * self.eval_s + self.end_s
        return max(0.0, min(self.left(), by_steps))


def bpc_windows(n_tokens: int, context: int) -> int:
    """Forward passes :func:`evaluate_bpc` makes on one document of ``n_tokens`` tokens."""
    stride, scored, start, windows = context // 2, 1, 0, 0
    while scored < n_tokens:
        end = min(start + context + 1, n_tokens)
        windows += 1
        scored = end
        start = max(0, end - 1 - (context - stride))
    return windows


def _check_tokens(train_ids, valid_ids, s: TrainSettings, corpus: str, valid_how: str) -> None:
    """Both token streams must hold one window of ``context + 1`` tokens plus one start
    position (training and evaluation draw random windows).

    Raises:
        LLMCLIError: naming ``corpus`` (or the held-out part, ``valid_how``), the token count
            and ``--context``.
    """
    need = s.context + 2
    if len(train_ids) < need:
        raise LLMCLIError(f"{corpus}: the training text is {len(train_ids):,} tokens, too little "
                          f"for one training window (--context {s.context} + 2 = {need}): give "
                          "more text or a smaller --context")
    if len(valid_ids) < need:
        raise LLMCLIError(f"{corpus}: the held-out text ({valid_how}) is {len(valid_ids):,} tokens, "
                          f"too little for one evaluation window (--context {s.context} + 2 = "
                          f"{need}): hold out more text or give a smaller --context")


def _train(train_docs, valid_docs, out_dir, settings, on_progress, log, command, data_info,
           force, inputs, workdir: Path, deadline: float, corpus: str) -> TrainResult:
    import copy

    import torch
    import torch.nn.functional as F

    from llmcli.config import LlamaConfig
    from llmcli.models.llama import LlamaForCausalLM
    from llmcli.train.card import check_sample_prompts, write_model_card
    from llmcli.train.ops import prepare_for_training
    from llmcli.tokenizer import Tokenizer
    from llmcli.weights import save_model

    s = settings
    torch.manual_seed(s.seed)
    torch.set_num_threads(s.threads)
    tok_path = train_tokenizer(train_docs, s.vocab_size, workdir / "tokenizer", s.threads,
                               space_after_newline=s.space_after_newline)
    tok = Tokenizer(tok_path)
    check_sample_prompts(tok, s.context)

    def stream(docs):
        ids: list[int] = []
        for d in docs:
            ids += tok.encode(d.text, add_bos=True) + [tok.eos_id]
        return torch.tensor(ids, dtype=torch.long)

    train_ids, valid_ids = stream(train_docs), stream(valid_docs)
    valid_how = (data_info or {}).get("valid", "") or "the held-out works"
    _check_tokens(train_ids, valid_ids, s, corpus, valid_how)

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

    def train_step(x, y):
        with autocast():
            logits = model(x)                                                # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    # What the budget must hold, measured now on this model and machine (the weights do not
    # change the time): one step (forward + backward, no update; the RNG is put back so the
    # run is the same as without it), one evaluation, and the end of the run.
    model.train()
    x, y = batch(train_ids, torch.zeros(s.batch_size, dtype=torch.long))
    with torch.random.fork_rng(devices=[]):
        train_step(x, y)  # warm-up
        t = time.perf_counter()
        train_step(x, y)
        step_s = time.perf_counter() - t
    opt.zero_grad(set_to_none=True)
    t = time.perf_counter()
    with torch.inference_mode(), autocast():
        model.eval()
        model(x)
        model.train()
    eval_s = 2 * s.eval_batches * (time.perf_counter() - t)
    with torch.random.fork_rng(devices=[]):
        end_s = _measure_end(model, config, tok, tok_path, valid_docs, s, workdir)
    clock = Clock(deadline, step_s, eval_s, end_s)
    if not clock.fits_another_step():
        left = max(0.0, clock.left())
        need = clock.step_s + clock.eval_s + clock.end_s
        raise UsageError(
            f"--max-minutes: {s.max_minutes:g} leaves {left:.1f} s after preparing the data, but one "
            f"training step, an evaluation and the end of the run (held-out evaluation, model card "
            f"samples, writing) take about {need:.1f} s here: give at least "
            f"{math.ceil((s.max_minutes * 60 - left + need) / 6) / 10:g}")

    log(f"corpus: {len(train_docs)} train works ({sum(len(d.text) for d in train_docs):,} chars, "
        f"{len(train_ids):,} tokens), {len(valid_docs)} held-out works "
        f"({sum(len(d.text) for d in valid_docs):,} chars, {len(valid_ids):,} tokens)")
    log(f"model: {n_params:,} parameters")
    best = (float("inf"), 0, None, float("nan"))
    history: list[dict] = []
    bad_evals = 0

    def evaluate(step: int, lr: float) -> None:
        """Estimate both losses, keep the weights if the validation loss is the best yet."""
        nonlocal best, bad_evals
        t = time.perf_counter()
        tr, va = estimate("train"), estimate("valid")
        clock.eval_s = time.perf_counter() - t
        elapsed = time.perf_counter() - t0
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

    t0 = time.perf_counter()
    # the loop's share of the budget, which the learning-rate schedule follows
    loop_budget = max(1e-3, clock.left() - clock.eval_s - clock.end_s)
    model.train()
    step, stop, last_eval = 0, "max-steps", 0
    while step < s.max_steps:
        if not clock.fits_another_step():
            stop = "time"
            break
        step += 1
        t_step = time.perf_counter()
        elapsed = t_step - t0
        lr = lr_at(step - 1, s, elapsed, loop_budget)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = batch(train_ids, torch.randint(0, len(train_ids) - s.context - 1, (s.batch_size,), generator=gen))
        loss = train_step(x, y)
        if not math.isfinite(loss_value := loss.item()):
            raise LLMCLIError(f"training diverged: the loss is {loss_value} at step {step} "
                              f"(learning rate {lr:.3g}); try a lower --lr (now {s.lr:g})")
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        clock.steps.append(time.perf_counter() - t_step)
        if on_progress:
            elapsed = time.perf_counter() - t0
            evals_left = (s.max_steps // s.eval_interval - step // s.eval_interval
                          + (s.max_steps % s.eval_interval != 0))
            on_progress({"step": step, "max_steps": s.max_steps, "loss": loss_value, "lr": lr,
                         "fraction": min(1.0, max(step / s.max_steps, elapsed / loop_budget)),
                         "remaining_s": clock.remaining(s.max_steps - step, evals_left)})
        if step % s.eval_interval == 0 or step == s.max_steps:
            evaluate(step, lr)
            last_eval = step
            if bad_evals >= s.patience:
                stop = "early-stop"
                log(f"early stop: validation loss has not improved for {s.patience} evaluations")
                break
    if last_eval != step:
        evaluate(step, lr_at(step - 1, s, time.perf_counter() - t0, loop_budget))
    if stop == "time":
        log(f"stopping at step {step}: the rest of the {s.max_minutes:g}-minute budget is kept for "
            f"the final evaluation, the model card's samples and writing ({clock.end_s:.1f} s)")
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
        parameters=n_params, history=history, stop=stop)
    log(f"held-out: {bpc:.4f} bits/char, {nats / ntok:.4f} nats/token "
        f"(perplexity {math.exp(nats / ntok):.2f}) over {chars:,} chars")
    record = {"settings": asdict(s), "result": asdict(result), "command": command, "data": data_info or {},
              "machine": machine_info(),
              "train_works": [d.name for d in train_docs], "valid_works": [d.name for d in valid_docs]}
    staged = workdir / "model"
    save_model(model, config, staged, tokenizer_model=tok_path,
               extra_files={"training.json": json.dumps(record, indent=2) + "\n"})
    write_model_card(staged, title=Path(os.path.abspath(out_dir)).name)
    _move_into_place(staged, out_dir, force, inputs)
    return result


def _measure_end(model, config, tok, tok_path: Path, valid_docs, s: TrainSettings,
                 workdir: Path) -> float:
    """Seconds the end of the run will take, measured on the untrained ``model`` (the time
    does not depend on the weights): the held-out evaluation (:func:`bpc_windows` forward
    passes of one ``context`` window), writing the model (twice: staged, then moved), and the
    model card's samples (one sampled generation of 16 tokens from the model loaded as
    ``llmcli generate`` loads it, scaled to the card's generations and tokens).
    """
    import shutil

    import torch
    import torch.nn.functional as F

    from llmcli.generation import Generation
    from llmcli.sampling import SamplingParams
    from llmcli.train.card import SAMPLE_PROMPTS, SAMPLE_TOKENS
    from llmcli.weights import load_model, save_model

    model.eval()
    windows = sum(bpc_windows(len(tok.encode(d.text, add_bos=True)), s.context) for d in valid_docs)
    def timed(run, repeats: int = 3) -> float:
        """Seconds of ``run()``: the mean of ``repeats`` after two warm-up calls (the first
        calls of a model pay one-off costs)."""
        run(), run()
        t = time.perf_counter()
        for _ in range(repeats):
            run()
        return (time.perf_counter() - t) / repeats

    x = torch.zeros(1, s.context, dtype=torch.long)
    y = torch.zeros(s.context, dtype=torch.long)

    def window():  # one step of evaluate_bpc's loop
        logits = model(x)[0]
        F.cross_entropy(logits.float(), y, reduction="none")[1:].sum().item()

    with torch.inference_mode():
        window_s = timed(window)
    probe = workdir / "probe"
    t = time.perf_counter()
    save_model(model, config, probe, tokenizer_model=tok_path)
    save_s = time.perf_counter() - t
    loaded, _ = load_model(probe)
    n = 16
    prompt = tok.encode(SAMPLE_PROMPTS[0])
    params = SamplingParams(temperature=0.8, seed=1)
    generate_s = timed(lambda: list(Generation(loaded, tok, prompt, params, n, eos_ids=[])), 2)
    # each sample stops at SAMPLE_TOKENS or the context; the greedy one starts from the first prompt
    tokens = sum(min(SAMPLE_TOKENS, s.context - len(tok.encode(p)))
                 for p in (*SAMPLE_PROMPTS, SAMPLE_PROMPTS[0]))
    sample_s = generate_s / n * tokens
    shutil.rmtree(probe, ignore_errors=True)
    model.train()
    return windows * window_s + 2 * save_s + sample_s


def _move_into_place(staged: Path, out_dir: Path, force: bool, inputs) -> None:
    """Move the files of ``staged`` into ``out_dir`` in one step (:func:`llmcli.outputs.building_dir`).

    Raises:
        LLMCLIError: ``out_dir`` may not be written (the rule, or the system refused).
    """
    import shutil

    from llmcli.outputs import building_dir

    try:
        with building_dir(out_dir, "-o", force, inputs) as tmp:
            for path in sorted(staged.iterdir()):
                shutil.move(str(path), str(tmp / path.name))
    except OSError as exc:
        raise LLMCLIError(f"-o: {out_dir}: cannot write the model ({exc.strerror or exc})") from None


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
