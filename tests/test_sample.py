"""Generation: cached logits = full forward, greedy = argmax, rules, beams, seeds, ragged batches, errors.

Compilations dominate the run time, so tests share shapes: every token buffer rounds up to 16 columns
(prompt + new tokens <= 16) and the batches are 1 or 3 prompts, times 2 samples.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gptjax
from gptjax import decode, sample
from gptjax.data import ByteTokenizer, CharTokenizer
from gptjax.model import GPT
from gptjax.sample import GenerateOptions

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]  # ragged: the batch is left-padded


pytestmark = pytest.mark.usefixtures("strict_ranks")


@pytest.fixture(scope="module")
def params(tiny_params):
    return tiny_params


@pytest.fixture(scope="module")
def full_logits(tiny_cfg, params):
    """logits_V after `tokens` (at most block_size) from the plain forward pass, no cache."""
    apply = jax.jit(lambda p, t: GPT(tiny_cfg).apply({"params": p}, t)[0])

    def logits(tokens):
        padded = np.zeros((1, tiny_cfg.block_size), np.int32)  # right pads: causal, so they change nothing
        padded[0, : len(tokens)] = tokens
        return np.asarray(apply(params, padded))[0, len(tokens) - 1]

    return logits


def run(params, cfg, prompts, **options):
    """Token lists: one list of new tokens per prompt and return sequence."""
    out = sample.generate_ids(params, cfg, prompts, GenerateOptions(**options))
    return [[a.tolist() for a in seqs] for seqs in out]


def reference_greedy(cfg, full_logits, prompt, n):
    """Argmax of the full model, with the documented window: past block_size, keep the newest half."""
    tokens, start = list(prompt[-cfg.block_size :]), 0
    for _ in range(n):
        if len(tokens) - start > cfg.block_size:
            start = len(tokens) - cfg.block_size // 2
        tokens.append(int(np.argmax(full_logits(tokens[start:]))))
    return tokens[len(prompt[-cfg.block_size :]) :]


# ----- The engine against the plain model --------------------------------------------------------------


def test_cached_logits_match_full_forward(tiny_cfg, params, full_logits):
    """Prefill + cached steps (left pads, bucket roll, window slides) give the full forward's logits."""
    state, P, final, _ = sample._prepare(params, tiny_cfg, PROMPTS, GenerateOptions(max_new_tokens=11))
    S = state.kv_mask_BS.shape[1]
    forward = jax.jit(decode.forward, static_argnums=1)
    rng = np.random.default_rng(0)
    slides = 0
    for _ in range(final - P + 1):
        if int(state.cur) - int(state.offset) == S:
            state = decode.slide(params, tiny_cfg, state)
            slides += 1
            assert int(state.cur) - int(state.offset) == tiny_cfg.block_size // 2 - 1  # the newest half
        logits_BV, cache = forward(params, tiny_cfg, state)
        cur, offset = int(state.cur), int(state.offset)
        tokens, valid = np.asarray(state.tokens_BL), np.asarray(state.valid_BL)
        for b in range(len(PROMPTS)):
            window = tokens[b, offset : cur + 1][valid[b, offset : cur + 1]]
            np.testing.assert_allclose(logits_BV[b], full_logits(window), rtol=1e-5, atol=1e-5)
        next_B = jnp.asarray(rng.integers(0, tiny_cfg.vocab_size, len(PROMPTS)), jnp.int32)
        state = decode.advance(state, next_B, jnp.zeros(len(PROMPTS)), cache, jnp.zeros((0,), jnp.int32))
    assert slides >= 2


def test_greedy_is_argmax_of_full_model(tiny_cfg, params, full_logits):
    for prompt, n in [(PROMPTS[0], 3), (PROMPTS[2], 13)]:  # within the context, then sliding past it
        got = run(params, tiny_cfg, [prompt], max_new_tokens=n, do_sample=False)[0][0]
        assert got == reference_greedy(tiny_cfg, full_logits, prompt, n)
    assert run(params, tiny_cfg, [PROMPTS[2]], max_new_tokens=13, temperature=0) == [[got]]


def test_one_token_prompts_skip_the_prefill(tiny_cfg, params, full_logits, monkeypatch):
    """Prompts of one token have nothing to prefill: no model call before decoding, the same tokens."""
    calls = []
    monkeypatch.setattr(decode, "_prefill_jit", lambda *a, **k: calls.append(1))
    got = run(params, tiny_cfg, [[6], [3]], max_new_tokens=5, do_sample=False)
    assert calls == [] and got == [[reference_greedy(tiny_cfg, full_logits, p, 5)] for p in ([6], [3])]


def test_one_row_decoding_with_transposed_kernels(tiny_cfg, params, full_logits, monkeypatch):
    """The [out, in] kernel layout that one-row decoding of large models uses (any size here) decodes
    the same tokens, and later calls on the same params reuse one transposed copy."""
    monkeypatch.setattr(decode, "MATVEC_MIN_KERNEL_BYTES", 0)
    got = run(params, tiny_cfg, [PROMPTS[2]], max_new_tokens=13, do_sample=False)[0][0]
    assert got == reference_greedy(tiny_cfg, full_logits, PROMPTS[2], 13)
    flipped = decode._matvec_cache["params"]
    assert flipped["h_0"]["mlp"]["fc"]["kernel"].shape == (4 * tiny_cfg.n_embd, tiny_cfg.n_embd)
    run(params, tiny_cfg, [PROMPTS[0]], max_new_tokens=3, do_sample=False)
    assert decode._matvec_cache["params"] is flipped


@pytest.mark.parametrize(
    "options",
    [dict(do_sample=False), dict(top_k=2, num_return_sequences=2), dict(num_beams=2, num_return_sequences=2)],
    ids=["greedy", "sample", "beams"],
)
def test_ragged_batch_equals_each_prompt_alone(tiny_cfg, params, options):
    batch = run(params, tiny_cfg, PROMPTS, max_new_tokens=3, **options)
    alone = [run(params, tiny_cfg, [p], max_new_tokens=3, **options)[0] for p in PROMPTS]
    assert batch == alone


def test_prompts_draw_independent_random_numbers(tiny_cfg, params):
    """With a uniform model, rows that shared random numbers would give the same text."""
    uniform = jax.tree_util.tree_map(jnp.zeros_like, params)
    out = run(uniform, tiny_cfg, PROMPTS, max_new_tokens=11, top_k=2, num_return_sequences=2)
    rows = [tuple(s) for seqs in out for s in seqs]
    assert len(set(rows)) == len(rows), rows


def test_seed_fixes_the_text(tiny_cfg, params):
    a, b, c = (
        run(params, tiny_cfg, [PROMPTS[0]], max_new_tokens=8, top_k=2, num_return_sequences=2, seed=s)
        for s in (1, 1, 2)
    )
    assert a == b and a != c and a[0][0] != a[0][1]


def test_sampling_rules_hold_on_the_model(tiny_cfg, params, full_logits):
    """Sampled tokens lie in the top-k, and in the top-p and min-p sets, of the model's distribution."""
    prompt = PROMPTS[2]
    top_k = run(params, tiny_cfg, [prompt], max_new_tokens=5, top_k=2, num_return_sequences=2)[0]
    top_p_min_p = run(
        params, tiny_cfg, [prompt], max_new_tokens=5, top_p=0.3, min_p=0.9, num_return_sequences=2
    )[0]

    def top_k_set(probs):
        return set(np.argsort(-probs)[:2])

    def top_p_min_p_set(probs):
        top_p = np.argsort(-probs)[: np.searchsorted(np.cumsum(np.sort(probs)[::-1]), 0.3) + 1]
        return set(top_p) & set(np.flatnonzero(probs >= 0.9 * probs.max()))

    for seqs, allowed in [(top_k, top_k_set), (top_p_min_p, top_p_min_p_set)]:
        for tokens in seqs:
            text = list(prompt)
            for t in tokens:
                logits = full_logits(text).astype(np.float64)
                assert t in allowed(np.exp(logits - np.logaddexp.reduce(logits)))
                text.append(t)
    greedy = run(params, tiny_cfg, [prompt], max_new_tokens=5, do_sample=False)[0][0]
    assert all(any(s != greedy for s in seqs) for seqs in (top_k, top_p_min_p))  # they did sample


def test_no_repeat_ngram_and_repetition_penalty_on_the_model(tiny_cfg, params):
    plain = run(params, tiny_cfg, [PROMPTS[0]], max_new_tokens=20, do_sample=False)[0][0]
    assert len(set(zip(plain, plain[1:], strict=False))) < len(plain) - 1  # greedy repeats bigrams
    for n in (2, 3):
        options = dict(max_new_tokens=20, no_repeat_ngram_size=n, do_sample=False)
        text = PROMPTS[0] + run(params, tiny_cfg, [PROMPTS[0]], **options)[0][0]
        grams = list(zip(*(text[i:] for i in range(n)), strict=False))
        assert len(grams) == len(set(grams)), text
    penalised = run(
        params, tiny_cfg, [PROMPTS[0]], max_new_tokens=20, repetition_penalty=1e6, do_sample=False
    )
    assert len(set(penalised[0][0])) > len(set(plain))


# ----- Beams, EOS, lengths -----------------------------------------------------------------------------


def test_beam_search_with_one_beam_is_greedy(tiny_cfg, params, monkeypatch):
    greedy = run(params, tiny_cfg, PROMPTS, max_new_tokens=11, do_sample=False)
    first = greedy[0][0][2]
    greedy_eos = run(params, tiny_cfg, PROMPTS, max_new_tokens=11, do_sample=False, eos_token_id=first)
    monkeypatch.setattr(GenerateOptions, "mode", property(lambda self: "beam"))  # beam code, 1 beam
    assert run(params, tiny_cfg, PROMPTS, max_new_tokens=11) == greedy
    beam_eos = run(params, tiny_cfg, PROMPTS, max_new_tokens=11, eos_token_id=first, early_stopping=True)
    assert beam_eos == greedy_eos


def test_cold_beam_sampling_is_beam_search(tiny_cfg, params):
    """At a tiny temperature the scores dwarf the Gumbel noise: beam sampling draws the beams that beam
    search takes."""
    options = dict(max_new_tokens=6, num_beams=2, num_return_sequences=2)
    beams = run(params, tiny_cfg, PROMPTS, **options)
    assert run(params, tiny_cfg, PROMPTS, do_sample=True, temperature=1e-4, **options) == beams
    assert run(params, tiny_cfg, PROMPTS, do_sample=True, temperature=3.0, **options) != beams


def test_beam_sampling_draws_by_seed(tiny_cfg, params):
    """Beam sampling (do_sample with beams, as HF): the sampling rules apply, each draw holds distinct
    sequences, the seed fixes the draw and other seeds draw other beams."""
    options = GenerateOptions(num_beams=3, do_sample=True, top_k=5)
    assert options.mode == "beam_sample" and "TopK" in [type(r).__name__ for r in options.rules()]

    def draw(seed):
        options = dict(num_beams=3, num_return_sequences=3, do_sample=True, temperature=3.0, seed=seed)
        return run(params, tiny_cfg, [PROMPTS[0]], max_new_tokens=4, **options)[0]

    first = draw(0)
    assert draw(0) == first and len({tuple(s) for s in first}) == 3
    assert any(draw(seed) != first for seed in (1, 2, 3))


def test_beams_are_the_best_sequences_best_first(tiny_cfg, params, full_logits):
    seqs = run(params, tiny_cfg, [PROMPTS[0]], max_new_tokens=3, num_beams=2, num_return_sequences=2)[0]

    def score(new):
        text = PROMPTS[0] + new
        logp = [full_logits(text[:i]) - np.logaddexp.reduce(full_logits(text[:i])) for i in range(5, 8)]
        return sum(lp[t] for lp, t in zip(logp, new, strict=True))

    scores = [score(s) for s in seqs]
    assert len({tuple(s) for s in seqs}) == 2 and scores == sorted(scores, reverse=True)
    assert scores[0] >= score(run(params, tiny_cfg, [PROMPTS[0]], max_new_tokens=3, do_sample=False)[0][0])


def test_eos_ends_rows_and_the_loop(tiny_cfg, params):
    plain = run(params, tiny_cfg, PROMPTS, max_new_tokens=11, do_sample=False)
    eos = (plain[0][0][1], plain[1][0][3], plain[2][0][0])
    out = run(params, tiny_cfg, PROMPTS, max_new_tokens=11, do_sample=False, eos_token_id=eos)
    for (p,), (o,) in zip(plain, out, strict=True):
        end = next(i for i, t in enumerate(p) if t in eos)
        assert o == p[: end + 1]


def test_lengths_and_cropping(tiny_cfg, params):
    out = run(params, tiny_cfg, PROMPTS, max_length=7, do_sample=False)
    assert [len(s[0]) for s in out] == [2, 2, 2]  # max_length counts the longest prompt (5)
    long = list(range(1, 13))
    with pytest.warns(UserWarning, match="cropped"):
        cropped = run(params, tiny_cfg, [long], max_new_tokens=3, do_sample=False)
    assert cropped == run(params, tiny_cfg, [long[-tiny_cfg.block_size :]], max_new_tokens=3, do_sample=False)


# ----- Text: gptjax.generate, stop strings, streaming, errors -------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_cfg, params):
    return params, tiny_cfg, CharTokenizer("abcdefghijklmnop")


def test_generate_text(model):
    options = dict(max_new_tokens=4, num_return_sequences=2, top_k=2)
    texts = gptjax.generate(model, ["abc", "p", "ghi"], **options)
    assert len(texts) == 6 and all(len(t) == 3 + 4 for t in texts[:2]) and texts[2].startswith("p")
    assert texts[0] != texts[1]
    assert gptjax.generate(model, "abc", **options) == texts[:2]


def test_stop_strings_and_streaming(model):
    options = dict(max_new_tokens=11, temperature=2.0, seed=1)  # hot: varied text, a stop string within
    (full,) = gptjax.generate(model, "abc", **options)
    new = full[3:]
    stop = next(new[i : i + 2] for i in range(3, len(new) - 1) if new.find(new[i : i + 2]) >= 3)
    pieces = []
    (c,) = sample.complete(model, "abc", stop=["zz", stop], stream=pieces.append, **options)
    assert c.text == new[: new.find(stop)] and len(c.token_ids) == new.find(stop) + len(stop)
    assert "".join(pieces) == c.text and len(pieces) >= 3 and all(pieces)  # streamed piece by piece
    assert gptjax.generate(model, "abc", stop=stop, **options) == ["abc" + c.text]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(top_p=0.0), "top_p=0.0 must be in (0, 1]"),
        (dict(top_p=1.5), "top_p=1.5 must be in (0, 1]"),
        (dict(temperature=-1.0), "temperature=-1.0 must be >= 0"),
        (dict(max_new_tokens=0), "max_new_tokens=0 must be > 0"),
        (dict(num_beams=0), "num_beams=0 must be >= 1"),
        (dict(top_k=-1), "top_k=-1 must be >= 0"),
        (dict(min_p=2.0), "min_p=2.0 must be in [0, 1]"),
        (dict(repetition_penalty=0.0), "repetition_penalty=0.0 must be > 0"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences=3 must be <= num_beams=2"),
        (dict(do_sample=False, num_return_sequences=2), "needs sampling or beam search"),
        (dict(max_length=3), "leaves no room after the 3-token prompt"),
        (dict(top_q=0.5), "unknown generation options ['top_q']"),
    ],
)
def test_bad_options_give_one_line_errors(model, options, message):
    with pytest.raises(ValueError) as e:
        gptjax.generate(model, "abc", **options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_empty_prompt_needs_a_start_token(model):
    with pytest.raises(ValueError, match="empty and the tokenizer has no BOS/EOS"):
        gptjax.generate(model, "", max_new_tokens=2)

    class WithEos(CharTokenizer):
        def __init__(self, chars):
            super().__init__(chars)
            self.eos_id = 0  # as GPT-2's <|endoftext|>: a document starts after one

    params, cfg, _ = model
    (text,) = gptjax.generate(
        (params, cfg, WithEos("abcdefghijklmnop")), "", max_new_tokens=3, do_sample=False
    )
    expected = run(params, cfg, [[0]], max_new_tokens=3, do_sample=False, eos_token_id=0)[0][0]
    assert text == "".join("abcdefghijklmnop"[t] for t in expected if t != 0)


def test_given_options_beat_saved_ones_which_beat_the_tokenizers_eos():
    tok = type("Tok", (), {"eos_id": 1})()
    saved = dict(max_new_tokens=5, temperature=0.5, top_k=None, seed=9, prompt="\n")  # prompt: no option
    o = sample.merged_options(saved, tok, temperature=0.8, top_k=None)
    assert (o.temperature, o.seed, o.max_new_tokens, o.top_k, o.eos_token_id) == (0.8, 9, 5, None, (1,))
    o = sample.merged_options(saved, tok, max_length=12)  # beats the saved max_new_tokens too
    assert (o.max_new_tokens, o.max_length) == (None, 12)
    assert sample.merged_options({"eos_token_id": 0, "temperature": None}, tok).eos_token_id == (0,)
    assert sample.merged_options({"eos_token_id": 0}, tok, eos_token_id=[2, 3]).eos_token_id == (2, 3)
    assert sample.merged_options({"temperature": None}, tok).temperature == 1.0  # saved None: unset


def test_streaming_holds_back_the_first_bytes_of_a_character(model, monkeypatch):
    """A character split across tokens (byte-level BPE, bytes) is streamed once whole, never as U+FFFD."""
    new = list("héllo wörld".encode())

    def fake_generate(params, config, prompts, options, on_chunk, chunk, logits_processor):
        assert chunk == 1
        for n in range(1, len(new) + 1):  # one token per chunk, as the decode loop calls it
            if on_chunk(np.asarray([new[:n]])):
                break
        return [[(np.asarray(new, np.int32), np.zeros(len(new), np.float32))]]

    monkeypatch.setattr(sample, "_generate", fake_generate)
    pieces = []
    (c,) = sample.complete((model[0], model[1], ByteTokenizer()), "x", stream=pieces.append)
    assert c.text == "héllo wörld" and "".join(pieces) == c.text and len(pieces) > 2


def test_streaming_never_shows_what_a_longer_stop_string_takes_back(model, monkeypatch):
    """A stop string longer than the text so far may still be starting at its first character: nothing is
    shown until it cannot be (it was, through a negative slice), and the pieces join to the text."""
    new = list(b"abcdefgh")

    def fake_generate(params, config, prompts, options, on_chunk, chunk, logits_processor):
        for n in range(1, len(new) + 1):
            if on_chunk(np.asarray([new[:n]])):
                break
        return [[(np.asarray(new, np.int32), np.zeros(len(new), np.float32))]]

    monkeypatch.setattr(sample, "_generate", fake_generate)
    for stop, text in [("abcd", ""), ("bcdef", "a"), ("zzzz", "abcdefgh")]:
        pieces = []
        (c,) = sample.complete((model[0], model[1], ByteTokenizer()), "x", stream=pieces.append, stop=stop)
        assert c.text == text and "".join(pieces) == text, (stop, pieces)


def test_scanned_checkpoints_decode_like_per_layer_ones(tiny_cfg, params):
    import dataclasses

    scanned_cfg = dataclasses.replace(tiny_cfg, scan_layers=True, remat="full", attention="xla")
    layers = [params[f"h_{i}"] for i in range(tiny_cfg.n_layer)]
    scanned = {k: v for k, v in params.items() if not k.startswith("h_")}
    scanned["h"] = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *layers)
    options = dict(max_new_tokens=11, do_sample=False)
    assert run(scanned, scanned_cfg, PROMPTS, **options) == run(params, tiny_cfg, PROMPTS, **options)


# ----- scripts/sample.py -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sample_script(tmp_path, model):
    """scripts/sample.py on a checkpoint: streams one sample; writes a batch with beams to --out."""
    from gptjax.convert import save_checkpoint

    save_checkpoint(tmp_path / "w", *model)
    (tmp_path / "prompt.txt").write_text("abc")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = [sys.executable, "scripts/sample.py", f"--workdir={tmp_path / 'w'}", "--max_new_tokens=6"]
    run_script = lambda *more: subprocess.run(  # noqa: E731
        [*args, *more], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    out = tmp_path / "s.jsonl"
    single = run_script("--prompt=FILE:" + str(tmp_path / "prompt.txt"), "--seed=3", f"--out={out}")
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert single.stdout == "abc" + record["text"] + "\n"  # streamed, then a newline
    # The same text from Python: a workdir's options default to its config.sample (temperature 0.8, ...).
    assert gptjax.generate(str(tmp_path / "w"), "abc", max_new_tokens=6, seed=3) == ["abc" + record["text"]]
    run_script("--prompt=\\u0061bc", "--prompt=ponm", "--num_beams=3", "--num_samples=2", f"--out={out}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["abc", "abc", "ponm", "ponm"]
    assert all(r["num_tokens"] == 6 and len(r["text"]) == 6 for r in records)
    assert records[0]["options"]["num_beams"] == 3 and records[0]["options"]["max_new_tokens"] == 6
