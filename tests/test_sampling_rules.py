"""Generation's rules on made-up logits: top-k, top-p, min-p, temperature, the repetition penalty and
no-repeat n-grams each against its definition, draws against the rules' distribution, and HF's rule order;
typical, epsilon and eta against HF's warpers (at their exact bounds too), sequence biases and bad words
against HF's processors on short texts and behind left pads. (Split from test_sample.py, which tests them
on the model.)
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


# ----- Words, biases and the new filters: edge cases ------------------------------------------------------


def test_sequence_bias_and_bad_words_equal_hfs_from_the_first_token():
    """HF's SequenceBiasLogitsProcessor and NoBadWordsLogitsProcessor on every text of 1 to 8 tokens (no
    pads): a word longer than the text so far matches nothing, even where its prefix equals the text padded
    on the left with the first token (History.last)."""
    import torch
    from transformers.generation import logits_process as lp

    rng = np.random.default_rng(0)
    B, L, V = 6, 8, 6
    tokens_BL = rng.integers(0, 3, (B, L)).astype(np.int32)
    tokens_BL[:, :2] = 1  # every text starts 1 1: words of 1 1 1 ... would match if clipped
    bias = {(1, 1, 4): 2.0, (1, 1, 1, 5): -3.0, (2, 1, 3): 1.5, (0, 2): -1.0, (4,): 0.5}
    bad = [[1, 1, 1, 3], [1, 1, 2], [2, 2], [5]]
    rules = GenerateOptions(sequence_bias=bias, bad_words_ids=bad, eos_token_id=5, do_sample=False).rules()
    hf = [
        lp.SequenceBiasLogitsProcessor([[list(w), b] for w, b in bias.items()]),
        lp.NoBadWordsLogitsProcessor(bad, 5),
    ]
    for cur in range(L):
        logits_BV = rng.normal(size=(B, V)).astype(np.float32)
        mask_BL = np.broadcast_to(np.arange(L) <= cur, (B, L))
        history = sample.History(jnp.asarray(tokens_BL), jnp.asarray(mask_BL), cur)
        got = np.asarray(sample.apply_rules(rules, jnp.asarray(logits_BV), history))
        want = torch.from_numpy(logits_BV)
        for p in hf:
            want = p(torch.from_numpy(tokens_BL[:, : cur + 1]).long(), want)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, err_msg=f"cur={cur}")


def test_words_never_match_left_pads():
    """Left pads (id 0) before a prompt are no text: with words made of 0s, each row's biases and bans are
    HF's on its real tokens alone, however many pads come first."""
    import torch
    from transformers.generation import logits_process as lp

    rng = np.random.default_rng(1)
    B, L, V = 5, 8, 5
    pads_B = np.asarray([0, 1, 2, 3, 3])
    tokens_BL = rng.integers(0, 3, (B, L)).astype(np.int32)
    tokens_BL[np.arange(L)[None, :] < pads_B[:, None]] = 0
    tokens_BL[np.arange(B), pads_B] = 0  # each text starts with 0, like its pads
    bias = {(0, 0, 3): -2.0, (0, 0, 0, 4): 1.0, (0, 1): 0.5}
    bad = [[0, 0, 2], [0, 0, 0, 0, 1]]
    rules = GenerateOptions(sequence_bias=bias, bad_words_ids=bad, do_sample=False).rules()
    hf = [
        lp.SequenceBiasLogitsProcessor([[list(w), b] for w, b in bias.items()]),
        lp.NoBadWordsLogitsProcessor(bad),
    ]
    for cur in range(pads_B.max(), L):
        logits_BV = rng.normal(size=(B, V)).astype(np.float32)
        mask_BL = (np.arange(L)[None, :] >= pads_B[:, None]) & (np.arange(L)[None, :] <= cur)
        history = sample.History(jnp.asarray(tokens_BL), jnp.asarray(mask_BL), cur)
        got = np.asarray(sample.apply_rules(rules, jnp.asarray(logits_BV), history))
        for b in range(B):
            want = torch.from_numpy(logits_BV[b : b + 1])
            for p in hf:
                want = p(torch.from_numpy(tokens_BL[b : b + 1, pads_B[b] : cur + 1]).long(), want)
            np.testing.assert_allclose(got[b : b + 1], want.numpy(), rtol=1e-6, err_msg=f"cur={cur} row={b}")


def test_typical_epsilon_and_eta_keep_one_more_than_the_eos_ids_in_beam_sampling():
    """As top-k, top-p and min-p do (HF's min_tokens_to_keep): max(2, 1 + number of EOS ids) per beam in
    beam sampling, 1 in plain sampling, where each filter alone would keep the one dominant token."""
    logits_1V = jnp.asarray([[9.0, 1.0, 0.5, 0.0, -9.0]])
    kept = lambda rule: int(np.isfinite(np.asarray(rule(logits_1V, None))).sum())  # noqa: E731
    tight = dict(typical_p=0.2, epsilon_cutoff=0.5, eta_cutoff=0.5)
    for eos_ids, keep in [(None, 2), ([1], 2), ([1, 2], 3)]:
        options = GenerateOptions(num_beams=3, do_sample=True, eos_token_id=eos_ids, **tight)
        assert [kept(rule) for rule in options.rules()] == [keep] * 3, eos_ids
    assert [kept(rule) for rule in GenerateOptions(eos_token_id=[1, 2], **tight).rules()] == [1] * 3


def test_typical_and_epsilon_at_their_bounds_exactly():
    """Probabilities 1/2, 1/4, 1/8, 1/8 (exact in float32). Their entropy is 1.75 bits, so by surprise the
    most typical tokens are 1 (2 bits), then 0 (1 bit), then 2 and 3 (3 bits, tied): as top-p and HF's
    TypicalLogitsWarper, a set whose mass is exactly typical_p is the smallest with mass >= typical_p.
    epsilon_cutoff drops only the tokens less likely than epsilon, not those exactly as likely (HF)."""
    import torch
    from transformers.generation import logits_process as lp

    logits_1V = jnp.log(jnp.asarray([[0.5, 0.25, 0.125, 0.125]]))
    cases = [
        (sample.Typical(p), lp.TypicalLogitsWarper(p), kept)
        for p, kept in [(0.25, [1]), (0.5, [0, 1]), (0.75, [0, 1]), (0.8, [0, 1, 2, 3])]
    ]
    cases += [
        (sample.EpsilonCutoff(e), lp.EpsilonLogitsWarper(e), kept)
        for e, kept in [(0.125, [0, 1, 2, 3]), (0.25, [0, 1]), (0.5, [0])]
    ]
    for ours, hf, kept in cases:
        out_1V = np.asarray(ours(logits_1V, None))
        assert np.flatnonzero(np.isfinite(out_1V[0])).tolist() == kept, ours
        np.testing.assert_array_equal(out_1V, hf(None, torch.tensor(np.asarray(logits_1V))).numpy())


def test_min_length_zero_or_within_the_prompt_adds_no_rule():
    """min_length=0 is HF's default; a min_length the prompt already reaches holds nothing back."""
    for min_length in (0, 2, 3):
        assert GenerateOptions(min_length=min_length, eos_token_id=1).rules(prompt_len=3) == ()
    (rule,) = GenerateOptions(min_length=5, min_new_tokens=1, eos_token_id=1).rules(prompt_len=3)
    assert (type(rule).__name__, rule.n) == ("MinNewTokens", 2)
