"""Pure training and evaluation steps: TrainState, the loss, train_step, eval_step. No I/O here."""

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from gptjax.model import GPT, GPTConfig
from gptjax.optim import freeze


class TrainState(train_state.TrainState):
    """step, params, opt_state, plus the base dropout key (each step folds its step number in)."""

    rng: jax.Array


def create_train_state(config: GPTConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Initialises parameters and optimizer state (jit this, or `jax.eval_shape` it for the shapes)."""
    model = GPT(config)
    # A raw uint32 key (not a typed key array) so orbax can store it like any other array.
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
    dummy_BT = jnp.zeros((1, min(8, config.block_size)), jnp.int32)
    params = model.init(init_rng, dummy_BT)["params"]
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx, rng=dropout_rng)
    # A strongly typed step, like a restored one, so resuming does not recompile the train step.
    return state.replace(step=jnp.asarray(0, jnp.int32))


def loss_fn(params, apply_fn, batch, dropout_rng, deterministic: bool) -> jax.Array:
    """Mean next-token cross entropy in float32 over the targets not IGNORE'd (the model computes it:
    GPTConfig.loss_chunk). `batch` is (x_BT, y_BT), or (x_BT, y_BT, segments_BT) for rows that pack
    several examples (GPT's segments_BT). Parameters training does not update (a LoRA model's base) get
    no gradient (optim.freeze)."""
    x_BT, y_BT, *segments = batch
    loss, _ = apply_fn(
        {"params": freeze(params)},
        x_BT,
        segments_BT=segments[0] if segments else None,
        deterministic=deterministic,
        rngs={"dropout": dropout_rng},
        targets_BT=y_BT,
    )
    return loss


def _micro_batches(batch: tuple[jax.Array, ...], grad_accum: int) -> tuple[jax.Array, ...]:
    """(x_BT, y_BT[, segments_BT]) -> (x_KbT, y_KbT, ...): grad_accum equal micro-batches of
    b = B / grad_accum rows."""
    B, T = batch[0].shape
    if B % grad_accum:
        raise ValueError(f"batch_size={B} is not divisible by grad_accum={grad_accum}")
    return tuple(a.reshape(grad_accum, B // grad_accum, T) for a in batch)


def _trained(y_BT: jax.Array) -> jax.Array:
    """How many targets are trained on (not IGNORE), as float32."""
    return jnp.sum(y_BT >= 0).astype(jnp.float32)


def train_step(
    state: TrainState,
    batch: tuple[jax.Array, ...],
    grad_accum: int = 1,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on a global batch (x_BT, y_BT[, segments_BT]: loss_fn) split into
    `grad_accum` micro-batches.

    The loss is the mean over every target of the global batch that is trained on (y >= 0): each
    micro-batch's mean loss and gradient count by its share of those targets, which equals the gradient
    of the whole batch however the ignored targets (fine-tuning prompts, padding) fall; without them the
    shares are equal. Under `jax.pmap`, `axis_name` names the device axis: each device holds an equal
    share of the batch, its shares are of the targets of all devices, and the weighted gradients and
    loss are summed over devices (`lax.psum`).
    """
    micro_batches = _micro_batches(batch, grad_accum)
    total = _trained(micro_batches[1])
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name)
    total = jnp.maximum(total, 1.0)  # a batch with nothing to learn: loss and gradients 0
    step_rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # independent dropout masks on each device
        step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    grad_fn = jax.value_and_grad(loss_fn)

    def micro_step(carry, micro):
        loss_sum, grad_sum = carry
        i, micro_batch = micro
        loss, grads = grad_fn(
            state.params, state.apply_fn, micro_batch, jax.random.fold_in(step_rng, i), False
        )
        share = _trained(micro_batch[1]) / total
        grad_sum = jax.tree_util.tree_map(lambda a, g: a + g * share.astype(g.dtype), grad_sum, grads)
        return (loss_sum + loss * share, grad_sum), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    micro = (jnp.arange(grad_accum), micro_batches)
    (loss, grads), _ = jax.lax.scan(micro_step, (jnp.float32(0), zeros), micro)
    if axis_name is not None:
        loss, grads = jax.lax.psum((loss, grads), axis_name)

    new_state = state.apply_gradients(grads=grads)
    updates = jax.tree_util.tree_map(jnp.subtract, new_state.params, state.params)
    metrics = {
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(new_state.params),
        "update_norm": optax.global_norm(updates),
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


def eval_step(state: TrainState, batch: tuple[jax.Array, ...], grad_accum: int = 1) -> jax.Array:
    """Mean loss on a batch over its targets trained on (as train_step), dropout off, over `grad_accum`
    equal micro-batches one at a time (`lax.map`): the activations of one micro-batch at once."""
    micro_batches = _micro_batches(batch, grad_accum)
    losses_K = jax.lax.map(
        lambda micro: loss_fn(state.params, state.apply_fn, micro, state.rng, True), micro_batches
    )
    trained_K = jnp.sum(micro_batches[1] >= 0, axis=(1, 2)).astype(jnp.float32)
    return jnp.sum(losses_K * trained_K) / jnp.maximum(jnp.sum(trained_K), 1.0)


def eval_steps(state: TrainState, batches: tuple[jax.Array, ...], grad_accum: int = 1) -> jax.Array:
    """Mean losses [K] of K batches (x_KBT, y_KBT[, segments_KBT]), one at a time (`lax.map`)."""
    return jax.lax.map(lambda batch: eval_step(state, batch, grad_accum), batches)


# The usual jitted forms: the state is donated (updated in place) and grad_accum is static.
jit_train_step = jax.jit(train_step, static_argnames="grad_accum", donate_argnums=0)
jit_eval_step = jax.jit(eval_step, static_argnames="grad_accum")
