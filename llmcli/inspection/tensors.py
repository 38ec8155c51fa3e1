"""Inspections that run the model: embeddings and hidden states, logits, top-k, a full trace.

Every ``*_report`` function takes the model's outputs (or runs the model itself) and returns a
dataclass of plain Python data; ``to_dict()`` gives the JSON document of the matching command.
Tensors leave this module only through :func:`forward` (for ``--save``).

Indexing (as transformers): ``hidden_states[0]`` is the embedding output, ``hidden_states[L]``
the residual stream after L blocks, ``hidden_states[N]`` the final norm's output; blocks
(``model.layers.i``, ``transformer.h.i``...) and attention maps are numbered from 0. Names and
words come from the model's family (``model.architecture``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmcli.checks import require_finite
from llmcli.config import ROPE_POSITION_NOTE
from llmcli.errors import LLMCLIError
from llmcli.models.common import Capture
from llmcli.sampling import (Sampler, SamplingParams, apply_min_p, apply_repeat_penalty,
                             apply_temperature, apply_top_p, filter_logits)

#: How position enters a Llama model (shown by ``embeddings`` and ``trace``); each family's
#: own note is ``model.architecture.position_note``.
POSITION_NOTE = ROPE_POSITION_NOTE

_LN2 = math.log(2.0)
#: Most positions in a logit-lens grid (the last ones), as the attention heat map draws.
LENS_GRID_MAX = 40


# ----------------------------------------------------------------------------- helpers
def token_dicts(tokenizer, ids: list[int]) -> list[dict]:
    """``[{"position", "id", "piece"}]`` for ``ids``."""
    return [{"position": i, "id": t, "piece": piece_of(tokenizer, t)} for i, t in enumerate(ids)]


def piece_of(tokenizer, token_id: int) -> str:
    """The vocabulary piece of ``token_id``; ``<id N>`` for ids the model has beyond the
    tokenizer's vocabulary (checkpoints whose embedding matrix is padded)."""
    if 0 <= token_id < tokenizer.vocab_size:
        return tokenizer.piece(token_id)
    return f"<id {token_id}>"


def token_text(tokenizer, token_id: int) -> str:
    """The text a token adds (its exact bytes as UTF-8: sentencepiece's ``▁`` and byte-level
    ``Ġ`` as a space; part of a multi-byte character as U+FFFD)."""
    if not 0 <= token_id < tokenizer.vocab_size:
        return ""
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")


def _continue(decoder, token_id: int, eos: set[int], final: bool) -> str:
    """The text ``token_id`` adds to ``decoder``'s sequence (a :class:`llmcli.tokenizer.StreamDecoder`
    primed with the prompt), with what was held back when ``final``: as ``generate`` prints it.
    An end-of-sequence token or an id beyond the tokenizer's vocabulary adds nothing."""
    if token_id in eos or not 0 <= token_id < decoder.tokenizer.vocab_size:
        return decoder.flush() if final else ""
    return decoder.push(token_id) + (decoder.flush() if final else "")


def forward(model, ids: list[int], attentions: bool = False,
            check_logits: bool = True) -> tuple[torch.Tensor, Capture]:
    """One full causal forward of ``ids`` → ``(logits (T, V) float32, capture)``.

    Raises:
        llmcli.checks.NonFiniteError: with ``check_logits``, some logits are NaN or infinite
            (the first such position and the first non-finite stage named).

    ``capture.hidden_states`` has N+1 tensors (1, T, D), ``capture.residuals`` N, and with
    ``attentions`` ``capture.attentions`` N tensors (1, H, T, T) of softmax weights (eager path).
    """
    capture = Capture(attentions_wanted=attentions)
    with torch.inference_mode():
        x = torch.tensor([ids], dtype=torch.long, device=model.device)
        logits = model(x, capture=capture)[0].float()
    if check_logits:
        require_finite(model, ids, logits)
    return logits, capture


def logit_stats(logits: torch.Tensor) -> dict:
    """min, max, mean and (population) std of a logits vector."""
    x = logits.double()
    return {"min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()),
            "std": float(x.std(correction=0))}


def entropy_bits(probs: torch.Tensor) -> float:
    """Shannon entropy of a distribution, in bits."""
    return float(torch.special.entr(probs.double()).sum() / _LN2)


def _ranked(tokenizer, logits: torch.Tensor, k: int, largest: bool = True) -> list[dict]:
    values, ids = torch.topk(logits, min(k, logits.shape[-1]), largest=largest)
    return [{"id": int(i), "piece": piece_of(tokenizer, int(i)), "logit": float(v)}
            for i, v in zip(ids.tolist(), values.tolist())]


def candidates(tokenizer, logits: torch.Tensor, k: int, temperature: float = 1.0) -> list[dict]:
    """The ``k`` most probable tokens of ``softmax(logits / temperature)``, most probable first:
    ``[{"rank", "id", "piece", "logit", "prob", "logprob", "cumulative"}]`` (``logit`` raw,
    ``cumulative`` the probability of this token and all above it)."""
    scaled = apply_temperature(logits.double(), temperature)  # float64: tiny T stays finite
    logp = torch.log_softmax(scaled, dim=-1)
    values, ids = torch.topk(scaled, min(k, scaled.shape[-1]))
    out, cum = [], 0.0
    for rank, i in enumerate(ids.tolist()):
        p = math.exp(float(logp[i]))
        cum += p
        out.append({"rank": rank, "id": i, "piece": piece_of(tokenizer, i), "logit": float(logits[i]),
                    "prob": p, "logprob": float(logp[i]), "cumulative": cum})
    return out


def save_safetensors(path: Path | str, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                     option: str = "--save", force: bool = False) -> Path:
    """Write ``tensors`` to the regular file ``path`` atomically (a temporary file beside it,
    then ``os.replace``), under :mod:`llmcli.outputs`' rule: never over a device, pipe,
    directory or symbolic link, over an existing file only with ``force``, mode 0o666 minus
    the umask.

    Raises:
        LLMCLIError: the path cannot be written (naming ``option``); nothing is left behind.
    """
    from safetensors.torch import save_file

    from llmcli.outputs import write_file_atomically

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return write_file_atomically(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata),
                                 option=option, force=force)


def check_writable(path: Path | str, option: str = "--save", force: bool = False) -> None:
    """Fail early (before any computing) if ``path`` may not be written or replaced
    (:func:`llmcli.outputs.check_output_file`).

    Raises:
        LLMCLIError: the folder is missing or not writable; the path is a directory, a device,
            a pipe or a symbolic link; it exists and not ``force``.
    """
    from llmcli.outputs import check_output_file

    check_output_file(path, option, force)


# ----------------------------------------------------------------------------- embeddings
@dataclass
class EmbeddingsResult:
    """Hidden state ``layer`` of each token: full ``vectors`` (T × D), their L2 ``norms``,
    and the ``neighbors`` of each vector in the embedding matrix (cosine similarity).

    ``components``: for the embedding output (layer 0) of a family that adds a learned
    position embedding (GPT-2), the two rows summed into ``vectors``:
    ``[{"part": "token" | "position", "name": "transformer.wte", "vectors", "norms"}]``;
    empty otherwise.
    """

    tokens: list[dict]
    layer: int
    num_layers: int
    hidden_size: int
    layer_name: str
    vectors: list[list[float]]
    norms: list[float]
    neighbors: list[list[dict]] = field(default_factory=list)
    position_note: str = POSITION_NOTE
    components: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "layer": self.layer, "layer_name": self.layer_name,
                "num_layers": self.num_layers, "hidden_size": self.hidden_size,
                "vectors": self.vectors, "norms": self.norms, "neighbors": self.neighbors,
                "position_note": self.position_note, "components": self.components}


def layer_name(layer: int, num_layers: int, arch=None) -> str:
    """What ``hidden_states[layer]`` is, in words, with the module names of ``arch`` (a
    :class:`llmcli.config.Architecture`; Llama's names without one)."""
    embed, norm, layers = ("model.embed_tokens", "model.norm", "model.layers") if arch is None \
        else (arch.token_embedding, arch.final_norm, arch.layers)
    if layer == 0:
        if arch is not None and arch.position_embedding:
            return f"embedding output ({embed} + {arch.position_embedding})"
        return f"embedding output ({embed})"
    if layer == num_layers:
        return f"after the final norm ({norm}, following block {num_layers - 1})"
    return f"residual stream after {layer} block(s) (output of {layers}.{layer - 1})"


def hidden_state(capture: Capture, layer: int) -> torch.Tensor:
    """``hidden_states[layer]`` of sequence 0 → (T, D) float32."""
    return capture.hidden_states[layer][0].float()


def nearest_tokens(model, tokenizer, vectors: torch.Tensor, k: int) -> list[list[dict]]:
    """For each row of ``vectors`` (T, D), the ``k`` vocabulary tokens whose embedding rows are
    most cosine-similar: ``[[{"id", "piece", "cosine"}]]``."""
    if k <= 0:
        return []
    emb = model.input_embeddings().detach().float()                              # (V, D)
    with torch.inference_mode():
        sims = torch.nn.functional.normalize(vectors.float(), dim=-1) @ \
            torch.nn.functional.normalize(emb, dim=-1).T                       # (T, V)
        values, ids = torch.topk(sims, min(k, sims.shape[-1]), dim=-1)
    return [[{"id": int(i), "piece": piece_of(tokenizer, int(i)), "cosine": float(v)}
             for i, v in zip(row_ids, row_vals)]
            for row_ids, row_vals in zip(ids.tolist(), values.tolist())]


def embeddings_report(model, tokenizer, ids: list[int], capture: Capture, layer: int,
                      neighbors: int = 0) -> EmbeddingsResult:
    """Hidden state ``layer`` (0..N) of each token, from a :func:`forward` capture.

    Raises:
        llmcli.checks.NonFiniteError: the hidden state holds NaN or infinity.
    """
    n = model.config.num_hidden_layers
    arch = model.architecture
    h = hidden_state(capture, layer)                                             # (T, D)
    require_finite(model, ids, h, what="hidden state")
    components = []
    if layer == 0 and arch.position_embedding:       # GPT-2: token row + position row
        for part, name in (("token", arch.token_embedding), ("position", arch.position_embedding)):
            rows = capture.stages[name][0].float()                               # (T, D)
            components.append({"part": part, "name": name, "vectors": rows.tolist(),
                               "norms": rows.norm(dim=-1).tolist()})
    return EmbeddingsResult(tokens=token_dicts(tokenizer, ids), layer=layer, num_layers=n,
                            hidden_size=model.config.hidden_size,
                            layer_name=layer_name(layer, n, arch),
                            vectors=h.tolist(), norms=h.norm(dim=-1).tolist(),
                            neighbors=nearest_tokens(model, tokenizer, h, neighbors),
                            position_note=arch.position_note, components=components)


# ----------------------------------------------------------------------------- logits
@dataclass
class PositionLogits:
    """The raw next-token logits after one position."""

    position: int
    token: dict
    stats: dict
    top: list[dict]
    bottom: list[dict]
    logits: list[float]

    def to_dict(self) -> dict:
        return {"position": self.position, "token": self.token, "stats": self.stats,
                "top": self.top, "bottom": self.bottom, "logits": self.logits}


@dataclass
class LogitsResult:
    tokens: list[dict]
    vocab_size: int
    positions: list[PositionLogits]   # the last position only, or all of them

    def to_dict(self) -> dict:
        last = self.positions[-1]
        out = {"tokens": self.tokens, "vocab_size": self.vocab_size, "position": last.position,
               "logits": last.logits, "top": last.top, "bottom": last.bottom, "stats": last.stats}
        if len(self.positions) > 1:
            out["positions"] = [p.to_dict() for p in self.positions]
        return out


def logits_report(tokenizer, ids: list[int], logits: torch.Tensor, top: int,
                  all_positions: bool = False) -> LogitsResult:
    """Top and bottom ``top`` logits and statistics after the last position (or every one),
    from ``logits`` (T, V)."""
    tokens = token_dicts(tokenizer, ids)
    rows = range(logits.shape[0]) if all_positions else [logits.shape[0] - 1]
    positions = [PositionLogits(position=t, token=tokens[t], stats=logit_stats(logits[t]),
                                top=_ranked(tokenizer, logits[t], top),
                                bottom=_ranked(tokenizer, logits[t], top, largest=False),
                                logits=logits[t].tolist())
                 for t in rows]
    return LogitsResult(tokens=tokens, vocab_size=int(logits.shape[-1]), positions=positions)


# ----------------------------------------------------------------------------- top-k
@dataclass
class TopkStep:
    """One next-token distribution: the ``k`` best candidates of softmax(logits / T), how many
    tokens each filter keeps (counted from the top, by llmcli.sampling's own functions),
    the entropy, and the token chosen."""

    position: int                 # the position whose next token is predicted
    candidates: list[dict]
    entropy_bits: float
    top_p_keep: int               # tokens apply_top_p keeps (1..V)
    min_p_keep: int               # tokens apply_min_p keeps
    kept: int                     # tokens sampling draws from (every filter applied)
    chosen: dict

    def to_dict(self) -> dict:
        return {"position": self.position, "candidates": self.candidates, "chosen": self.chosen,
                "entropy_bits": self.entropy_bits, "top_p_keep": self.top_p_keep,
                "min_p_keep": self.min_p_keep, "kept": self.kept}


@dataclass
class TopkResult:
    tokens: list[dict]
    k: int
    temperature: float
    top_p: float
    min_p: float
    sampled: bool
    seed: int | None
    steps: list[TopkStep]
    stop_reason: str = "steps"
    #: the chosen tokens' text, decoded as one sequence after the prompt (what ``generate``
    #: prints for the same ids); each step's ``chosen["text"]`` is the part that step adds
    #: (``""`` while a UTF-8 character is incomplete; an end-of-sequence token adds nothing)
    text: str = ""

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "k": self.k, "temperature": self.temperature,
                "top_p": self.top_p, "min_p": self.min_p,
                "mode": "sampled" if self.sampled else "greedy", "seed": self.seed,
                "steps": [s.to_dict() for s in self.steps], "stop_reason": self.stop_reason,
                "text": self.text}


def topk_step(tokenizer, logits: torch.Tensor, k: int, temperature: float, top_p: float,
              min_p: float, position: int = 0, top_k: int = 0) -> TopkStep:
    """The distribution after one position (``logits`` (V,)), without choosing a token
    (``chosen`` is filled by :func:`topk_report`); ``kept`` counts the tokens left after
    top-k (0 = off), top-p and min-p."""
    scaled = apply_temperature(logits.float(), temperature)
    probs = torch.softmax(scaled.double(), dim=-1)
    kept = filter_logits(logits, SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                                min_p=min_p))
    return TopkStep(position=position, candidates=candidates(tokenizer, logits, k, temperature),
                    entropy_bits=entropy_bits(probs),
                    top_p_keep=int(torch.isfinite(apply_top_p(scaled, top_p)).sum()),
                    min_p_keep=int(torch.isfinite(apply_min_p(scaled, min_p)).sum()),
                    kept=int(torch.isfinite(kept).sum()), chosen={})


def topk_report(model, tokenizer, ids: list[int], k: int, temperature: float = 1.0,
                top_p: float = 1.0, min_p: float = 0.0, steps: int = 1, seed: int | None = None,
                eos_ids: list[int] | None = None, top_k: int = 0,
                repeat_penalty: float = 1.0) -> TopkResult:
    """Top-k of softmax(logits / T) after the last token, then after each of ``steps - 1``
    generated tokens (greedy, or sampled by :class:`llmcli.sampling.Sampler` with the same
    temperature, top-k, top-p and min-p when ``seed`` is given), using the KV cache.

    ``repeat_penalty`` (1 = off) is applied first, as generate does, to the logits of the ids
    already in the context: the logits, probabilities and choice shown are the penalised ones.

    Raises:
        LLMCLIError: the prompt plus the steps do not fit the context.
        llmcli.checks.NonFiniteError: a step's logits hold NaN or infinity.
    """
    context = model.config.max_position_embeddings
    if len(ids) + steps - 1 > context:
        raise LLMCLIError(f"--steps: {len(ids)} prompt tokens + {steps - 1} generated ones exceed "
                          f"the model's context of {context} tokens")
    sampled = seed is not None
    params = SamplingParams(temperature=temperature if sampled else 0.0, top_k=top_k, top_p=top_p,
                            min_p=min_p, seed=seed)  # the penalty is applied below, once
    sampler = Sampler(params)
    eos = set(eos_ids if eos_ids is not None else tokenizer.eos_ids)
    context_ids = list(ids)
    out: list[TopkStep] = []
    stop_reason = "steps"
    decoder = tokenizer.stream()       # the text as generate prints it (one decode, not pieces)
    decoder.prime(ids)
    with torch.inference_mode():
        cache = model.new_cache(batch=1, max_len=len(ids) + steps - 1)
        x = torch.tensor([ids], dtype=torch.long, device=model.device)
        logits = model(x, cache=cache, last_only=True)[0, -1].float()          # (V,)
        require_finite(model, context_ids, logits, len(context_ids) - 1)
        for step in range(steps):
            logits = apply_repeat_penalty(logits, context_ids, repeat_penalty)
            st = topk_step(tokenizer, logits, k, temperature, top_p, min_p, position=len(context_ids) - 1,
                           top_k=top_k)
            token = sampler(logits)
            logp = torch.log_softmax(apply_temperature(logits.double(), temperature), dim=-1)
            rank = int((logits > logits[token]).sum())
            last = token in eos or step == steps - 1
            text = _continue(decoder, token, eos, final=last)
            st.chosen = {"id": token, "piece": piece_of(tokenizer, token), "text": text,
                         "logit": float(logits[token]), "prob": math.exp(float(logp[token])),
                         "logprob": float(logp[token]), "rank": rank}
            out.append(st)
            context_ids.append(token)
            if token in eos:
                stop_reason = "eos"
                break
            if step < steps - 1:
                x = torch.tensor([[token]], dtype=torch.long, device=model.device)
                logits = model(x, cache=cache, last_only=True)[0, -1].float()
                require_finite(model, context_ids, logits, len(context_ids) - 1)
    return TopkResult(tokens=token_dicts(tokenizer, ids), k=k, temperature=temperature, top_p=top_p,
                      min_p=min_p, sampled=sampled, seed=sampler.seed if sampled else None,
                      steps=out, stop_reason=stop_reason,
                      text="".join(st.chosen["text"] for st in out))


# ----------------------------------------------------------------------------- trace
@dataclass
class TraceResult:
    """One next-token prediction, stage by stage (for the last position)."""

    tokens: list[dict]
    embedding_norms: list[float]
    layers: list[dict]        # per block: layer, residual_norm, residual_norms, heads, lens
    final_norm: float         # norm of the last position after model.norm
    stats: dict               # of the final logits
    top_logits: list[dict]
    candidates: list[dict]    # softmax top-k
    entropy_bits: float
    chosen: dict
    attention: dict | None = None   # --attention: {"layer", "name", "head", "weights": T×T}
    position_note: str = POSITION_NOTE
    #: what the family computes and its module names (llmcli.config.Architecture.to_dict())
    architecture: dict = field(default_factory=dict)
    #: the logit lens at every position (:func:`lens_grid`), when asked for (pictures)
    lens_grid: dict | None = None

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "embedding_norms": self.embedding_norms,
                "architecture": self.architecture,
                "position_note": self.position_note, "layers": self.layers,
                "final_norm": self.final_norm,
                "logits": {"stats": self.stats, "top": self.top_logits},
                "top": self.candidates, "entropy_bits": self.entropy_bits,
                "chosen": self.chosen, "attention": self.attention,
                **({"lens_grid": self.lens_grid} if self.lens_grid is not None else {})}


def logit_lens(model, residual: torch.Tensor) -> torch.Tensor:
    """``unembed(final_norm(residual))`` (V,) float32: what the model would predict if the residual
    stream stopped here (nostalgebraist 2020, "interpreting GPT: the logit lens")."""
    with torch.inference_mode():
        return model.unembed(model.final_norm(residual)).float()


def attention_map(capture: Capture, layer: int, head: int | None = None) -> torch.Tensor:
    """Attention weights of block ``layer`` (0-based) → (T, T): one head, or the mean of all."""
    w = capture.attentions[layer][0].float()                                      # (H, T, S)
    return w[head] if head is not None else w.mean(dim=0)


def lens_grid(model, tokenizer, capture: Capture, temperature: float = 1.0, top: int = 3,
              most: int = LENS_GRID_MAX) -> dict:
    """The logit lens at every position and block: for the last ``most`` positions, block i's
    residual stream through the final norm and the output layer, softmax(· / temperature),
    its ``top`` tokens.

    Returns ``{"first_position": P, "layers": [{"layer", "name", "positions": [[{"id",
    "piece", "prob"}] × top] × (T - P)}]}``; the last block's row is the model's own
    prediction at each position (pre-norm families: hidden_states[N] = final_norm(residual)).
    """
    arch = model.architecture
    T = capture.residuals[0].shape[1]
    start = max(0, T - most)
    rows = []
    with torch.inference_mode():
        for i, residual in enumerate(capture.residuals):
            logits = model.unembed(model.final_norm(residual[0, start:])).double()    # (T-P, V)
            logp = torch.log_softmax(apply_temperature(logits, temperature), dim=-1)
            values, idx = torch.topk(logp, min(top, logp.shape[-1]), dim=-1)         # (T-P, top)
            rows.append({"layer": i, "name": f"{arch.layers}.{i}",
                         "positions": [[{"id": int(t), "piece": piece_of(tokenizer, int(t)),
                                         "prob": math.exp(float(v))}
                                        for t, v in zip(ti, vi)]
                                       for ti, vi in zip(idx.tolist(), values.tolist())]})
    return {"first_position": start, "layers": rows}


def trace_report(model, tokenizer, ids: list[int], k: int = 5, temperature: float = 1.0,
                 attention_layer: int | None = None, head: int | None = None,
                 with_lens_grid: bool = False) -> TraceResult:
    """Run ``ids`` once with every capture on and collect each stage for the last position.

    Per block: the residual-stream norm, the norms of the attention and MLP outputs added to
    it (``attn_norm``, ``mlp_norm``, last position), each head's most-attended position, and
    the logit lens; with ``with_lens_grid`` also the logit lens at every position
    (:func:`lens_grid`, for the pictures)."""
    arch = model.architecture
    logits, cap = forward(model, ids, attentions=True)
    last = logits[-1]                                                            # (V,)
    layers = []
    for i, residual in enumerate(cap.residuals):
        r = residual[0].float()                                                  # (T, D)
        w = cap.attentions[i][0, :, -1, :].float()                               # (H, S) last query
        heads = []
        for h in range(w.shape[0]):
            j = int(torch.argmax(w[h]))
            heads.append({"head": h, "position": j, "id": ids[j], "piece": piece_of(tokenizer, ids[j]),
                          "weight": float(w[h, j])})
        lens = logit_lens(model, residual[0, -1])
        name = f"{arch.layers}.{i}"
        stage_norm = {part: float(cap.stages[f"{name}.{module}"][0, -1].float().norm())
                      for part, module in (("attn_norm", arch.attention_module),
                                           ("mlp_norm", arch.mlp_module))}
        layers.append({"layer": i, "name": name,
                       "residual_norm": float(r[-1].norm()), "residual_norms": r.norm(dim=-1).tolist(),
                       **stage_norm, "heads": heads, "lens": candidates(tokenizer, lens, k, temperature)})
    cands = candidates(tokenizer, last, k, temperature)
    probs = torch.softmax(apply_temperature(last, temperature).double(), dim=-1)
    chosen_id = int(torch.argmax(last))
    decoder = tokenizer.stream()          # the text the token adds after the prompt, as generate
    decoder.prime(ids)                    # prints it (not the piece decoded alone)
    text = _continue(decoder, chosen_id, set(tokenizer.eos_ids), final=True)
    chosen = {"id": chosen_id, "piece": piece_of(tokenizer, chosen_id), "text": text,
              "logit": float(last[chosen_id]), "prob": float(probs[chosen_id]), "rule": "greedy (arg-max)"}
    attention = None
    if attention_layer is not None:
        attention = {"layer": attention_layer, "name": f"{arch.layers}.{attention_layer}", "head": head,
                     "weights": attention_map(cap, attention_layer, head).tolist()}
    return TraceResult(tokens=token_dicts(tokenizer, ids),
                       embedding_norms=hidden_state(cap, 0).norm(dim=-1).tolist(), layers=layers,
                       final_norm=float(cap.hidden_states[-1][0, -1].float().norm()),
                       stats=logit_stats(last), top_logits=_ranked(tokenizer, last, k),
                       candidates=cands, entropy_bits=entropy_bits(probs), chosen=chosen,
                       attention=attention, position_note=arch.position_note,
                       architecture=arch.to_dict(),
                       lens_grid=lens_grid(model, tokenizer, cap, temperature) if with_lens_grid else None)
