"""The optimizer: gradient clipping, then AdamW on a warmup + cosine (nanoGPT's recipe), linear or
warmup-stable-decay schedule; or Muon on the blocks' matrices (opt.name="muon", modded-nanogpt's) with
AdamW on the rest. A model with LoRA adapters trains them alone: the rest is frozen and has no
optimizer state."""

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax import contrib

SCHEDULES = ("cosine", "linear", "wsd")  # config.opt.schedule: what follows the warmup
OPTIMIZERS = ("adamw", "muon")  # config.opt.name


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
DECAYED_PARAMS = ("kernel", "embedding", "lm_head", "score", "lora_a", "lora_b")
LORA_PARAMS = ("lora_a", "lora_b")
# Trained beside the adapters of a LoRA model: a reward model's new score head (PEFT's modules_to_save of a
# SEQ_CLS task).
WITH_LORA = (*LORA_PARAMS, "score")


def has_lora(params: Any) -> bool:
    return any(path[-1].key in LORA_PARAMS for path, _ in jax.tree_util.tree_leaves_with_path(params))


def trainable(params: Any) -> Any:
    """True for the parameters training updates: the LoRA adapters (and a score head) when there are
    adapters, else all."""
    lora = has_lora(params)
    return jax.tree_util.tree_map_with_path(lambda path, p: not lora or path[-1].key in WITH_LORA, params)


def freeze(params: Any) -> Any:
    """`params` with the frozen ones (not `trainable`) behind stop_gradient: their gradients are zeros
    that cost nothing, instead of full weight gradients that the optimizer would throw away."""
    keep = trainable(params)
    return jax.tree_util.tree_map(lambda p, k: p if k else jax.lax.stop_gradient(p), params, keep)


def decay_mask(params: Any) -> Any:
    """True for the parameters named in DECAYED_PARAMS (the last key of their path)."""
    return jax.tree_util.tree_map_with_path(lambda path, p: path[-1].key in DECAYED_PARAMS, params)


# A block's layer: h_0, h_1, ... or the scanned h (its params stacked [L, ...]).
_BLOCK = re.compile(r"h(_\d+)?")


def muon_labels(params: Any) -> Any:
    """Each parameter's optimizer: "muon" for every Dense kernel inside a block (attention's c_attn and
    c_proj, the MLP's fc, gate and proj), "adamw" for embeddings, an untied LM head, biases, norm scales."""

    def label(path, p):
        names = [str(getattr(k, "key", "")) for k in path]
        block_kernel = names[-1] == "kernel" and any(_BLOCK.fullmatch(n) for n in names[:-1])
        return "muon" if block_kernel else "adamw"

    return jax.tree_util.tree_map_with_path(label, params)


def muon(opt: Any, schedule: optax.Schedule, out_in: bool = False) -> optax.GradientTransformation:
    """Muon (Jordan et al. 2024, modded-nanogpt) from optax.contrib's pieces, in optax.contrib.muon's order:
    Nesterov momentum opt.muon_momentum (optax's, bias-corrected), 5 Newton-Schulz steps with optax's
    (= modded-nanogpt's) coefficients, the update scaled by sqrt(max(1, fan_out / fan_in)) (Keller Jordan's
    Muon), decoupled weight decay opt.weight_decay, then the learning rate: `schedule`'s shape scaled to
    peak at opt.muon_lr (so the decay per step is muon_lr(t) * weight_decay, as optax.contrib.muon's).

    Each kernel is orthogonalised as [in, out] ([out, in] with out_in); leading axes are batch axes, so a
    scanned [L, in, out] kernel is L matrices. c_attn's fused q | k | v columns are one matrix (optax's
    choice; modded-nanogpt orthogonalises q, k and v apart): its momentum then shards like the kernel.
    optax.contrib.muon itself is not used: its Adam branch has Nesterov momentum and decays every leaf.
    """
    in_axis, out_axis = (-1, -2) if out_in else (-2, -1)
    dims = contrib.MuonDimensionNumbers(reduction_axis=in_axis, output_axis=out_axis)
    # optax.partition hands this branch the other leaves as MaskedNodes (no leaves): the map keeps them.
    dim_nums = lambda updates: jax.tree_util.tree_map(lambda _: dims, updates)  # noqa: E731
    ratio = opt.muon_lr / opt.lr
    return optax.chain(
        contrib.scale_by_muon(beta=opt.muon_momentum, nesterov=True, weight_dimension_numbers=dim_nums),
        contrib._muon.scale_by_shape(weight_dimension_numbers=dim_nums),  # optax.contrib.muon's, unexported
        optax.add_decayed_weights(opt.weight_decay),
        optax.scale_by_learning_rate(lambda step: schedule(step) * ratio),
    )


def make_optimizer(opt: Any, lora: bool = False, out_in: bool = False) -> optax.GradientTransformation:
    """`opt` is config.opt: name ("adamw" or "muon"), lr, min_lr, warmup_iters, lr_decay_iters, decay_lr,
    beta1, beta2, weight_decay, grad_clip (0 disables), and for Muon muon_lr and muon_momentum. lora: only
    the adapters get the optimizer (and its state). out_in: the model's kernels are [out, in] (Muon's
    fan-in and fan-out)."""
    name = opt.get("name", "adamw")  # checkpoints saved before opt.name trained AdamW
    if name not in OPTIMIZERS:
        raise ValueError(f"opt.name={name!r} is unknown; use one of {list(OPTIMIZERS)}")
    if name == "muon" and lora:
        raise ValueError(
            "opt.name='muon' does not train LoRA adapters; use opt.name='adamw' with model.lora_rank"
        )
    schedule = lr_schedule(opt)
    tx = optax.adamw(
        schedule,
        b1=opt.beta1,
        b2=opt.beta2,
        eps=1e-8,  # torch.optim.AdamW default, as nanoGPT
        weight_decay=opt.weight_decay,
        mask=decay_mask,
    )
    if name == "muon":
        tx = optax.partition({"muon": muon(opt, schedule, out_in), "adamw": tx}, muon_labels)
    # Always the same chain, so a run resumed with other settings still finds its optimizer state.
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip or float("inf")), tx)
    if not lora:
        return tx
    labels = lambda params: jax.tree_util.tree_map(  # noqa: E731
        lambda t: "train" if t else "frozen", trainable(params)
    )
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
