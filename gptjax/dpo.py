"""Direct preference optimisation (Rafailov et al. 2023; TRL's DPOTrainer, loss_type="sigmoid"): fine-tunes
a model to prefer the chosen answer of each pair (gptjax.data.preference) to the rejected one more than
a frozen reference model does, with no reward model and no sampling.

With log pi(a) the policy's (the model trained) log-probability of answer a given its prompt, summed over
the answer's tokens, and log ref(a) the reference's (the model training starts from), each pair gives

  margin = beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)))
  loss = -(1 - eps) * log sigmoid(margin) - eps * log sigmoid(-margin)

eps is label_smoothing (conservative DPO, for noisy labels; 0: DPO). beta * (log pi(a) - log ref(a)) is
a's implicit reward: `reward_margin` logs the mean margin, `reward_accuracy` the share of pairs whose
chosen answer has the larger reward. At the start the policy is the reference: every margin is 0 and the
loss log 2. The reference's log-probabilities are computed once, before training, by the starting model
(TRL's precompute_ref_log_probs), so no second model is held during training; gptjax.train saves them
in the workdir for a resumed run.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model import GPT, GPTConfig

METRICS = ("reward_accuracy", "reward_margin")  # per step, beside the loss


def answer_logps(logits_BTV: jax.Array, y_BT: jax.Array) -> jax.Array:
    """[B] float32: each row's summed log-probability of its targets (y >= 0: the answer's tokens)."""
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    logp_BT = jnp.take_along_axis(logp_BTV, jnp.maximum(y_BT, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(y_BT >= 0, logp_BT, 0.0), axis=-1)


def dpo_loss(
    policy_B: jax.Array, ref_B: jax.Array, beta: float, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The mean DPO loss of the pairs of rows (chosen, rejected, chosen, ...), and METRICS."""
    reward_b2 = beta * (policy_B - ref_B).reshape(-1, 2)
    margin_b = reward_b2[:, 0] - reward_b2[:, 1]
    loss_b = -(1 - label_smoothing) * jax.nn.log_sigmoid(margin_b) - label_smoothing * jax.nn.log_sigmoid(
        -margin_b
    )
    metrics = {"reward_accuracy": jnp.mean(margin_b > 0), "reward_margin": jnp.mean(margin_b)}
    return jnp.mean(loss_b), {k: v.astype(jnp.float32) for k, v in metrics.items()}


def reference_logps(cfg: GPTConfig, params: Any, rows_N2R: np.ndarray, batch_pairs: int) -> np.ndarray:
    """[N, 2] float32: the model's (`params`, the run's starting point) answer_logps of every pair's rows,
    without dropout, `batch_pairs` pairs per call (the last call padded, so one compiled function)."""
    from gptjax.data.sft import decode_rows  # the data package is host-side: imported where it is used

    @jax.jit
    def logps(params, x_BT, y_BT):
        logits_BTV, _ = GPT(cfg).apply({"params": params}, x_BT, deterministic=True)
        return answer_logps(logits_BTV, y_BT)

    params = jax.device_put(params)
    N, R = len(rows_N2R), rows_N2R.shape[-1]
    out = np.zeros((N, 2), np.float32)
    for start in range(0, N, batch_pairs):
        chunk = np.asarray(rows_N2R[start : start + batch_pairs])
        n = len(chunk)
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_pairs - n, axis=0)])
        x_BT, y_BT = decode_rows(chunk.reshape(2 * batch_pairs, R))
        out[start : start + n] = np.asarray(logps(params, x_BT, y_BT)).reshape(batch_pairs, 2)[:n]
    return out
