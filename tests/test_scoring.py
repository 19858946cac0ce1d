"""Scoring texts with a reward model (gptjax.scoring) and best-of-n sampling (scripts/sample.py
--reward_model): a text's score is the reward training computes for it (same tokens, same cut, same
position), whatever it is batched with; a reward model trained from scratch ranks held-out pairs; best-of-n
picks the chosen style from a policy that writes both; misuse is one line."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import reward as reward_config
from configs import sft
from gptjax import reward, sample, scoring
from gptjax.data import CharTokenizer
from gptjax.data.preference import load_preference_dataset, pair_records
from gptjax.data.sft import decode_rows
from gptjax.metric_writer import read_metrics
from gptjax.model import GPT
from gptjax.train import load_params, train_and_evaluate
from tests.test_dpo import write_lines

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def train_reward_model(tmp: pathlib.Path, pairs: list, policy_dir: pathlib.Path) -> None:
    """In `tmp`: pairs.jsonl (first-letter answer chosen, no ties) and rm/, configs/reward.py:tiny
    fine-tuned on it from the policy (conftest's sft_policy: configs/sft.py:tiny trained on both answer
    styles), as a reward model is usually made (from scratch, it ranks pairs as well but rates the malformed
    samples a policy also writes at random)."""
    config = reward_config.get_config("tiny")
    config.init_from = str(policy_dir)
    for field in ("n_layer", "n_head", "n_embd", "block_size"):
        config.model[field] = None  # the policy's
    lines = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs]
    config.data.source = write_lines(tmp / "pairs.jsonl", lines)
    config.update(eval_interval=200, checkpoint_interval=200)
    config.parallel.mode = "single"  # compiles faster than a mesh of the 8 test devices
    train_and_evaluate(config, tmp / "rm")


@pytest.fixture(scope="module")
def runs(sft_policy, made_once):
    """(pairs, reward-model workdir, policy workdir): the policy is conftest's sft_policy, the reward
    model trained from it once per test run (shared by the pytest-xdist workers as the policy is)."""
    pairs, policy_dir, _ = sft_policy
    tmp = made_once("scoring_models", lambda path: train_reward_model(path, pairs, policy_dir))
    return pairs, tmp / "rm", policy_dir


@pytest.mark.slow
def test_a_reward_model_fine_tuned_from_a_language_model_learns_the_pairs(runs, sft_policy, tmp_path):
    """configs/reward.py:tiny from the policy (configs/sft.py:tiny, both styles): its fresh score head
    starts every pair near ln 2, and 200 steps rank the val pairs right; the workdir is a reward model, and
    a language model cannot be fine-tuned from it by mistake."""
    _, rm_dir, policy_dir = runs
    val = [(r["val_loss"], r["val_reward_accuracy"]) for r in read_metrics(rm_dir) if "val_loss" in r]
    assert abs(val[0][0] - np.log(2)) < 0.05 and val[-1][0] < 0.2 and val[-1][1] > 0.95, val
    params, cfg, _, _ = load_params(rm_dir)
    policy, _, _, _ = load_params(policy_dir)
    assert cfg.score_head and params["score"].shape == (cfg.n_embd,) and "score" not in policy
    assert params.keys() == policy.keys() | {"score"}
    config = sft.get_config("tiny")
    config.update(init_from=str(rm_dir), max_iters=10, eval_interval=10, checkpoint_interval=10)
    config.data.source = str(sft_policy[2])
    with pytest.raises(ValueError, match="is a reward model .* fine-tune it as one with --config.model"):
        train_and_evaluate(config, tmp_path / "lm")


@pytest.mark.slow
def test_a_score_is_the_reward_training_computes_and_ranks_held_out_pairs(runs, tmp_path):
    """Pairs read by the preference data code (gptjax.data.preference), as a run reads them, two of them
    too long for the context (one prompt, one answer: cut as training cuts them): the model's rewards of
    those rows are `score`'s of the same texts. On held-out pairs the chosen answer scores higher."""
    pairs, rm_dir, _ = runs
    rm = scoring.RewardModel.load(rm_dir)
    assert rm.config.score_head and rm.tokenizer.eos_id is None
    held_out = pairs[900:]
    tests = held_out[:30] + [("abcdefgh" * 5 + ">", "aaa.", "hhh."), ("abcd>", "a" * 40 + ".", "ddd.")]
    source = write_lines(
        tmp_path / "p.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in tests]
    )
    with pytest.warns(UserWarning, match="3 of 64 answers .* were cut"):
        data = load_preference_dataset(
            source, block_size=rm.config.block_size, val_fraction=0.5, tokenizer=rm.tokenizer
        )
    rows = np.concatenate([data.train, data.val]).reshape(2 * len(tests), -1)
    x_BT, y_BT = decode_rows(rows)
    scores_BT = jax.jit(lambda p, x: GPT(rm.config).apply({"params": p}, x)[0])(rm.params, x_BT)
    want = np.asarray(reward.row_rewards(scores_BT, jnp.asarray(y_BT)))
    prompts = [p for p, _, _ in tests for _ in range(2)]
    with pytest.warns(UserWarning, match="3 of 64 texts are longer than .*'s block_size \\+ 1 = 33 tokens"):
        got = rm.score(prompts, [a for _, c, r in tests for a in (c, r)])
    assert got.shape == (64,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    prompts = [p for p, _, _ in held_out]
    chosen = rm.score(prompts, [c for _, c, _ in held_out])
    rejected = rm.score(prompts, [r for _, _, r in held_out])
    assert np.mean(chosen > rejected) > 0.9, np.mean(chosen > rejected)


@pytest.mark.slow
def test_a_texts_reward_does_not_depend_on_its_batch_or_the_tokenizers_numbering(runs):
    """Alone, in one batch with shorter and longer texts (other row and length buckets), in batches of 3:
    the same rewards. An empty completion (no EOS to end it) is read at the prompt's last token. Texts are
    read with the reward model's own tokenizer: numbering its characters the other way round (and its
    embedding rows with them) changes no reward."""
    _, rm_dir, _ = runs
    rm = scoring.RewardModel.load(rm_dir)
    prompts = ["abcd>", "hgfe>", "abcdefghabcdefgh>", "a>", "cab>"]
    completions = ["aaa.", "hhhhhhhhhhhhhhhhhhhh.", "aaa.", "", "c"]
    alone = np.concatenate([rm.score(p, c) for p, c in zip(prompts, completions, strict=True)])
    np.testing.assert_allclose(rm.score(prompts, completions), alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rm.score(prompts, completions, batch_size=3), alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rm.score("a", ">"), alone[3], rtol=1e-5, atol=1e-6)
    assert len(set(alone.tolist())) == 5

    chars = rm.tokenizer.chars[::-1]
    params = {**rm.params, "wte": {"embedding": rm.params["wte"]["embedding"][::-1]}}
    reversed_rm = scoring.RewardModel.load((params, rm.config, CharTokenizer(chars)))
    np.testing.assert_allclose(reversed_rm.score(prompts, completions), alone, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_best_of_n_prints_each_prompts_best_samples_with_their_rewards(runs, tmp_path):
    """scripts/sample.py --reward_model --best_of=8 --num_samples=3 on a policy that answers in both
    styles: each prompt's 3 printed samples are the 3 of its 8 samples (the same seed draws the same ones)
    that the reward model scores highest, best first, with their rewards; the best is in the chosen style
    for nearly every prompt, where a plain sample is for about half."""
    pairs, rm_dir, policy_dir = runs
    rm = scoring.RewardModel.load(rm_dir)
    held_out = pairs[900:930]
    prompts = [p for p, _, _ in held_out]
    drawn = sample.complete(policy_dir, prompts, num_return_sequences=8, max_new_tokens=4, seed=0)
    texts_P8 = np.array([c.text for c in drawn]).reshape(len(prompts), 8)
    rewards_P8 = rm.score(np.repeat(prompts, 8).tolist(), texts_P8.reshape(-1).tolist()).reshape(-1, 8)
    order_P8 = np.argsort(-rewards_P8, axis=1, kind="stable")
    assert 0.2 < np.mean(texts_P8[:, 0] == [c for _, c, _ in held_out]) < 0.8, texts_P8  # both styles

    out = tmp_path / "best.jsonl"
    args = [f"--workdir={policy_dir}", f"--reward_model={rm_dir}", "--best_of=8", "--num_samples=3"]
    args += [f"--prompt={p}" for p in prompts] + ["--max_new_tokens=4", "--seed=0", f"--out={out}"]
    done = subprocess.run(
        [sys.executable, "scripts/sample.py", *args], cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed = re.findall(r"----- sample (\d+), reward (-?[\d.]+) -----\n(.*)\n", done.stdout)
    assert [int(i) for i, _, _ in printed] == list(range(3 * len(prompts))), done.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [t for _, _, t in printed] == [r["prompt"] + r["text"] for r in records]
    texts_P3 = np.array([r["text"] for r in records]).reshape(-1, 3)
    np.testing.assert_array_equal(texts_P3, np.take_along_axis(texts_P8, order_P8[:, :3], axis=1))
    rewards_P3 = np.array([r["reward"] for r in records]).reshape(-1, 3)
    np.testing.assert_allclose(rewards_P3, np.take_along_axis(rewards_P8, order_P8[:, :3], axis=1), atol=1e-5)
    np.testing.assert_allclose([float(r) for _, r, _ in printed], rewards_P3.reshape(-1), atol=1e-4)
    assert (np.diff(rewards_P3, axis=1) <= 0).all(), rewards_P3
    assert np.mean(texts_P3[:, 0] == [c for _, c, _ in held_out]) >= 0.85, texts_P3


@pytest.mark.slow
def test_eval_ranks_the_val_pairs_as_training_split_them(runs):
    """scripts/eval.py --workdir=RM --pairs=F --split=val: the val pairs of F as the run split them (its
    val_fraction), ranked as pair_accuracy ranks them; the chosen answer wins nearly always."""
    pairs, rm_dir, _ = runs
    source = rm_dir.parent / "pairs.jsonl"
    args = [f"--workdir={rm_dir}", f"--pairs={source}", "--split=val", "--batch_size=32"]
    done = subprocess.run(
        [sys.executable, "scripts/eval.py", *args], cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    records = pair_records([source])[900:]
    assert [(p, c, r) for _, p, c, r in records] == pairs[900:]
    want = scoring.pair_accuracy(rm_dir, records)
    assert got["pairs"] == want["pairs"] == 100 and got["accuracy"] == want["accuracy"] > 0.9, got
    assert got["margin"] == pytest.approx(want["margin"], rel=1e-5) and got["margin"] > 0


def test_best_of_needs_a_reward_model_and_enough_samples():
    assert scoring.samples_to_draw(2, None, None) == 2 and scoring.samples_to_draw(2, 8, "rm") == 8
    with pytest.raises(ValueError, match="--best_of=4 keeps the samples a reward model rates best; pass"):
        scoring.samples_to_draw(1, 4, None)
    with pytest.raises(ValueError, match="--best_of=2 generates fewer samples than --num_samples=3 keeps"):
        scoring.samples_to_draw(3, 2, "rm")


@pytest.mark.slow
def test_a_model_of_the_wrong_kind_is_one_line(runs):
    """A language model is no reward model, a reward model does not generate (gptjax.sample.load, so
    complete, generate and the server refuse it), and scripts/sample.py says either in one line, as it
    does --best_of's misuse; scripts/eval.py ranks pairs with a reward model only, and only pairs."""
    _, rm_dir, policy_dir = runs
    with pytest.raises(ValueError, match="is a language model, not a reward model .*; train one with config"):
        scoring.RewardModel.load(policy_dir)
    message = "is a reward model (model.score_head): it scores texts, it does not generate; pass it as --"
    for call in (sample.load, lambda m: sample.complete(m, "abcd>")):
        with pytest.raises(ValueError, match=re.escape(message)):
            call(rm_dir)
    cases = [
        ([f"--workdir={rm_dir}"], f"{rm_dir} {message}"),
        ([f"--workdir={policy_dir}", f"--reward_model={policy_dir}"], f"{policy_dir} is a language model"),
        ([f"--workdir={policy_dir}", "--best_of=4"], "--best_of=4 keeps the samples"),
        ([f"--workdir={policy_dir}", "--pairs=p.jsonl"], "--pairs ranks preference pairs by a reward"),
        ([f"--workdir={rm_dir}", "--text=tiny_shakespeare"], f"{rm_dir} is a reward model: evaluate it on"),
    ]
    running = [
        subprocess.Popen(
            [sys.executable, *(["scripts/eval.py"] if i > 2 else ["scripts/sample.py", "--prompt=abcd>"])]
            + args,
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (args, _) in enumerate(cases)
    ]
    for process, (_, start) in zip(running, cases, strict=True):
        stdout, stderr = process.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert process.returncode != 0 and stdout == "", stdout
        assert len(lines) == 1 and lines[0].startswith(f"error: ValueError: {start}"), stderr
