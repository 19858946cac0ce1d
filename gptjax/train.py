"""train_and_evaluate(config, workdir): the one imperative training loop, with all I/O and logging.

Reads top to bottom: data -> model and optimizer -> initial state (scratch, resume or fine-tune) ->
loop (evaluate, checkpoint, step, log) -> final evaluation, checkpoint and loss curve.
"""

import functools
import math
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from gptjax import data as data_lib
from gptjax.checkpoint import Checkpointer
from gptjax.metric_writer import MetricWriter, plot_losses
from gptjax.model import GPTConfig, count_params
from gptjax.optim import lr_schedule, make_optimizer
from gptjax.train_step import create_train_state, jit_eval_step, jit_train_step

# Evaluation batches come from their own seed, so they never coincide with the training batches.
EVAL_SEED_OFFSET = 1_000_003


def model_config(config: ml_collections.ConfigDict, vocab_size: int, **overrides) -> GPTConfig:
    """The one place where config.model (a ConfigDict) becomes the frozen GPTConfig."""
    return GPTConfig.from_mapping(config.model.to_dict(), vocab_size=vocab_size, **overrides)


def abstract_state(cfg: GPTConfig, opt: Any, seed: int):
    """(init function, its output's shapes) for a TrainState of this model and optimizer."""
    init = functools.partial(create_train_state, cfg, make_optimizer(opt), seed)
    return init, jax.eval_shape(init)


def load_params(workdir: str | pathlib.Path, step: int | None = None):
    """(params, GPTConfig, tokenizer, config dict) of a workdir's checkpoint, for sampling or fine-tuning."""
    ckpt = Checkpointer(workdir, read_only=True)
    saved = ckpt.restore_json(step)
    config = ml_collections.ConfigDict(saved["config"])
    tokenizer = data_lib.tokenizer_from_json(saved["tokenizer"])
    cfg = model_config(config, tokenizer.vocab_size)
    _, abstract = abstract_state(cfg, config.opt, config.seed)
    state = ckpt.restore_state(abstract, saved["meta"]["step"])
    ckpt.close()
    return state.params, cfg, tokenizer, config


def evaluate(state, dataset: data_lib.Dataset, config: ml_collections.ConfigDict) -> dict:
    """Mean loss over `eval_iters` batches of each split, fresh for every evaluation (as nanoGPT)."""
    step = int(state.step)
    out = {}
    for split, tokens in (("train", dataset.train), ("val", dataset.val)):
        losses = [
            jit_eval_step(
                state,
                data_lib.get_batch(
                    tokens,
                    batch_size=config.batch_size,
                    block_size=config.model.block_size,
                    seed=config.seed + EVAL_SEED_OFFSET,
                    step=step * config.eval_iters + i,
                    split=split,
                ),
            )
            for i in range(config.eval_iters)
        ]
        out[split] = float(np.mean(jax.device_get(losses)))
    return out


def _check_finite(step: int, metrics: dict) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"training diverged at step {step}: {bad}; the last good checkpoint is kept. "
            "Lower config.opt.lr or raise config.opt.warmup_iters"
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if it has one.

    Returns a summary: final step, best and last val loss, wall time and training tokens/s.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(workdir, max_to_keep=config.keep_checkpoints)

    # ----- Where the run starts: its own checkpoint, another workdir, or scratch. -----
    latest = ckpt.latest_step()
    source = None  # the workdir a fine-tuning run starts from
    tokenizer = None
    meta: dict[str, Any] = {}
    if latest is not None:
        saved = ckpt.restore_json(latest)
        tokenizer = data_lib.tokenizer_from_json(saved["tokenizer"])
        meta = saved["meta"]
        print(f"resuming from {ckpt.directory} at step {latest}", flush=True)
    elif config.init_from == "resume":
        raise FileNotFoundError(
            f"init_from='resume' but {workdir} has no checkpoint; use init_from='scratch'"
        )
    elif config.init_from != "scratch":
        source = pathlib.Path(config.init_from)
        saved = Checkpointer(source, read_only=True).restore_json()
        tokenizer = data_lib.tokenizer_from_json(saved["tokenizer"])

    # ----- Data. -----
    dataset = data_lib.load_dataset(
        config.data.source,
        path=config.data.path,
        val_fraction=config.data.val_fraction,
        tokenizer=tokenizer,
    )
    tokenizer = dataset.tokenizer
    for split in ("train", "val"):  # fail now, with one clear line, rather than in the loop
        data_lib.get_batch(
            getattr(dataset, split),
            batch_size=1,
            block_size=config.model.block_size,
            seed=0,
            step=0,
            split=split,
        )

    # ----- Model, optimizer, initial state. -----
    cfg = model_config(config, tokenizer.vocab_size)
    init, abstract = abstract_state(cfg, config.opt, config.seed)
    n_params = count_params(abstract.params)
    print(f"model: {n_params / 1e6:.2f}M parameters, {cfg}", flush=True)
    if latest is not None:
        state = ckpt.restore_state(abstract, latest)
    else:
        state = jax.jit(init)()
        if source is not None:
            params, src_cfg, _, _ = load_params(source)
            if jax.tree_util.tree_map(np.shape, params) != jax.tree_util.tree_map(np.shape, state.params):
                raise ValueError(
                    f"init_from={source}: its model {src_cfg} does not match config.model {cfg}; "
                    "set config.model to the source model's shape"
                )
            state = state.replace(params=params)
            print(f"fine-tuning from {source}", flush=True)
    start = int(state.step)

    # ----- The loop. -----
    schedule = lr_schedule(config.opt)
    writer = MetricWriter(workdir, resume_step=start)
    tokens_per_step = config.batch_size * config.model.block_size
    best_val = meta.get("best_val_loss", float("inf"))
    saved_config = config.to_dict()

    def save(step: int) -> None:
        ckpt.save(
            step,
            state,
            config=saved_config,
            tokenizer=tokenizer.to_json(),
            meta={"best_val_loss": best_val, "n_params": n_params},
        )

    def evaluate_and_log(step: int) -> dict:
        nonlocal best_val
        losses = evaluate(state, dataset, config)
        _check_finite(step, losses)
        best_val = min(best_val, losses["val"])
        record = {"eval_train_loss": losses["train"], "val_loss": losses["val"]}
        if step % config.log_interval == 0 and step < config.max_iters:
            eval_records[step] = record  # joins this step's training metrics in one record
        else:
            writer.write(step, record)
        tqdm.write(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        return losses

    eval_records: dict[int, dict] = {}
    t_start = time.time()
    t_log, tokens_since_log = time.time(), 0
    pending = None  # (step, device metrics) of the previous step, read after the next is dispatched
    train_seconds, train_tokens = 0.0, 0

    def report(step: int, metrics: Any, check: bool = False) -> None:
        """Logs a step's metrics on log steps (raising if not finite); `check` reads them anyway."""
        nonlocal t_log, tokens_since_log, train_seconds, train_tokens
        if step % config.log_interval and not check:
            return
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(step, values)
        if step % config.log_interval:
            return
        now = time.time()
        tok_s = tokens_since_log / max(now - t_log, 1e-9)
        if step > start:  # the first window includes compilation
            train_seconds += now - t_log
            train_tokens += tokens_since_log
        t_log, tokens_since_log = now, 0
        values = {
            "train_loss": values.pop("loss"),
            "lr": float(schedule(step)),
            "tokens_per_sec": tok_s,
            **values,
            **eval_records.pop(step, {}),
        }
        writer.write(step, values)
        pbar.set_postfix(loss=f"{values['train_loss']:.4f}", tok_s=f"{tok_s:,.0f}")

    pbar = tqdm(
        range(start, config.max_iters),
        initial=start,
        total=config.max_iters,
        desc="train",
        dynamic_ncols=True,
        disable=jax.process_index() != 0,
    )
    for step in pbar:
        due_eval = step % config.eval_interval == 0
        due_save = step % config.checkpoint_interval == 0 and step > start
        if (due_eval or due_save) and pending is not None:
            # The previous step's metrics include the norm of the parameters about to be evaluated
            # and saved: read them first, so a diverged state is never written over a good one.
            report(*pending, check=True)
            pending = None
        if due_eval:
            evaluate_and_log(step)
            t_log, tokens_since_log = time.time(), 0  # evaluation time is not training time
        if due_save:
            save(step)
        x_BT, y_BT = data_lib.get_batch(
            dataset.train,
            batch_size=config.batch_size,
            block_size=config.model.block_size,
            seed=config.seed,
            step=step,
        )
        state, metrics = jit_train_step(state, (x_BT, y_BT), grad_accum=config.grad_accum)
        tokens_since_log += tokens_per_step
        if pending is not None:
            report(*pending)
        pending = (step, metrics)
    pbar.close()
    if pending is not None:
        report(*pending, check=True)  # the final state must be finite before it is saved

    # ----- Final evaluation, checkpoint and loss curve. -----
    final = evaluate_and_log(config.max_iters)
    save(config.max_iters)
    writer.close()
    ckpt.close()
    plot_losses(workdir, title=f"{config.data.source}: {n_params / 1e6:.2f}M parameters")
    summary = {
        "step": config.max_iters,
        "val_loss": final["val"],
        "best_val_loss": best_val,
        "wall_seconds": time.time() - t_start,
        "train_tokens_per_sec": train_tokens / train_seconds if train_seconds else None,
    }
    print(f"done: {summary}", flush=True)
    return summary
