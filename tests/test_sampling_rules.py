"""Generation's rules on made-up logits: top-k, top-p, min-p, temperature, the repetition penalty and
no-repeat n-grams each against its definition, draws against the rules' distribution, and HF's rule order.
(Split from test_sample.py, which tests them on the model.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import decode, sample
from gptjax.sample import GenerateOptions

pytestmark = pytest.mark.usefixtures("strict_ranks")


# ----- Each rule on made-up logits --------------------------------------------------------------------


def fake_history(rng, B=4, L=12, vocab=3):
    """Random tokens with left pads and unwritten columns past `cur` (garbage the rules must ignore)."""
    tokens_BL = rng.integers(0, vocab, (B, L)).astype(np.int32)
    cur = L - 3
    mask_BL = np.arange(L)[None, :] <= cur
    mask_BL = mask_BL & (np.arange(L)[None, :] >= rng.integers(0, 4, (B, 1)))
    history = sample.History(jnp.asarray(tokens_BL), jnp.asarray(mask_BL), jnp.int32(cur))
    return history, tokens_BL, mask_BL, cur


def probs_of(logits_BV):
    return np.exp(logits_BV - np.logaddexp.reduce(logits_BV, axis=-1, keepdims=True))


@pytest.mark.parametrize("seed", range(3))
def test_top_k_keeps_exactly_k(seed):
    logits_BV = np.random.default_rng(seed).normal(size=(4, 50)).astype(np.float32)
    for k in (1, 7, 49, 50):
        out_BV = np.asarray(sample.TopK(k)(jnp.asarray(logits_BV), None))
        kept_BV = np.isfinite(out_BV)
        assert (kept_BV.sum(-1) == k).all()
        np.testing.assert_array_equal(kept_BV, logits_BV >= np.sort(logits_BV)[:, -k:][:, :1])
        np.testing.assert_array_equal(out_BV[kept_BV], logits_BV[kept_BV])


@pytest.mark.parametrize("seed", range(3))
def test_top_p_keeps_the_smallest_set_with_mass_p(seed):
    logits_BV = np.random.default_rng(seed).normal(scale=2.0, size=(4, 50)).astype(np.float32)
    probs_BV = probs_of(logits_BV.astype(np.float64))
    for p in (0.05, 0.3, 0.75, 0.999):
        kept_BV = np.isfinite(np.asarray(sample.TopP(p)(jnp.asarray(logits_BV), None)))
        for kept, probs in zip(kept_BV, probs_BV, strict=True):
            m = kept.sum()
            assert set(np.flatnonzero(kept)) == set(np.argsort(-probs)[:m])  # the m most likely
            top = np.sort(probs)[::-1]
            assert top[:m].sum() >= p - 1e-6 and top[: m - 1].sum() < p + 1e-6  # and the fewest


def test_min_p_keeps_tokens_near_the_top():
    logits_BV = np.random.default_rng(0).normal(scale=2.0, size=(4, 50)).astype(np.float32)
    probs_BV = probs_of(logits_BV.astype(np.float64))
    for p in (0.0, 0.05, 0.5, 1.0):
        kept_BV = np.isfinite(np.asarray(sample.MinP(p)(jnp.asarray(logits_BV), None)))
        np.testing.assert_array_equal(kept_BV, probs_BV >= p * probs_BV.max(-1, keepdims=True) * (1 - 1e-6))


def test_temperature_divides():
    logits_BV = jnp.asarray([[1.0, -2.0, 4.0]])
    np.testing.assert_allclose(sample.Temperature(0.5)(logits_BV, None), [[2.0, -4.0, 8.0]])


def test_repetition_penalty_is_hfs_formula():
    history, tokens_BL, mask_BL, _ = fake_history(np.random.default_rng(0), vocab=6)
    logits_BV = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    out_BV = np.asarray(sample.RepetitionPenalty(1.7)(jnp.asarray(logits_BV), history))
    for b in range(4):
        seen = set(tokens_BL[b][mask_BL[b]].tolist())
        for v in range(6):
            x = logits_BV[b, v]
            want = (x * 1.7 if x < 0 else x / 1.7) if v in seen else x  # HF RepetitionPenaltyLogitsProcessor
            np.testing.assert_allclose(out_BV[b, v], want, rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_forbids_exactly_the_repeated_ngrams(n):
    for seed in range(5):
        history, tokens_BL, mask_BL, cur = fake_history(np.random.default_rng(seed), vocab=3)
        out_BV = np.asarray(sample.NoRepeatNGram(n)(jnp.zeros((4, 3)), history))
        for b in range(4):
            text = tokens_BL[b][mask_BL[b]].tolist()  # the real, written tokens
            last = tuple(text[len(text) - (n - 1) :]) if n > 1 else ()
            banned = {text[j + n - 1] for j in range(len(text) - n + 1) if tuple(text[j : j + n - 1]) == last}
            assert set(np.flatnonzero(np.isinf(out_BV[b]))) == banned, (n, text)


def test_draws_follow_the_rules_distribution():
    """_pick (which draws among the k survivors after TopK) samples softmax(rules(logits))."""
    logits_1V = jax.random.normal(jax.random.key(0), (1, 16)) * 2
    n = 20_000
    for rules in [
        (sample.Temperature(0.7), sample.TopK(5), sample.TopP(0.8)),
        (sample.MinP(0.05),),
        (sample.TopK(9), sample.Typical(0.6), sample.EpsilonCutoff(0.02, eta=True)),
    ]:
        probs_V = np.asarray(jax.nn.softmax(sample.apply_rules(rules, logits_1V, None)))[0]
        keys_B = jax.random.split(jax.random.key(1), n)
        tokens_B = decode.pick(rules, jnp.broadcast_to(logits_1V, (n, 16)), None, keys_B)
        freq_V = np.bincount(np.asarray(tokens_B), minlength=16) / n
        assert np.abs(freq_V - probs_V).max() < 0.015, (freq_V, probs_V)
        assert set(np.flatnonzero(freq_V)) <= set(np.flatnonzero(probs_V))


@pytest.mark.parametrize("min_keep", [1, 3])
def test_typical_epsilon_and_eta_equal_hfs_warpers(min_keep):
    """On random logits (some already ruled out, as after top-k): HF's TypicalLogitsWarper,
    EpsilonLogitsWarper and EtaLogitsWarper, min_tokens_to_keep included (beam sampling keeps >= 2)."""
    import torch
    from transformers.generation import logits_process as lp

    rng = np.random.default_rng(0)
    logits_BV = rng.normal(scale=2.0, size=(6, 40)).astype(np.float32)
    logits_BV[3:, rng.permutation(40)[:25]] = -np.inf
    logits_BV[5] = np.linspace(-3, 3, 40)  # one row without ties or -inf, sharply peaked
    pairs = [
        (sample.Typical(0.2, min_keep), lp.TypicalLogitsWarper(0.2, min_tokens_to_keep=min_keep)),
        (sample.Typical(0.9, min_keep), lp.TypicalLogitsWarper(0.9, min_tokens_to_keep=min_keep)),
        (
            sample.EpsilonCutoff(0.03, min_keep=min_keep),
            lp.EpsilonLogitsWarper(0.03, min_tokens_to_keep=min_keep),
        ),
        (
            sample.EpsilonCutoff(0.3, min_keep=min_keep),
            lp.EpsilonLogitsWarper(0.3, min_tokens_to_keep=min_keep),
        ),
        (
            sample.EpsilonCutoff(0.05, eta=True, min_keep=min_keep),
            lp.EtaLogitsWarper(0.05, min_tokens_to_keep=min_keep),
        ),
    ]
    for ours, hf in pairs:
        got = np.asarray(ours(jnp.asarray(logits_BV), None))
        want = hf(None, torch.from_numpy(logits_BV)).numpy()
        np.testing.assert_array_equal(got, want, err_msg=str(ours))
        assert np.isfinite(got).sum(-1).min() >= min_keep
        assert np.isfinite(got).sum() < np.isfinite(logits_BV).sum(), ours  # each drops some tokens


def test_rules_follow_hfs_order():
    options = GenerateOptions(
        top_p=0.9, min_p=0.1, top_k=5, temperature=0.7, no_repeat_ngram_size=2, repetition_penalty=1.2
    )
    names = [type(r).__name__ for r in options.rules()]
    assert names == ["RepetitionPenalty", "NoRepeatNGram", "Temperature", "TopK", "TopP", "MinP"]
    options = GenerateOptions(eta_cutoff=0.1, epsilon_cutoff=0.1, typical_p=0.9, min_p=0.1, top_k=5)
    names = [type(r).__name__ for r in options.rules()]
    assert names == ["TopK", "MinP", "Typical", "EpsilonCutoff", "EpsilonCutoff"]
    assert [getattr(r, "eta", None) for r in options.rules()][-2:] == [False, True]
    greedy = GenerateOptions(top_k=5, temperature=0.7, repetition_penalty=1.2, do_sample=False)
    assert [type(r).__name__ for r in greedy.rules()] == ["RepetitionPenalty"]  # no warpers (as HF)
