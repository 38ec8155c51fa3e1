"""The sampling filters (llmcli.sampling) on hand-made distributions, and against transformers.

Each filter is checked at its edges (a top-p mass hit exactly, ties at the k-th logit, min-p
relative to the top probability, penalties on negative logits), then the whole chain is
compared with transformers' logits warpers applied in the documented order, and the sampler
with the filtered softmax it claims to draw from.
"""

from __future__ import annotations

import math

import pytest
import torch

from llmcli.errors import UsageError
from llmcli.sampling import (Sampler, SamplingParams, apply_min_p, apply_repeat_penalty,
                             apply_temperature, apply_top_k, apply_top_p, filter_logits,
                             top_p_keep_count)

NEG_INF = float("-inf")


def logits_of(*probs: float) -> torch.Tensor:
    """Logits whose softmax is ``probs`` (which sum to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def kept(logits: torch.Tensor) -> set[int]:
    """Indices not filtered out (finite logits)."""
    return set(torch.isfinite(logits).nonzero().flatten().tolist())


def params(**kw) -> SamplingParams:
    """All filters off unless given."""
    base = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=0)
    return SamplingParams(**{**base, **kw})


# ----------------------------------------------------------------------------- top-p
def test_top_p_mass_hit_exactly_keeps_that_set():
    # 0.5 + 0.3 = 0.8 exactly: the two most probable tokens, not a third
    assert kept(apply_top_p(logits_of(0.5, 0.3, 0.2), 0.8)) == {0, 1}
    assert kept(apply_top_p(logits_of(0.2, 0.5, 0.3), 0.8)) == {1, 2}
    assert len(kept(apply_top_p(logits_of(0.25, 0.25, 0.25, 0.25), 0.5))) == 2  # ties: any two
    assert kept(apply_top_p(logits_of(0.1, 0.2, 0.3, 0.4), 0.7)) == {2, 3}


def test_top_p_just_above_a_boundary_takes_the_next_token():
    assert kept(apply_top_p(logits_of(0.5, 0.3, 0.2), 0.81)) == {0, 1, 2}
    assert kept(apply_top_p(logits_of(0.5, 0.3, 0.2), 0.79)) == {0, 1}
    assert kept(apply_top_p(logits_of(0.5, 0.3, 0.2), 0.5)) == {0}
    assert kept(apply_top_p(logits_of(0.5, 0.3, 0.2), 0.51)) == {0, 1}


def test_top_p_tiny_keeps_one():
    assert kept(apply_top_p(logits_of(0.5, 0.3, 0.2), 1e-9)) == {0}
    assert kept(apply_top_p(logits_of(0.1, 0.6, 0.3), 0.01)) == {1}


def test_top_p_one_keeps_all():
    logits = logits_of(0.97, 0.01, 0.01, 0.01)
    assert torch.equal(apply_top_p(logits, 1.0), logits)


def test_top_p_keeps_original_values_and_positions():
    logits = torch.tensor([1.0, 3.0, -2.0, 2.0])
    out = apply_top_p(logits, 0.9)
    finite = torch.isfinite(out)
    assert torch.equal(out[finite], logits[finite])


def test_top_p_keep_count():
    probs = torch.tensor([0.5, 0.3, 0.2])
    assert [top_p_keep_count(probs, p) for p in (1e-6, 0.5, 0.6, 0.8, 0.9, 1.0)] == [1, 1, 2, 2, 3, 3]


# ----------------------------------------------------------------------------- top-k
def test_top_k_larger_than_vocab_keeps_all():
    logits = torch.tensor([0.1, 2.0, -1.0])
    assert torch.equal(apply_top_k(logits, 3), logits)
    assert torch.equal(apply_top_k(logits, 1000), logits)
    assert torch.equal(apply_top_k(logits, 0), logits)  # 0 = off


def test_top_k_keeps_k_largest():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.5, 0.0])
    assert kept(apply_top_k(logits, 1)) == {1}
    assert kept(apply_top_k(logits, 2)) == {1, 3}
    assert kept(apply_top_k(logits, 3)) == {0, 1, 3}


def test_top_k_ties_at_the_kth_value_are_all_kept():
    # as transformers' TopKLogitsWarper: everything >= the k-th value survives
    logits = torch.tensor([1.0, 3.0, 1.0, 2.0, 1.0, 0.0])
    assert kept(apply_top_k(logits, 3)) == {0, 1, 2, 3, 4}
    assert kept(apply_top_k(logits, 2)) == {1, 3}
    assert kept(apply_top_k(torch.zeros(5), 1)) == {0, 1, 2, 3, 4}


# ----------------------------------------------------------------------------- min-p
def test_min_p_is_relative_to_the_top_probability():
    logits = logits_of(0.5, 0.3, 0.1, 0.06, 0.04)
    # threshold min_p × 0.5: 0.19 keeps 0.5, 0.3 and 0.1; 0.21 drops 0.1; 0.11 keeps 0.06 too
    assert kept(apply_min_p(logits, 0.19)) == {0, 1, 2}
    assert kept(apply_min_p(logits, 0.21)) == {0, 1}
    assert kept(apply_min_p(logits, 0.11)) == {0, 1, 2, 3}
    assert kept(apply_min_p(logits, 0.07)) == {0, 1, 2, 3, 4}
    # a flat distribution loses nothing at any min-p: every token equals the top one
    assert kept(apply_min_p(torch.zeros(6), 1.0)) == set(range(6))
    # the same min-p on a peaked distribution removes more than on a flat one
    peaked = logits_of(0.9, 0.05, 0.05)
    flat = logits_of(0.4, 0.3, 0.3)
    assert kept(apply_min_p(peaked, 0.1)) == {0}
    assert kept(apply_min_p(flat, 0.1)) == {0, 1, 2}


def test_min_p_zero_keeps_all_and_one_keeps_the_top():
    logits = logits_of(0.5, 0.3, 0.2)
    assert torch.equal(apply_min_p(logits, 0.0), logits)
    assert kept(apply_min_p(logits, 1.0)) == {0}


# ----------------------------------------------------------------------------- repeat penalty
def test_repeat_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, -2.0, 4.0, -1.0, 0.0])
    out = apply_repeat_penalty(logits, [0, 1, 1, 4], 2.0)  # duplicates count once
    assert out.tolist() == [1.0, -4.0, 4.0, -1.0, 0.0]
    assert logits.tolist() == [2.0, -2.0, 4.0, -1.0, 0.0]  # input untouched
    assert torch.equal(apply_repeat_penalty(logits, [0, 1], 1.0), logits)
    assert torch.equal(apply_repeat_penalty(logits, [], 2.0), logits)


def test_repeat_penalty_below_one_encourages_repeats():
    out = apply_repeat_penalty(torch.tensor([2.0, -2.0]), [0, 1], 0.5)
    assert out.tolist() == [4.0, -1.0]


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repeat_penalty_matches_transformers(penalty):
    transformers = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(50, generator=g) * 3
    context = torch.randint(0, 50, (30,), generator=g)
    ref = transformers.RepetitionPenaltyLogitsProcessor(penalty)(context[None], logits[None].clone())[0]
    ours = apply_repeat_penalty(logits, context.tolist(), penalty)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert ((ours != logits) == torch.isin(torch.arange(50), context) & (logits != 0)).all()


# ----------------------------------------------------------------------------- temperature
def test_temperature_scales_logits():
    logits = torch.tensor([1.0, -2.0, 0.5])
    assert torch.allclose(apply_temperature(logits, 0.5), logits * 2)
    assert torch.equal(apply_temperature(logits, 1.0), logits)


def test_temperature_zero_is_argmax_of_the_penalised_logits():
    logits = torch.tensor([3.0, 2.5, 1.0, -1.0])
    # greedy ignores top-k/top-p/min-p: nothing random is left to filter
    greedy = Sampler(params(temperature=0, top_k=1000, top_p=0.01, min_p=0.9))
    assert greedy(logits) == 0
    assert greedy(logits, [0]) == 0  # no penalty: the context does not matter
    penalised = Sampler(params(temperature=0, repeat_penalty=2.0))
    assert penalised(logits) == 0
    assert penalised(logits, [0]) == 1      # 3 / 2 = 1.5 < 2.5
    assert penalised(logits, [0, 1]) == 0   # 1.5 > 1.25
    neg = torch.tensor([-1.0, -1.5, -3.0])
    assert penalised(neg, [0]) == 1         # -1 × 2 = -2 < -1.5
    assert filter_logits(logits, params(temperature=0, repeat_penalty=2.0), [0]).tolist() == \
        [1.5, 2.5, 1.0, -1.0]


# ----------------------------------------------------------------------------- the chain
def test_filters_apply_in_the_documented_order():
    # top-k before top-p: top-p sees the mass renormalised over the top k
    order_kp = filter_logits(logits_of(0.4, 0.3, 0.2, 0.1), params(top_k=2, top_p=0.5))
    assert kept(order_kp) == {0}  # (top-p first would keep {0, 1})
    # temperature before top-p: a hotter distribution needs more tokens to reach p
    assert kept(filter_logits(logits_of(0.5, 0.3, 0.2), params(top_p=0.8))) == {0, 1}
    assert kept(filter_logits(logits_of(0.5, 0.3, 0.2), params(temperature=2.0, top_p=0.8))) == {0, 1, 2}
    # top-p before min-p: min-p first would leave 0.44/0.33/0.22 and top-p 0.75 keep two
    assert kept(filter_logits(logits_of(0.4, 0.3, 0.2, 0.1), params(top_p=0.75, min_p=0.5))) == {0, 1, 2}
    # repeat penalty before everything: the penalised token drops out of the top-1
    assert kept(filter_logits(torch.tensor([2.0, 1.5, 0.0]), params(top_k=1, repeat_penalty=2.0), [0])) == {1}


CHAIN_CASES = [
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),           # the defaults
    dict(temperature=1.3, top_k=10, top_p=0.7, min_p=0.0),
    dict(temperature=0.5, top_k=0, top_p=0.5, min_p=0.2),
    dict(temperature=1.0, top_k=5, top_p=1.0, min_p=0.5, repeat_penalty=1.5),
    dict(temperature=2.0, top_k=100, top_p=0.9, min_p=0.01, repeat_penalty=1.1),
    dict(temperature=0.7, top_k=300, top_p=0.3, min_p=0.0, repeat_penalty=0.8),
]


@pytest.mark.parametrize("case", CHAIN_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_filter_chain_matches_transformers_warpers(case):
    """The same kept set and values as transformers' processors in the documented order."""
    tf = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        logits = torch.randn(256, generator=g) * (1 + trial % 4)  # peaked and flat
        context = torch.randint(0, 256, (40,), generator=g)
        p = params(**case)
        chain = []
        if p.repeat_penalty != 1.0:
            chain.append(tf.RepetitionPenaltyLogitsProcessor(p.repeat_penalty))
        chain.append(tf.TemperatureLogitsWarper(p.temperature))
        if p.top_k:
            chain.append(tf.TopKLogitsWarper(p.top_k))
        if p.top_p < 1:
            chain.append(tf.TopPLogitsWarper(p.top_p))
        if p.min_p:
            chain.append(tf.MinPLogitsWarper(p.min_p))
        ref = logits[None].clone()
        for proc in chain:
            ref = proc(context[None], ref)
        ref = ref[0]
        ours = filter_logits(logits, p, context.tolist())
        assert kept(ours) == kept(ref), (trial, sorted(kept(ours) ^ kept(ref)))
        finite = torch.isfinite(ref)
        torch.testing.assert_close(ours[finite], ref[finite], rtol=1e-6, atol=1e-6)


def test_filter_logits_accepts_half_precision_and_tensor_context():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0], dtype=torch.bfloat16)
    out = filter_logits(logits, params(top_k=2, repeat_penalty=2.0), torch.tensor([0]))
    assert out.dtype == torch.float32
    assert kept(out) == {0, 1}


# ----------------------------------------------------------------------------- sampling
def _draws(sampler: Sampler, logits: torch.Tensor, n: int, context=()) -> list[int]:
    return [sampler(logits, context) for _ in range(n)]


def test_same_seed_same_samples_and_seed_zero_is_a_seed():
    logits = torch.zeros(100)
    a = _draws(Sampler(params(seed=0)), logits, 50)
    b = _draws(Sampler(params(seed=0)), logits, 50)
    c = _draws(Sampler(params(seed=1)), logits, 50)
    assert a == b
    assert a != c
    assert Sampler(params(seed=0)).seed == 0


def test_no_seed_draws_and_records_a_random_one():
    s1, s2 = Sampler(params(seed=None)), Sampler(params(seed=None))
    assert s1.seed != s2.seed
    replay = Sampler(params(seed=s1.seed))
    logits = torch.zeros(1000)
    assert _draws(s1, logits, 20) == _draws(replay, logits, 20)


@pytest.mark.parametrize("case", [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=6, top_p=0.9, min_p=0.05),
    dict(temperature=1.5, top_p=0.8, repeat_penalty=1.5),
])
def test_sampling_frequencies_follow_the_filtered_softmax(case):
    logits = torch.tensor([2.0, 1.5, 1.2, 1.0, 0.3, -0.5, -1.0, -3.0, 0.9, 0.1])
    context = [0, 8]
    p = params(seed=1234, **case)
    expected = torch.softmax(filter_logits(logits, p, context), dim=-1).double()
    n = 20_000
    counts = torch.bincount(torch.tensor(_draws(Sampler(p), logits, n, context)),
                            minlength=len(logits)).double()
    removed = expected == 0
    assert counts[removed].sum() == 0, "sampled a filtered-out token"
    exp_counts = expected[~removed] * n
    chi2 = float(((counts[~removed] - exp_counts) ** 2 / exp_counts).sum())
    dof = int((~removed).sum()) - 1
    # the 99.99th percentile of chi-square for dof ≤ 9 is below 34; deterministic (seeded) anyway
    assert chi2 < 34, (chi2, dof, counts.tolist(), exp_counts.tolist())


def test_a_single_surviving_token_is_always_sampled():
    sampler = Sampler(params(top_k=1, seed=5))
    assert set(_draws(sampler, torch.tensor([0.0, 0.1, 5.0, 0.2]), 50)) == {2}


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw, option", [
    (dict(temperature=-1.0), "--temp"),
    (dict(temperature=float("nan")), "--temp"),
    (dict(top_k=-1), "--top-k"),
    (dict(top_p=0.0), "--top-p"),
    (dict(top_p=-0.5), "--top-p"),
    (dict(top_p=1.5), "--top-p"),
    (dict(min_p=-0.1), "--min-p"),
    (dict(min_p=2.0), "--min-p"),
    (dict(repeat_penalty=0.0), "--repeat-penalty"),
    (dict(repeat_penalty=-1.0), "--repeat-penalty"),
    (dict(seed=-1), "--seed"),
])
def test_validate_rejects_bad_values_naming_the_option(kw, option):
    p = params(**kw)
    with pytest.raises(UsageError) as info:
        p.validate()
    assert str(info.value).startswith(option + ":")
    assert info.value.exit_code == 2
    with pytest.raises(UsageError):
        Sampler(p)


@pytest.mark.parametrize("kw", [
    dict(temperature=0.0), dict(top_p=1.0), dict(top_p=1e-9), dict(min_p=0.0), dict(min_p=1.0),
    dict(repeat_penalty=1e-3), dict(top_k=0), dict(seed=0), dict(seed=2**63 - 1),
])
def test_validate_accepts_edge_values(kw):
    params(**kw).validate()


def test_defaults_are_llama_cpp_defaults():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty) == (0.8, 40, 0.95, 0.05, 1.0)
    p.validate()
    assert not p.greedy and SamplingParams(temperature=0).greedy
    assert math.isclose(SamplingParams().top_p, 0.95)
