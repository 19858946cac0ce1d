"""Tests for gptjax.train_step and gptjax.optim: learning, gradient accumulation, metrics, dropout
keys, the weight-decay mask, the lr schedule and the eval loss."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gptjax.data.sft import decode_rows, masked, pack, pad
from gptjax.lm_head import IGNORE
from gptjax.model import GPT, stack_layers, unstack_layers
from gptjax.optim import decay_mask, lr_schedule, make_optimizer, muon_labels
from gptjax.train_step import (
    create_train_state,
    eval_steps,
    jit_eval_step,
    jit_train_step,
    train_step,
    train_steps,
)

jax.config.update("jax_numpy_rank_promotion", "raise")


def independent_loss(params, cfg, x_BT, y_BT):
    """Mean next-token cross entropy written out with log_softmax (no optax, no gptjax loss)."""
    logits_BTV, _ = GPT(cfg).apply({"params": params}, x_BT)
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp_BTV, y_BT[..., None], axis=-1).mean()


# One compiled (loss, gradient) shared by the tests (cfg is static).
independent_loss_and_grad = jax.jit(jax.value_and_grad(independent_loss), static_argnums=1)


def assert_trees_close(a, b, atol):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=atol), a, b)


# ----- Learning. -----


# Llama's choices: rotary positions, one key/value head for two query heads, a SwiGLU MLP, RMS norms.
LLAMA = dict(position="rope", n_kv_head=1, mlp="swiglu", norm="rms")


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "llama"])
def test_loss_falls_on_a_repeated_batch(tiny_state, tiny_cfg, tiny_opt, tiny_batch, position):
    if position == "learned":
        state = tiny_state()  # shares its compiled step with the other tests
    else:
        options = LLAMA if position == "llama" else dict(position=position)
        cfg = dataclasses.replace(tiny_cfg, **options)
        state = create_train_state(cfg, make_optimizer(tiny_opt), seed=0)
    losses = []
    for _ in range(30):
        state, metrics = jit_train_step(state, tiny_batch)
        losses.append(float(metrics["loss"]))
    # Starts near uniform over the vocabulary (ln 16 = 2.77) and memorises the 32 tokens
    # (measured: learned 0.3, sinusoidal 0.9 after 30 steps).
    assert losses[0] == pytest.approx(math.log(tiny_cfg.vocab_size), rel=0.1)
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(state.step) == 30


# ----- Gradient accumulation. -----


def test_grad_accum_equals_one_big_batch(tiny_cfg, tiny_batch):
    """4 micro-batches of 1 give the update of one batch of 4 (dropout 0).

    Plain SGD with lr 1 makes the update the gradient itself; AdamW's first update is ~lr*sign(g),
    which would magnify rounding in near-zero gradients.
    """
    assert tiny_cfg.dropout == 0
    state = create_train_state(tiny_cfg, optax.sgd(1.0), seed=0)
    step = jax.jit(train_step, static_argnames="grad_accum")  # no donation: state is reused
    one, m_one = step(state, tiny_batch, grad_accum=1)
    four, m_four = step(state, tiny_batch, grad_accum=4)
    assert_trees_close(one.params, four.params, atol=1e-6)
    assert float(m_one["loss"]) == pytest.approx(float(m_four["loss"]), abs=1e-6)
    assert float(m_one["grad_norm"]) == pytest.approx(float(m_four["grad_norm"]), rel=1e-5)
    # The update really is the gradient (not, say, a sum over micro-batches).
    _, grads = independent_loss_and_grad(state.params, tiny_cfg, *tiny_batch)
    expected = jax.tree_util.tree_map(jnp.subtract, state.params, grads)
    assert_trees_close(four.params, expected, atol=1e-6)
    with pytest.raises(ValueError, match="grad_accum=3"):
        train_step(state, tiny_batch, grad_accum=3)


# ----- Ignored targets (fine-tuning prompts and padding). -----


def masked_loss(params, cfg, x_BT, y_BT):
    """independent_loss over the targets >= 0 only, written out."""
    logits_BTV, _ = GPT(cfg).apply({"params": params}, x_BT)
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    nll_BT = -jnp.take_along_axis(logp_BTV, jnp.maximum(y_BT, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(y_BT >= 0, nll_BT, 0.0)) / jnp.sum(y_BT >= 0)


def ignoring(y_BT, keep_BT):
    return jnp.where(jnp.asarray(keep_BT), y_BT, IGNORE)


# Row 0 trains on one target, row 1 on none, rows 2-3 on all: micro-batches of one row weigh 1, 0, 8, 8.
UNEVEN_KEEP = np.array([[0] * 7 + [1], [0] * 8, [1] * 8, [1] * 8], bool)


@pytest.mark.parametrize("chunk", [0, 3], ids=["full", "chunked"])
def test_ignored_targets_are_left_out_of_the_loss_and_its_gradient(tiny_cfg, tiny_params, tiny_batch, chunk):
    x_BT, y_BT = tiny_batch
    y_BT = ignoring(y_BT, UNEVEN_KEEP)
    cfg = dataclasses.replace(tiny_cfg, loss_chunk=chunk)
    model_loss = lambda p, y: GPT(cfg).apply({"params": p}, x_BT, targets_BT=y)[0]  # noqa: E731
    loss, grads = jax.jit(jax.value_and_grad(model_loss))(tiny_params, y_BT)
    want, want_grads = jax.jit(jax.value_and_grad(masked_loss), static_argnums=1)(
        tiny_params, tiny_cfg, x_BT, y_BT
    )
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    assert_trees_close(grads, want_grads, atol=1e-6)
    # ... which is not the mean over every position (the ignored ones counted as token 0, say).
    assert (
        abs(float(loss) - float(independent_loss(tiny_params, tiny_cfg, x_BT, jnp.maximum(y_BT, 0)))) > 1e-3
    )
    # Nothing to learn: loss 0 and no gradient, not 0/0.
    loss, grads = jax.jit(jax.value_and_grad(model_loss))(tiny_params, jnp.full_like(y_BT, IGNORE))
    assert float(loss) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grads))


def test_grad_accum_weighs_micro_batches_by_the_targets_they_train_on(tiny_cfg, tiny_batch):
    """Micro-batches training on 1, 0, 8 and 8 targets give the update of the whole batch: the mean over
    its 17 targets, not the mean of four micro-batch means (HF's old gradient accumulation bug)."""
    x_BT, y_BT = tiny_batch
    batch = (x_BT, ignoring(y_BT, UNEVEN_KEEP))
    state = create_train_state(tiny_cfg, optax.sgd(1.0), seed=0)
    step = jax.jit(train_step, static_argnames="grad_accum")
    one, m_one = step(state, batch, grad_accum=1)
    four, m_four = step(state, batch, grad_accum=4)
    assert float(m_four["loss"]) == pytest.approx(float(m_one["loss"]), abs=1e-6)
    assert_trees_close(four.params, one.params, atol=1e-6)
    want, grads = jax.jit(jax.value_and_grad(masked_loss), static_argnums=1)(state.params, tiny_cfg, *batch)
    assert float(m_one["loss"]) == pytest.approx(float(want), rel=1e-6)
    assert_trees_close(one.params, jax.tree_util.tree_map(jnp.subtract, state.params, grads), atol=1e-6)
    means = [
        float(masked_loss(state.params, tiny_cfg, x_BT[i : i + 1], batch[1][i : i + 1])) for i in (0, 2, 3)
    ]
    assert abs(np.mean(means) - float(want)) > 1e-3  # the weighting matters here (measured 6e-3)
    # Evaluation weighs its micro-batches the same way.
    assert float(jit_eval_step(state, batch, grad_accum=4)["loss"]) == pytest.approx(float(want), rel=1e-6)


# ----- Packed rows (several fine-tuning examples per row). -----


def test_packed_rows_train_as_the_padded_examples(tiny_cfg):
    """Six examples (a masked prompt, then completion tokens) packed into 3 rows (gptjax.data.sft.pack)
    give the loss and the SGD update of the same examples one per padded row, with the 3 rows as 3
    micro-batches: train_step carries the segment ids through to the model."""
    rng = np.random.default_rng(3)
    examples = []
    for n in (5, 4, 3, 3, 2, 4):
        ids = rng.integers(0, tiny_cfg.vocab_size, n).astype(np.int32)
        n_prompt = int(rng.integers(0, n - 1))
        examples.append(np.concatenate([masked(ids[:n_prompt]), ids[n_prompt:]]))
    row = tiny_cfg.block_size + 1
    packed, padded = decode_rows(pack(examples, row)), decode_rows(pad(examples, row))
    assert len(packed) == 3 and len(padded) == 2  # (x, y, segments) and (x, y)
    assert packed[0].shape == (3, 8) and padded[0].shape == (6, 8)
    state = create_train_state(tiny_cfg, optax.sgd(1.0), seed=0)
    step = jax.jit(train_step, static_argnames="grad_accum")
    one, m_one = step(state, padded, grad_accum=1)
    three, m_three = step(state, packed, grad_accum=3)
    assert float(m_three["loss"]) == pytest.approx(float(m_one["loss"]), rel=1e-5)
    assert_trees_close(three.params, one.params, atol=1e-5)
    # Not vacuous: read as plain rows (no segment ids), the packed examples see each other.
    _, m_plain = step(state, packed[:2], grad_accum=3)
    assert abs(float(m_plain["loss"]) - float(m_one["loss"])) > 1e-3
    assert float(jit_eval_step(state, packed, grad_accum=3)["loss"]) == pytest.approx(
        float(m_one["loss"]), rel=1e-5
    )


# ----- Metrics. -----


def test_metrics_are_finite_and_match_independent_norms(tiny_state, tiny_cfg, tiny_batch):
    params = tiny_state().params  # a copy: jit_train_step deletes the state it is given
    loss, grads = independent_loss_and_grad(params, tiny_cfg, *tiny_batch)
    new_state, metrics = jit_train_step(tiny_state(), tiny_batch)
    assert set(metrics) >= {"loss", "grad_norm", "param_norm", "update_norm"}
    for name, value in metrics.items():
        assert np.isfinite(float(value)), name

    def global_norm(tree) -> float:  # in float64, independently of optax
        leaves = jax.tree_util.tree_leaves(tree)
        return math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in leaves))

    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
    assert float(metrics["grad_norm"]) == pytest.approx(global_norm(grads), rel=1e-4)
    assert float(metrics["param_norm"]) == pytest.approx(global_norm(new_state.params), rel=1e-5)
    update = jax.tree_util.tree_map(jnp.subtract, new_state.params, params)
    assert float(metrics["update_norm"]) == pytest.approx(global_norm(update), rel=1e-4)
    assert float(metrics["update_norm"]) > 0


# ----- Dropout randomness. -----


def test_dropout_is_a_function_of_rng_and_step(tiny_cfg, tiny_opt, tiny_batch):
    cfg = dataclasses.replace(tiny_cfg, dropout=0.5)
    state = create_train_state(cfg, make_optimizer(tiny_opt), seed=0)
    copy = lambda s: jax.tree_util.tree_map(jnp.copy, s)
    a, m_a = jit_train_step(copy(state), tiny_batch)
    b, m_b = jit_train_step(copy(state), tiny_batch)
    assert float(m_a["loss"]) == float(m_b["loss"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)
    # Another step number (or another base key) draws other masks.
    _, m_step = jit_train_step(copy(a).replace(params=copy(state.params)), tiny_batch)
    _, m_rng = jit_train_step(copy(state).replace(rng=jax.random.PRNGKey(99)), tiny_batch)
    assert int(a.step) == 1
    assert float(m_step["loss"]) != float(m_a["loss"])
    assert float(m_rng["loss"]) != float(m_a["loss"])
    # Dropout is on in training and off in evaluation: evaluation is the plain forward pass.
    assert float(jit_eval_step(copy(state), tiny_batch)["loss"]) != float(m_a["loss"])
    plain = independent_loss_and_grad(state.params, cfg, *tiny_batch)[0]
    assert float(jit_eval_step(copy(state), tiny_batch)["loss"]) == pytest.approx(float(plain), rel=1e-6)


def test_each_micro_batch_and_each_device_draws_its_own_masks(tiny_state, tiny_cfg, tiny_batch):
    """The rows twice, as 2 micro-batches (or on 2 devices), average two different dropout masks: not the
    loss of the rows once, which one shared mask would reproduce (as it does without dropout)."""
    x_BT, y_BT = tiny_batch
    twice = (jnp.concatenate([x_BT, x_BT]), jnp.concatenate([y_BT, y_BT]))

    # The three losses of one state in one program (one compilation per dropout rate, of the losses only:
    # no update to compile): the rows once and twice as 2 micro-batches without a device axis (each device
    # computes them alike), and the rows once on each of 2 devices with the axis.
    def losses(state, batch, twice):
        return (
            train_step(state, batch)[1]["loss"],
            train_step(state, twice, grad_accum=2)[1]["loss"],
            train_step(state, batch, axis_name="d")[1]["loss"],
        )

    pmapped = jax.pmap(losses, axis_name="d", devices=jax.devices()[:2])
    # On the host: the tiny state lies on one device (committed), and pmap places each row on its own.
    stack = lambda tree: jax.tree_util.tree_map(lambda a: np.stack([a, a]), tree)  # noqa: E731
    for dropout in (0.5, 0.0):
        # The tiny state (seed 0), its model with this dropout rate.
        state = tiny_state().replace(apply_fn=GPT(dataclasses.replace(tiny_cfg, dropout=dropout)).apply)
        once, accumulated, devices = (
            float(loss[0]) for loss in pmapped(*map(stack, (state, tiny_batch, twice)))
        )
        if dropout:
            assert accumulated != pytest.approx(once, rel=1e-4) and devices != pytest.approx(once, rel=1e-4)
            assert accumulated != pytest.approx(devices, rel=1e-4)
        else:
            assert accumulated == pytest.approx(once, rel=1e-6) and devices == pytest.approx(once, rel=1e-6)


# ----- Optimizer. -----


def adamw_reference(params, grads_list, opt, eps=1e-8):
    """nanoGPT's update in numpy: clip_grad_norm_, then torch's AdamW (bias-corrected moments, decoupled
    weight decay on the decayed parameters) at a constant lr."""
    params = {k: np.array(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, grads in enumerate(grads_list, start=1):
        norm = math.sqrt(sum(float(np.sum(np.square(g))) for g in grads.values()))
        scale = min(1.0, opt.grad_clip / norm)
        for k, g in grads.items():
            g = np.asarray(g, np.float64) * scale
            m[k] = opt.beta1 * m[k] + (1 - opt.beta1) * g
            v[k] = opt.beta2 * v[k] + (1 - opt.beta2) * g * g
            m_hat, v_hat = m[k] / (1 - opt.beta1**t), v[k] / (1 - opt.beta2**t)
            decay = opt.weight_decay if k == "kernel" else 0.0
            params[k] = params[k] - opt.lr * (m_hat / (np.sqrt(v_hat) + eps) + decay * params[k])
    return params


@pytest.mark.parametrize("size", [100.0, 1e-7], ids=["clipped", "below-eps-scale"])
def test_optimizer_is_clipped_adamw(tiny_opt, size):
    """Gradients 100x the clip norm must be clipped; gradients of 1e-7 make AdamW's eps (1e-8) count."""
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32), "scale": np.ones(4, np.float32)}
    grads_list = [
        {k: (size * rng.normal(size=p.shape)).astype(np.float32) for k, p in params.items()} for _ in range(3)
    ]
    tx = make_optimizer(tiny_opt)
    ours, opt_state = jax.tree_util.tree_map(jnp.asarray, params), tx.init(params)
    for grads in grads_list:
        updates, opt_state = tx.update(grads, opt_state, ours)
        ours = optax.apply_updates(ours, updates)
    expected = adamw_reference(params, grads_list, tiny_opt)
    for k in params:
        np.testing.assert_allclose(ours[k], expected[k], rtol=1e-5, atol=1e-7)


def test_weight_decay_mask_is_matrices_only(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, bias=True, tie_embeddings=False)
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    params = jax.eval_shape(GPT(cfg).init, jax.random.PRNGKey(0), tokens)["params"]
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_mask = dict(jax.tree_util.tree_flatten_with_path(decay_mask(params))[0])
    kinds = set()
    for path, p in flat_params:
        name = path[-1].key
        kinds.add(name)
        assert flat_mask[path] == (p.ndim >= 2), path
        assert flat_mask[path] == (name in ("kernel", "embedding", "lm_head")), path
    assert kinds == {"kernel", "embedding", "lm_head", "bias", "scale"}


def loop_and_scan_steps(loop_cfg, tx, tiny_batch, steps):
    """(initial params, params after `steps` steps on tiny_batch, and those of the scan_layers model that
    started from the same params, unstacked)."""
    loop = create_train_state(loop_cfg, tx, seed=0)
    scan_cfg = dataclasses.replace(loop_cfg, scan_layers=True)
    scan = create_train_state(scan_cfg, tx, seed=0).replace(
        params=stack_layers(loop.params, loop_cfg.n_layer)
    )
    scan = scan.replace(opt_state=tx.init(scan.params))
    batches = tuple(jnp.stack([a] * steps) for a in tiny_batch)
    loop_after, _ = jax.jit(train_steps)(loop, batches)
    scan_after, _ = jax.jit(train_steps)(scan, batches)
    return loop.params, loop_after.params, unstack_layers(scan_after.params)


def test_scanned_layers_decay_the_same_parameters_as_the_loop(tiny_cfg, tiny_opt, tiny_batch):
    """scan_layers stacks biases and LayerNorm scales into [L, D] matrices: the mask goes by name, so
    both layouts decay the same parameters, and 3 AdamW steps (weight decay on, biases) agree."""
    loop_cfg = dataclasses.replace(tiny_cfg, bias=True, tie_embeddings=False)
    assert tiny_opt.weight_decay > 0
    params, loop, scan = loop_and_scan_steps(loop_cfg, make_optimizer(tiny_opt), tiny_batch, 3)

    def decayed(params):  # the decayed parameters' paths, with every layer h_i named h
        flat = jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]
        return {tuple("h" if k.key.startswith("h_") else k.key for k in path) for path, on in flat if on}

    assert decayed(stack_layers(params, 2)) == decayed(params)
    assert ("h", "ln_1", "scale") not in decayed(params)
    assert_trees_close(scan, loop, atol=1e-5)


def test_weight_decay_shrinks_only_matrices(tiny_opt):
    """With zero gradients Adam's step is 0, so only decoupled weight decay moves parameters."""
    rng = np.random.default_rng(0)
    params = {
        "dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)},
        "ln": {"scale": rng.normal(size=4)},
        "wte": {"embedding": rng.normal(size=(5, 4))},
    }
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float32), params)
    tx = make_optimizer(tiny_opt)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    new_params = optax.apply_updates(params, updates)
    shrink = 1 - tiny_opt.lr * tiny_opt.weight_decay

    def check(path, p, new):
        expected = p * shrink if p.ndim >= 2 else p
        np.testing.assert_allclose(new, expected, rtol=1e-6, err_msg=str(path))

    jax.tree_util.tree_map_with_path(check, params, new_params)
    assert {p.ndim for p in jax.tree_util.tree_leaves(params)} == {1, 2}


def nanogpt_lr(it: int, lr: float, min_lr: float, warmup: int, decay: int) -> float:
    """nanoGPT train.py get_lr."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_lr_schedule_warmup_then_cosine():
    opt = ml_collections.ConfigDict(
        dict(lr=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=50, decay_lr=True)
    )
    schedule = lr_schedule(opt)
    steps = np.arange(80)
    lrs = np.asarray(schedule(jnp.asarray(steps)), np.float64)
    assert lrs[0] == pytest.approx(1e-3 / 11, rel=1e-6)  # the first step already learns
    assert lrs[10] == pytest.approx(1e-3, rel=1e-6)
    np.testing.assert_allclose(lrs[50:], 1e-4, rtol=1e-6)
    assert np.all(np.diff(lrs[:11]) > 0)  # warmup rises
    assert np.all(np.diff(lrs[10:51]) < 0)  # cosine falls strictly to min_lr
    expected = [nanogpt_lr(int(s), 1e-3, 1e-4, 10, 50) for s in steps]
    np.testing.assert_allclose(lrs, expected, rtol=1e-5, atol=1e-12)

    constant = lr_schedule(ml_collections.ConfigDict(dict(lr=3e-4, decay_lr=False)))
    for step in (0, 10, 10_000):
        assert float(constant(step)) == pytest.approx(3e-4)


# ----- Muon (opt.name="muon"). -----


@pytest.fixture(scope="module")
def muon_opt(tiny_opt):
    """tiny_opt with Muon on the blocks' kernels, on a warmup + cosine schedule (muon_lr = 5 lr)."""
    opt = dict(tiny_opt.to_dict(), name="muon", muon_lr=0.05, muon_momentum=0.95)
    return ml_collections.FrozenConfigDict(dict(opt, decay_lr=True, warmup_iters=1, lr_decay_iters=4))


def newton_schulz_reference(g):
    """optax's orthogonalisation in numpy: the wide orientation, Frobenius-normalised, 5 quintic steps
    with modded-nanogpt's coefficients."""
    a, b, c = 3.4445, -4.7750, 2.0315
    wide = g.T if g.shape[0] > g.shape[1] else g
    x = wide / (np.linalg.norm(wide) + 1e-8)
    for _ in range(5):
        xxt = x @ x.T
        x = a * x + (b * xxt + c * xxt @ xxt) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def muon_reference(kernel, grads, opt):
    """Muon on one [in, out] kernel in float64 from its clipped gradients: optax's bias-corrected
    Nesterov momentum, Newton-Schulz, sqrt(max(1, out/in)), decoupled weight decay, muon_lr on lr's
    schedule."""
    p, mu, beta = np.array(kernel, np.float64), 0.0, opt.muon_momentum
    schedule = lr_schedule(opt)
    for t, g in enumerate(grads, start=1):
        mu = beta * mu + (1 - beta) * g
        nesterov = beta * mu / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta**t)
        update = newton_schulz_reference(nesterov) * math.sqrt(max(1.0, p.shape[1] / p.shape[0]))
        lr = float(schedule(t - 1)) * opt.muon_lr / opt.lr
        p = p - lr * (update + opt.weight_decay * p)
    return p


@pytest.mark.parametrize("layout", ["in_out", "out_in", "scanned"])
def test_muon_step_equals_numpy_on_block_kernels_and_adamw_elsewhere(muon_opt, layout):
    """3 clipped steps: each block kernel (each layer of a scanned one) moves as Muon in numpy; the
    embedding, norm scale, bias and LM head exactly as the AdamW optimizer moves them."""
    rng = np.random.default_rng(0)
    shapes = {"c_attn": (4, 12), "c_proj": (4, 4), "proj": (16, 4)}  # wide, square, tall
    lead = (2,) if layout == "scanned" else ()
    flip = (lambda k: np.swapaxes(k, -1, -2)) if layout == "out_in" else (lambda k: k)  # noqa: E731
    block = {
        "attn": {name: {"kernel": flip(rng.normal(size=lead + shape))} for name, shape in shapes.items()},
        "ln_1": {"scale": rng.normal(size=lead + (4,)), "bias": rng.normal(size=lead + (4,))},
    }
    params = {"h" if lead else "h_0": block, "wte": {"embedding": rng.normal(size=(5, 4))}}
    params["lm_head"] = rng.normal(size=(5, 4))
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float32), params)
    grads_list = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)]
    grads_list += [jax.tree_util.tree_map(lambda g: 0.01 * g, grads_list[0])] * 2

    def run(opt):
        tx = make_optimizer(opt, out_in=layout == "out_in")
        new, opt_state = params, tx.init(params)
        for grads in grads_list:
            updates, opt_state = tx.update(grads, opt_state, new)
            new = optax.apply_updates(new, updates)
        return new

    ours = run(muon_opt)
    adamw = run(ml_collections.FrozenConfigDict(dict(muon_opt.to_dict(), name="adamw")))
    norms = [optax.global_norm(grads) for grads in grads_list]
    assert norms[0] > muon_opt.grad_clip > norms[1]  # the first step is clipped, the others not
    clipped = [
        jax.tree_util.tree_map(lambda g: np.float64(g) * min(1.0, muon_opt.grad_clip / float(n)), grads)
        for grads, n in zip(grads_list, norms, strict=True)
    ]
    name = "h" if lead else "h_0"
    for module in shapes:
        kernel = flip(np.asarray(params[name]["attn"][module]["kernel"]))
        got = flip(np.asarray(ours[name]["attn"][module]["kernel"]))
        grads = [flip(g[name]["attn"][module]["kernel"]) for g in clipped]
        for layer in range(lead[0] if lead else 1):
            pick = (lambda x: x[layer]) if lead else (lambda x: x)  # noqa: E731
            want = muon_reference(pick(kernel), [pick(g) for g in grads], muon_opt)
            np.testing.assert_allclose(pick(got), want, rtol=1e-5, atol=1e-5, err_msg=f"{module} {layer}")
        assert not np.allclose(got, flip(np.asarray(adamw[name]["attn"][module]["kernel"])), atol=1e-3)
    for path in [(name, "ln_1", "scale"), (name, "ln_1", "bias"), ("wte", "embedding"), ("lm_head",)]:
        get = lambda tree: functools.reduce(lambda t, k: t[k], path, tree)  # noqa: E731
        np.testing.assert_array_equal(get(ours), get(adamw), err_msg=str(path))
        assert not np.array_equal(get(ours), get(params))


def test_muon_takes_every_block_kernel_and_nothing_else(tiny_cfg):
    """Attention's c_attn and c_proj and the MLP's fc, gate and proj kernels, per layer or stacked."""
    cfg = dataclasses.replace(tiny_cfg, bias=True, tie_embeddings=False, mlp="swiglu")
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    for scan in (False, True):
        params = jax.eval_shape(
            GPT(dataclasses.replace(cfg, scan_layers=scan)).init, jax.random.key(0), tokens
        )
        flat = jax.tree_util.tree_flatten_with_path(muon_labels(params["params"]))[0]
        muon = {"/".join(k.key for k in path) for path, label in flat if label == "muon"}
        layers = ["h"] if scan else ["h_0", "h_1"]
        modules = ["attn/c_attn", "attn/c_proj", "mlp/fc", "mlp/gate", "mlp/proj"]
        assert muon == {f"{h}/{m}/kernel" for h in layers for m in modules}
        assert {label for _, label in flat} == {"muon", "adamw"}


def test_muon_scanned_layers_equal_the_loop(tiny_cfg, muon_opt, tiny_batch):
    """A stacked [L, in, out] kernel is L matrices to orthogonalise: 2 Muon steps of a scan_layers model
    equal the per-layer model's (one [L * in, out] matrix would not)."""
    loop_cfg = dataclasses.replace(tiny_cfg, bias=True, mlp="swiglu")
    params, loop, scan = loop_and_scan_steps(loop_cfg, make_optimizer(muon_opt), tiny_batch, 2)
    assert_trees_close(scan, loop, atol=1e-5)
    moved = loop["h_1"]["mlp"]["gate"]["kernel"] - params["h_1"]["mlp"]["gate"]["kernel"]
    assert float(jnp.abs(moved).max()) > 1e-3


def test_muon_lowers_the_loss_on_a_repeated_batch(tiny_cfg, muon_opt, tiny_batch):
    opt = ml_collections.FrozenConfigDict(dict(muon_opt.to_dict(), decay_lr=False))
    state = create_train_state(tiny_cfg, make_optimizer(opt), seed=0)
    losses = []
    for _ in range(30):
        state, metrics = jit_train_step(state, tiny_batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


def test_optimizer_choices_that_cannot_work_are_refused(muon_opt):
    with pytest.raises(ValueError, match=r"opt.name='sgd' is unknown; use one of \['adamw', 'muon'\]"):
        make_optimizer(ml_collections.FrozenConfigDict(dict(muon_opt.to_dict(), name="sgd")))
    with pytest.raises(
        ValueError, match="opt.name='muon' does not train LoRA adapters; use opt.name='adamw'"
    ):
        make_optimizer(muon_opt, lora=True)


# ----- The fused LM head + loss (GPTConfig.loss_chunk). -----


@pytest.mark.parametrize(
    "vocab_multiple, T, chunk", [(1, 8, 2), (64, 8, 3), (1, 7, 4)], ids=["even", "padded-vocab", "ragged"]
)
def test_chunked_loss_and_grads_equal_the_full_logits(tiny_cfg, vocab_multiple, T, chunk):
    """Chunks of positions (T padded up to a multiple, pad rows of the vocabulary masked) give the loss
    and every gradient of the plain log_softmax loss; jit and eval (no grad) agree too."""
    cfg = dataclasses.replace(tiny_cfg, vocab_multiple=vocab_multiple)
    params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (3, T + 1), dtype=np.int32)
    x_BT, y_BT = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
    want_loss, want_grads = independent_loss_and_grad(params, cfg, x_BT, y_BT)
    fused = dataclasses.replace(cfg, loss_chunk=chunk)
    model_loss = lambda p: GPT(fused).apply({"params": p}, x_BT, targets_BT=y_BT)[0]  # noqa: E731
    loss, grads = jax.jit(jax.value_and_grad(model_loss))(params)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
    assert float(jax.jit(model_loss)(params)) == pytest.approx(float(want_loss), rel=1e-6)
    assert_trees_close(grads, want_grads, atol=1e-6)


def test_train_step_with_chunked_loss_equals_plain(tiny_state, tiny_cfg, tiny_batch):
    fused = tiny_state().replace(apply_fn=GPT(dataclasses.replace(tiny_cfg, loss_chunk=3)).apply)
    want, want_metrics = jit_train_step(tiny_state(), tiny_batch)  # the step donates its state
    got, got_metrics = jit_train_step(fused, tiny_batch)
    for name in ("loss", "grad_norm"):
        assert float(got_metrics[name]) == pytest.approx(float(want_metrics[name]), rel=1e-6), name
    # Adam's first update is ~lr * sign(gradient): float noise in a ~0 gradient can flip one element.
    assert_trees_close(got.params, want.params, atol=1e-3)


@pytest.mark.parametrize("chunk", [0, 3], ids=["full", "chunked"])
def test_bf16_logits_are_the_rounded_float32_logits(tiny_cfg, chunk):
    """logits_dtype=bfloat16 (PyTorch autocast's LM head): the loss is the float32 softmax of the float32
    logits rounded to bf16, full or chunked, with gradients; sampling's logits stay float32."""
    cfg = dataclasses.replace(tiny_cfg, dtype="bfloat16", vocab_multiple=64, loss_chunk=chunk)
    bf16 = dataclasses.replace(cfg, logits_dtype="bfloat16")
    params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (3, 9), dtype=np.int32)
    x_BT, y_BT = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])

    def rounded_loss(p):
        logits_BTV, _ = GPT(cfg).apply({"params": p}, x_BT)
        logits_BTV = logits_BTV.astype(jnp.bfloat16).astype(jnp.float32)
        logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
        return -jnp.take_along_axis(logp_BTV, y_BT[..., None], axis=-1).mean()

    loss_of = lambda c: lambda p: GPT(c).apply({"params": p}, x_BT, targets_BT=y_BT)[0]  # noqa: E731
    want, want_grads = jax.jit(jax.value_and_grad(rounded_loss))(params)
    got, got_grads = jax.jit(jax.value_and_grad(loss_of(bf16)))(params)
    exact = float(jax.jit(loss_of(cfg))(params))
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert float(got) != exact  # the rounding is real: float32 logits give another loss
    assert_trees_close(got_grads, want_grads, atol=2e-4)
    logits_BTV, _ = jax.jit(GPT(bf16).apply)({"params": params}, x_BT)
    assert logits_BTV.dtype == jnp.float32


def test_logits_dtype_is_float32_or_the_compute_dtype(tiny_cfg):
    with pytest.raises(ValueError, match="logits_dtype='bfloat16' must be 'float32' or the compute dtype"):
        dataclasses.replace(tiny_cfg, logits_dtype="bfloat16")  # a float32 model


# ----- Evaluation. -----


def test_eval_step_is_mean_cross_entropy(tiny_state, tiny_cfg, tiny_batch):
    state = tiny_state()
    expected = float(independent_loss_and_grad(state.params, tiny_cfg, *tiny_batch)[0])
    assert float(jit_eval_step(state, tiny_batch)["loss"]) == pytest.approx(expected, rel=1e-6)


def test_eval_in_micro_batches_equals_one_batch(tiny_state, tiny_batch):
    """grad_accum=4 evaluates 4 micro-batches of 1 row one at a time: the same mean loss."""
    state = tiny_state()
    one = float(jit_eval_step(state, tiny_batch)["loss"])
    assert float(jit_eval_step(state, tiny_batch, grad_accum=4)["loss"]) == pytest.approx(one, abs=1e-6)
    with pytest.raises(ValueError, match="grad_accum=3"):
        jit_eval_step(state, tiny_batch, grad_accum=3)
    # XLA's scratch memory shrinks with the micro-batch: as training's (gpt2.py: 186 -> 5 GiB).
    xy_KBT = (jax.ShapeDtypeStruct((1, 64, tiny_batch[0].shape[1]), jnp.int32),) * 2

    def scratch(grad_accum):
        compiled = (
            jax.jit(eval_steps, static_argnames="grad_accum").lower(state, xy_KBT, grad_accum).compile()
        )
        return compiled.memory_analysis().temp_size_in_bytes

    assert scratch(4) < scratch(1) / 2


def test_lr_schedule_linear_and_warmup_stable_decay():
    """After nanoGPT's warmup: "linear" falls straight from lr to min_lr; "wsd" holds lr, then falls
    straight over the last cooldown_iters, so a run whose stable phase is extended (a later lr_decay_iters)
    has had the same rates up to then. Unknown schedules and cooldowns that do not fit are one line."""

    def lrs(**opt):
        base = dict(
            lr=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=50, decay_lr=True, cooldown_iters=20
        )
        return np.asarray(lr_schedule(ml_collections.ConfigDict({**base, **opt}))(jnp.arange(60)), np.float64)

    warmup = [1e-3 * (s + 1) / 11 for s in range(10)]
    linear = lrs(schedule="linear")
    np.testing.assert_allclose(linear[:10], warmup, rtol=1e-6)
    np.testing.assert_allclose(
        linear[10:51], [1e-4 + (1 - (s - 10) / 40) * 9e-4 for s in range(10, 51)], rtol=1e-5
    )
    np.testing.assert_allclose(linear[50:], 1e-4, rtol=1e-6)
    wsd = lrs(schedule="wsd")
    np.testing.assert_allclose(wsd[:10], warmup, rtol=1e-6)
    np.testing.assert_allclose(wsd[10:31], 1e-3, rtol=1e-6)  # stable
    assert wsd[40] == pytest.approx(5.5e-4, rel=1e-5)  # half way down the cooldown
    np.testing.assert_allclose(wsd[50:], 1e-4, rtol=1e-6)
    np.testing.assert_allclose(lrs(schedule="wsd", lr_decay_iters=100)[:31], wsd[:31], rtol=0)
    for opt, match in [
        (dict(schedule="step"), r"opt.schedule='step' is unknown; use one of \['cosine', 'linear', 'wsd'\]"),
        (dict(schedule="wsd", cooldown_iters=0), r"opt.cooldown_iters=0 must be in \[1, .* = 40\]"),
        (dict(schedule="wsd", cooldown_iters=41), r"opt.cooldown_iters=41 must be in"),
    ]:
        with pytest.raises(ValueError, match=match):
            lrs(**opt)


def test_lr_schedule_without_a_cosine_phase_drops_to_min_lr():
    """lr_decay_iters == warmup_iters: warmup to lr, then min_lr at once; never a division by zero."""
    opt = ml_collections.ConfigDict(
        dict(lr=1e-3, min_lr=1e-4, warmup_iters=5, lr_decay_iters=5, decay_lr=True)
    )
    lrs = np.asarray(lr_schedule(opt)(jnp.arange(10)), np.float64)
    assert np.all(np.isfinite(lrs))
    np.testing.assert_allclose(lrs[:5], [1e-3 * (s + 1) / 6 for s in range(5)], rtol=1e-6)
    assert lrs[5] == pytest.approx(1e-3, rel=1e-6)  # the warmup's end: the cosine's start
    np.testing.assert_allclose(lrs[6:], 1e-4, rtol=1e-6)
