"""Reward models (TRL's RewardTrainer; Bradley-Terry, Ouyang et al. 2022): a GPT with a score head
(GPTConfig.score_head) rates a text by one number, its score at the text's last token, and learns from
preference pairs (gptjax.data.preference) that the chosen answer rates higher than the rejected one:

  loss = -log sigmoid(r(chosen) - r(rejected) - margin) + center_coef * mean((r(chosen) + r(rejected))^2)

the second term (TRL's center_rewards_coefficient, Eisenstein et al. 2023; 0: off) keeps the rewards
centred on 0, as a reward model used across batches needs; `margin` is a pair's own "margin" field (TRL's,
Llama 2's margin loss: how much better the chosen answer is; 0 without one). `reward_accuracy` logs the
share of pairs whose chosen answer rates higher, `reward_margin` the mean difference, `mean_reward` the
mean of both.

A pair's rows are its prompt with each answer (and its EOS), as DPO reads them: each row's reward is the
score at its last answer token, the last x position that holds one (a row filled to block_size + 1
tokens keeps its last token only as a target: its reward is read one token earlier, at x's last).
"""

import jax
import jax.numpy as jnp

METRICS = ("reward_accuracy", "reward_margin", "mean_reward")  # per step, beside the loss


def last_positions(y_BT: jax.Array) -> jax.Array:
    """[B] int32: where each row's reward is read, the x position of its last trained token (the
    target y >= 0 at t is x's token at t + 1), at most T - 1; 0 for a row with no target."""
    T = y_BT.shape[-1]
    t_BT = jnp.arange(T, dtype=jnp.int32)
    last_B = jnp.max(jnp.where(y_BT >= 0, t_BT, -1), axis=-1)
    return jnp.clip(last_B + 1, 0, T - 1)


def row_rewards(scores_BT: jax.Array, y_BT: jax.Array) -> jax.Array:
    """[B] float32: each row's reward, its score at `last_positions`."""
    return jnp.take_along_axis(scores_BT, last_positions(y_BT)[:, None], axis=-1)[:, 0]


def reward_loss(
    rewards_B: jax.Array, center_coef: float = 0.0, margin_b: jax.Array | float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The mean loss (module doc) of the pairs of rows (chosen, rejected, chosen, ...) with their margins
    margin_b, and METRICS."""
    r_b2 = rewards_B.astype(jnp.float32).reshape(-1, 2)
    margin_b, given_b = r_b2[:, 0] - r_b2[:, 1], margin_b
    loss = -jnp.mean(jax.nn.log_sigmoid(margin_b - given_b))
    if center_coef:
        loss = loss + center_coef * jnp.mean(jnp.sum(r_b2, axis=-1) ** 2)
    metrics = {
        "reward_accuracy": jnp.mean(margin_b > 0).astype(jnp.float32),
        "reward_margin": jnp.mean(margin_b),
        "mean_reward": jnp.mean(r_b2),
    }
    return loss, metrics
