"""gptjax against PyTorch on one model: same initial weights, batches and optimizer; loss curves and tokens/s.

PyTorch runs nanoGPT's model (gptjax.torch_gpt) loaded with gptjax's initial parameters, in eager mode
and under torch.compile. Both sides train the config's model (biases as configured) on the batches of
gptjax.data.get_batch with AdamW after global-norm clipping: the same lr schedule (gptjax's, evaluated
per step), betas, eps 1e-8 and weight decay on the parameters with ndim >= 2. Dropout is off, since the
two frameworks draw different masks. Tokens/s exclude the first `warmup` steps (compilation) and use
gptjax's real jitted step: config.steps_per_call steps per call, as training does.

torch and transformers are imported here: install the `torch` extra.
"""

import math
import os
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from gptjax import data as data_lib
from gptjax import parallel
from gptjax.optim import lr_schedule
from gptjax.train import abstract_state, batches, model_config

WARMUP_STEPS = 5  # at least this many steps are untimed (rounded up to whole gptjax calls)
# Between trainers: a runtime's idle worker threads spin-wait a while (OpenMP, XLA's pool) before they
# sleep; the pause keeps them off the cores of the next trainer's timed steps.
PAUSE_S = 1.0


def comparable(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config both frameworks can run identically: dropout off, one device; AdamW (the PyTorch side's
    optimizer is torch.optim.AdamW); a dense model (torch_gpt has no experts)."""
    if config.opt.get("name", "adamw") != "adamw":
        raise ValueError(
            f"opt.name={config.opt.name!r}: the PyTorch baselines train with AdamW only; compare with "
            "--config.opt.name=adamw"
        )
    if config.model.get("n_experts", 0):
        raise ValueError(
            f"model.n_experts={config.model.n_experts}: the PyTorch twin (gptjax.torch_gpt) has no "
            "mixture of experts; compare a dense model, --config.model.n_experts=0"
        )
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.dropout = 0.0
    config.parallel.mode = "single"
    return config


def gptjax_trainer(state: Any, config: Any):
    """run(first step, x_KBT, y_KBT) -> losses [K]: gptjax's jitted K-step call, waited for."""
    step_fn = parallel.Placement("single").step_fn(config.grad_accum)

    def run(first: int, x_KBT: np.ndarray, y_KBT: np.ndarray) -> np.ndarray:
        nonlocal state
        state, metrics = step_fn(state, (x_KBT, y_KBT))
        jax.block_until_ready((state, metrics))
        return np.asarray(metrics["loss"])

    return run


def torch_model(params: Any, cfg: Any):
    """nanoGPT's model in PyTorch holding gptjax `params` (float32, train mode)."""
    from gptjax import torch_gpt

    return torch_gpt.from_gptjax(params, cfg).train()


def torch_trainer(model: Any, config: Any, lrs: list[float], compile: bool):
    """run(first step, x_KBT, y_KBT) -> losses [K]: PyTorch AdamW steps, eager or torch.compile'd."""
    import torch

    o = config.opt
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lrs[0], betas=(o.beta1, o.beta2), eps=1e-8)

    loss_fn = torch.compile(model) if compile else model
    A = config.grad_accum

    def step(i: int, x_BT, y_BT):
        for group in opt.param_groups:
            group["lr"] = lrs[i]
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for x_bT, y_bT in zip(x_BT.chunk(A), y_BT.chunk(A), strict=True):
            micro = loss_fn(x_bT, y_bT) / A
            micro.backward()
            loss = loss + micro.detach()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        return loss

    def run(first: int, x_KBT: np.ndarray, y_KBT: np.ndarray) -> np.ndarray:
        x_KBT, y_KBT = torch.from_numpy(x_KBT.astype(np.int64)), torch.from_numpy(y_KBT.astype(np.int64))
        losses = [step(first + k, x_KBT[k], y_KBT[k]) for k in range(len(x_KBT))]
        return np.array([float(v) for v in losses])

    return run


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def compare(config: ml_collections.ConfigDict, steps: int = 50, torch_compile: bool = True) -> dict:
    """Trains gptjax, PyTorch eager and (if `torch_compile`) torch.compile `steps` steps; returns the
    loss curves, their largest relative differences and each one's training tokens/s.

    The trainers run one after the other; each call (K = config.steps_per_call steps) is timed from its
    start until its result is ready.
    """
    import torch

    config = comparable(config)
    K = config.steps_per_call
    warmup = K * math.ceil(WARMUP_STEPS / K)
    if steps % K or steps <= warmup:
        raise ValueError(f"steps={steps} must be a multiple of steps_per_call={K} and more than {warmup}")
    dataset = data_lib.load_dataset(
        config.data.source, path=config.data.path, val_fraction=config.data.val_fraction
    )
    cfg = model_config(config, dataset.tokenizer.vocab_size)
    x_NBT, y_NBT = batches(dataset.train, config, seed=config.seed, steps=range(steps))
    schedule = lr_schedule(config.opt)
    lrs = [float(schedule(i)) for i in range(steps)]

    init, _ = abstract_state(cfg, config.opt, config.seed)
    state = jax.jit(init)()
    params0 = jax.device_get(state.params)  # the step donates `state`: keep the initial weights
    trainers = {
        "gptjax": gptjax_trainer(state, config),
        "torch_eager": torch_trainer(torch_model(params0, cfg), config, lrs, compile=False),
    }
    if torch_compile:
        trainers["torch_compile"] = torch_trainer(torch_model(params0, cfg), config, lrs, compile=True)
    load_before = os.getloadavg()[0]
    losses = {name: [] for name in trainers}
    seconds = dict.fromkeys(trainers, 0.0)
    compile_error = None
    for name, run in list(trainers.items()):
        time.sleep(PAUSE_S)
        try:
            for i in range(0, steps, K):
                t0 = time.perf_counter()
                losses[name].append(run(i, x_NBT[i : i + K], y_NBT[i : i + K]))
                if i >= warmup:
                    seconds[name] += time.perf_counter() - t0
        except Exception as e:
            if name != "torch_compile":
                raise
            # No compiler, an unsupported op...: report it and keep the eager numbers.
            compile_error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            del losses[name], seconds[name]
    losses = {name: np.concatenate(values) for name, values in losses.items()}
    tok_s = {name: (steps - warmup) * x_NBT[0].size / s for name, s in seconds.items()}
    best_torch = max(v for k, v in tok_s.items() if k != "gptjax")
    return {
        "model": {k: getattr(cfg, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")},
        "bias": cfg.bias,
        "overrides": "model.dropout=0.0 (the frameworks draw different dropout masks)",
        "attention": cfg.attention,
        "steps": steps,
        "tokens_per_step": int(x_NBT[0].size),
        "untimed_warmup_steps": warmup,
        "devices": f"jax {jax.devices()[0].platform}, torch cpu with {torch.get_num_threads()} threads",
        "losses": {k: [float(v) for v in vs] for k, vs in losses.items()},
        "max_rel_loss_diff": max_rel_diff(losses["gptjax"], losses["torch_eager"]),
        "max_rel_loss_diff_compile": (
            max_rel_diff(losses["gptjax"], losses["torch_compile"]) if "torch_compile" in losses else None
        ),
        "tokens_per_sec": {k: round(v, 1) for k, v in tok_s.items()},
        "torch_compile_error": compile_error,
        # Other work on the machine slows PyTorch's OpenMP threads far more than XLA's: check these.
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2), os.cpu_count()],
        "speedup_vs_best_torch": round(tok_s["gptjax"] / best_torch, 3),
    }


def plot(result: dict, path: str | pathlib.Path) -> None:
    """The loss curves overlaid, and gptjax's relative difference from each PyTorch curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(2, 1))
    ref = np.array(result["losses"]["gptjax"])
    for name, values in result["losses"].items():
        top.plot(values, label=f"{name} ({result['tokens_per_sec'][name]:,.0f} tokens/s)", lw=1)
        if name != "gptjax":
            diff = np.abs(ref - np.array(values)) / np.abs(np.array(values))
            bottom.semilogy(np.maximum(diff, 1e-9), label=f"|gptjax - {name}| / {name}", lw=1)
    top.set_ylabel("train loss (nats)")
    top.legend()
    bottom.set_xlabel("step")
    bottom.set_ylabel("relative difference")
    bottom.legend()
    fig.suptitle(f"gptjax vs PyTorch: {result['model']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
