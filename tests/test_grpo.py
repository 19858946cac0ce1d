"""GRPO (gptjax.grpo, configs/grpo.py): the loss as TRL writes it for every loss type, importance level,
KL weight and ratio; advantages as TRL's (torch.std); the step on every placement and in micro-batches as
on one device; prompts and rewards read as TRL passes them; and end to end: a model fine-tuned on two
answer styles learns the rewarded one from its own samples, and a resumed run ends where an uninterrupted
one does."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import grpo as grpo_config
from gptjax import grpo, parallel
from gptjax.data import DataError
from gptjax.data.prompts import load_prompts
from gptjax.metric_writer import read_metrics
from gptjax.model import GPTConfig
from gptjax.objective import Objective
from gptjax.sample import complete
from gptjax.train import train_and_evaluate
from gptjax.train_step import create_train_state, train_steps
from tests.test_dpo import assert_resumes_exactly, write_lines
from tests.test_parallel import close

REWARDS = '''
def first_letter(prompts, completions, answer, **columns):
    """1 for the answer the prompt's record holds (its first letter three times), else 0."""
    return [float(c == a) for c, a in zip(completions, answer)]


def unrated(prompts, completions, **columns):
    return [None] * len(completions)
'''


def reference_loss(logp, old, ref, adv, mask, kind, level, beta, eps_low, eps_high, max_new):
    """(loss, clip ratio) of TRL's GRPOTrainer.compute_loss, written out in numpy (per token, then
    aggregated)."""
    log_ratio = logp - old
    if level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / np.maximum(mask.sum(-1), 1))[:, None]
    coef_1 = np.exp(log_ratio)
    coef_2 = np.clip(coef_1, 1 - eps_low, 1 + eps_high)
    per_token = -np.minimum(coef_1 * adv[:, None], coef_2 * adv[:, None])
    clipped = ((coef_1 < 1 - eps_low) & (adv[:, None] < 0)) | ((coef_1 > 1 + eps_high) & (adv[:, None] > 0))
    clip_ratio = (np.broadcast_to(clipped, mask.shape) * mask).sum() / mask.sum()
    if beta:
        per_token = per_token + beta * (np.exp(ref - logp) - (ref - logp) - 1)
    if kind == "grpo":
        loss = ((per_token * mask).sum(-1) / np.maximum(mask.sum(-1), 1)).mean()
    elif kind == "dapo":
        loss = (per_token * mask).sum() / max(mask.sum(), 1)
    else:
        loss = (per_token * mask).sum() / (len(logp) * max_new)
    return loss, clip_ratio


@pytest.mark.parametrize("kind", grpo.LOSSES)
@pytest.mark.parametrize("level", grpo.LEVELS)
def test_the_loss_is_trls_and_on_policy_its_gradient_is_the_policy_gradient(kind, level):
    """Off policy (ratios up to e^+-0.5, some clipped) with a KL term: TRL's value. On policy the ratio is
    1 and the gradient of token t of completion i is -A_i times its weight in the mean (1 / (n_i B) for
    "grpo", 1 / tokens for "dapo", 1 / (B max_new) for "dr_grpo"): the policy gradient."""
    rng = np.random.default_rng(0)
    B, T = 6, 7
    logp = rng.normal(size=(B, T)) - 2
    old = logp + rng.uniform(-0.5, 0.5, size=(B, T))
    ref = logp + rng.normal(size=(B, T)) * 0.3
    adv = rng.normal(size=B)
    mask = (np.arange(T) >= rng.integers(1, 4, size=(B, 1))) & (np.arange(T) < T - rng.integers(0, 3, (B, 1)))
    objective = Objective(
        "grpo", beta=0.04, grpo_loss=kind, importance_level=level, epsilon_high=0.28, max_completion=T,
        on_policy=False,
    )  # fmt: skip
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    loss, metrics = grpo.grpo_loss(f32(logp), f32(old), f32(ref), f32(adv), jnp.asarray(mask), objective)
    want, clip_ratio = reference_loss(logp, old, ref, adv, mask, kind, level, 0.04, 0.2, 0.28, T)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["clip_ratio"], clip_ratio, rtol=1e-6)
    assert metrics["kl"] > 0 and (level == "sequence" or clip_ratio > 0)

    on = Objective("grpo", beta=0.0, grpo_loss=kind, importance_level=level, max_completion=T)
    grad = jax.grad(lambda lp: grpo.grpo_loss(lp, f32(old), f32(ref), f32(adv), jnp.asarray(mask), on)[0])
    weight = {
        "grpo": 1 / (mask.sum(-1, keepdims=True) * B),
        "dapo": np.full((B, 1), 1 / mask.sum()),
        "dr_grpo": np.full((B, 1), 1 / (B * T)),
    }[kind]
    np.testing.assert_allclose(grad(f32(logp)), -adv[:, None] * weight * mask, rtol=1e-5, atol=1e-7)


def test_advantages_are_trls():
    """Each group's rewards minus their mean, over the unbiased std (torch.std) + 1e-4 of the group, of the
    batch, or none; a group of equal rewards gets advantages 0."""
    rewards = np.array([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0, 0.0, 3.0, 1.0, 1.0])
    r = torch.tensor(rewards).view(-1, 4)
    centred = (r - r.mean(dim=1, keepdim=True)).view(-1)
    for scale, std in [
        ("group", r.std(dim=1).repeat_interleave(4)),
        ("batch", r.view(-1).std()),
        ("none", None),
    ]:
        want = centred if std is None else centred / (std + 1e-4)
        np.testing.assert_allclose(
            grpo.group_advantages(rewards, 4, scale), want.numpy(), rtol=1e-6, atol=1e-7
        )
    assert not grpo.group_advantages(rewards, 4, "group")[4:8].any()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(loss_type="ppo"), "grpo.loss_type='ppo' is unknown; use one of"),
        (dict(importance_sampling_level="row"), "importance_sampling_level='row' is unknown"),
        (dict(epsilon=0.0), "grpo.epsilon=0.0, epsilon_high=0.0 and temperature=1.0 > 0"),
        (dict(beta=-1.0), "grpo.beta=-1.0 must be >= 0"),
    ],
)
def test_bad_grpo_objectives_are_one_line(change, message):
    g = grpo_config.get_config().grpo
    g.update(**change)
    with pytest.raises(ValueError, match=message):
        Objective.from_grpo(g)


def grpo_batches(K=2, B=16, T=8, V=64, seed=0):
    """K steps of B random completions (x, y, advantage, old, reference), [K, B, T], completions from
    position 2 on, of random lengths."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, size=(K, B, T)).astype(np.int32)
    ends = rng.integers(4, T + 1, size=(K, B, 1))
    y = np.where((np.arange(T) >= 2) & (np.arange(T) < ends), rng.integers(0, V, (K, B, T)), -1).astype(
        np.int32
    )
    adv = np.broadcast_to(rng.normal(size=(K, B, 1)), (K, B, T)).astype(np.float32)
    old = np.where(y >= 0, rng.normal(size=(K, B, T)) * 0.2 - 4.2, 0).astype(np.float32)
    ref = np.where(y >= 0, rng.normal(size=(K, B, T)) * 0.2 - 4.2, 0).astype(np.float32)
    return x, y, adv, old, ref


def test_grpo_steps_over_devices_and_in_micro_batches_equal_one_device():
    """Off policy with a KL term: the "dapo" step over 8 devices (pmap) and in 2 micro-batches gives one
    device's parameters and metrics: a mean over the tokens of all of them, whatever each holds (the
    mesh's step is one device's jitted function, sharded). Plain SGD: the parameters move by the gradient
    itself (Adam's first steps move each by about lr whatever its gradient's size, and amplify the
    rounding of gradients that cancel)."""
    config = grpo_config.get_config("tiny")
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=8, n_embd=64)
    objective = Objective("grpo", beta=0.1, grpo_loss="dapo", max_completion=6, on_policy=False)
    init = functools.partial(create_train_state, cfg, optax.sgd(1.0), 0, objective)
    abstract = jax.eval_shape(init)
    batches = grpo_batches()
    single, single_metrics = jax.jit(train_steps)(jax.jit(init)(), batches)
    assert set(single_metrics) >= {"loss", "kl", "clip_ratio"}
    accumulated, _ = jax.jit(functools.partial(train_steps, grad_accum=2))(jax.jit(init)(), batches)
    close(accumulated.params, single.params, atol=1e-6)

    config.parallel.mode = "pmap"
    placement = parallel.make_placement(config.parallel, abstract, 16)
    state = placement.put_state(jax.jit(init)())
    state, metrics = placement.step_fn(grad_accum=1)(state, placement.put_batch(batches))
    close(placement.get_state(state).params, single.params)
    for k in ("loss", "kl", "clip_ratio"):
        close(placement.metrics(metrics)[k], single_metrics[k])


class Letters:
    """A character tokenizer's surface, enough for prompts and completions."""

    bos_id, eos_id = None, 0

    def encode(self, text):
        return [ord(c) - 96 for c in text]

    def decode(self, ids):
        return "".join(chr(i + 96) for i in ids)


def test_prompts_and_rewards_reach_reward_functions_as_trls(tmp_path):
    """A prompt's other fields reach the reward functions as keyword lists, a None rating is left out of
    the weighted sum, long prompts lose their start (one warning); conversational prompts end with the
    assistant's turn; bad records are one line each."""
    lines = [{"prompt": "abc", "answer": "aaa"}, {"prompt": "abcdefgh", "answer": "bbb"}, {"prompt": "d"}]
    with pytest.warns(UserWarning, match="1 of 3 prompts are longer than the 5 tokens"):
        data = load_prompts(
            write_lines(tmp_path / "p.jsonl", lines), val_fraction=0.3, tokenizer=Letters(), max_tokens=5
        )
    assert [p.ids for p in data.train] == [(1, 2, 3), (4, 5, 6, 7, 8)] and data.val[0].columns == {}
    (tmp_path / "r.py").write_text(REWARDS)
    config = grpo_config.get_config("tiny")
    config.grpo.update(
        reward_funcs=f"{tmp_path / 'r.py'}:first_letter, {tmp_path / 'r.py'}:unrated", reward_weights="2,1"
    )
    rewards = grpo.Rewards.from_config(config.grpo)
    total, means = rewards(data.train, ["aaa", "aaa"], [np.zeros(3)] * 2)
    np.testing.assert_array_equal(total, [2.0, 0.0])
    assert means["first_letter"] == 0.5 and np.isnan(means["unrated"])

    chat = [{"prompt": [{"role": "user", "content": "hi"}]}, {"prompt": [{"role": "user", "content": "yo"}]}]
    data = load_prompts(
        write_lines(tmp_path / "c.jsonl", chat), val_fraction=0.5, tokenizer=_chars(), max_tokens=64
    )
    text = _chars().decode(list(data.train[0].ids))
    assert text.endswith("<|im_start|>assistant\n") and "hi" in text

    for line, message in [
        ({"text": "a"}, 'no "prompt"'),
        ({"prompt": 3}, "prompt is a int; give a string or a list of messages"),
    ]:
        with pytest.raises(DataError, match=message):
            load_prompts(
                write_lines(tmp_path / "bad.jsonl", [line] * 2),
                val_fraction=0.5,
                tokenizer=Letters(),
                max_tokens=5,
            )
    for spec, message in [
        ("nowhere", "names no function"),
        (f"{tmp_path / 'r.py'}:missing", "has no function 'missing'"),
        ("no_such_module_x:f", "cannot load no_such_module_x"),
    ]:
        config.grpo.reward_funcs = spec
        with pytest.raises(ValueError, match=message):
            grpo.Rewards.from_config(config.grpo)


def _chars():
    from gptjax.data import CharTokenizer

    return CharTokenizer.from_text("<|>_abcdefghijklmnopqrstuvwxyz\n")


def test_a_completion_stops_at_its_eos_or_stop_string():
    """The ids trained end at the EOS (kept) or at the token that completes a stop string; the text
    rewarded ends before either."""
    tok = Letters()
    assert grpo.completion(tok, np.array([1, 2, 0]), 0, []) == ([1, 2, 0], "ab", True)
    assert grpo.completion(tok, np.array([1, 2, 3]), 0, []) == ([1, 2, 3], "abc", False)
    assert grpo.completion(tok, np.array([1, 24, 25, 3, 4]), 0, ["xy"]) == ([1, 24, 25], "a", True)


def tiny_run(policy, prompts_file, rewards_file, **grpo_options):
    config = grpo_config.get_config("tiny")
    config.init_from = str(policy)
    for field in ("n_layer", "n_head", "n_embd", "block_size"):
        config.model[field] = None  # the policy's
    config.data.source = prompts_file
    config.grpo.reward_funcs = f"{rewards_file}:first_letter"
    config.grpo.update(**grpo_options)
    config.parallel.mode = "single"  # compiles faster than a mesh of the 8 test devices
    return config


@pytest.mark.slow
def test_grpo_teaches_the_rewarded_style_and_resumes_exactly(sft_policy, tmp_path, capsys):
    """configs/sft.py:tiny writes both styles (greedy: about half the prompts each); GRPO rewarding the
    first-letter answer (the prompt record's "answer") makes it the answer of (nearly) every val prompt,
    the sampled val reward rises, the logs hold TRL's rollout metrics and the reward curve; a run resumed
    at step 15 ends with the uninterrupted run's parameters. With a KL term, 2 updates per generation,
    GSPO's sequence ratios and LoRA, it logs the KL and trains."""
    pairs, policy, _ = sft_policy  # shared: only read here
    lines = [{"prompt": p, "answer": c} for p, c, _ in pairs]
    prompts_file = write_lines(tmp_path / "prompts.jsonl", lines)
    (tmp_path / "rewards.py").write_text(REWARDS)
    val = pairs[900:950]

    def chosen_share(workdir):
        got = complete(workdir, [p for p, _, _ in val], max_new_tokens=4, do_sample=False)
        return np.mean([g.text == c for g, (_, c, _) in zip(got, val, strict=True)])

    before = chosen_share(policy)
    assert 0.2 < before < 0.8, before
    config = tiny_run(policy, prompts_file, tmp_path / "rewards.py")
    summary = train_and_evaluate(config, tmp_path / "grpo")
    records = read_metrics(tmp_path / "grpo")
    val_reward = [r["val_reward"] for r in records if "val_reward" in r]
    assert len(val_reward) == 3 and val_reward[-1] > val_reward[0] + 0.2, val_reward
    assert summary["val_reward"] == val_reward[-1] and summary["best_val_reward"] == max(val_reward)
    logged = [r for r in records if "train_loss" in r]
    for key in (
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "completion_length",
        "truncated_share",
        "clip_ratio",
    ):
        assert all(key in r for r in logged), key
    assert all(r["completion_length"] == 4 and r["truncated_share"] == 1 for r in logged)  # no EOS: chars
    assert "kl" not in logged[0] and (tmp_path / "grpo" / "loss.png").is_file()
    after = chosen_share(tmp_path / "grpo")
    assert after > 0.9, (before, after)

    assert_resumes_exactly(config, tmp_path / "grpo", 15, capsys)

    config = tiny_run(
        policy,
        prompts_file,
        tmp_path / "rewards.py",
        beta=0.04,
        num_iterations=2,
        importance_sampling_level="sequence",
    )
    config.model.lora_rank = 4
    config.update(max_iters=10, eval_interval=10, checkpoint_interval=10, log_interval=1)
    train_and_evaluate(config, tmp_path / "kl")
    logged = [r for r in read_metrics(tmp_path / "kl") if "train_loss" in r]
    assert logged[0]["kl"] == 0 and max(r["kl"] for r in logged) > 0  # the policy leaves its base
    assert [r["reward"] for r in logged[0::2]] == [r["reward"] for r in logged[1::2]]  # a generation, 2 steps


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(init_from="scratch"), "GRPO improves a trained model"),
        (dict(steps_per_call=3), "steps_per_call=3: GRPO samples with the policy of every step"),
        (dict(grpo=dict(num_generations=3)), "num_generations=3 must be >= 2 .* and divide batch_size=64"),
        (
            dict(grpo=dict(num_iterations=4)),
            "num_iterations=4 must be >= 1 and divide checkpoint_interval=15",
        ),
        (dict(grpo=dict(reward_funcs="")), "GRPO learns from rewards: set --config.grpo.reward_funcs"),
        (dict(data=dict(format="preference")), "GRPO reads prompts"),
    ],
)
def test_bad_grpo_runs_are_one_line(sft_policy, tmp_path, change, message):
    _, policy, _ = sft_policy
    (tmp_path / "rewards.py").write_text(REWARDS)
    prompts = write_lines(tmp_path / "p.jsonl", [{"prompt": "abcd>", "answer": "aaa."}] * 10)
    config = tiny_run(policy, prompts, tmp_path / "rewards.py")
    if "init_from" in change:
        config.model.update(n_layer=2, n_head=4, n_embd=32, block_size=32)
        config.data.tokenizer = "char"
    for key, value in change.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
