"""The training loop's one-line checks: of its settings before anything runs (check_loop), of the step a
run resumes at (check_resume), and of a step's metrics (check_finite: a diverged run never writes over its
last good checkpoint)."""

import math
import pathlib
from typing import Any


def check_finite(step: int, metrics: dict) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"training diverged at step {step}: {bad}; the last good checkpoint is kept. "
            "Lower config.opt.lr or raise config.opt.warmup_iters"
        )


def check_loop(config: Any) -> int:
    """One-line errors for loop settings that cannot work, before anything runs; returns steps_per_call."""
    counts = ("batch_size", "grad_accum", "steps_per_call", "eval_interval", "eval_iters", "log_interval")
    for name in (*counts, "checkpoint_interval", "keep_checkpoints"):  # keep 0: every checkpoint deleted
        if config[name] < 1:
            raise ValueError(f"{name}={config[name]} must be >= 1")
    if config.max_iters < 0:
        raise ValueError(f"max_iters={config.max_iters} must be >= 0")
    if config.batch_size % config.grad_accum:
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by grad_accum={config.grad_accum}; "
            "use a grad_accum that divides it"
        )
    k = config.steps_per_call
    for name in ("eval_interval", "checkpoint_interval", "max_iters"):
        if config[name] % k:
            raise ValueError(f"{name}={config[name]} must be a multiple of steps_per_call={k}")
    return k


def check_resume(step: int, config: Any, workdir: pathlib.Path) -> None:
    """A run resumes at a multiple of steps_per_call (the calls must land on the intervals and end at
    max_iters: a shorter first call would compile a second step) and no later than max_iters."""
    if step > config.max_iters:
        raise ValueError(
            f"{workdir} holds step {step}, past max_iters={config.max_iters}; set max_iters >= {step} "
            "or use a fresh workdir"
        )
    k = config.steps_per_call
    if step < config.max_iters and step % k:
        raise ValueError(
            f"resuming at step {step}, which is not a multiple of steps_per_call={k}; "
            f"set steps_per_call={math.gcd(step, k)} (it divides the step and the intervals)"
        )
