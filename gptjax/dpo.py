"""Direct preference optimisation (Rafailov et al. 2023; TRL's DPOTrainer, loss_type="sigmoid"): fine-tunes
a model to prefer the chosen answer of each pair (gptjax.data.preference) to the rejected one more than
a frozen reference model does, with no reward model and no sampling.

With log pi(a) the policy's (the model trained) log-probability of answer a given its prompt, summed over
the answer's tokens, and log ref(a) the reference's (the model training starts from), each pair gives

  margin = beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)))
  loss = -(1 - eps) * log sigmoid(margin) - eps * log sigmoid(-margin)

eps is label_smoothing (conservative DPO, for noisy labels; 0: DPO). That is the "sigmoid" loss; as
TRL's loss_type, "hinge" is max(0, 1 - margin) (SLiC, Zhao et al. 2023) and "ipo" (margin / beta -
1 / (2 beta))^2 (IPO, Azar et al. 2023), with per-token mean log-probabilities in place of sums (as
TRL); "simpo" has no reference (log ref = 0) and a target margin: -log sigmoid(margin - gamma) on
per-token means (SimPO, Meng et al. 2024; TRL's CPOTrainer loss_type="simpo", simpo_gamma). rpo_alpha >
0 adds rpo_alpha times the chosen answers' negative log-likelihood per token (RPO, Pang et al. 2024;
TRL's rpo_alpha; CPO's cpo_alpha with simpo): the chosen answers' own probability kept up. "orpo"
(ORPO, Hong et al. 2024; TRL's ORPOTrainer, beta its lambda) is that NLL (weight 1) plus -beta * log
sigmoid(log odds(chosen) - log odds(rejected)), odds(a) = p / (1 - p) of a's per-token mean
probability p: no reference, fine-tuning and preference in one loss. "kto" (KTO, Ethayarajh et al. 2024;
TRL's KTOTrainer) learns from unpaired examples, each labelled desirable or not
(gptjax.data.preference's unpaired format): with r = log pi(a) - log ref(a) of the example's answer and
KL = max(0, mean over the batch of r of the mismatched answers), no gradient, a desirable answer costs
desirable_weight * (1 - sigmoid(beta (r - KL))), an undesirable one undesirable_weight * (1 - sigmoid(beta
(KL - r))); `reward_margin` is then the mean reward of the desirable answers minus the undesirable ones'.

beta * (log pi(a) - log ref(a)) is a's implicit reward: `reward_margin` logs the mean margin,
`reward_accuracy` the share of pairs whose chosen answer has the larger reward. At the start the policy
is the reference: every margin is 0 and the sigmoid loss log 2. The reference's log-probabilities are
computed once, before training, by the starting model (TRL's precompute_ref_log_probs), on the devices
as training places the model (sharded too), so no second model is held during training; they are saved
in the workdir for a resumed run.
"""

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("reward_accuracy", "reward_margin")  # per step, beside the loss
LOSSES = ("sigmoid", "hinge", "ipo", "simpo", "orpo", "kto")  # TRL's loss_type names (see the module doc)
KTO_METRICS = ("reward_margin", "kl")
REFERENCE_FREE = ("simpo", "orpo")  # the losses that compare no reference model
MEAN_LOSSES = ("ipo", "simpo", "orpo")  # on per-token mean log-probabilities (as TRL), not sums
REFERENCE_FILE = "reference_logps.npz"  # in the workdir: the reference's log-probabilities of the answers


def dpo_loss(
    policy_B: jax.Array,
    ref_B: jax.Array,
    beta: float,
    label_smoothing: float = 0.0,
    loss: str = "sigmoid",
    simpo_gamma: float = 0.5,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The mean `loss` (LOSSES) of the pairs of rows (chosen, rejected, chosen, ...), and METRICS."""
    reward_b2 = beta * (policy_B - ref_B).reshape(-1, 2)
    margin_b = reward_b2[:, 0] - reward_b2[:, 1]
    if loss == "hinge":
        loss_b = jax.nn.relu(1 - margin_b)
    elif loss == "orpo":  # log odds(p) = log p - log(1 - p), p the mean token probability of an answer
        p_b2 = jnp.minimum(policy_B.reshape(-1, 2), -1e-7)  # log(1 - p) is -inf at p = 1
        odds_b2 = p_b2 - jnp.log(-jnp.expm1(p_b2))
        loss_b = -beta * jax.nn.log_sigmoid(odds_b2[:, 0] - odds_b2[:, 1])
    elif loss == "ipo":
        loss_b = (margin_b / beta - 1 / (2 * beta)) ** 2
    else:  # sigmoid, or simpo's with its target margin
        z_b = margin_b - simpo_gamma if loss == "simpo" else margin_b
        smooth = label_smoothing
        loss_b = -(1 - smooth) * jax.nn.log_sigmoid(z_b) - smooth * jax.nn.log_sigmoid(-z_b)
    metrics = {"reward_accuracy": jnp.mean(margin_b > 0), "reward_margin": jnp.mean(margin_b)}
    return jnp.mean(loss_b), {k: v.astype(jnp.float32) for k, v in metrics.items()}


def kto_loss(
    policy_B: jax.Array,
    ref_B: jax.Array,
    desirable_b: jax.Array,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """KTO's mean loss (module doc) of the pairs of rows (an example's answer, a mismatched answer, ...)
    labelled `desirable_b` (1 or 0), and KTO_METRICS. Under pmap, `axis_name` names the device axis: the
    KL estimate is the mean over every device's mismatched pairs (TRL's, gathered over processes), and
    the reward margin over every device's examples, as one device computes them on the whole batch."""
    ratio_b2 = (policy_B - ref_B).reshape(-1, 2)
    mean = jnp.mean(ratio_b2[:, 1])
    if axis_name is not None:  # each device holds an equal share of the pairs
        mean = jax.lax.pmean(mean, axis_name)
    kl = jax.lax.stop_gradient(jnp.maximum(mean, 0.0))
    r_b, good_b = ratio_b2[:, 0], desirable_b > 0.5
    loss_b = jnp.where(
        good_b,
        desirable_weight * (1 - jax.nn.sigmoid(beta * (r_b - kl))),
        undesirable_weight * (1 - jax.nn.sigmoid(beta * (kl - r_b))),
    )

    def mean_reward(m_b):  # over every device's examples too
        total, count = beta * jnp.sum(jnp.where(m_b, r_b, 0)), jnp.sum(m_b)
        if axis_name is not None:
            total, count = jax.lax.psum((total, count), axis_name)
        return total / jnp.maximum(count, 1)

    metrics = {"reward_margin": mean_reward(good_b) - mean_reward(~good_b), "kl": kl}
    return jnp.mean(loss_b), {k: v.astype(jnp.float32) for k, v in metrics.items()}


def pairs_loss(
    sum_B: jax.Array,
    ref_B: jax.Array,
    tokens_B: jax.Array,
    objective: Any,
    labels_b: jax.Array | None = None,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of `objective` (gptjax.train_step.Objective: beta, label_smoothing, loss, simpo_gamma,
    nll_weight, KTO's weights) and its metrics, from the rows' summed answer log-probabilities `sum_B`,
    the reference's `ref_B`, the answers' lengths `tokens_B` and (KTO) each pair's label `labels_b`
    (and pmap's `axis_name`, for KTO's KL estimate over every device)."""
    o, policy_B = objective, sum_B
    if o.loss == "kto":
        weights = (o.desirable_weight, o.undesirable_weight)
        return kto_loss(sum_B, ref_B, labels_b, o.beta, *weights, axis_name=axis_name)
    if o.loss in MEAN_LOSSES:
        per_token = jnp.maximum(tokens_B, 1).astype(jnp.float32)
        policy_B, ref_B = sum_B / per_token, ref_B / per_token
    if o.loss in REFERENCE_FREE:
        ref_B = jnp.zeros_like(ref_B)
    loss, metrics = dpo_loss(policy_B, ref_B, o.beta, o.label_smoothing, o.loss, o.simpo_gamma)
    if o.nll_weight:
        nll = chosen_nll(sum_B, tokens_B)
        loss, metrics = loss + o.nll_weight * nll, {**metrics, "nll_loss": nll}
    return loss, metrics


def chosen_nll(policy_B: jax.Array, tokens_B: jax.Array) -> jax.Array:
    """The chosen answers' mean negative log-likelihood per token (RPO's term; TRL's nll_loss), from the
    rows' summed log-probabilities `policy_B` and answer lengths `tokens_B`."""
    return -jnp.sum(policy_B[0::2]) / jnp.maximum(jnp.sum(tokens_B[0::2]), 1).astype(jnp.float32)


def reference_logps(
    logps_fn: Callable, rows_N2R: np.ndarray, batch_pairs: int, rows=slice(None)
) -> np.ndarray:
    """[N, 2] float32: the answer log-probabilities of every pair's rows by `logps_fn`, which maps this
    process's `rows` (Placement.process_rows) of a global batch (x_1BT, y_1BT) to the whole batch's [1, B]
    (Placement.rows_fn of train_step.answer_logps_steps with the starting model placed as training's);
    `batch_pairs` pairs per call, the last call padded, so one compiled function."""
    from gptjax.data.sft import decode_rows  # the data package is host-side: imported where it is used

    N, R = len(rows_N2R), rows_N2R.shape[-1]
    out = np.zeros((N, 2), np.float32)
    for start in range(0, N, batch_pairs):
        chunk = np.asarray(rows_N2R[start : start + batch_pairs])
        n = len(chunk)
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_pairs - n, axis=0)])
        x_BT, y_BT = decode_rows(chunk.reshape(2 * batch_pairs, R))
        out[start : start + n] = np.asarray(logps_fn((x_BT[None, rows], y_BT[None, rows]))).reshape(-1, 2)[:n]
    return out


def with_reference(dataset: Any, workdir: pathlib.Path, logps: Callable | None) -> Any:
    """`dataset` (gptjax.data.Dataset of pairs) with each split's reference log-probabilities [N, 2] (KTO's
    unpaired examples: and their labels, a third column):
    `logps(rows_N2R)` (reference_logps by the starting model) saved in the workdir (by process 0,
    atomically), or read back from there when `logps` is None (a resumed run: its starting model is no
    longer at hand)."""
    path = workdir / REFERENCE_FILE
    splits = ("train", "val")
    if logps is not None:
        print(f"DPO: the starting model's log-probabilities of every answer -> {path}", flush=True)
        reference = {s: logps(getattr(dataset, s)) for s in splits}
        if jax.process_index() == 0:
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as f:
                np.savez(f, **reference)
            os.replace(tmp, path)
    else:
        if not path.is_file():
            raise FileNotFoundError(
                f"{workdir} holds a DPO run's checkpoint but not its reference log-probabilities "
                f"{REFERENCE_FILE}; start the run again in a fresh --workdir"
            )
        with np.load(path) as saved:
            reference = {s: saved[s] for s in splits}
        for s in splits:
            if len(reference[s]) != len(getattr(dataset, s)):
                raise ValueError(
                    f"{path} holds the reference of {len(reference[s])} {s} pairs, the data has "
                    f"{len(getattr(dataset, s))}: resume with the data the run started with"
                )
    if dataset.train_labels is not None:  # KTO's: get_pairs puts them in the batch
        reference = {s: np.column_stack([reference[s], getattr(dataset, f"{s}_labels")]) for s in splits}
    return dataclasses.replace(dataset, train_reference=reference["train"], val_reference=reference["val"])
