"""The LM head and the training loss: logits = x @ wte^T (pad rows of the vocabulary masked), the mean
next-token cross entropy in float32 over the targets that are not IGNORE (a prompt or padding in
fine-tuning data), and both fused over chunks of positions with their own gradients
(GPTConfig.loss_chunk), so that the B x T x V logits never exist at once; so too each row's summed
log-probability of its targets (DPO's, lm_head_logps)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

# A target below 0 is not trained on (nanoGPT's ignore_index=-1): prompts and padding of supervised
# fine-tuning rows (gptjax.data.sft). The loss is the mean over the other targets.
IGNORE = -1


def head_logits(x_BTD: jax.Array, head_VD: jax.Array, vocab_size: int, dtype: str = "float32") -> jax.Array:
    """Logits in `dtype` (float32 unless the loss asks for the compute dtype's); rows from vocab_size on
    (a padded vocabulary's, or ids the head never predicts) get probability 0."""
    logits_BTV = _head_matmul(x_BTD, head_VD, dtype)
    if head_VD.shape[0] > vocab_size:
        lowest = jnp.finfo(logits_BTV.dtype).min  # attention.MASK_VALUE in float32
        logits_BTV = jnp.where(jnp.arange(head_VD.shape[0]) < vocab_size, logits_BTV, lowest)
    return logits_BTV


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _head_matmul(x_BTD: jax.Array, head_VD: jax.Array, dtype: str) -> jax.Array:
    """x @ head^T with `dtype` output. Its gradients are matmuls in the compute dtype (the incoming
    float32 cotangent cast down first, as PyTorch autocast's backward): autodiff would multiply the
    float32 cotangent by the upcast bf16 operands, two float32 (TF32) matmuls of B x T x V that cost
    a GPT-2 step on an H100 ~35 of 177 ms."""
    return jnp.einsum("BTD,VD->BTV", x_BTD, head_VD, preferred_element_type=jnp.dtype(dtype))


def _head_matmul_fwd(x_BTD, head_VD, dtype):
    return _head_matmul(x_BTD, head_VD, dtype), (x_BTD, head_VD)


def _head_matmul_bwd(dtype, residuals, dlogits_BTV):
    x_BTD, head_VD = residuals
    dlogits_BTV = dlogits_BTV.astype(x_BTD.dtype)
    dx_BTD = jnp.einsum("BTV,VD->BTD", dlogits_BTV, head_VD, preferred_element_type=jnp.float32)
    dhead_VD = jnp.einsum("BTV,BTD->VD", dlogits_BTV, x_BTD, preferred_element_type=jnp.float32)
    return dx_BTD.astype(x_BTD.dtype), dhead_VD.astype(head_VD.dtype)


_head_matmul.defvjp(_head_matmul_fwd, _head_matmul_bwd)


def cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
    """Mean next-token cross entropy in float32 (nats) over the targets >= 0 (0 if there are none)."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    valid_BT = targets_BT >= 0
    loss_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, jnp.where(valid_BT, targets_BT, 0))
    return jnp.sum(jnp.where(valid_BT, loss_BT, 0.0)) / jnp.maximum(jnp.sum(valid_BT), 1)


def token_logps(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
    """[B, T] float32: the log-probability of each target (>= 0; GRPO's completion tokens), 0 elsewhere."""
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    logp_BT = jnp.take_along_axis(logp_BTV, jnp.maximum(targets_BT, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(targets_BT >= 0, logp_BT, 0.0)


def target_logps(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
    """[B] float32: each row's summed log-probability of its targets (>= 0; DPO's answer tokens)."""
    return jnp.sum(token_logps(logits_BTV, targets_BT), axis=-1)


def _chunks(x_BT_: jax.Array, chunk: int, fill) -> jax.Array:
    """[B, T, ...] -> [C, B, chunk, ...]: T padded with `fill` to a multiple of chunk, then split."""
    B, T = x_BT_.shape[:2]
    C = -(-T // chunk)
    pad = [(0, 0), (0, C * chunk - T)] + [(0, 0)] * (x_BT_.ndim - 2)
    x = jnp.pad(x_BT_, pad, constant_values=fill).reshape(B, C, chunk, *x_BT_.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _logps_pass(x_BTD, head_VD, targets_BT, vocab_size, chunk, logits_dtype, g_B=None):
    """(each row's summed log-probability of its targets [B], and given their cotangents g_B the gradients
    (dx_BTD, dhead_VD)), one chunk of logits at a time."""
    B, T, D = x_BTD.shape
    x_CBKD = _chunks(x_BTD, chunk, 0)
    t_CBK = _chunks(jnp.maximum(targets_BT, 0), chunk, 0)
    valid_CBK = _chunks(targets_BT >= 0, chunk, False)  # neither IGNORE nor the padding of the last chunk

    def body(dhead_VD, chunk_in):
        x_BKD, t_BK, valid_BK = chunk_in
        # float32 softmax whatever the logits' dtype (XLA upcasts inside each pass: no float32 copy)
        logits_BKV = head_logits(x_BKD, head_VD, vocab_size, logits_dtype).astype(jnp.float32)
        lse_BK = jax.nn.logsumexp(logits_BKV, axis=-1)
        target_BK = jnp.take_along_axis(logits_BKV, t_BK[..., None], axis=-1)[..., 0]
        logp_B = jnp.sum(jnp.where(valid_BK, target_BK - lse_BK, 0.0), axis=-1)
        if g_B is None:
            return dhead_VD, (logp_B, None)
        # d logp / d logits = onehot - softmax on the positions scored, times the row's cotangent.
        probs_BKV = jnp.exp(logits_BKV - lse_BK[..., None])
        onehot_BKV = jax.nn.one_hot(t_BK, head_VD.shape[0], dtype=jnp.float32)
        scale_BK1 = jnp.where(valid_BK, g_B[:, None], 0.0)[..., None]
        dlogits_BKV = (scale_BK1 * (onehot_BKV - probs_BKV)).astype(x_BKD.dtype)
        dx_BKD = jnp.einsum("BKV,VD->BKD", dlogits_BKV, head_VD, preferred_element_type=jnp.float32)
        dhead_VD += jnp.einsum("BKV,BKD->VD", dlogits_BKV, x_BKD, preferred_element_type=jnp.float32)
        return dhead_VD, (logp_B, dx_BKD)

    dhead_VD = jnp.zeros(head_VD.shape, jnp.float32) if g_B is not None else None
    dhead_VD, (logp_CB, dx_CBKD) = jax.lax.scan(body, dhead_VD, (x_CBKD, t_CBK, valid_CBK))
    logp_B = jnp.sum(logp_CB, axis=0)
    if g_B is None:
        return logp_B, None
    dx_BTD = jnp.moveaxis(dx_CBKD, 0, 1).reshape(B, -1, D)[:, :T]
    return logp_B, (dx_BTD.astype(x_BTD.dtype), dhead_VD.astype(head_VD.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def lm_head_loss(
    x_BTD, head_VD, targets_BT, vocab_size: int, chunk: int, logits_dtype: str = "float32"
) -> jax.Array:
    """cross_entropy(head_logits(x_BTD, head_VD, logits_dtype)), `chunk` positions at a time: the
    logits of one chunk at a time. Under grad the gradients are computed in the same pass, chunk by chunk
    (the dlogits of a chunk are softmax - onehot), so the backward pass neither stores nor recomputes
    logits."""
    logp_B, _ = _logps_pass(x_BTD, head_VD, targets_BT, vocab_size, chunk, logits_dtype)
    return -jnp.sum(logp_B) / _n_targets(targets_BT)


def _n_targets(targets_BT: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.sum(targets_BT >= 0), 1).astype(jnp.float32)  # the targets trained on


def _lm_head_loss_fwd(x_BTD, head_VD, targets_BT, vocab_size, chunk, logits_dtype):
    # The mean loss is -sum(logps) / n: every row's cotangent is -1 / n, known before the pass.
    n = _n_targets(targets_BT)
    g_B = jnp.full(targets_BT.shape[:1], -1.0 / n, jnp.float32)
    logp_B, grads = _logps_pass(x_BTD, head_VD, targets_BT, vocab_size, chunk, logits_dtype, g_B)
    return -jnp.sum(logp_B) / n, (*grads, targets_BT)


def _lm_head_loss_bwd(vocab_size, chunk, logits_dtype, residuals, g):
    dx_BTD, dhead_VD, targets_BT = residuals
    zero_targets = np.zeros(targets_BT.shape, jax.dtypes.float0)  # integer inputs have no gradient
    return g.astype(dx_BTD.dtype) * dx_BTD, g.astype(dhead_VD.dtype) * dhead_VD, zero_targets


lm_head_loss.defvjp(_lm_head_loss_fwd, _lm_head_loss_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def lm_head_logps(
    x_BTD, head_VD, targets_BT, vocab_size: int, chunk: int, logits_dtype: str = "float32"
) -> jax.Array:
    """[B] float32: target_logps(head_logits(x_BTD, head_VD)), `chunk` positions at a time, without the
    B x T x V logits. Each row's gradient is scaled by its own cotangent, known only in the backward pass:
    it recomputes each chunk's logits there (one more head matmul) instead of storing them."""
    return _logps_pass(x_BTD, head_VD, targets_BT, vocab_size, chunk, logits_dtype)[0]


def _lm_head_logps_fwd(x_BTD, head_VD, targets_BT, vocab_size, chunk, logits_dtype):
    logp_B, _ = _logps_pass(x_BTD, head_VD, targets_BT, vocab_size, chunk, logits_dtype)
    return logp_B, (x_BTD, head_VD, targets_BT)


def _lm_head_logps_bwd(vocab_size, chunk, logits_dtype, residuals, g_B):
    x_BTD, head_VD, targets_BT = residuals
    g_B = g_B.astype(jnp.float32)
    _, (dx_BTD, dhead_VD) = _logps_pass(x_BTD, head_VD, targets_BT, vocab_size, chunk, logits_dtype, g_B)
    return dx_BTD, dhead_VD, np.zeros(targets_BT.shape, jax.dtypes.float0)


lm_head_logps.defvjp(_lm_head_logps_fwd, _lm_head_logps_bwd)
