"""Pure training and evaluation steps: TrainState, the loss, train_step, eval_step. No I/O here."""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from gptjax import dpo, grpo, reward
from gptjax.lm_head import token_logps
from gptjax.model import GPT, GPTConfig
from gptjax.moe import AUX_LOSS, mean_aux_loss
from gptjax.objective import LM, Objective  # noqa: F401 (Objective: gptjax.train_step's API)
from gptjax.optim import freeze


class TrainState(train_state.TrainState):
    """step, params, opt_state, plus the base dropout key (each step folds its step number in) and the
    objective (static: each one compiles its own step)."""

    rng: jax.Array
    objective: Objective = struct.field(pytree_node=False, default=LM)


def create_train_state(
    config: GPTConfig, tx: optax.GradientTransformation, seed: int, objective: Objective = LM
) -> TrainState:
    """Initialises parameters and optimizer state (jit this, or `jax.eval_shape` it for the shapes). The LM
    objective of a mixture-of-experts model gets its router loss weight, config.router_aux_loss_coef."""
    if config.n_experts and objective.kind == "lm":
        objective = dataclasses.replace(objective, router_aux_coef=config.router_aux_loss_coef)
    model = GPT(config)
    # A raw uint32 key (not a typed key array) so orbax can store it like any other array.
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
    dummy_BT = jnp.zeros((1, min(8, config.block_size)), jnp.int32)
    params = model.init(init_rng, dummy_BT)["params"]
    state = TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, rng=dropout_rng, objective=objective
    )
    # A strongly typed step, like a restored one, so resuming does not recompile the train step.
    return state.replace(step=jnp.asarray(0, jnp.int32))


def loss_fn(
    params,
    apply_fn,
    batch,
    dropout_rng,
    deterministic: bool,
    objective: Objective = LM,
    router_aux: bool = True,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, the objective's metrics). "lm": the mean next-token cross entropy in float32 over the
    targets not IGNORE'd (the model computes it: GPTConfig.loss_chunk); `batch` is (x_BT, y_BT), or
    (x_BT, y_BT, segments_BT) for rows that pack several examples (GPT's segments_BT). "dpo": the mean
    DPO loss of the pairs of rows of (x_BT, y_BT, ref_BT) (gptjax.data.preference.get_pairs), from the
    rows' answer log-probabilities (GPT's row_logps; chunked with loss_chunk too). Parameters training
    does not update (a LoRA model's base) get no gradient (optim.freeze).

    A mixture-of-experts model (objective.router_aux_coef) reports its routers' mean load-balancing loss
    ("router_aux_loss", sown by gptjax.moe over every token), added to the "lm" loss weighted unless
    `router_aux` is False (evaluation: the cross entropy alone, comparable with a dense model's). DPO
    leaves it out, as TRL's DPOTrainer by default (it adds it only with output_router_logits)."""
    rngs = {"dropout": dropout_rng}
    if objective.kind == "reward":  # each row's score at its last answer token (gptjax.reward)
        x_BT, y_BT = batch[:2]
        margin_b = batch[2][0::2, 0] if len(batch) > 2 else 0.0  # each pair's margin, at its chosen row
        scores_BT, _ = apply_fn({"params": freeze(params)}, x_BT, deterministic=deterministic, rngs=rngs)
        rewards_B = reward.row_rewards(scores_BT, y_BT)
        return reward.reward_loss(rewards_B, objective.center_rewards_coef, margin_b)
    if objective.kind == "grpo":  # the completions' tokens, their advantages, old and reference logps
        x_BT, y_BT, adv_BT, old_BT, ref_BT = batch
        logits_BTV, _ = apply_fn({"params": freeze(params)}, x_BT, deterministic=deterministic, rngs=rngs)
        logp_BT = token_logps(logits_BTV / objective.temperature, y_BT)
        return grpo.grpo_loss(logp_BT, old_BT, ref_BT, adv_BT[:, 0], y_BT >= 0, objective)
    if objective.kind == "dpo":
        x_BT, y_BT, ref_BT = batch
        variables = {"params": freeze(params)}
        sum_B, _ = apply_fn(
            variables, x_BT, deterministic=deterministic, rngs=rngs, targets_BT=y_BT, row_logps=True
        )
        ref_B, labels_b = ref_BT[:, 0], ref_BT[0::2, 1]  # KTO's labels (gptjax.data.preference.get_pairs)
        tokens_B = jnp.sum(y_BT >= 0, axis=-1)
        return dpo.pairs_loss(sum_B, ref_B, tokens_B, objective, labels_b, axis_name)
    x_BT, y_BT, *segments = batch
    moe = objective.router_aux_coef is not None
    out = apply_fn(
        {"params": freeze(params)},
        x_BT,
        segments_BT=segments[0] if segments else None,
        deterministic=deterministic,
        rngs=rngs,
        targets_BT=y_BT,
        mutable=[AUX_LOSS] if moe else False,
    )
    if not moe:
        return out[0], {}
    (loss, _), sown = out
    aux = mean_aux_loss(sown)
    return loss + objective.router_aux_coef * aux if router_aux else loss, {"router_aux_loss": aux}


def _micro_batches(batch: tuple[jax.Array, ...], grad_accum: int) -> tuple[jax.Array, ...]:
    """(x_BT, y_BT[, segments_BT]) -> (x_KbT, y_KbT, ...): grad_accum equal micro-batches of
    b = B / grad_accum rows."""
    B, T = batch[0].shape
    if B % grad_accum:
        raise ValueError(f"batch_size={B} is not divisible by grad_accum={grad_accum}")
    return tuple(a.reshape(grad_accum, B // grad_accum, T) for a in batch)


def weights(y_KBT: jax.Array, objective: Objective) -> jax.Array:
    """What each batch of y_KBT ([..., B, T]) counts for in a mean over several, as float32: "lm" the
    targets trained on (not IGNORE), "dpo" and "reward" its pairs (each one loss), "grpo" its completions
    (its tokens for loss_type "dapo", a mean over the batch's tokens)."""
    if objective.pairs:
        return jnp.full(y_KBT.shape[:-2], y_KBT.shape[-2] / 2, jnp.float32)
    if objective.kind == "grpo" and objective.grpo_loss != "dapo":
        return jnp.full(y_KBT.shape[:-2], y_KBT.shape[-2], jnp.float32)
    return jnp.sum(y_KBT >= 0, axis=(-2, -1)).astype(jnp.float32)


def train_step(
    state: TrainState,
    batch: tuple[jax.Array, ...],
    grad_accum: int = 1,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a global batch (x_BT, y_BT[, segments_BT or ref_BT]: loss_fn) split into
    `grad_accum` micro-batches.

    The loss is the mean over every target of the global batch that is trained on (y >= 0): each
    micro-batch's mean loss and gradient count by its share of those targets, which equals the gradient
    of the whole batch however the ignored targets (fine-tuning prompts, padding) fall; without them the
    shares are equal. DPO's loss is the mean over pairs: equal shares (each micro-batch holds whole
    pairs). Under `jax.pmap`, `axis_name` names the device axis: each device holds an equal share of the
    batch, its shares are of the targets of all devices, and the weighted gradients and loss are summed
    over devices (`lax.psum`).
    """
    micro_batches = _micro_batches(batch, grad_accum)
    objective = state.objective
    total = jnp.sum(weights(micro_batches[1], objective))
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name)
    total = jnp.maximum(total, 1.0)  # a batch with nothing to learn: loss and gradients 0
    step_rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # independent dropout masks on each device
        step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro_step(carry, micro):
        loss_sum, aux_sum, grad_sum = carry
        i, micro_batch = micro
        rng = jax.random.fold_in(step_rng, i)
        (loss, aux), grads = grad_fn(
            state.params, state.apply_fn, micro_batch, rng, False, objective, axis_name=axis_name
        )
        share = weights(micro_batch[1], objective) / total
        grad_sum = jax.tree_util.tree_map(lambda a, g: a + g * share.astype(g.dtype), grad_sum, grads)
        aux_sum = {k: aux_sum[k] + aux[k] * share for k in aux_sum}
        return (loss_sum + loss * share, aux_sum, grad_sum), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    no_aux = {k: jnp.float32(0) for k in objective.metrics}
    micro = (jnp.arange(grad_accum), micro_batches)
    (loss, aux, grads), _ = jax.lax.scan(micro_step, (jnp.float32(0), no_aux, zeros), micro)
    if axis_name is not None:
        loss, aux, grads = jax.lax.psum((loss, aux, grads), axis_name)

    new_state = state.apply_gradients(grads=grads)
    updates = jax.tree_util.tree_map(jnp.subtract, new_state.params, state.params)
    metrics = {
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(new_state.params),
        "update_norm": optax.global_norm(updates),
        **aux,
    }
    return new_state, metrics


def train_steps(
    state: TrainState,
    batches: tuple[jax.Array, ...],
    grad_accum: int = 1,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """K consecutive train steps in one call (`lax.scan`) on batches (x_KBT, y_KBT[, segments_KBT]);
    metrics are [K].

    Several steps per dispatch hide the host overhead that dominates small models.
    """
    step = lambda s, batch: train_step(s, batch, grad_accum, axis_name)  # noqa: E731
    return jax.lax.scan(step, state, batches)


def eval_step(
    state: TrainState, batch: tuple[jax.Array, ...], grad_accum: int = 1, axis_name: str | None = None
) -> dict[str, jax.Array]:
    """{"loss", the objective's metrics}: their means on a batch over its targets trained on (DPO: its
    pairs; as train_step), dropout off, the loss without a MoE's router loss (loss_fn), over `grad_accum`
    equal micro-batches one at a time (`lax.map`): the activations of one micro-batch at once. `axis_name`:
    pmap's device axis (KTO's KL estimate is over every device)."""
    micro_batches = _micro_batches(batch, grad_accum)

    def metrics(micro):
        objective = state.objective
        loss, aux = loss_fn(state.params, state.apply_fn, micro, state.rng, True, objective, False, axis_name)
        return {"loss": loss, **aux}

    metrics_K = jax.lax.map(metrics, micro_batches)
    weights_K = weights(micro_batches[1], state.objective)
    total = jnp.maximum(jnp.sum(weights_K), 1.0)
    return {k: jnp.sum(v_K * weights_K) / total for k, v_K in metrics_K.items()}


def eval_steps(
    state: TrainState, batches: tuple[jax.Array, ...], grad_accum: int = 1, axis_name: str | None = None
) -> dict[str, jax.Array]:
    """eval_step's metrics [K] of K batches (x_KBT, y_KBT[, segments_KBT or ref_KBT]), one at a time."""
    return jax.lax.map(lambda batch: eval_step(state, batch, grad_accum, axis_name), batches)


def answer_logps_steps(state: TrainState, batches: tuple[jax.Array, ...], grad_accum: int = 1) -> jax.Array:
    """[K, B] float32: each row's log-probability of its answer (GPT's row_logps: the targets y >= 0) in
    K batches (x_KBT, y_KBT, ...), dropout off, in `grad_accum` micro-batches one at a time. DPO's
    reference is the starting model's."""

    def rows(batch):
        def micro(xy):
            return state.apply_fn({"params": state.params}, xy[0], targets_BT=xy[1], row_logps=True)[0]

        return jax.lax.map(micro, _micro_batches(batch[:2], grad_accum)).reshape(-1)

    return jax.lax.map(rows, batches)


# The usual jitted forms: the state is donated (updated in place) and grad_accum is static.
jit_train_step = jax.jit(train_step, static_argnames="grad_accum", donate_argnums=0)
jit_eval_step = jax.jit(eval_step, static_argnames="grad_accum")
