"""Generation options beyond sampling: min_new_tokens / min_length, bad_words_ids, sequence_bias,
suppress_tokens / begin_suppress_tokens (each against HF's logits processor, and through HF generate()
on a converted GPT-2), and the model's log-probability of every generated token.
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

from gptjax import cli, sample
from gptjax.data import CharTokenizer
from gptjax.model import GPT
from gptjax.sample import GenerateOptions
from gptjax.sampling import History, apply_rules

pytestmark = pytest.mark.usefixtures("strict_ranks")

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = [[1, 2, 3, 4, 5], [6], [7, 8, 9]]  # ragged: the batch is left-padded


@pytest.fixture(scope="module")
def params(tiny_params):
    return tiny_params


@pytest.fixture(scope="module")
def log_softmax_of(tiny_cfg, params):
    """log p(next token) [len(tokens), V] at every position of `tokens` (at most block_size), no cache."""
    apply = jax.jit(lambda p, t: jax.nn.log_softmax(GPT(tiny_cfg).apply({"params": p}, t)[0], axis=-1))

    def logp(tokens):
        padded = np.zeros((1, tiny_cfg.block_size), np.int32)  # right pads: causal, so they change nothing
        padded[0, : len(tokens)] = tokens
        return np.asarray(apply(params, padded))[0, : len(tokens)]

    return logp


# ----- Each rule against HF's logits processor ------------------------------------------------------------


def hf_processors(options: dict, prompt_len: int):
    """HF's processors for the options, as generate() builds them (transformers.generation.logits_process)."""
    from transformers.generation import logits_process as lp

    eos = options.get("eos_token_id")
    out = []
    if "sequence_bias" in options:
        bias = options["sequence_bias"]
        bias = bias.items() if isinstance(bias, dict) else bias
        out.append(lp.SequenceBiasLogitsProcessor([[list(w), b] for w, b in bias]))
    if "repetition_penalty" in options:
        out.append(lp.RepetitionPenaltyLogitsProcessor(options["repetition_penalty"]))
    if "no_repeat_ngram_size" in options:
        out.append(lp.NoRepeatNGramLogitsProcessor(options["no_repeat_ngram_size"]))
    if "bad_words_ids" in options:
        out.append(lp.NoBadWordsLogitsProcessor(options["bad_words_ids"], eos))
    if "min_length" in options:
        out.append(lp.MinLengthLogitsProcessor(options["min_length"], eos))
    if "min_new_tokens" in options:
        out.append(lp.MinNewTokensLengthLogitsProcessor(prompt_len, options["min_new_tokens"], eos))
    if "suppress_tokens" in options:
        out.append(lp.SuppressTokensLogitsProcessor(options["suppress_tokens"]))
    if "begin_suppress_tokens" in options:
        out.append(lp.SuppressTokensAtBeginLogitsProcessor(options["begin_suppress_tokens"], prompt_len))
    return out


RULE_OPTIONS = [
    dict(min_new_tokens=3, eos_token_id=[2, 5]),
    dict(min_length=6, eos_token_id=4),
    dict(suppress_tokens=[0, 3, 9]),
    dict(begin_suppress_tokens=[1, 2]),
    # One-token words are banned everywhere (an EOS alone never is, as HF); longer ones after their prefix.
    dict(bad_words_ids=[[7], [2, 3], [1, 2, 3], [3, 3], [5]], eos_token_id=5),
    dict(sequence_bias=[((4,), 2.5), ((2, 3), -1.5), ((9, 2, 3), 3.0), ((2, 3), 1.0)]),
    dict(bad_words_ids=[[2, 3]], sequence_bias={(1,): -2.0}, min_new_tokens=2, eos_token_id=[6]),
    # Both minimums: the later one holds (HF applies both processors).
    dict(min_new_tokens=2, min_length=7, eos_token_id=[1]),
    dict(min_new_tokens=5, min_length=4, eos_token_id=[1]),
    # Only the EOS alone is spared: a longer word that starts with it is banned (a prompt may end with it).
    dict(bad_words_ids=[[2], [2, 3], [1, 2, 0]], eos_token_id=2),
    # Biases come before the penalties, which then scale the biased logits (HF's order).
    dict(sequence_bias={(3,): 2.0, (1, 3): -1.0}, repetition_penalty=1.5, no_repeat_ngram_size=2),
]


@pytest.mark.parametrize("options", RULE_OPTIONS)
def test_rules_equal_hfs_logits_processors(options):
    """On made-up text and logits, at every step of a prompt of 3 then 6 new tokens: HF's scores."""
    import torch

    rng = np.random.default_rng(0)
    V, prompt_len = 10, 3
    tokens = rng.integers(0, 4, (4, 9)).astype(np.int32)  # few distinct ids, so prefixes do match
    tokens[0, 3:6] = [2, 3, 3]  # bad words and biased sequences end here
    tokens[1, 4:7] = [1, 2, 3]
    rules = GenerateOptions(do_sample=False, **options).rules(prompt_len=prompt_len)
    assert rules, options
    seen_ban = False
    for cur in range(prompt_len - 1, tokens.shape[1]):
        logits = rng.normal(size=(4, V)).astype(np.float32)
        history = History(
            jnp.asarray(tokens), jnp.asarray(np.arange(9) <= cur)[None].repeat(4, 0), cur, prompt_len
        )
        got = np.asarray(apply_rules(rules, jnp.asarray(logits), history))
        want, ids = torch.from_numpy(logits), torch.from_numpy(tokens[:, : cur + 1]).long()
        for p in hf_processors(options, prompt_len):
            want = p(ids, want)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, err_msg=f"{options} cur={cur}")
        seen_ban |= bool(np.any(np.isneginf(got) | (got != logits)))
    assert seen_ban  # the rules changed something somewhere


def test_sequence_bias_and_bad_words_never_match_left_pads():
    """A word whose prefix is the pad id 0 matches text only, never the left pads before a prompt."""
    rules = GenerateOptions(bad_words_ids=[[0, 3, 4], [0, 0, 4]], do_sample=False).rules()
    tokens = jnp.asarray([[0, 0, 3], [0, 0, 0]], jnp.int32)  # row 0: pads then 3; row 1: 0 0 0 as text
    mask = jnp.asarray([[False, False, True], [True, True, True]])
    out = np.asarray(apply_rules(rules, jnp.zeros((2, 5)), History(tokens, mask, 2, 3)))
    assert np.all(out[0] == 0) and np.isneginf(out[1, 4]) and np.all(out[1, :4] == 0)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(bad_words_ids=[1, 2]), "must be a list of token-id lists; wrap one word as [[ids]]"),
        (dict(bad_words_ids=[[1], []]), "must not hold an empty list"),
        (dict(bad_words_ids=[[1, -2]]), "must be token ids >= 0"),
        (dict(bad_words_ids="no"), "must be a list of token-id lists"),
        (dict(suppress_tokens=[[1]]), "suppress_tokens=[[1]] must be a list of token ids"),
        (dict(begin_suppress_tokens=[1.5]), "must be an integer"),
        (dict(sequence_bias=[[1, 2]]), "must be {(token ids...): bias} or [[token ids, bias], ...]"),
        (dict(sequence_bias=[[[], 2.0]]), "needs non-empty token ids and a number"),
        (dict(sequence_bias={(1,): "x"}), "needs non-empty token ids and a number"),
        (dict(sequence_bias=5), "must be {(token ids...): bias} or [[token ids, bias], ...]"),
        (dict(min_new_tokens=-1), "min_new_tokens=-1 must be >= 0"),
        (dict(typical_p=0.0), "typical_p=0.0 must be in (0, 1]"),
        (dict(epsilon_cutoff=1.0), "epsilon_cutoff=1.0 must be in [0, 1) (0 keeps all)"),
        (dict(eta_cutoff=-0.1), "eta_cutoff=-0.1 must be in [0, 1) (0 keeps all)"),
        (dict(eta_cutoff="0.1"), "eta_cutoff='0.1' must be a number"),
        (dict(min_length=2.0), "min_length=2.0 must be an integer"),
        (dict(stop=5), "stop=5 must be a string or a list of non-empty strings"),
        (dict(stop=["ab", b"c"]), "stop=('ab', b'c') must be a string or a list of non-empty strings"),
    ],
)
def test_bad_options_give_one_line_errors(options, message):
    with pytest.raises(ValueError) as e:
        GenerateOptions(**options)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "name, value",
    [
        ("suppress_tokens", [3, 16]),
        ("begin_suppress_tokens", [99]),
        ("bad_words_ids", [[2, 16]]),
        ("sequence_bias", {(17,): 1.0}),
    ],
)
def test_ids_past_the_vocabulary_are_refused(tiny_cfg, params, name, value):
    with pytest.raises(ValueError, match=rf"{name}=\[.*\] has ids past the model's vocab_size=16"):
        sample.generate_ids(params, tiny_cfg, [[1]], GenerateOptions(**{name: value}))


# ----- The options on the model ---------------------------------------------------------------------------


def test_min_new_tokens_holds_the_eos_back_in_every_mode(tiny_cfg, params):
    """Every row's greedy first token made the EOS: without min_new_tokens each text is that one token;
    with it, at least n tokens come before the EOS, in greedy, sampling and beam search."""
    first = [s[0][0] for s in sample.generate_ids(params, tiny_cfg, PROMPTS, GenerateOptions(temperature=0))]
    eos = sorted(set(first))
    for mode in [dict(temperature=0), dict(top_k=3, seed=1), dict(num_beams=2, num_return_sequences=2)]:
        options = dict(max_new_tokens=8, eos_token_id=eos, **mode)
        short = sample.generate_ids(params, tiny_cfg, PROMPTS, GenerateOptions(**options))
        held = sample.generate_ids(params, tiny_cfg, PROMPTS, GenerateOptions(min_new_tokens=4, **options))
        for seqs in held:
            for s in seqs:
                assert not set(s[:4].tolist()) & set(eos) and len(s) >= 5, (mode, s)
        if mode == dict(temperature=0):
            assert [len(s) for seqs in short for s in seqs] == [1, 1, 1]
    # min_length counts the longest prompt as given (5 tokens): 9 means 4 new tokens, as above.
    options = dict(max_new_tokens=8, eos_token_id=eos, temperature=0)
    by_length = sample.generate_ids(params, tiny_cfg, PROMPTS, GenerateOptions(min_length=9, **options))
    by_new = sample.generate_ids(params, tiny_cfg, PROMPTS, GenerateOptions(min_new_tokens=4, **options))
    assert [s[0].tolist() for s in by_length] == [s[0].tolist() for s in by_new]


def test_banned_tokens_never_come(tiny_cfg, params):
    """Sampling at a high temperature for 12 tokens (past the context): suppressed tokens never come,
    begin-suppressed ones never first, and no bad word ever completes."""
    options = GenerateOptions(
        max_new_tokens=12,
        temperature=3.0,
        num_return_sequences=4,
        suppress_tokens=[0, 1, 2, 3, 4, 5, 6],
        begin_suppress_tokens=[7, 8, 9],
        bad_words_ids=[[10, 11], [12]],
        seed=3,
    )
    rows = [s.tolist() for seqs in sample.generate_ids(params, tiny_cfg, PROMPTS, options) for s in seqs]
    assert len(rows) == 12 and all(len(r) == 12 for r in rows)
    for r in rows:
        assert min(r) >= 7 and r[0] >= 10 and 12 not in r
        assert all((a, b) != (10, 11) for a, b in zip(r, r[1:], strict=False))
    assert len({t for r in rows for t in r}) >= 4  # the draws are not stuck on one token


def test_a_large_sequence_bias_forces_a_token(tiny_cfg, params):
    rows = sample.generate_ids(
        params, tiny_cfg, PROMPTS, GenerateOptions(max_new_tokens=5, sequence_bias={(13,): 100.0}, seed=2)
    )
    assert [s[0].tolist() for s in rows] == [[13] * 5] * 3


# ----- HF generate() on a converted random GPT-2 (torch + transformers) -------------------------------------


@pytest.fixture(scope="module")
def hf_gpt2():
    """A random HF GPT2LMHeadModel and its gptjax params and config (gptjax.convert)."""
    import torch
    import transformers

    from gptjax import convert

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    cfg = convert.config_from_hf(hf_config.to_dict())
    params = convert.params_from_hf({k: v.numpy() for k, v in hf.state_dict().items()}, cfg)
    return hf, params, cfg


@pytest.mark.parametrize(
    "options",
    [
        dict(repetition_penalty=1.5, no_repeat_ngram_size=2),
        dict(num_beams=3, num_return_sequences=2),
        dict(num_beams=3, length_penalty=-1.0, early_stopping=True),
        dict(num_beams=3, length_penalty=2.0, early_stopping="never"),
        # Each set changes the text of the plain greedy / beam run (HF's too), words across the prompt's end.
        dict(min_new_tokens=6, bad_words_ids=[[7], [9, 9], [11, 17], [1]], suppress_tokens=[4, 5]),
        dict(min_length=9, begin_suppress_tokens=[17, 43], sequence_bias={(9,): 4.0, (9, 9): -6.0}),
        dict(
            num_beams=2, min_new_tokens=5, bad_words_ids=[[9, 9, 9]], sequence_bias={(8,): 3.0, (8, 8): -4.0}
        ),
    ],
)
def test_greedy_and_beams_match_hf_generate(hf_gpt2, options):
    """The same tokens as HF generate() from the same weights; greedy rows carry HF's raw logits' log p."""
    import torch

    hf, params, cfg = hf_gpt2
    prompts = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 2]]
    P = 5
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    options = dict(max_new_tokens=10, eos_token_id=[1, 2], **options)
    with torch.no_grad():
        hf_out = hf.generate(
            ids,
            attention_mask=mask,
            pad_token_id=0,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **options,
        )
    eos = set(options["eos_token_id"])
    want = []
    for row in hf_out.sequences[:, P:].tolist():  # HF pads finished rows; gptjax stops after the EOS
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        want.append(row[:end])
    got = sample._generate(params, cfg, prompts, GenerateOptions(do_sample=False, **options), None, None)
    assert [a.tolist() for seqs in got for a, _ in seqs] == want
    if options.get("num_beams", 1) == 1:
        hf_logp = torch.log_softmax(torch.stack(hf_out.logits, 1), -1).numpy()  # [B, new, V]
        for b, ((tokens, logp),) in enumerate(got):
            np.testing.assert_allclose(logp, hf_logp[b, np.arange(len(tokens)), tokens], atol=2e-5)


# ----- Log-probabilities ------------------------------------------------------------------------------------


def test_logprobs_are_the_models_own_for_every_mode(tiny_cfg, params, log_softmax_of):
    """Each new token's logprob == log_softmax of the plain forward pass on prompt + new tokens at that
    position, whatever the options did (temperature, top-k, penalties, beams, an EOS)."""
    model = (params, tiny_cfg, CharTokenizer("abcdefghijklmnop"))
    for options in [
        dict(temperature=0),
        dict(temperature=2.0, top_k=4, repetition_penalty=1.5, num_return_sequences=2, seed=4),
        dict(num_beams=3, num_return_sequences=2, eos_token_id=[2, 11]),
        dict(num_beams=2, do_sample=True, seed=1),
        # Beams whose scores the rules change: the logprobs stay the model's, reordered with the beams.
        dict(num_beams=3, num_return_sequences=3, repetition_penalty=3.0, sequence_bias={(4,): 1.0}),
        dict(num_beams=2, do_sample=True, temperature=0.5, top_k=5, seed=2),
    ]:
        completions = sample.complete(model, ["bcdef", "g", "hij"], max_new_tokens=3, **options)
        assert len(completions) == 3 * options.get("num_return_sequences", 1)
        for c in completions:
            prompt = model[2].encode(c.prompt)
            tokens = [*prompt, *c.token_ids.tolist()]
            logp = log_softmax_of(tokens)
            want = [logp[len(prompt) + i - 1, t] for i, t in enumerate(c.token_ids)]
            assert c.logprobs.dtype == np.float32 and len(c.logprobs) == len(c.token_ids) > 0
            np.testing.assert_allclose(c.logprobs, want, rtol=1e-5, atol=1e-5, err_msg=str(options))


def test_logprobs_past_the_context_follow_the_window(tiny_cfg, params, log_softmax_of):
    """Past block_size the window slides to the newest block_size // 2 tokens; each logprob is the plain
    model's on the window the token was drawn from."""
    (((ids, logprobs),),) = sample._generate(
        params, tiny_cfg, [PROMPTS[0]], GenerateOptions(max_new_tokens=14, seed=5), None, None
    )
    tokens, start = list(PROMPTS[0]), 0
    for t, got in zip(ids.tolist(), logprobs, strict=True):
        if len(tokens) - start > tiny_cfg.block_size:
            start = len(tokens) - tiny_cfg.block_size // 2
        np.testing.assert_allclose(got, log_softmax_of(tokens[start:])[-1, t], rtol=1e-5, atol=1e-5)
        tokens.append(t)
    assert start > 0 and len(ids) == 14


def test_logprobs_stay_beside_their_tokens_when_an_eos_or_a_stop_string_ends_the_text(tiny_cfg, params):
    """An EOS or a stop string cuts the samples short; their tokens and logprobs are the first ones of the
    same samples left to run (neither changes the draws)."""
    model = (params, tiny_cfg, CharTokenizer("abcdefghijklmnop"))
    options = dict(max_new_tokens=6, temperature=2.0, num_return_sequences=4, seed=3)
    full = sample.complete(model, "bcd", **options)
    eos = sorted({int(c.token_ids[2]) for c in full})  # each sample ends by its third token
    ended = sample.complete(model, "bcd", eos_token_id=eos, **options)
    stopped = sample.complete(model, "bcd", stop=full[0].text[2:4], **options)
    for got in (ended, stopped):
        for c, f in zip(got, full, strict=True):
            n = len(c.token_ids)
            assert len(c.logprobs) == n and c.token_ids.tolist() == f.token_ids[:n].tolist()
            np.testing.assert_allclose(c.logprobs, f.logprobs[:n], rtol=1e-6)
        assert min(len(c.token_ids) for c in got) < 6


def test_min_length_counts_a_cropped_prompt_as_given(tiny_cfg, params):
    """A 12-token prompt is cropped to the 8-token context; min_length still counts its 12 tokens (as
    max_length does): min_length=15 holds the EOS back for 3 new tokens, as min_new_tokens=3 does."""
    prompt = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]]
    options = dict(max_new_tokens=6, eos_token_id=[t for t in range(16) if t != 7], temperature=0)
    with pytest.warns(UserWarning, match="cropped"):
        by_length = sample.generate_ids(params, tiny_cfg, prompt, GenerateOptions(min_length=15, **options))
    with pytest.warns(UserWarning, match="cropped"):
        by_new = sample.generate_ids(params, tiny_cfg, prompt, GenerateOptions(min_new_tokens=3, **options))
    assert by_new[0][0].tolist()[:3] == [7, 7, 7] and len(by_new[0][0]) < 6  # then an EOS: 7 is not all
    assert by_length[0][0].tolist() == by_new[0][0].tolist()


def test_generate_ids_is_unchanged_by_logprobs(tiny_cfg, params):
    options = GenerateOptions(max_new_tokens=5, num_return_sequences=2, seed=7)
    ids = sample.generate_ids(params, tiny_cfg, PROMPTS, options)
    both = sample._generate(params, tiny_cfg, PROMPTS, options, None, None)
    assert [[a.tolist() for a in s] for s in ids] == [[a.tolist() for a, _ in s] for s in both]


# ----- scripts/sample.py ------------------------------------------------------------------------------------


def test_flag_escapes_keep_other_characters():
    assert cli.unescape("é\\n日本\\t\\u00e9\\\\n") == "é\n日本\té\\n"


@pytest.mark.slow
def test_sample_script_bans_words_and_writes_logprobs(tmp_path, tiny_cfg, params):
    """--bad_words (text, escapes understood), --suppress_tokens, --begin_suppress_tokens, --min_new_tokens
    (here for every token: no EOS 'h'); --out gets logprobs. An empty --bad_words is refused."""
    from gptjax.convert import save_checkpoint

    tokenizer = CharTokenizer("abcdefghijklmnop")
    save_checkpoint(tmp_path / "w", params, tiny_cfg, tokenizer)
    out = tmp_path / "s.jsonl"
    args = ["--prompt=abc", "--num_samples=3", "--max_new_tokens=10", "--temperature=3", f"--out={out}"]
    bans = ["--bad_words=p", "--bad_words=\\u0063d", "--suppress_tokens=0", "--suppress_tokens=1"]
    bans += [
        "--begin_suppress_tokens=4",
        "--begin_suppress_tokens=5",
        "--min_new_tokens=10",
        "--eos_token_id=7",
    ]
    script = lambda *flags: subprocess.run(  # noqa: E731
        [sys.executable, "scripts/sample.py", f"--workdir={tmp_path / 'w'}", *flags],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
    )
    result = script(*args, *bans)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and all(len(r["text"]) == len(r["logprobs"]) == 10 for r in records)
    for r in records:
        text = "abc" + r["text"]
        assert "p" not in r["text"] and "cd" not in text and not set("abh") & set(r["text"])
        assert r["text"][0] not in "ef"
        assert all(x < 0 for x in r["logprobs"])
    completions = sample.complete(
        (params, tiny_cfg, tokenizer),
        "abc",
        num_return_sequences=3,
        max_new_tokens=10,
        temperature=3.0,
        bad_words_ids=[[15], [2, 3]],
        suppress_tokens=[0, 1],
        begin_suppress_tokens=[4, 5],
        min_new_tokens=10,
        eos_token_id=7,
        seed=0,
    )  # the script's defaults (seed 0); the same text
    assert [c.text for c in completions] == [r["text"] for r in records]
    np.testing.assert_allclose([c.logprobs for c in completions], [r["logprobs"] for r in records], atol=1e-6)
    result = script("--prompt=abc", "--bad_words=")
    assert result.returncode != 0 and "--bad_words=['']: an empty word" in result.stderr, result.stderr
