"""The optimizer: gradient clipping, then AdamW on a warmup + cosine schedule (nanoGPT's recipe)."""

from typing import Any

import jax
import jax.numpy as jnp
import optax


def lr_schedule(opt: Any) -> optax.Schedule:
    """nanoGPT's get_lr: linear warmup lr·(step+1)/(warmup_iters+1) (no zero first step), then cosine from
    lr to min_lr at `lr_decay_iters`, then min_lr."""
    if not opt.decay_lr:
        return optax.constant_schedule(opt.lr)
    warmup, decay = opt.warmup_iters, opt.lr_decay_iters

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ratio = jnp.clip((step - warmup) / max(decay - warmup, 1), 0.0, 1.0)
        cosine = opt.min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (opt.lr - opt.min_lr)
        return jnp.where(step < warmup, opt.lr * (step + 1) / (warmup + 1), cosine)

    return schedule


# The parameters that weight decay shrinks, by name: Dense kernels, embeddings, an untied LM head. Never
# biases or LayerNorm scales, whatever their rank (scan_layers stacks them into [L, D] matrices).
DECAYED_PARAMS = ("kernel", "embedding", "lm_head")


def decay_mask(params: Any) -> Any:
    """True for the parameters named in DECAYED_PARAMS (the last key of their path)."""
    return jax.tree_util.tree_map_with_path(lambda path, p: path[-1].key in DECAYED_PARAMS, params)


def make_optimizer(opt: Any) -> optax.GradientTransformation:
    """`opt` is config.opt: lr, min_lr, warmup_iters, lr_decay_iters, decay_lr, beta1, beta2,
    weight_decay, grad_clip (0 disables)."""
    adamw = optax.adamw(
        lr_schedule(opt),
        b1=opt.beta1,
        b2=opt.beta2,
        eps=1e-8,  # torch.optim.AdamW default, as nanoGPT
        weight_decay=opt.weight_decay,
        mask=decay_mask,
    )
    # Always the same chain, so a run resumed with other settings still finds its optimizer state.
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip or float("inf")), adamw)
