"""The optimizer: gradient clipping, then AdamW on a warmup + cosine (nanoGPT's recipe), linear or
warmup-stable-decay schedule. A model with LoRA adapters trains them alone: the rest is frozen and has no
optimizer state."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "linear", "wsd")  # config.opt.schedule: what follows the warmup


def lr_schedule(opt: Any) -> optax.Schedule:
    """nanoGPT's get_lr: linear warmup lr·(step+1)/(warmup_iters+1) (no zero first step), then from lr to
    min_lr at `lr_decay_iters` (then min_lr): a cosine (opt.schedule="cosine", nanoGPT's), a straight line
    ("linear", HF Trainer's default), or warmup-stable-decay ("wsd": lr held, then a straight line over the
    last `cooldown_iters` before lr_decay_iters; a run can go on from any checkpoint of its stable phase
    with a later lr_decay_iters). decay_lr=False: lr throughout."""
    if not opt.decay_lr:
        return optax.constant_schedule(opt.lr)
    kind = opt.get("schedule", "cosine")
    warmup, decay = opt.warmup_iters, opt.lr_decay_iters
    start = warmup  # where the fall from lr to min_lr starts
    if kind == "wsd":
        cooldown = opt.get("cooldown_iters", 0)
        if not 0 < cooldown <= decay - warmup:
            raise ValueError(
                f"opt.cooldown_iters={cooldown} must be in [1, lr_decay_iters - warmup_iters = "
                f"{decay - warmup}] for opt.schedule='wsd'; e.g. 20% of the steps"
            )
        start = decay - cooldown
    elif kind not in SCHEDULES:
        raise ValueError(f"opt.schedule={kind!r} is unknown; use one of {list(SCHEDULES)}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ratio = jnp.clip((step - start) / max(decay - start, 1), 0.0, 1.0)  # 0 -> 1 over the fall
        fall = 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) if kind == "cosine" else 1.0 - ratio
        return jnp.where(
            step < warmup, opt.lr * (step + 1) / (warmup + 1), opt.min_lr + fall * (opt.lr - opt.min_lr)
        )

    return schedule


# The parameters that weight decay shrinks, by name: Dense kernels, embeddings, an untied LM head, LoRA's
# matrices (as HF's Trainer decays PEFT's). Never biases or LayerNorm scales, whatever their rank
# (scan_layers stacks them into [L, D] matrices).
DECAYED_PARAMS = ("kernel", "embedding", "lm_head", "lora_a", "lora_b")
LORA_PARAMS = ("lora_a", "lora_b")


def has_lora(params: Any) -> bool:
    return any(path[-1].key in LORA_PARAMS for path, _ in jax.tree_util.tree_leaves_with_path(params))


def trainable(params: Any) -> Any:
    """True for the parameters training updates: the LoRA adapters when there are any, else all."""
    lora = has_lora(params)
    return jax.tree_util.tree_map_with_path(lambda path, p: not lora or path[-1].key in LORA_PARAMS, params)


def freeze(params: Any) -> Any:
    """`params` with the frozen ones (not `trainable`) behind stop_gradient: their gradients are zeros
    that cost nothing, instead of full weight gradients that the optimizer would throw away."""
    keep = trainable(params)
    return jax.tree_util.tree_map(lambda p, k: p if k else jax.lax.stop_gradient(p), params, keep)


def decay_mask(params: Any) -> Any:
    """True for the parameters named in DECAYED_PARAMS (the last key of their path)."""
    return jax.tree_util.tree_map_with_path(lambda path, p: path[-1].key in DECAYED_PARAMS, params)


def make_optimizer(opt: Any, lora: bool = False) -> optax.GradientTransformation:
    """`opt` is config.opt: lr, min_lr, warmup_iters, lr_decay_iters, decay_lr, beta1, beta2,
    weight_decay, grad_clip (0 disables). lora: only the adapters get the optimizer (and its state)."""
    adamw = optax.adamw(
        lr_schedule(opt),
        b1=opt.beta1,
        b2=opt.beta2,
        eps=1e-8,  # torch.optim.AdamW default, as nanoGPT
        weight_decay=opt.weight_decay,
        mask=decay_mask,
    )
    # Always the same chain, so a run resumed with other settings still finds its optimizer state.
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip or float("inf")), adamw)
    if not lora:
        return tx
    labels = lambda params: jax.tree_util.tree_map(  # noqa: E731
        lambda t: "train" if t else "frozen", trainable(params)
    )
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
