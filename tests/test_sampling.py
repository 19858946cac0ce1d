"""Generation, continued from test_sample.py (kept under 500 lines): beam sampling's minimum of kept tokens,
ties at top-k, option and prompt checks, seeds, max_length with cropping, the transposed-kernel cache and
the script's choice to stream.
"""

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


@pytest.fixture(scope="module")
def model(tiny_cfg, params):
    return params, tiny_cfg, CharTokenizer("abcdefghijklmnop")


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


def test_each_step_draws_new_random_numbers(tiny_cfg, params):
    """On a uniform model each token is a fresh uniform draw: a row that reused one step's random numbers
    would repeat one token."""
    uniform = jax.tree_util.tree_map(jnp.zeros_like, params)
    for seqs in run(uniform, tiny_cfg, [PROMPT, [1]], max_new_tokens=12, num_return_sequences=2):
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
        (dict(stop=["\n\n", 3]), "must be non-empty strings"),
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
    monkeypatch.setattr(sample, "MATVEC_MIN_KERNEL_BYTES", 0)
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
