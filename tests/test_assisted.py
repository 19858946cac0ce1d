"""Assisted generation: the model's greedy text, its exact sampling distribution, its log-probabilities,
streaming and stop strings, and one-line errors for what it does not do.

Compilations dominate the run time: the tests share two small model pairs, and token buffers of one size
(prompts of at most 4 tokens + 12 new ones).
"""

import functools
import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import assisted, sample
from gptjax.data import CharTokenizer
from gptjax.model import GPT, GPTConfig
from gptjax.sample import GenerateOptions

pytestmark = pytest.mark.usefixtures("strict_ranks")

REPO = pathlib.Path(__file__).resolve().parents[1]

CHARS = "abcdefghijklmnop"
PROMPTS = [[1, 2, 3, 4], [6], [7, 8]]
NEW = 12


def init(cfg: GPTConfig, seed: int, scale: float = 3.0):
    """Random params, scaled up: peaked distributions that differ between seeds (at init they are all
    nearly uniform, which a wrong acceptance rule would hardly change)."""
    init_fn = jax.jit(lambda key: GPT(cfg).init(key, jnp.zeros((1, 4), jnp.int32))["params"])  # eager: slower
    return jax.tree_util.tree_map(lambda x: x * scale, init_fn(jax.random.key(seed)))


@pytest.fixture(scope="module")
def target():
    cfg = GPTConfig(vocab_size=len(CHARS), block_size=32, n_layer=2, n_head=2, n_embd=16)
    return init(cfg, 0), cfg


@pytest.fixture(scope="module")
def draft():
    """An unrelated smaller model over the same vocabulary."""
    cfg = GPTConfig(vocab_size=len(CHARS), block_size=24, n_layer=1, n_head=2, n_embd=8)
    return init(cfg, 1), cfg


def generate(model, prompts, options, assistant=None, K=5):
    """[(new token ids as a list, log-probabilities, stats or None)] of the first sequence of each prompt."""
    params, cfg = model
    extra = {} if assistant is None else dict(assistant=assistant, num_assistant_tokens=K)
    out = sample._generate(params, cfg, prompts, GenerateOptions(**options), None, None, **extra)
    return [(seqs[0][0].tolist(), seqs[0][1], seqs[0][2] if assistant else None) for seqs in out]


def rate(stats: dict) -> float:
    return stats["accepted"] / stats["proposed"]


# ----- Greedy: the model's own text ----------------------------------------------------------------------


@pytest.mark.parametrize("which, K", [("itself", 1), ("itself", 4), ("draft", 4)])
def test_greedy_text_is_the_models(target, draft, which, K):
    """Token for token the model's greedy text, whatever the draft: the model itself as the draft has every
    proposal accepted, an unrelated one few."""
    assistant = target if which == "itself" else draft
    options = dict(max_new_tokens=NEW, do_sample=False)
    plain = generate(target, PROMPTS, options)
    assisted_ = generate(target, PROMPTS, options, assistant, K)
    for (want, *_), (got, _, stats) in zip(plain, assisted_, strict=True):
        assert got == want
        assert stats["calls"] <= NEW
        if which == "itself":
            assert rate(stats) == 1.0 and stats["calls"] == -(-NEW // (K + 1))  # K + 1 tokens per call
    if which == "draft":
        assert sum(s["accepted"] for *_, s in assisted_) / sum(s["proposed"] for *_, s in assisted_) < 0.5


def test_greedy_rules_see_each_positions_history(target):
    """Penalties and bans that look back at the text, EOS and min_new_tokens: the same text as without an
    assistant; the model as its own draft has everything accepted only if the draft's and the model's rules
    saw the history each position had (the proposals before it included)."""
    options = dict(max_new_tokens=NEW, do_sample=False, no_repeat_ngram_size=2, repetition_penalty=1.5)
    (first, *_), *_ = generate(target, PROMPTS, options)
    grams = list(zip(PROMPTS[0] + first, (PROMPTS[0] + first)[1:], strict=False))
    assert len(grams) == len(set(grams))  # the rule did bite: no bigram twice
    # The second token as EOS, not allowed before 2 new tokens: the text goes on past it, then ends at one.
    options.update(eos_token_id=first[1], min_new_tokens=2)
    want = generate(target, PROMPTS, options)
    got = generate(target, PROMPTS, options, target, 4)
    assert [g[0] for g in got] == [w[0] for w in want]
    assert all(rate(stats) == 1.0 for *_, stats in got)
    assert want[0][0][1] != first[1]
    assert any(len(w[0]) < NEW and w[0][-1] == first[1] for w in want)  # a row ended at the EOS


# ----- Sampling: the model's distribution, exactly ----------------------------------------------------


def chi_square_bound(dof: int, z: float = 3.72) -> float:
    """The chi-square statistic that `dof` degrees of freedom exceed with probability ~1e-4 (z = 3.72):
    the Wilson-Hilferty approximation."""
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


V = 6  # the sampling test's vocabulary: few enough pairs of tokens to count them all
SAMPLING_PROMPT = [1, 2, 3]


@pytest.fixture(scope="module")
def sampling_models():
    """((params, config) of the model, of the draft, [V + 1, V] logits of each: after the prompt, then
    after the prompt and each token a)."""
    cfg = GPTConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=16)
    draft_cfg = GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=8)
    models = []
    for seed, c in enumerate((cfg, draft_cfg)):
        params = init(c, seed)
        P = len(SAMPLING_PROMPT)
        tokens = np.array([SAMPLING_PROMPT + [0]] + [SAMPLING_PROMPT + [a] for a in range(V)])
        logits = np.asarray(jax.jit(GPT(c).apply)({"params": params}, jnp.asarray(tokens))[0], np.float64)
        models.append(((params, c), np.concatenate([logits[:1, P - 1], logits[1:, P]])))
    return models


def two_token_probs(logits_AV: np.ndarray, options: GenerateOptions) -> np.ndarray:
    """[V, V]: p(a) * p(b | a) of the first two new tokens, from the logits after the prompt (row 0) and
    after the prompt and a (row 1 + a), with the rules written out in numpy (repetition penalty,
    temperature, top-k, in HF's order)."""

    def dist(logits, tokens):
        if options.repetition_penalty:
            penalty = options.repetition_penalty
            penalised = np.where(logits < 0, logits * penalty, logits / penalty)
            logits = np.where(np.isin(np.arange(V), tokens), penalised, logits)
        logits = logits / options.temperature
        if options.top_k:
            logits = np.where(logits < np.sort(logits)[-options.top_k], -np.inf, logits)
        probs = np.exp(logits - logits.max())
        return probs / probs.sum()

    first = dist(logits_AV[0], SAMPLING_PROMPT)
    return np.stack([first[a] * dist(logits_AV[1 + a], SAMPLING_PROMPT + [a]) for a in range(V)])


@pytest.mark.parametrize(
    "K, options, lookup",
    [
        (1, dict(), False),
        (3, dict(temperature=0.7, top_k=4, repetition_penalty=1.5), False),
        (3, dict(temperature=0.7, top_k=4), True),
    ],
    ids=["K1", "K3-rules", "lookup"],
)
def test_sampling_draws_the_models_distribution(sampling_models, K, options, lookup):
    """4000 rows at once (the row loop vmapped): the first two tokens are distributed as the model's
    p(a) p(b | a), not the draft's. K = 1 keeps the bonus token after an accepted proposal; K = 3 with two
    new tokens checks only the proposals up to the end. Prompt lookup proposes the second token after a
    first one that the prompt holds (a = 1: 2; a = 2: 3), a proposal sure of itself."""
    R, prompt = 4000, SAMPLING_PROMPT
    ((params, cfg), logits), ((draft_params, draft_cfg), draft_logits) = sampling_models
    opts = GenerateOptions(max_new_tokens=2, **options)
    want = two_token_probs(logits, opts)
    draft_would = two_token_probs(draft_logits, opts)
    assert 0.5 * np.abs(want - draft_would).sum() > 0.4  # the draft alone would fail the test by far
    if lookup:
        draft_params, draft_cfg = None, None

    key = jax.random.key(0, impl="philox4x32")
    state = assisted.initial_state(params, cfg, draft_params, draft_cfg, prompt, 2, key, K)
    rules, no_eos = opts.rules(prompt_len=len(prompt)), jnp.zeros((0,), jnp.int32)

    def row(state, key):
        state = state.replace(key=key)
        kwargs = dict(config=cfg, draft_config=draft_cfg, K=K, greedy=False, ngram=2 if lookup else 0)
        return assisted.loop(params, draft_params, state, rules, no_eos, state.final, **kwargs)

    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(R))
    out = jax.jit(jax.vmap(row, in_axes=(None, 0)))(state, keys)
    a, b = np.asarray(out.tokens_BL)[:, 0, len(prompt) : len(prompt) + 2].T
    counts = np.zeros((V, V))
    np.add.at(counts, (a, b), 1)
    assert np.all(np.asarray(out.cur) == len(prompt) + 1)

    # Chi-square over the cells expected 5 times or more, the rest pooled into one cell.
    expected, observed = want.ravel() * R, counts.ravel()
    big = expected >= 5
    cells = [
        (observed[big], expected[big]),
        (observed[~big].sum(keepdims=True), expected[~big].sum(keepdims=True)),
    ]
    chi2 = sum(np.sum((o - e) ** 2 / e) for o, e in cells if e.sum() > 0)
    assert chi2 < chi_square_bound(int(big.sum())), (chi2, big.sum())
    assert counts[want == 0].sum() == 0  # nothing top-k rules out
    accepted, proposed = np.asarray(out.accepted).sum(), np.asarray(out.proposed).sum()
    assert 20 < accepted < proposed - 20  # both the acceptance and the residual draw, many times


# ----- Text: log-probabilities, streaming, stop strings -------------------------------------------------


@pytest.fixture(scope="module")
def text_models(target, draft):
    tokenizer = CharTokenizer(CHARS)
    return (*target, tokenizer), (*draft, tokenizer)


def test_logprobs_are_the_models_and_seeds_fix_the_text(text_models):
    """Completion.logprobs: the model's own log-softmax of each chosen token (a full forward pass of the
    prompt and the text), accepted proposals and residual draws alike; same seed, same text."""
    model, assistant = text_models
    params, cfg, tokenizer = model
    options = dict(max_new_tokens=NEW, num_return_sequences=2, seed=3)
    out = sample.complete(model, ["abcd", "g"], assistant=assistant, num_assistant_tokens=4, **options)
    assert len(out) == 4 and out[0].text != out[1].text
    assert all(0 < c.acceptance_rate < 1 for c in out)
    forward = jax.jit(
        lambda tokens: jax.nn.log_softmax(GPT(cfg).apply({"params": params}, tokens)[0], axis=-1)
    )
    for c in out:
        ids = tokenizer.encode(c.prompt) + c.token_ids.tolist()
        logp_TV = np.asarray(forward(jnp.asarray([ids])))[0]
        want = [logp_TV[t - 1, ids[t]] for t in range(len(c.prompt), len(ids))]
        np.testing.assert_allclose(c.logprobs, want, atol=2e-5)
    again = sample.complete(model, ["abcd", "g"], assistant=assistant, num_assistant_tokens=4, **options)
    assert [c.text for c in again] == [c.text for c in out]


def test_streaming_and_stop_strings(text_models):
    """Pieces arrive in bursts (up to K + 1 tokens each) and join into the text; a stop string cuts it as
    without an assistant (greedy: the same text)."""
    model, assistant = text_models
    options = dict(max_new_tokens=NEW, do_sample=False)
    (plain,) = sample.complete(model, "abcd", **options)
    pieces = []
    (c,) = sample.complete(
        model, "abcd", stream=pieces.append, assistant=assistant, num_assistant_tokens=4, **options
    )
    assert c.text == plain.text and "".join(pieces) == c.text and len(pieces) >= 2
    stop = plain.text[5:7]
    (cut,) = sample.complete(model, "abcd", stop=stop, assistant=assistant, num_assistant_tokens=4, **options)
    assert cut.text == plain.text[: plain.text.find(stop)] and cut.acceptance_rate is not None


# ----- What it does not do ----------------------------------------------------------------------------


def test_refusals_are_one_line_errors(text_models):
    model, assistant = text_models
    params, cfg, tokenizer = model
    draft_params, draft_cfg, _ = assistant
    short_draft = (
        draft_params,
        GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8),
        tokenizer,
    )
    other_vocab = (
        draft_params,
        GPTConfig(vocab_size=17, block_size=24, n_layer=1, n_head=2, n_embd=8),
        tokenizer,
    )
    cases = [
        (
            dict(num_beams=2),
            assistant,
            "not beam search (num_beams=2): set num_beams=1 or drop the assistant",
        ),
        (dict(num_assistant_tokens=0), assistant, "num_assistant_tokens=0 must be an integer >= 1"),
        (dict(num_assistant_tokens=32), assistant, "num_assistant_tokens=32 needs K + 1 <= the model's"),
        (
            dict(max_new_tokens=40),
            assistant,
            "a 4-token prompt + 40 new tokens exceed the model's block_size=32",
        ),
        (
            dict(max_new_tokens=6),
            short_draft,
            "exceed the assistant's block_size=8; assisted generation does not",
        ),
        (dict(), other_vocab, "the assistant's vocab_size=17 differs from the model's 16"),
        (dict(), (*assistant[:2], CharTokenizer("ponmlkjihgfedcba")), "the assistant's tokenizer differs"),
        (dict(), assistant[:2], "assistant must be a workdir or a (params, GPTConfig, tokenizer) tuple"),
    ]
    for options, draft_model, message in cases:
        with pytest.raises(ValueError) as e:
            sample.complete(model, "abcd", assistant=draft_model, **{"max_new_tokens": 4, **options})
        assert message in str(e.value) and "\n" not in str(e.value), (options, str(e.value))


# ----- scripts/sample.py ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sample_script_with_an_assistant(tmp_path, text_models):
    """--assistant=WORKDIR: the model's greedy text on stdout, the acceptance rate on stderr and in --out."""
    import json

    from gptjax.convert import save_checkpoint

    model, assistant = text_models
    save_checkpoint(tmp_path / "model", *model)
    save_checkpoint(tmp_path / "draft", *assistant)
    out = tmp_path / "s.jsonl"
    args = [
        f"--workdir={tmp_path / 'model'}",
        f"--assistant={tmp_path / 'draft'}",
        "--num_assistant_tokens=3",
    ]
    args += ["--prompt=abcd", f"--max_new_tokens={NEW}", "--nodo_sample", f"--out={out}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "scripts/sample.py", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (plain,) = sample.complete(model, "abcd", max_new_tokens=NEW, do_sample=False)
    assert done.stdout == "abcd" + plain.text + "\n"
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    rate = record["acceptance_rate"]
    assert 0 <= rate <= 1 and f"{100 * rate:.1f}% of the assistant's proposals accepted" in done.stderr


# ----- Prompt lookup: proposals from the text itself -------------------------------------------------------


def test_prompt_lookup_proposes_what_transformers_finds():
    """The proposals (tokens and count) are HF's PromptLookupCandidateGenerator's, over random texts of a
    3-token vocabulary (many matches) and of 8 (few), for n-grams of up to 1, 2 and 3 tokens."""
    import torch
    from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

    K, L = 4, 24

    @functools.partial(jax.jit, static_argnames="N")
    def lookup(tokens_BL, cur, N):
        state = types.SimpleNamespace(tokens_BL=tokens_BL, cur=cur)
        tokens_BL, q_KV, count = assisted._lookup(state, K, N, 8)
        return jax.lax.dynamic_slice_in_dim(tokens_BL[0], cur + 1, K), q_KV, count

    rng, found = np.random.default_rng(0), 0
    for trial in range(90):
        vocab, N, cur = (3, 8)[trial % 2], 1 + trial % 3, int(rng.integers(0, L - K - 1))
        row = rng.integers(0, vocab, L).astype(np.int32)
        hf = PromptLookupCandidateGenerator(num_output_tokens=K, max_matching_ngram_size=N, max_length=99)
        with_candidates, _ = hf.get_candidates(torch.tensor(row[None, : cur + 1], dtype=torch.long))
        want = with_candidates[0, cur + 1 :].tolist()
        x_K, q_KV, count = lookup(jnp.asarray(row[None]), jnp.int32(cur), N)
        assert int(count) == len(want) and np.asarray(x_K)[: len(want)].tolist() == want, (row, cur, N)
        np.testing.assert_array_equal(q_KV, np.eye(8)[np.asarray(x_K)] * (np.arange(K) < len(want))[:, None])
        found += bool(want)
    assert 20 < found < 85  # texts with and without a match


def test_prompt_lookup_gives_the_models_greedy_text(text_models):
    """Greedy decoding with prompt lookup: token for token the model's text, in fewer model calls where
    the text repeats itself; the options' one-line errors."""
    model, assistant = text_models
    params, cfg, tokenizer = model
    prompts = ["abcabcabca", "ponmlkj"]
    options = dict(max_new_tokens=NEW, do_sample=False)
    plain = sample.complete(model, prompts, **options)
    looked = sample.complete(model, prompts, prompt_lookup_num_tokens=3, max_matching_ngram_size=3, **options)
    assert [c.text for c in looked] == [c.text for c in plain]
    for c, p in zip(looked, plain, strict=True):  # the model's own log-probabilities, as without lookup
        np.testing.assert_allclose(c.logprobs, p.logprobs, atol=2e-5)
    ids = [tokenizer.encode(p) for p in prompts]
    out = sample._generate(
        params, cfg, ids, GenerateOptions(prompt_lookup_num_tokens=3, **options), None, None
    )
    stats = [seqs[0][2] for seqs in out]
    assert all(s["calls"] <= NEW for s in stats) and any(s["accepted"] > 0 for s in stats), stats
    with pytest.raises(ValueError, match="not beam search .* drop prompt_lookup_num_tokens"):
        sample.complete(model, prompts, prompt_lookup_num_tokens=3, num_beams=2, **options)
    with pytest.raises(ValueError, match="give one of them"):
        sample.complete(model, prompts, prompt_lookup_num_tokens=3, assistant=assistant, **options)
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens=3 and max_matching_ngram_size=0 must be"):
        sample.complete(model, prompts, prompt_lookup_num_tokens=3, max_matching_ngram_size=0, **options)
