"""The generation loop (llmcli.generation) on a tiny random checkpoint.

The checkpoint is a random ``transformers.LlamaForCausalLM`` saved with ``save_pretrained``,
with a byte-fallback sentencepiece tokenizer trained here; greedy decoding is compared with
``transformers.generate``, and every way generation can end is exercised.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from conftest import make_checkpoint
from llmcli.errors import LLMCLIError
from llmcli.generation import (STOP_CONTEXT, STOP_EOS, STOP_MAX_TOKENS, STOP_STRING, Generation,
                               perplexity)
from llmcli.sampling import SamplingParams
from llmcli.tokenizer import Tokenizer
from llmcli.weights import load_model

pytest.importorskip("transformers")

CONTEXT = 64
TOKENIZER_VOCAB = 384
CORPUS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
    "ROMEO: But soft, what light through yonder window breaks? It is the east.",
    "The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind.",
]


def train_tokenizer(path: Path, vocab_size: int = TOKENIZER_VOCAB) -> Path:
    """A small BPE sentencepiece model with byte fallback: ids 0-2 unk/BOS/EOS, 3..258 the 256
    bytes, then merged pieces."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    path.write_bytes(buf.getvalue())
    return path


def make_tiny_model_dir(tmp_path: Path, name: str = "tiny", seed: int = 0, **overrides):
    """A loadable model directory (random weights + tokenizer.model) → ``(dir, hf_model)``."""
    config = {"vocab_size": TOKENIZER_VOCAB, "max_position_embeddings": CONTEXT, **overrides}
    model_dir, hf_model = make_checkpoint(tmp_path, name=name, seed=seed, **config)
    train_tokenizer(model_dir / "tokenizer.model")
    return model_dir, hf_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(model, config, tokenizer, hf_model)`` for one tiny GQA checkpoint."""
    model_dir, hf_model = make_tiny_model_dir(tmp_path_factory.mktemp("gen"),
                                              num_key_value_heads=2)
    # unk, control and byte pieces' logits at 0: greedy text is made of real, multi-character
    # pieces (for the stop-string tests); sampling still draws many bytes (see
    # test_streamed_text_equals_decoding_all_ids)
    with torch.no_grad():
        hf_model.lm_head.weight[:259] = 0
    hf_model.save_pretrained(str(model_dir), safe_serialization=True)
    model, config = load_model(model_dir)
    return model, config, Tokenizer(model_dir / "tokenizer.model"), hf_model


GREEDY = SamplingParams(temperature=0, seed=0)


def run(tiny, prompt: str | list[int], params: SamplingParams = GREEDY, max_tokens: int = 20,
        **kwargs) -> tuple[Generation, list]:
    """Generate to the end → ``(generation, events)``; EOS is off unless ``eos_ids`` is given."""
    model, _, tokenizer, _ = tiny
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
    kwargs.setdefault("eos_ids", [])
    gen = Generation(model, tokenizer, ids, params, max_tokens, **kwargs)
    return gen, list(gen)


def text_of(events) -> str:
    return "".join(e.text for e in events)


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("repeat_penalty", [1.0, 1.3])
@pytest.mark.parametrize("prompt", ["Once upon a time", "ROMEO:", "x"])
def test_greedy_tokens_equal_transformers_generate(tiny, prompt, repeat_penalty):
    _, _, tokenizer, hf_model = tiny
    n = 30
    ids = tokenizer.encode(prompt)
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n,
                                repetition_penalty=repeat_penalty, eos_token_id=None,
                                pad_token_id=0, use_cache=True)[0, len(ids):].tolist()
    assert len(ref) == n
    params = SamplingParams(temperature=0, repeat_penalty=repeat_penalty)
    gen, events = run(tiny, ids, params, max_tokens=n)
    assert [e.id for e in events] == ref
    assert gen.stats.stop_reason == STOP_MAX_TOKENS


# ----------------------------------------------------------------------------- endings
def test_stops_at_max_tokens(tiny):
    gen, events = run(tiny, "Once", max_tokens=7)
    assert len(events) == 7
    st = gen.stats
    assert (st.stop_reason, st.generated_tokens, st.prompt_tokens) == (STOP_MAX_TOKENS, 7, len(gen.prompt_ids))
    assert st.first_token_seconds > 0 and st.decode_seconds > 0
    assert st.decode_tokens_per_second > 0


def test_max_tokens_zero_generates_nothing(tiny):
    gen, events = run(tiny, "Once", max_tokens=0)
    assert events == [] and gen.stats.stop_reason == STOP_MAX_TOKENS


def test_stops_at_eos_without_printing_it(tiny):
    tokenizer = tiny[2]
    _, greedy = run(tiny, "Once upon", max_tokens=12)
    ids = [e.id for e in greedy]
    # pretend the 6th greedy token is EOS: generation ends at its first occurrence
    stop_at = ids.index(ids[5])
    gen, events = run(tiny, "Once upon", max_tokens=12, eos_ids=[ids[5]])
    assert [e.id for e in events] == ids[:stop_at + 1]
    assert gen.stats.stop_reason == STOP_EOS
    prompt_ids = gen.prompt_ids
    assert text_of(events) == (tokenizer.decode(prompt_ids + ids[:stop_at])
                               [len(tokenizer.decode(prompt_ids)):])


def test_eos_as_first_token(tiny):
    _, greedy = run(tiny, "ROMEO:", max_tokens=1)
    gen, events = run(tiny, "ROMEO:", max_tokens=50, eos_ids=[greedy[0].id])
    assert len(events) == 1 and events[0].text == "" and gen.stats.stop_reason == STOP_EOS


def test_default_eos_is_the_tokenizers(tiny):
    model, _, tokenizer, _ = tiny
    gen = Generation(model, tokenizer, tokenizer.encode("x"), GREEDY, 5)
    assert gen.eos_ids == {tokenizer.eos_id}


def test_stops_at_the_context_length(tiny):
    model, config, tokenizer, _ = tiny
    assert config.max_position_embeddings == CONTEXT
    prompt = tokenizer.encode("Once upon a time")
    gen, events = run(tiny, prompt, max_tokens=1000)
    assert gen.stats.stop_reason == STOP_CONTEXT
    # every position up to the context is fed once; the last one predicts one more token
    assert len(events) == CONTEXT - len(prompt) + 1
    # a prompt exactly as long as the context still gets its one prediction
    gen, events = run(tiny, (prompt * CONTEXT)[:CONTEXT], max_tokens=10)
    assert len(events) == 1 and gen.stats.stop_reason == STOP_CONTEXT


def test_max_tokens_wins_over_context_when_both_end_on_the_same_token(tiny):
    prompt = tiny[2].encode("Once upon a time")
    gen, events = run(tiny, prompt, max_tokens=CONTEXT - len(prompt) + 1)
    assert gen.stats.stop_reason == STOP_MAX_TOKENS


def test_prompt_longer_than_context_raises(tiny):
    model, _, tokenizer, _ = tiny
    ids = (tokenizer.encode("Once upon a time") * CONTEXT)[:CONTEXT + 1]
    with pytest.raises(LLMCLIError, match="longer than the model's context of 64"):
        Generation(model, tokenizer, ids, GREEDY, 10)


def test_empty_prompt_raises(tiny):
    model, _, tokenizer, _ = tiny
    with pytest.raises(LLMCLIError, match="empty"):
        Generation(model, tokenizer, [], GREEDY, 10)


def test_bad_sampling_params_raise_usage_error(tiny):
    model, _, tokenizer, _ = tiny
    with pytest.raises(LLMCLIError, match="--top-p"):
        Generation(model, tokenizer, [1], SamplingParams(top_p=0), 10)


# ----------------------------------------------------------------------------- stop strings
@pytest.fixture(scope="module")
def greedy_run(tiny):
    """The greedy continuation of "Once upon a time": ``(prompt_ids, ids, full_text, pieces)``
    where ``pieces[i]`` is the text the i-th token added."""
    _, _, tokenizer, _ = tiny
    prompt_ids = tokenizer.encode("Once upon a time")
    _, events = run(tiny, prompt_ids, max_tokens=40)
    ids = [e.id for e in events]
    base = tokenizer.decode(prompt_ids)
    texts = [tokenizer.decode(prompt_ids + ids[:i + 1])[len(base):] for i in range(len(ids))]
    full = texts[-1]
    assert all(t == full[:len(t)] and "\ufffd" not in t for t in texts), texts
    pieces = [texts[0]] + [b[len(a):] for a, b in zip(texts, texts[1:])]
    return prompt_ids, ids, full, pieces


def _stop_across_tokens(pieces: list[str]) -> tuple[str, int]:
    """A stop string that starts inside one token's text and ends inside a later one's,
    and its first position in the text."""
    full = "".join(pieces)
    start = 0
    for i, piece in enumerate(pieces[:-1]):
        if len(piece) >= 2 and len(pieces[i + 1]) >= 1:
            a = start + len(piece) - 1          # last char of token i
            stop = full[a:a + 2]                # ... and the first of token i+1
            if full.find(stop) == a and start > 0:
                return stop, a
        start += len(piece)
    pytest.skip("no suitable split stop string in this greedy text")


def test_stop_string_split_across_tokens(tiny, greedy_run):
    prompt_ids, ids, full, pieces = greedy_run
    stop, at = _stop_across_tokens(pieces)
    gen, events = run(tiny, prompt_ids, max_tokens=40, stop=[stop])
    assert gen.stats.stop_reason == STOP_STRING
    assert text_of(events) == full[:at]        # text before it included, the stop string not
    # generation ended on the token that completed the stop string
    completed = next(i for i in range(len(pieces)) if len("".join(pieces[:i + 1])) >= at + len(stop))
    assert [e.id for e in events] == ids[:completed + 1]


def test_stop_string_inside_one_token_and_at_the_start(tiny, greedy_run):
    prompt_ids, ids, full, pieces = greedy_run
    gen, events = run(tiny, prompt_ids, max_tokens=40, stop=[pieces[0]])
    assert gen.stats.stop_reason == STOP_STRING
    assert text_of(events) == "" and len(events) == 1
    # the first of several stop strings to appear wins
    later, earlier = full[20:23], full[5:7]
    assert full.find(earlier) == 5 and full.find(later) > 7, full
    _, events = run(tiny, prompt_ids, max_tokens=40, stop=[later, earlier])
    assert text_of(events) == full[:5]


def test_held_back_stop_prefix_is_flushed_when_the_stop_never_completes(tiny, greedy_run):
    prompt_ids, ids, full, pieces = greedy_run
    # the text ends with the start of this stop string, so it is held back until the end
    stop = full[-2:] + "\x00never"
    gen, events = run(tiny, prompt_ids, max_tokens=40, stop=[stop, ""])
    assert gen.stats.stop_reason == STOP_MAX_TOKENS
    assert text_of(events) == full
    assert events[-1].text.endswith(full[-2:])


def test_stop_string_absent_changes_nothing(tiny, greedy_run):
    prompt_ids, ids, full, _ = greedy_run
    _, events = run(tiny, prompt_ids, max_tokens=40, stop=["\x00nope"])
    assert [e.id for e in events] == ids and text_of(events) == full


# ----------------------------------------------------------------------------- text and sampling
@pytest.mark.parametrize("seed", range(6))
def test_streamed_text_equals_decoding_all_ids(tiny, seed):
    """With random sampling (many byte tokens, often invalid UTF-8) the concatenated event
    texts are exactly what decoding prompt + generated ids adds to the prompt's text."""
    tokenizer = tiny[2]
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
    gen, events = run(tiny, "Once upon a time é", params, max_tokens=40)
    ids = [e.id for e in events]
    prompt_text = tokenizer.decode(gen.prompt_ids)
    assert prompt_text + text_of(events) == tokenizer.decode(gen.prompt_ids + ids)


def test_streamed_text_without_bos(tiny):
    tokenizer = tiny[2]
    ids = tokenizer.encode("ROMEO:", add_bos=False)
    gen, events = run(tiny, ids, SamplingParams(temperature=1.0, seed=3), max_tokens=30)
    assert tokenizer.decode(ids) + text_of(events) == tokenizer.decode(ids + [e.id for e in events])


def test_seeded_sampling_is_reproducible(tiny):
    params = lambda seed: SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
    a = [e.id for e in run(tiny, "Once", params(0), max_tokens=30)[1]]
    b = [e.id for e in run(tiny, "Once", params(0), max_tokens=30)[1]]
    c = [e.id for e in run(tiny, "Once", params(1), max_tokens=30)[1]]
    assert a == b and a != c
    gen, _ = run(tiny, "Once", params(0), max_tokens=1)
    assert gen.stats.seed == 0


def test_logprobs_and_top_logprobs(tiny):
    model, _, tokenizer, hf_model = tiny
    ids = tokenizer.encode("ROMEO:")
    gen, events = run(tiny, ids, max_tokens=3, top_logprobs=4)
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    first = events[0]
    assert first.logprob == pytest.approx(float(ref.max()), abs=1e-4)
    assert [i for i, _ in first.top_logprobs] == ref.topk(4).indices.tolist()
    assert first.top_logprobs[0][0] == first.id
    lps = [lp for _, lp in first.top_logprobs]
    assert lps == sorted(lps, reverse=True)
    _, plain = run(tiny, ids, max_tokens=3)
    assert plain[0].logprob is None and plain[0].top_logprobs == []


class _FavourPadding(torch.nn.Module):
    """Wraps a model so that a padding id (beyond the tokenizer's vocabulary) always wins."""

    def __init__(self, model, pad_id: int) -> None:
        super().__init__()
        self.inner, self.pad_id, self.config = model, pad_id, model.config

    def new_cache(self, **kw):
        return self.inner.new_cache(**kw)

    @property
    def device(self):
        return self.inner.device

    def forward(self, x, **kw):
        logits = self.inner(x, **kw)
        logits[..., self.pad_id] = logits.max() + 100
        return logits


def test_padded_model_vocabulary_never_yields_ids_without_text(tmp_path):
    model_dir, _ = make_tiny_model_dir(tmp_path, vocab_size=TOKENIZER_VOCAB + 20)
    model, config = load_model(model_dir)
    tokenizer = Tokenizer(model_dir / "tokenizer.model")
    assert config.vocab_size > tokenizer.vocab_size
    wrapped = _FavourPadding(model, pad_id=TOKENIZER_VOCAB + 5)
    for params in (GREEDY, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0)):
        events = list(Generation(wrapped, tokenizer, tokenizer.encode("Once"), params, 20,
                                 eos_ids=[], top_logprobs=3))
        assert len(events) == 20
        assert all(e.id < tokenizer.vocab_size for e in events)
        assert all(i < tokenizer.vocab_size for e in events for i, _ in e.top_logprobs)


def test_iteration_does_not_leak_inference_mode(tiny):
    model, _, tokenizer, _ = tiny
    gen = Generation(model, tokenizer, tokenizer.encode("Once"), GREEDY, 10, eos_ids=[])
    it = iter(gen)
    next(it)
    assert not torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()
    assert len(list(it)) == 9


def test_perplexity():
    assert perplexity(0.0, 5) == 1.0
    assert perplexity(10.0, 5) == pytest.approx(2.718281828 ** 2)


# ----------------------------------------------------------------------------- a real model
def test_real_model_greedy_equals_transformers_and_stops_at_a_word(shared):
    from conftest import load_hf

    model_dir = shared / "fixtures" / "realmodels" / "stories260K-hf"
    if not model_dir.is_dir():
        pytest.skip(f"{model_dir} not present")
    model, _ = load_model(model_dir)
    tokenizer = Tokenizer(model_dir / "tokenizer.model")
    ids = tokenizer.encode("Once upon a time")
    with torch.no_grad():
        ref = load_hf(model_dir).generate(torch.tensor([ids]), do_sample=False, max_new_tokens=60,
                                          min_new_tokens=60, pad_token_id=0)[0, len(ids):].tolist()
    events = list(Generation(model, tokenizer, ids, GREEDY, 60, eos_ids=[]))
    assert [e.id for e in events] == ref
    text = text_of(events)
    assert text.startswith(", there was a little girl named Lily. She loved to play outside")
    gen = Generation(model, tokenizer, ids, GREEDY, 60, stop=["Lily"])
    assert text_of(gen) == ", there was a little girl named "
    assert gen.stats.stop_reason == STOP_STRING
