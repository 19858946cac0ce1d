"""Reward models (gptjax.reward, GPTConfig.score_head, configs/reward.py): the loss as TRL writes it, a row's
reward read at its last answer token whatever follows, the step's invariants (micro-batches, pmap, mesh),
LoRA training the score head too, an HF language model starting one. End to end (a reward model
fine-tuned from a language model ranks held-out pairs): tests/test_scoring.py."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import reward as reward_config
from gptjax import convert, parallel, reward
from gptjax.data import DataError
from gptjax.data.preference import load_preference_dataset
from gptjax.data.sft import decode_rows
from gptjax.init_from import init_params
from gptjax.metric_writer import read_metrics
from gptjax.model import GPT, GPTConfig, with_lora
from gptjax.objective import Objective
from gptjax.optim import make_optimizer, trainable
from gptjax.train import abstract_state, train_and_evaluate
from gptjax.train_step import create_train_state, eval_steps, loss_fn, train_steps
from tests.test_convert_llama import make_llama
from tests.test_dpo import dpo_batches, write_lines
from tests.test_parallel import close

REWARD = Objective("reward")
# No biases: the key bias has no true gradient (softmax ignores it), and Adam's first step turns its float
# noise into +-lr, differently on each placement.
CFG = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=8, n_embd=64, bias=False, score_head=True)


def log_sigmoid(z):
    return -np.log1p(np.exp(-z))


def test_the_loss_is_trls_and_its_metrics_rank_the_pairs():
    rng = np.random.default_rng(0)
    r = rng.normal(size=10) * 2
    chosen, rejected = r[0::2], r[1::2]
    for coef in (0.0, 0.01):
        loss, metrics = reward.reward_loss(jnp.asarray(r), coef)
        want = -np.mean(log_sigmoid(chosen - rejected)) + coef * np.mean((chosen + rejected) ** 2)
        np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert metrics["reward_accuracy"] == np.mean(chosen > rejected)
    np.testing.assert_allclose(metrics["reward_margin"], np.mean(chosen - rejected), rtol=1e-5)
    np.testing.assert_allclose(metrics["mean_reward"], np.mean(r), rtol=1e-5)
    loss, _ = reward.reward_loss(jnp.zeros(4))
    np.testing.assert_allclose(loss, np.log(2), rtol=1e-6)


def test_a_pairs_margin_is_subtracted_as_trls_margin_column(tmp_path):
    """TRL's optional "margin" field (Llama 2's margin loss): -log sigmoid(r(chosen) - r(rejected) -
    margin); read from the pairs into training (a pair without one: 0), where a large margin keeps the
    loss high at the start (~4 for 4, ln 2 without); a margin that is not a number is one line."""
    rng = np.random.default_rng(1)
    r, m = rng.normal(size=10), rng.uniform(0, 3, size=5)
    loss, metrics = reward.reward_loss(jnp.asarray(r), 0.0, jnp.asarray(m))
    np.testing.assert_allclose(loss, -np.mean(log_sigmoid(r[0::2] - r[1::2] - m)), rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_margin"], np.mean(r[0::2] - r[1::2]), rtol=1e-5)

    pairs = [{"prompt": "ab", "chosen": "cd", "rejected": "dc"}] + [
        {"prompt": "ab", "chosen": "cd", "rejected": "dc", "margin": 4}
    ] * 9
    source = write_lines(tmp_path / "pairs.jsonl", pairs)
    data = load_preference_dataset(source, block_size=8, val_fraction=0.5)
    np.testing.assert_array_equal(data.train_margins, [0, 4, 4, 4, 4])
    np.testing.assert_array_equal(data.val_margins, [4] * 5)
    val_loss = {}
    for name, lines in (
        ("margin", pairs),
        ("none", [{k: v for k, v in p.items() if k != "margin"} for p in pairs]),
    ):
        config = reward_config.get_config("tiny")
        config.data.source = write_lines(tmp_path / f"{name}.jsonl", lines)
        config.update(max_iters=0, eval_iters=1)
        train_and_evaluate(config, tmp_path / name)
        val_loss[name] = next(r["val_loss"] for r in read_metrics(tmp_path / name) if "val_loss" in r)
    assert 3.5 < val_loss["margin"] < 4.5 and abs(val_loss["none"] - np.log(2)) < 0.2, val_loss
    for margin in ("big", True, None):
        source = write_lines(tmp_path / "bad.jsonl", [{**pairs[1], "margin": margin}] * 4)
        if margin is None:  # JSON null: no margin
            assert load_preference_dataset(source, block_size=8, val_fraction=0.5).train_margins is None
            continue
        with pytest.raises(DataError, match=f"bad.jsonl:1: margin is {margin!r}; give a number"):
            load_preference_dataset(source, block_size=8, val_fraction=0.5)


def test_a_rows_reward_is_its_last_answer_tokens_score_whatever_follows():
    """Row layout as preference data builds it (prompt masked, answer, padding masked): the reward is the
    model's score of the text alone at its last token; padding tokens after it change nothing. A row
    filled to block_size + 1 tokens is read at x's last position, one with no answer at 0."""
    rows_BR = -np.ones((3, 9), np.int64)  # -1 decodes to token 0, masked
    text = np.array([5, 6, 7, 8, 9, 10])
    rows_BR[0, :6] = np.where(np.arange(6) < 2, -text - 1, text)  # prompt of 2, answer of 4
    rows_BR[1] = np.arange(9) + 1  # all trained, the whole row
    x_BT, y_BT = decode_rows(rows_BR)
    np.testing.assert_array_equal(reward.last_positions(jnp.asarray(y_BT)), [5, 7, 0])

    params = jax.jit(GPT(CFG).init)(jax.random.key(0), x_BT)["params"]
    apply = jax.jit(lambda x_BT: GPT(CFG).apply({"params": params}, x_BT)[0])
    x_BT = np.where(np.arange(8) >= 6, 33, x_BT)  # any padding token
    scores_BT, alone = apply(jnp.asarray(x_BT)), apply(jnp.asarray(text[None]))
    got = reward.row_rewards(scores_BT, jnp.asarray(y_BT))
    np.testing.assert_allclose(got[0], alone[0, -1], rtol=1e-5)
    assert scores_BT.shape == (3, 8) and scores_BT.dtype == jnp.float32
    with pytest.raises(ValueError, match="has no LM head"):
        GPT(CFG).apply({"params": params}, jnp.asarray(x_BT), targets_BT=jnp.asarray(y_BT))


def test_reward_steps_under_pmap_and_in_micro_batches_equal_one_device():
    """The reward step over 8 devices (pmap: a pair per device), its evaluation, and 2 micro-batches give
    what one device gives on the same pairs. (A mesh places pairs as DPO's: tests/test_dpo.py.)"""
    config = reward_config.get_config("tiny")
    config.opt.lr = 3e-4  # Adam's first steps are +-lr wherever a gradient is float noise: keep them small
    init, abstract = abstract_state(CFG, config.opt, 0, Objective("reward", center_rewards_coef=0.01))
    batches = dpo_batches()
    single, single_metrics = jax.jit(train_steps)(jax.jit(init)(), batches)
    accumulated, _ = jax.jit(functools.partial(train_steps, grad_accum=2))(jax.jit(init)(), batches)
    want_eval = jax.jit(eval_steps)(single, batches)
    assert set(want_eval) == {"loss", *reward.METRICS}
    close(accumulated.params, single.params)
    assert not np.allclose(single.params["score"], jax.jit(init)().params["score"])

    config.parallel.mode = "pmap"
    placement = parallel.make_placement(config.parallel, abstract, 16)
    state = placement.put_state(jax.jit(init)())
    state, metrics = placement.step_fn(grad_accum=1)(state, placement.put_batch(batches))
    close(placement.get_state(state).params, single.params)
    for k in ("loss", *reward.METRICS):
        close(placement.metrics(metrics)[k], single_metrics[k])
    close(placement.eval_fn(1)(placement.put_state(single), placement.put_batch(batches)), want_eval)


def test_lora_trains_the_score_head_beside_the_adapters():
    """A LoRA reward model (PEFT's SEQ_CLS task): the adapters and the new score head train, the base does
    not; the loss gives the head a gradient."""
    cfg = dataclasses.replace(CFG, lora_rank=4)
    tx = make_optimizer(reward_config.get_config().opt, lora=True)
    state = jax.jit(functools.partial(create_train_state, cfg, tx, 0, REWARD))()
    mask = trainable(state.params)
    assert mask["score"] and not mask["wte"]["embedding"] and mask["h_0"]["attn"]["c_attn"]["lora_b"]
    x, y, ref = (jnp.asarray(a[0]) for a in dpo_batches())
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, state.apply_fn, (x, y, ref), state.rng, True, REWARD)[0]))(
        state.params
    )
    assert np.abs(grads["score"]).max() > 0 and np.abs(grads["h_0"]["attn"]["c_attn"]["kernel"]).max() == 0


def test_an_hf_language_model_starts_a_reward_model_without_its_lm_head(tmp_path):
    """init_from an HF LlamaForCausalLM (untied head) into score_head=True: its weights but lm_head, and
    the fresh score head of the initialised model (model.with_lora); the blocks compute as in the LM."""
    make_llama(tmp_path / "hf", tie_word_embeddings=False)
    lm, lm_cfg = convert.load_hf(tmp_path / "hf")
    cfg = dataclasses.replace(lm_cfg, score_head=True)
    init, abstract = abstract_state(cfg, reward_config.get_config().opt, 0, REWARD)
    start = init_params("hf", tmp_path / "hf", cfg, abstract.params)
    assert "lm_head" in lm and start.keys() == lm.keys() - {"lm_head"}
    close(start, {k: v for k, v in lm.items() if k != "lm_head"})
    fresh = jax.jit(init)().params
    params = with_lora(start, fresh)
    np.testing.assert_array_equal(params["score"], fresh["score"])
    x_BT = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 6)), jnp.int32)
    scores_BT, _ = jax.jit(GPT(cfg).apply)({"params": params}, x_BT)
    hidden = jax.jit(functools.partial(GPT(lm_cfg).apply, capture_intermediates=True))({"params": lm}, x_BT)
    ln_f_BTD = hidden[1]["intermediates"]["ln_f"]["__call__"][0]
    np.testing.assert_allclose(scores_BT, ln_f_BTD @ params["score"], rtol=1e-4, atol=1e-5)


def test_a_score_head_needs_pairs(tmp_path):
    config = reward_config.get_config("tiny")
    config.data.format = "prompt_completion"
    with pytest.raises(ValueError, match="a reward model .* learns from preference pairs: set --config"):
        Objective.from_config(config)
    lines = [{"prompt": "ab", "completion": "c", "label": True}] * 8
    config = reward_config.get_config("tiny")
    config.data.source = write_lines(tmp_path / "kto.jsonl", lines)
    with pytest.raises(ValueError, match="a reward model learns from pairs .*, not unpaired examples"):
        train_and_evaluate(config, tmp_path / "w")
    with pytest.raises(ValueError, match="center_rewards_coefficient=-1.0 must be >= 0"):
        Objective("reward", center_rewards_coef=-1.0)
