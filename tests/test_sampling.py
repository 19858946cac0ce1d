"""Generation, continued from test_sample.py (kept under 500 lines): beam sampling's minimum of kept tokens,
top-p's boundary, ties at top-k, EOS and stop strings, pads unseen by the penalties, beam search against
HF's algorithm (EOS, length penalty, early_stopping), option and prompt checks, seeds, max_length with
cropping, the transposed-kernel cache and the script's choice to stream.
"""

import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import gptjax
from gptjax import beam as beam_lib
from gptjax import decode, sample
from gptjax.data import CharTokenizer
from gptjax.model import GPT
from gptjax.sample import GenerateOptions

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPT = [7, 8, 9]


pytestmark = pytest.mark.usefixtures("strict_ranks")


@pytest.fixture(scope="module")
def params(tiny_params):
    return tiny_params


def run(params, cfg, prompts, **options):
    """Token lists: one list of new tokens per prompt and return sequence."""
    out = sample.generate_ids(params, cfg, prompts, GenerateOptions(**options))
    return [[a.tolist() for a in seqs] for seqs in out]


# ----- Beam sampling keeps at least 1 + len(eos) (>= 2) tokens per beam (HF's min_tokens_to_keep) ------


def test_tight_filters_keep_two_tokens_per_beam_in_beam_sampling(tiny_cfg, params):
    """Filters that keep one token would give every beam the same continuation (duplicates), or only the
    EOS (empty sequences); HF keeps max(2, 1 + number of EOS ids) tokens in beam sampling."""
    eos = run(params, tiny_cfg, [PROMPT], max_new_tokens=1, do_sample=False)[0][0][0]  # the likeliest
    beams = dict(max_new_tokens=4, num_beams=3, num_return_sequences=3, do_sample=True)
    for tight in [dict(top_k=1), dict(top_p=0.01), dict(min_p=0.99), dict(top_k=1, eos_token_id=eos)]:
        seqs = run(params, tiny_cfg, [PROMPT], **beams, **tight)[0]
        assert len({tuple(s) for s in seqs}) == 3 and all(seqs), (tight, seqs)

    logits_1V = jnp.asarray([[5.0, 4.0, 3.0, 2.0, -9.0]])
    kept = lambda rule: int(np.isfinite(np.asarray(rule(logits_1V, None))).sum())  # noqa: E731
    for eos_ids, keep in [(None, 2), ([1], 2), ([1, 2], 3)]:
        options = GenerateOptions(
            top_k=1, top_p=0.01, min_p=0.99, num_beams=3, do_sample=True, eos_token_id=eos_ids
        )
        assert [kept(rule) for rule in options.rules()] == [keep] * 3, eos_ids
    sampling = GenerateOptions(top_k=1, top_p=0.01, min_p=0.99, eos_token_id=[1, 2])
    assert [kept(rule) for rule in sampling.rules()] == [1] * 3  # plain sampling keeps one


def test_top_p_keeps_a_top_set_whose_mass_is_exactly_p_alone():
    """HF drops the sorted tokens whose cumulative mass is <= 1 - top_p: a top set with mass exactly top_p is
    the smallest with mass >= top_p, and the next token goes. (Powers of two: exact in float32.)"""
    logits_1V = jnp.log(jnp.asarray([[0.0625, 0.5, 0.125, 0.25, 0.0625]]))
    for p, kept in [(0.5, [1]), (0.75, [1, 3]), (0.875, [1, 2, 3]), (0.8, [1, 2, 3]), (0.4, [1])]:
        out_1V = np.asarray(sample.TopP(p)(logits_1V, None))
        assert np.flatnonzero(np.isfinite(out_1V[0])).tolist() == kept, p
    # 0.9375 is reached with one of the two 0.0625 tokens: the one tied with it stays too.
    assert np.isfinite(np.asarray(sample.TopP(0.9375)(logits_1V, None))).all()


# ----- Top-k draws keep the tokens tied with the k-th ------------------------------------------------------


def test_top_k_draws_keep_ties_with_the_kth():
    """Five tokens tied at the top with top_k=2: the TopK rule (and HF) keeps all five, so the draw must too;
    a row without ties draws what it draws alone."""
    tied_V = np.full(16, -1.0, np.float32)
    tied_V[[1, 4, 6, 9, 13]] = 3.0
    plain_V = np.random.default_rng(0).normal(size=16).astype(np.float32)
    n = 4000
    keys_B = jax.random.split(jax.random.key(0), n)
    tokens_B = np.asarray(decode.pick((sample.TopK(2),), jnp.asarray(np.tile(tied_V, (n, 1))), None, keys_B))
    freq = np.bincount(tokens_B, minlength=16) / n
    assert set(np.flatnonzero(freq)) == {1, 4, 6, 9, 13} and np.abs(freq[[1, 4, 6, 9, 13]] - 0.2).max() < 0.03

    both = decode.pick((sample.TopK(2),), jnp.asarray(np.stack([tied_V, plain_V] * 50)), None, keys_B[:100])
    alone = decode.pick((sample.TopK(2),), jnp.asarray(np.stack([plain_V] * 100)), None, keys_B[:100])
    np.testing.assert_array_equal(np.asarray(both)[1::2], np.asarray(alone)[1::2])


# ----- EOS and stop strings end each row on its own -------------------------------------------------------

DISTINCT = dict(max_new_tokens=11, do_sample=False, no_repeat_ngram_size=1)  # greedy, no token twice


def test_ended_rows_write_pads_and_decoding_stops_when_all_have_ended(tiny_cfg, params):
    """After its EOS a row writes pads (0) (gptjax.decode.advance), and the loop stops once every row has
    ended: on_chunk, called after every token, sees the tokens so far."""
    prompts = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]
    plain = [s for (s,) in run(params, tiny_cfg, prompts, **DISTINCT)]
    eos = (plain[0][1], plain[1][3], plain[2][5])
    ends = [next(i for i, t in enumerate(p) if t in eos) for p in plain]
    assert max(ends) < 9 and min(ends) < max(ends) - 2, (plain, eos)  # rows end apart, before the limit
    seen = []
    options = GenerateOptions(**DISTINCT, eos_token_id=eos)
    out = sample.generate_ids(params, tiny_cfg, prompts, options, on_chunk=seen.append, chunk=1)
    assert [s.shape[1] for s in seen] == list(range(1, max(ends) + 2))  # stopped after the last EOS
    for row, p, end, (o,) in zip(seen[-1], plain, ends, out, strict=True):
        assert row[: end + 1].tolist() == p[: end + 1] == o.tolist()
        assert (row[end + 1 :] == 0).all(), (row, end)


def test_eos_id_0_the_pad_id_ends_rows_at_their_first_eos(tiny_cfg, params):
    """With EOS 0 (as a tokenizer whose <|endoftext|> is 0), the pads written after a row's EOS are EOS ids
    too: a row that ends before the others still returns its tokens up to its first EOS."""
    prompts = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]
    plain = [s for (s,) in run(params, tiny_cfg, prompts, **DISTINCT)]
    eos = [0, plain[1][1]]
    ends = [next((i for i, t in enumerate(p) if t in eos), len(p) - 1) for p in plain]
    assert min(ends) < max(ends), (plain, eos)
    out = [s for (s,) in run(params, tiny_cfg, prompts, **DISTINCT, eos_token_id=eos)]
    assert out == [p[: end + 1] for p, end in zip(plain, ends, strict=True)]


CHARS = "abcdefghijklmnop"


@pytest.fixture(scope="module")
def model(tiny_cfg, params):
    return params, tiny_cfg, CharTokenizer(CHARS)


def test_text_ends_before_the_earliest_stop_string(model):
    """Of several stop strings, the one that occurs first in the text cuts it, whatever their order."""
    (full,) = gptjax.generate(model, "abc", **DISTINCT)
    new = full[3:]  # 11 distinct characters
    (c,) = sample.complete(model, "abc", stop=[new[3:5], new[1:3]], **DISTINCT)
    assert c.text == new[:1] and len(c.token_ids) == 3


def test_stop_strings_end_each_row_on_its_own(model, monkeypatch):
    """A row that hits a stop string does not end the other rows of the batch (checked after every token)."""
    monkeypatch.setattr(sample, "STOP_CHECK_CHUNK", 1)
    a, b = (t[3:] for t in gptjax.generate(model, ["abc", "ghi"], **DISTINCT))
    stop = next(a[i : i + 2] for i in range(len(a) - 1) if a[i : i + 2] not in b)
    assert a.find(stop) < 8, (a, b)  # early in a; never in b
    texts = [c.text for c in sample.complete(model, ["abc", "ghi"], stop=stop, **DISTINCT)]
    assert texts == [a[: a.find(stop)], b]


def test_a_stop_string_at_the_start_of_the_new_text_leaves_no_text(model):
    (full,) = gptjax.generate(model, "abc", **DISTINCT)
    new = full[3:]
    (c,) = sample.complete(model, "abc", stop=new[:2], **DISTINCT)
    assert c.text == "" and c.token_ids.tolist() == [CHARS.index(ch) for ch in new[:2]]


def test_text_ends_before_the_eos_and_token_ids_end_with_it(model):
    """complete(): the text is what comes before the first EOS token (the EOS's own text left out), streamed
    or not; token_ids keep the EOS. A stop string is looked for in that text only."""
    (full,) = gptjax.generate(model, "abc", **DISTINCT)
    new = full[3:]  # 11 distinct characters; the tokenizer's ids are their indices in CHARS
    eos = CHARS.index(new[4])
    ids = [CHARS.index(ch) for ch in new[:5]]
    pieces = []
    (c,) = sample.complete(model, "abc", eos_token_id=eos, stream=pieces.append, **DISTINCT)
    assert c.text == new[:4] and c.token_ids.tolist() == ids and "".join(pieces) == new[:4]
    (c,) = sample.complete(model, "abc", eos_token_id=eos, stop=new[3:5], **DISTINCT)  # ends with the EOS
    assert c.text == new[:4] and c.token_ids.tolist() == ids


def test_an_empty_prompt_starts_from_the_bos_token(model):
    """A tokenizer with distinct BOS and EOS tokens: an empty prompt starts a document, from BOS."""
    params, cfg, _ = model
    tokenizer = CharTokenizer(CHARS)
    tokenizer.bos_id, tokenizer.eos_id = 4, 0
    options = dict(max_new_tokens=3, do_sample=False)
    from_bos, from_eos = (run(params, cfg, [[t]], **options, eos_token_id=0)[0][0] for t in (4, 0))
    assert from_bos != from_eos
    (c,) = sample.complete((params, cfg, tokenizer), "", **options)
    assert c.token_ids.tolist() == from_bos


def test_penalties_do_not_see_the_left_pads_of_a_ragged_batch(tiny_cfg, params):
    """The pads (token 0) that left-align a ragged batch are no text: the repetition penalty and the n-gram
    ban look at each row's own tokens, so that each row gives what its prompt gives alone (within the
    context: past it, pads make a short row slide earlier)."""
    prompts = [[1, 2, 3], [6], [7, 8]]
    for rule in [dict(no_repeat_ngram_size=1), dict(repetition_penalty=1e6)]:
        options = dict(max_new_tokens=5, do_sample=False, **rule)
        alone = [run(params, tiny_cfg, [p], **options)[0] for p in prompts]
        assert any(0 in s for (s,) in alone[1:]), alone  # a padded row writes token 0 alone
        assert run(params, tiny_cfg, prompts, **options) == alone, rule


# ----- Beams and steps carry their own state -----------------------------------------------------------


def test_beam_search_matches_a_cacheless_reference(tiny_cfg, params):
    """Beam search without EOS (HF: the K best sums of log-probabilities, only beam 0 live at the start)
    against a reference that re-runs each beam's whole text: every beam's KV cache and tokens must move
    with the beam it continues. Weights x3: the tiny model's tokens then depend on their context."""
    params = jax.tree_util.tree_map(lambda x: 3 * x, params)
    apply = jax.jit(lambda p, t: GPT(tiny_cfg).apply({"params": p}, t)[0])

    def logp(text):
        padded = np.zeros((1, tiny_cfg.block_size), np.int32)  # right pads: causal, they change nothing
        padded[0, : len(text)] = text
        logits = np.asarray(apply(params, padded))[0, len(text) - 1].astype(np.float64)
        return logits - np.logaddexp.reduce(logits)

    K, n, V = 3, 5, tiny_cfg.vocab_size  # 3 + 5 tokens: within the context
    beams = [(0.0, [])]
    for _ in range(n):
        scored = [(s + lp[t], new + [t]) for s, new in beams for lp in [logp(PROMPT + new)] for t in range(V)]
        beams = sorted(scored, key=lambda c: -c[0])[:K]
    got = run(params, tiny_cfg, [PROMPT], max_new_tokens=n, num_beams=K, num_return_sequences=K)[0]
    assert got == [new for _, new in beams]


def hf_beam_search(logp, prompt, K, n, eos, length_penalty, early_stopping):
    """HF's vectorised beam search (generation/utils.py `_beam_search`) for one prompt, written out: the
    C = max(2, 1 + len(eos)) * K best candidates; those of the top K that end (an EOS, or the last token) join
    the K best finished ones, scored sum(log p) / new_length ** length_penalty; the K best others run on.
    It stops once the finished ones are K and early_stopping is True, or once the best running beam cannot
    do strictly better than the worst finished one (`_check_early_stop_heuristic`: at its current length, or
    at the longest one for early_stopping="never" with length_penalty > 0). New tokens, best first."""
    V, C = len(logp(prompt)), max(2, 1 + len(eos)) * K
    running, finished = [(0.0, [])], []  # (sum of log p, new tokens); (penalised score, new tokens)
    for t in range(1, n + 1):
        scored = [
            (s + lp[v], new + [v]) for s, new in running for lp in [logp(prompt + new)] for v in range(V)
        ]
        cands = sorted(scored, key=lambda c: -c[0])[:C]  # stable: ties in beam, then token order (as topk)
        ends = [new[-1] in eos or t == n for _, new in cands]
        finished += [
            (s / t**length_penalty, new) for (s, new), e in zip(cands[:K], ends[:K], strict=True) if e
        ]
        finished = sorted(finished, key=lambda c: -c[0])[:K]  # stable: a tie keeps the earlier one
        running = [c for c, e in zip(cands, ends, strict=True) if not e][:K]
        best_len = n if early_stopping == "never" and length_penalty > 0 else t
        full = len(finished) == K
        if t == n or (full and early_stopping is True):
            return [new for _, new in finished], t
        if full and not running[0][0] / best_len**length_penalty > finished[-1][0]:
            return [new for _, new in finished], t


def cached_logp(cfg, params):
    """log p(next token | text) of the plain forward pass (no cache), float64, memoised."""
    apply = jax.jit(lambda p, t: GPT(cfg).apply({"params": p}, t)[0])

    @functools.cache
    def logp(text):
        padded = np.zeros((1, cfg.block_size), np.int32)  # right pads: causal, they change nothing
        padded[0, : len(text)] = text
        logits = np.asarray(apply(params, padded))[0, len(text) - 1].astype(np.float64)
        return logits - np.logaddexp.reduce(logits)

    return lambda text: logp(tuple(text))


def test_beam_search_with_eos_follows_hfs_algorithm(tiny_cfg, params):
    """EOS ids, length penalties and every early_stopping against hf_beam_search, on a batch of prompts
    (a prompt whose search has stopped must take no more finished beams while the others go on)."""
    params = jax.tree_util.tree_map(lambda x: 3 * x, params)
    logp = cached_logp(tiny_cfg, params)
    prompts, K, n = [[7, 8, 9], [1], [4, 5]], 3, 5
    beams = dict(max_new_tokens=n, num_beams=K, num_return_sequences=K)
    stopped_early = set()
    for eos in [(8, 11), (1, 9)]:
        for early_stopping in [False, True, "never"]:
            for length_penalty in [1.0, 2.0, -1.0]:
                options = dict(eos_token_id=eos, length_penalty=length_penalty, early_stopping=early_stopping)
                want = [hf_beam_search(logp, p, K, n, eos, length_penalty, early_stopping) for p in prompts]
                assert run(params, tiny_cfg, prompts, **beams, **options) == [s for s, _ in want], options
                stopped_early |= {(early_stopping, t < n) for _, t in want}
    assert stopped_early == {(e, s) for e in [False, True, "never"] for s in [False, True]}


def test_beam_search_stops_when_no_running_beam_can_do_strictly_better(tiny_cfg, params):
    """A uniform model: each new token costs log 16, and the top candidates are the lowest beam and token
    indices. With EOS 0 and 1, the two best beams end at once ([0], [1], each -log 16). length_penalty=2 then
    favours length: the beams that end at step t score -log 16 / t. HF's heuristic stops at step 1 since the
    best running beam ([2], -log 16 / 1**2) can only tie the worst finished one; with early_stopping="never"
    it bounds the running beam at the longest length (-t log 16 / 5**2), which beats -log 16 / t until the
    last step."""
    uniform = jax.tree_util.tree_map(jnp.zeros_like, params)
    K, n, eos = 2, 5, (0, 1)
    beams = dict(max_new_tokens=n, num_beams=K, num_return_sequences=K, eos_token_id=eos)
    assert run(uniform, tiny_cfg, [PROMPT], **beams, length_penalty=2.0)[0] == [[0], [1]]
    never = run(uniform, tiny_cfg, [PROMPT], **beams, length_penalty=2.0, early_stopping="never")[0]
    assert never == [[2, 2, 2, 2, 0], [2, 2, 2, 2, 1]]
    logp = cached_logp(tiny_cfg, uniform)
    for early_stopping in [False, True, "never"]:
        for length_penalty in [2.0, 0.5, 0.0, -1.0]:
            options = dict(length_penalty=length_penalty, early_stopping=early_stopping)
            want, _ = hf_beam_search(logp, PROMPT, K, n, eos, length_penalty, early_stopping)
            assert run(uniform, tiny_cfg, [PROMPT], **beams, **options)[0] == want, options


def beam_steps(next_probs, prompt, K, n, eos, length_penalty, early_stopping):
    """gptjax.beam.step driven by a made-up model, next_probs(new tokens) -> probabilities: new tokens of the
    finished beams, best first."""
    P, L = len(prompt), len(prompt) + n
    tokens_BL = np.zeros((K, L), np.int32)
    tokens_BL[:, :P] = prompt
    state = decode.DecodeState(
        tokens_BL=tokens_BL,
        logp_BL=np.zeros((K, L), np.float32),
        valid_BL=np.ones((K, L), bool),
        cache=[],
        kv_mask_BS=np.ones((K, L), bool),
        cur=np.int32(P - 1),
        offset=np.int32(0),
        first=np.int32(P),
        final=np.int32(L - 1),
        pos_B=np.zeros(K, np.int32),
        done_B=np.zeros(K, bool),
        keys_B=jax.random.split(jax.random.key(0), K),
        beam=beam_lib.initial(1, K, L),
    )
    eos_E, length_penalty = jnp.asarray(eos, jnp.int32), jnp.float32(length_penalty)
    while int(state.cur) < L - 1 and not decode.finished(state, early_stopping):
        new_RN = np.asarray(state.tokens_BL)[:, P : int(state.cur) + 1]
        logits_RV = jnp.log(jnp.asarray([next_probs(tuple(new)) for new in new_RN.tolist()], jnp.float32))
        history = decode.history_of(state)
        state = beam_lib.step(state, logits_RV, [], history, (), eos_E, length_penalty, early_stopping, False)
    fin_BKL, fin_len_BK = np.asarray(state.beam.fin_tokens_BKL), np.asarray(state.beam.fin_len_BK)
    return [fin_BKL[0, k, P : P + fin_len_BK[0, k]].tolist() for k in range(K)]


def test_never_with_a_negative_length_penalty_bounds_beams_at_their_current_length():
    """HF's "never" bounds the running beams at the longest length only for length_penalty > 0: with -1 (score
    = sum(log p) * length, longer is worse) it uses the current length, as early_stopping=False does.
    A made-up model (EOS 0, two beams): [0] ends at once (log 0.8); at step 2 [2, 0] ends (2 (log 0.04 +
    log 0.3) = -8.85) and fills the finished beams. The running [1, 3] (log 0.15 + log 0.98) bounds -3.83 at
    its length, -9.59 at the longest: it must go on, and [1, 3, 4, 0] ends at step 4 with a better -7.83."""
    rest = lambda probs: [probs.get(v, (1 - sum(probs.values())) / (8 - len(probs))) for v in range(8)]
    table = {
        (): {0: 0.8, 1: 0.15, 2: 0.04},
        (1,): {3: 0.98},
        (2,): {0: 0.3},
        (1, 3): {4: 0.98},
        (1, 3, 4): {0: 0.98},
    }
    next_probs = lambda new: rest(table.get(new, {}))
    logp = lambda text: np.log(next_probs(tuple(text[1:])))
    want = {False: [[0], [1, 3, 4, 0]], "never": [[0], [1, 3, 4, 0]], True: [[0], [2, 0]]}
    for early_stopping, seqs in want.items():
        assert hf_beam_search(logp, [1], 2, 5, (0,), -1.0, early_stopping)[0] == seqs
        assert beam_steps(next_probs, [1], 2, 5, (0,), -1.0, early_stopping) == seqs, early_stopping


def test_beam_sampling_ranks_the_drawn_beams_by_their_scores(tiny_cfg, params):
    """Beam sampling draws candidates with Gumbel noise but keeps their scores (HF gathers the drawn
    candidates' summed log-probabilities): the beams come back best first by sum(log p), not by the noise."""
    logp = cached_logp(tiny_cfg, params)
    beams = dict(max_new_tokens=4, num_beams=3, num_return_sequences=3, do_sample=True, temperature=3.0)
    for seed in range(6):
        seqs = run(params, tiny_cfg, [PROMPT], **beams, seed=seed)[0]
        scores = [sum(logp(PROMPT + s[:i])[t] for i, t in enumerate(s)) for s in seqs]
        assert scores == sorted(scores, reverse=True), (seed, seqs, scores)


def test_each_step_draws_new_random_numbers(tiny_cfg, params):
    """On a uniform model each token is a fresh uniform draw: a row that reused one step's random numbers
    would repeat one token."""
    uniform = jax.tree_util.tree_map(jnp.zeros_like, params)
    for seqs in run(uniform, tiny_cfg, [PROMPT, [1]], max_new_tokens=12, num_return_sequences=2):
        assert all(len(set(s)) > 3 for s in seqs), seqs


def test_each_beam_sampling_step_draws_new_random_numbers(tiny_cfg, params):
    """On a uniform model beam sampling draws uniform candidates: noise reused from step to step would pick
    the same candidates (beam, token) again and again."""
    uniform = jax.tree_util.tree_map(jnp.zeros_like, params)
    beams = dict(max_new_tokens=12, num_beams=3, num_return_sequences=3, do_sample=True)
    for seqs in run(uniform, tiny_cfg, [PROMPT, [1]], **beams):
        assert all(len(set(s)) > 3 for s in seqs), seqs


# ----- Options, prompts, seeds --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_new_tokens=2.0), "max_new_tokens=2.0 must be an integer"),
        (dict(top_k=2.5), "top_k=2.5 must be an integer"),
        (dict(no_repeat_ngram_size=2.0), "no_repeat_ngram_size=2.0 must be an integer"),
        (dict(num_beams=2.0), "num_beams=2.0 must be an integer"),
        (dict(temperature=None), "temperature=None must be a number"),
        (dict(length_penalty=None), "length_penalty=None must be a number"),
        (dict(eos_token_id="<eos>"), "eos_token_id='<eos>' must be token ids, not text"),
        (dict(eos_token_id=[1.5]), "eos_token_id=1.5 must be an integer"),
        (dict(seed=-1), "seed=-1 must be in [0, 2**32)"),
        (dict(seed=2**32), "seed=4294967296 must be in [0, 2**32)"),  # Philox would repeat seed 0
        (dict(do_sample="false"), "do_sample='false' must be True, False or None"),  # a truthy string
        (dict(stop=["\n\n", 3]), "must be a string or a list of non-empty strings"),
    ],
)
def test_bad_option_types_give_one_line_errors(options, message):
    with pytest.raises(ValueError) as e:
        GenerateOptions(**options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_numpy_integers_are_options():
    options = GenerateOptions(max_new_tokens=np.int64(2), top_k=np.int32(3), seed=np.uint32(2**32 - 1))
    assert (options.max_new_tokens, options.top_k, options.seed) == (2, 3, 2**32 - 1)
    assert type(options.max_new_tokens) is int
    assert GenerateOptions(eos_token_id=np.int64(4)).eos_token_id == (4,)


def test_options_at_their_bounds_are_valid_and_filter_nothing():
    """HF's neutral values are accepted and add no rule: top_p=1.0 (HF's default), min_p=0, top_k=0,
    repetition_penalty=1.0, no_repeat_ngram_size=0, typical_p=1.0, epsilon_cutoff=0, eta_cutoff=0,
    min_new_tokens=0, and empty token lists."""
    neutral = dict(top_p=1.0, min_p=0.0, top_k=0, repetition_penalty=1.0, no_repeat_ngram_size=0)
    neutral.update(typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, min_new_tokens=0, eos_token_id=1)
    neutral.update(suppress_tokens=[], begin_suppress_tokens=[], bad_words_ids=[], sequence_bias={})
    assert [type(r).__name__ for r in GenerateOptions(**neutral, temperature=0.5).rules()] == ["Temperature"]
    assert [type(r).__name__ for r in GenerateOptions(min_p=1.0).rules()] == ["MinP"]


@pytest.mark.parametrize(
    "prompts, message",
    [
        ([5, 6, 7], "prompts must be a list of token-id lists; wrap one prompt as [ids]"),
        ("abc", "prompts must be a list of token-id lists; wrap one prompt as [ids]"),
        (["abc"], "prompts must be a list of token-id lists; wrap one prompt as [ids]"),
        ([[5, 1.7]], "prompt token ids must be integers; got 1.7"),
    ],
)
def test_bad_prompts_give_one_line_errors(tiny_cfg, params, prompts, message):
    with pytest.raises(ValueError) as e:
        sample.generate_ids(params, tiny_cfg, prompts, GenerateOptions(max_new_tokens=2))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_max_length_counts_the_prompt_before_cropping(tiny_cfg, params):
    """HF: max_length = prompt length + new tokens, the prompt as given (here 12 tokens, cropped to 8)."""
    long = list(range(1, 13))
    with pytest.warns(UserWarning, match="cropped"):
        (seqs,) = run(params, tiny_cfg, [long], max_length=14, do_sample=False)
    assert len(seqs[0]) == 2
    with pytest.raises(ValueError, match="max_length=12 leaves no room after the 12-token prompt"):
        run(params, tiny_cfg, [long], max_length=12, do_sample=False)


# ----- The transposed-kernel cache of one-row decoding ------------------------------------------------------


def test_numpy_params_edited_in_place_decode_with_the_new_weights(tiny_cfg, params, monkeypatch):
    """numpy arrays keep their identity when edited in place: their transposed copy must not be reused."""
    monkeypatch.setattr(decode, "MATVEC_MIN_KERNEL_BYTES", 0)
    numpy_params = jax.tree_util.tree_map(np.array, params)
    before = run(numpy_params, tiny_cfg, [PROMPT], max_new_tokens=8, do_sample=False)
    for path, leaf in jax.tree_util.tree_leaves_with_path(numpy_params):
        if path[-1].key == "kernel":
            leaf *= -3.0
    after = run(numpy_params, tiny_cfg, [PROMPT], max_new_tokens=8, do_sample=False)
    fresh = jax.tree_util.tree_map(jnp.array, numpy_params)
    assert after == run(fresh, tiny_cfg, [PROMPT], max_new_tokens=8, do_sample=False) != before


# ----- scripts/sample.py ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sample_script_with_saved_beam_search(tmp_path, tiny_cfg, params):
    """A checkpoint whose config.sample asks for beams: the script prints the beams' text, not a stream."""
    from gptjax.convert import base_config, save_checkpoint

    config = base_config(tiny_cfg)
    config.sample = ml_collections.ConfigDict(dict(max_new_tokens=5, num_beams=3))
    save_checkpoint(tmp_path / "w", params, tiny_cfg, CharTokenizer("abcdefghijklmnop"), config)
    result = subprocess.run(
        [sys.executable, "scripts/sample.py", f"--workdir={tmp_path / 'w'}", "--prompt=abc"],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "----- sample 0 -----" and lines[1].startswith("abc") and len(lines[1]) == 3 + 5
