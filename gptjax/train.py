"""train_and_evaluate(config, workdir): the one imperative training loop, with all I/O and logging.

Reads top to bottom: devices -> data -> model and optimizer -> initial state (scratch, resume, or
fine-tune from a gptjax workdir or a Hugging Face GPT-2) placed on the devices -> loop (evaluate,
checkpoint, K steps per call, log) -> final evaluation, checkpoint and loss curve (and, for an image
model, a grid of samples).
"""

import contextlib
import dataclasses
import fcntl
import functools
import math
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from gptjax import benchmark, dpo, grpo, image, parallel, profiling
from gptjax import data as data_lib
from gptjax.checkpoint import Checkpointer, StepVanished
from gptjax.data.from_config import check_format, check_same_images, load_data, make_tokenizer
from gptjax.data.preference import get_pairs
from gptjax.data.prompts import load_prompts
from gptjax.init_from import (
    check_resumable,
    fill_model,
    init_params,
    init_source,
    saved_model,
    source_model,
)
from gptjax.loop_checks import check_finite, check_loop, check_resume
from gptjax.metric_writer import MetricWriter, plot_losses
from gptjax.model import GPTConfig, count_params, drop_lora, merge_lora, with_lora
from gptjax.objective import LM, Objective, check_run
from gptjax.optim import lr_schedule, make_optimizer
from gptjax.train_step import answer_logps_steps, create_train_state

# Evaluation batches come from their own seed, so they never coincide with the training batches.
EVAL_SEED_OFFSET = 1_000_003


def model_config(config: ml_collections.ConfigDict, vocab_size: int, **overrides) -> GPTConfig:
    """The one place where config.model (a ConfigDict) becomes the frozen GPTConfig."""
    return GPTConfig.from_mapping(config.model.to_dict(), vocab_size=vocab_size, **overrides)


def abstract_state(cfg: GPTConfig, opt: Any, seed: int, objective: Objective = LM):
    """(init function, its output's shapes) for a TrainState of this model, optimizer and objective."""
    tx = make_optimizer(opt, lora=cfg.lora_rank > 0, out_in=cfg.kernel_layout == "out_in")
    init = functools.partial(create_train_state, cfg, tx, seed, objective)
    return init, jax.eval_shape(init)


def batch_rows(config: Any) -> int:
    """Rows of a global batch: batch_size, or two per pair (chosen, rejected) for DPO."""
    return config.batch_size * (2 if config.data.get("format") == "preference" else 1)


def load_params(workdir: str | pathlib.Path, step: int | None = None, merge: bool = True):
    """(params, GPTConfig, tokenizer, config dict) of a workdir's checkpoint, for sampling or fine-tuning;
    LoRA adapters come merged into the kernels (model.merge_lora: the same function, decoded as fast),
    or as they were trained with merge=False (gptjax.hf_lora exports them)."""
    for attempt in range(3):
        ckpt = Checkpointer(workdir, read_only=True)
        try:
            if step is not None and attempt == 0:
                ckpt.require(step)
            saved = ckpt.restore_json(step)
            config = ml_collections.ConfigDict(saved["config"])
            tokenizer = data_lib.tokenizer_from_json(saved["tokenizer"])
            cfg = model_config(config, tokenizer.vocab_size)
            _, abstract = abstract_state(cfg, config.opt, config.seed)
            state = ckpt.restore_state(abstract, saved["meta"]["step"])
            params, cfg = merge_lora(state.params, cfg) if merge else (state.params, cfg)
            return params, cfg, tokenizer, config
        except StepVanished:  # a run training in `workdir` replaced its latest step: read the new one
            if step is not None or attempt == 2:
                raise
        finally:
            ckpt.close()


def batches(
    tokens: np.ndarray,
    config: Any,
    *,
    seed: int,
    steps: range,
    split: str = "train",
    rows=slice(None),
    reference: np.ndarray | None = None,
):
    """`rows` (this process's: Placement.process_rows) of the global batches of `steps`, stacked:
    (x_KbT, y_KbT), and segments_KbT for packed rows; preference pairs with their `reference`
    log-probabilities give (x_KbT, y_KbT, ref_KbT) (gptjax.data.preference.get_pairs)."""
    draw = data_lib.get_batch if reference is None else functools.partial(get_pairs, ref_N2=reference)
    per_step = [
        draw(
            tokens,
            batch_size=config.batch_size,
            block_size=config.model.block_size,
            seed=seed,
            step=step,
            split=split,
        )
        for step in steps
    ]
    return tuple(np.stack(arrays)[:, rows] for arrays in zip(*per_step, strict=True))


def evaluate(state, dataset: data_lib.Dataset, config: Any, placement: parallel.Placement) -> dict:
    """{split: {"loss", the objective's metrics}}: means over `eval_iters` global batches of each split,
    fresh for every evaluation (as nanoGPT), each split over the devices and in grad_accum micro-batches
    like a train step (so evaluation fits wherever training does), the same on every process. `state` as
    placed (pmap: a copy per device)."""
    step = int(placement.get_state(state).step)
    rows = placement.process_rows(batch_rows(config))
    out = {}
    for split in ("train", "val"):
        steps = range(step * config.eval_iters, (step + 1) * config.eval_iters)
        tokens, reference = getattr(dataset, split), getattr(dataset, f"{split}_reference")
        seed = config.seed + EVAL_SEED_OFFSET
        xy = batches(tokens, config, seed=seed, steps=steps, split=split, rows=rows, reference=reference)
        xy = placement.put_batch(xy, batch_rows(config))
        metrics = placement.eval_fn(config.grad_accum)(state, xy)
        out[split] = {k: float(jnp.mean(v_K)) for k, v_K in metrics.items()}
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if it has one.

    Returns a summary: final step, best and last val loss, wall time and training tokens/s.
    """
    K = check_loop(config)
    parallel.init_distributed(config.parallel)
    if "://" in str(workdir):  # pathlib would make gs://B/x a local directory "gs:/B/x"
        raise ValueError(
            f"workdir={workdir}: object stores (gs://, s3://) are not supported yet; use a local path, or "
            "on several hosts a filesystem they all mount (NFS, Filestore, gcsfuse)"
        )
    if not str(workdir).strip():  # Path("") is the current directory
        raise ValueError("workdir is empty; pass --workdir=DIR (created if missing)")
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir={workdir} is a file; pass a directory (created if missing)")
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    if not os.access(workdir, os.W_OK):
        raise PermissionError(f"workdir={workdir} is not writable; pass a directory you can write to")
    try:
        with _one_run_in(workdir):
            return _train_and_evaluate(config, workdir, K)
    except BaseException:
        if created and {p.name for p in workdir.iterdir()} <= {".lock"}:  # refused before writing
            shutil.rmtree(workdir, ignore_errors=True)  # anything: leave no empty workdir behind
        raise


class WorkdirInUse(BlockingIOError):
    """Another run holds the workdir (its lock is busy)."""


@contextlib.contextmanager
def _one_run_in(workdir: pathlib.Path):
    """Holds an exclusive lock on workdir/.lock (process 0; the others follow it): a second run in the
    same workdir would interleave checkpoints and metrics. The OS drops the lock when the process ends."""
    if jax.process_index() != 0:
        yield
        return
    with open(workdir / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirInUse(
                f"another run is training in {workdir} (it holds {workdir / '.lock'}); wait for it to end "
                "or pass another --workdir"
            ) from None
        yield


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: pathlib.Path, K: int) -> dict:
    """train_and_evaluate in a checked workdir that this run holds."""
    # ----- Where the run starts: its own checkpoint, another workdir, an HF GPT-2, or scratch. -----
    # Read-only until the inputs are checked: a writing Checkpointer starts a background clean-up that
    # prints an orbax traceback when a one-line input error ends the program at once.
    resumed = Checkpointer(workdir, read_only=True) if (workdir / "checkpoints").is_dir() else None
    latest = resumed.latest_step() if resumed is not None else None
    source = None  # (kind, path) a fine-tuning run starts from: ("workdir", W) or ("hf", HF directory)
    tokenizer = make_tokenizer(config.data)  # a checkpoint's own tokenizer wins below
    check_format(config.data)  # before fetching a model to fine-tune
    meta: dict[str, Any] = {}
    if latest is not None:
        check_resume(latest, config, workdir)
        saved = resumed.restore_json(latest)
        check_same_images(saved["config"].get("data", {}), config.data, workdir)
        tokenizer = data_lib.tokenizer_from_json(saved["tokenizer"])
        meta = saved["meta"]
        print(f"resuming from {resumed.directory} at step {latest}", flush=True)
    elif config.init_from == "resume":
        raise FileNotFoundError(
            f"init_from='resume' but {workdir} has no checkpoint; use init_from='scratch'"
        )
    elif config.init_from != "scratch":
        source, tokenizer = init_source(config.init_from, tokenizer)
    elif config.data.get("tokenizer") == "auto":
        raise ValueError(
            "data.tokenizer='auto' takes the tokenizer of config.init_from's model, but init_from='scratch'; "
            "set data.tokenizer to char, byte or gpt2, or init_from to a model"
        )
    # config.model fields left None: the checkpoint's values on resume, the source model's on fine-tuning.
    if latest is not None:
        config = fill_model(config, saved_model(saved), f"the checkpoint in {workdir}")
    elif source is not None:
        config = fill_model(config, source_model(*source), f"init_from={config.init_from}")

    # ----- Data. -----
    if config.get("grpo") is not None:  # prompts, whose completions the loop samples (gptjax.grpo)
        grpo.check_config(config, latest is not None or source is not None)
        room = config.model.block_size + 1 - config.grpo.max_new_tokens  # a row holds prompt + completion
        dataset = load_prompts(
            config.data.source, val_fraction=config.data.val_fraction, tokenizer=tokenizer, max_tokens=room
        )
    else:
        dataset = load_data(config.data, tokenizer, block_size=config.model.block_size)
    tokenizer = dataset.tokenizer
    for split in ("train", "val") if config.get("grpo") is None else ():  # one clear line now, not later
        pairs = getattr(dataset, split) if config.data.get("format") == "preference" else None
        reference = None if pairs is None else np.zeros((len(pairs), 2), np.float32)  # not computed yet
        batches(getattr(dataset, split), config, seed=0, steps=range(1), split=split, reference=reference)

    # ----- Model, optimizer, initial state on the devices. -----
    cfg = model_config(config, tokenizer.vocab_size)
    if latest is not None:
        saved_cfg = model_config(ml_collections.ConfigDict(saved["config"]), tokenizer.vocab_size)
        check_resumable(saved_cfg, cfg, workdir)
    if latest is None and source is None and cfg.lora_rank:
        raise ValueError(
            f"model.lora_rank={cfg.lora_rank} adapts a trained model: set --config.init_from=<workdir, HF "
            "directory or Hub id> (or lora_rank=0 to train from scratch)"
        )
    objective = Objective.from_config(config)
    init, abstract = abstract_state(cfg, config.opt, config.seed, objective)
    placement = parallel.make_placement(config.parallel, abstract, batch_rows(config))
    check_run(objective, dataset, config, placement.mode, latest is not None or source is not None)
    per_device = config.batch_size // jax.device_count()
    if placement.mode == "pmap" and per_device % config.grad_accum:
        raise ValueError(
            f"pmap mode gives each of the {jax.device_count()} devices {per_device} rows of batch_size="
            f"{config.batch_size}, not divisible by grad_accum={config.grad_accum}; use a grad_accum that "
            "divides it"
        )
    rows = placement.process_rows(batch_rows(config))
    n_params = count_params(abstract.params)
    lora = ""
    if cfg.lora_rank:
        n_lora = n_params - count_params(drop_lora(abstract.params))
        lora = f" ({n_lora:,} trained: LoRA rank {cfg.lora_rank} on {','.join(cfg.lora_targets)})"
    print(f"model: {n_params / 1e6:.2f}M parameters{lora}, {cfg}", flush=True)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, mode {placement.mode}", flush=True)
    start_params = None  # a fine-tuning run's starting weights (GRPO's reference)
    if latest is not None:
        if placement.mode == "mesh":  # restore each shard straight onto its device
            abstract = jax.tree_util.tree_map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, placement.shardings
            )
        state = placement.put_state(resumed.restore_state(abstract, latest))
    else:
        if placement.mode == "mesh":  # initialise each shard on its device: no full copy anywhere
            state = jax.jit(init, out_shardings=placement.shardings)()
        else:
            state = placement.put_state(jax.jit(init)())
        if source is not None:
            params, initial = init_params(*source, cfg, abstract.params), placement.get_state(state)
            start_params = params
            state = placement.put_state(initial.replace(params=with_lora(params, initial.params)))
            print(f"fine-tuning from {config.init_from} ({source[1]})", flush=True)
    if objective.pairs and not objective.reference:  # SimPO, a reward model: no reference
        zeros = {
            f"{s}_reference": np.zeros((len(getattr(dataset, s)), 2), np.float32) for s in ("train", "val")
        }
        for s in ("train", "val") if objective.kind == "reward" else ():  # its pairs' margins, if any
            if getattr(dataset, f"{s}_margins") is not None:  # ride where a chosen row's reference would
                zeros[f"{s}_reference"][:, 0] = getattr(dataset, f"{s}_margins")
        dataset = dataclasses.replace(dataset, **zeros)
    elif objective.kind == "dpo":  # the reference: the starting model's log-probability of every answer
        logps_fn = placement.rows_fn(functools.partial(answer_logps_steps, grad_accum=config.grad_accum))
        put = lambda xy: logps_fn(state, placement.put_batch(xy, batch_rows(config)))  # noqa: E731
        logps = functools.partial(dpo.reference_logps, put, batch_pairs=config.batch_size, rows=rows)
        dataset = dpo.with_reference(dataset, workdir, logps if latest is None else None)  # resumed: read
    rollouts = None  # GRPO: batches sampled by the policy
    if objective.kind == "grpo":
        reference = None  # beta > 0 with every weight trained: the init_from model, read again on resume
        if config.grpo.beta > 0 and not cfg.lora_rank:
            reference = start_params
            if reference is None:
                reference = init_params(*init_source(config.init_from, tokenizer)[0], cfg, abstract.params)
        rollouts = grpo.Rollouts(config, dataset, cfg, reference)
    if resumed is not None:
        resumed.close()
    ckpt = Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
    start = int(placement.get_state(state).step)
    step_fn = placement.step_fn(config.grad_accum)

    # ----- The loop. -----
    # The learning rate of every step, computed once: evaluating the optax schedule eagerly at each log
    # step dispatched a dozen tiny device ops (compiled on first use, inside a profile's window).
    lr_by_step = np.asarray(jax.jit(jax.vmap(lr_schedule(config.opt)))(jnp.arange(config.max_iters + 1)))
    writer = MetricWriter(workdir, resume_step=start)
    tokens_per_step = batch_rows(config) * config.model.block_size
    # The best val loss, or for GRPO the best val reward (higher is better).
    best_key, better, worst = (
        ("best_val_reward", max, -math.inf) if rollouts else ("best_val_loss", min, math.inf)
    )
    best_val = meta.get(best_key, worst)
    saved_config = config.to_dict()
    eval_records: dict[int, dict] = {}
    rollout_records: dict[int, dict] = {}  # GRPO: each step's rewards, logged with its metrics

    def save(step: int) -> None:
        ckpt.save(
            step,
            placement.state_to_save(state),
            config=saved_config,
            tokenizer=tokenizer.to_json(),
            meta={best_key: best_val, "n_params": n_params},
        )

    def evaluate_and_log(step: int) -> float:
        """Evaluates, logs and returns the val loss (GRPO: the val prompts' mean reward)."""
        nonlocal best_val
        if rollouts is not None:
            means = rollouts.evaluate(placement.get_state(state).params, step)
            val, record, text = means["reward"], {f"val_{k}": v for k, v in means.items()}, ""
        else:
            means = evaluate(state, dataset, config, placement)
            losses = {split: means[split]["loss"] for split in means}
            check_finite(step, losses)
            val = losses["val"]
            record = {"eval_train_loss": losses["train"], **{f"val_{k}": v for k, v in means["val"].items()}}
            means, text = means["val"], f"train loss {losses['train']:.4f}, "
        best_val = better(best_val, val)
        if step % config.log_interval == 0 and step < config.max_iters:
            eval_records[step] = record  # joins this step's training metrics in one record
        else:
            writer.write(step, record)
        tqdm.write(
            f"step {step}: {text}" + ", ".join(f"val {k.replace('_', ' ')} {v:.4f}" for k, v in means.items())
        )
        return val

    t_start = time.time()
    t_log, tokens_since_log = time.time(), 0
    train_seconds, train_tokens = 0.0, 0
    pending = None  # (first step, device metrics [K]) of the previous call, read after the next is dispatched

    def report(first: int, metrics: Any, check: bool = False) -> None:
        """Logs the log steps among K steps' metrics; `check` reads them anyway and raises if not finite."""
        nonlocal t_log, tokens_since_log, train_seconds, train_tokens
        tokens_since_log += K * tokens_per_step  # this call's steps are done once its metrics are read
        logged = [j for j in range(K) if (first + j) % config.log_interval == 0]
        if not logged and not check:
            return
        values_K = {k: np.asarray(v) for k, v in jax.device_get(placement.metrics(metrics)).items()}
        try:
            for j in range(K) if check else logged:
                check_finite(first + j, {k: float(v[j]) for k, v in values_K.items()})
        except FloatingPointError:  # keep the evaluation that waited for this step's metrics
            for step, record in eval_records.items():
                writer.write(step, record)
            raise
        if not logged:
            return
        now = time.time()
        tok_s = tokens_since_log / max(now - t_log, 1e-9)
        utilisation = benchmark.mfu(cfg, n_params, tok_s)  # None on CPU (no peak to compare with)
        if first > start:  # the first call includes compilation
            train_seconds += now - t_log
            train_tokens += tokens_since_log
        t_log, tokens_since_log = now, 0
        for j in logged:
            step = first + j
            values = {k: float(v[j]) for k, v in values_K.items()}
            record = {
                "train_loss": values.pop("loss"),
                "lr": float(lr_by_step[step]),
                "tokens_per_sec": tok_s,
            }
            if utilisation is not None:
                record["mfu"] = utilisation
            writer.write(
                step, {**record, **values, **rollout_records.pop(step, {}), **eval_records.pop(step, {})}
            )
        for step in [s for s in rollout_records if s < first + K]:  # steps not logged
            del rollout_records[step]
        mfu_text = {"mfu": f"{utilisation:.1%}"} if utilisation is not None else {}
        pbar.set_postfix(loss=f"{record['train_loss']:.4f}", tok_s=f"{tok_s:,.0f}", **mfu_text)

    # config.profile_steps > 0: trace that many steps (whole calls), from the second call on (compiled).
    # Process 0 only: the traces of several processes would collide in a shared workdir.
    profile_from = start + K if config.profile_steps > 0 and jax.process_index() == 0 else -1
    profile_until, tracing = profile_from + config.profile_steps, False
    pbar = tqdm(
        total=config.max_iters,
        initial=start,
        desc="train",
        dynamic_ncols=True,
        disable=jax.process_index() != 0,
    )
    try:  # an error mid-run closes the bar first, so that its one line starts a line of its own
        for step in range(start, config.max_iters, K):
            due_eval = step % config.eval_interval == 0
            due_save = step % config.checkpoint_interval == 0 and step > start
            if (due_eval or due_save) and pending is not None:
                # The previous call's metrics include the norm of the parameters about to be evaluated
                # and saved: read them first, so a diverged state is never written over a good one.
                report(*pending, check=True)
                pending = None
            if due_eval:
                evaluate_and_log(step)
                t_log, tokens_since_log = time.time(), 0  # evaluation time is not training time
            if due_save:
                save(step)
            if rollouts is not None:  # sampled by the policy as it is now (K is 1)
                xy, rollout_records[step] = rollouts.batch(placement.get_state(state).params, step, rows)
            else:
                xy = batches(
                    dataset.train,
                    config,
                    seed=config.seed,
                    steps=range(step, step + K),
                    rows=rows,
                    reference=dataset.train_reference,
                )
            if step == profile_from:
                profiling.start_trace(workdir / "profile")
                tracing = True
            with profiling.step_annotation(step):
                state, metrics = step_fn(state, placement.put_batch(xy, batch_rows(config)))
            if pending is not None:
                report(*pending)
            pending = (step, metrics)
            if tracing and step + K >= min(profile_until, config.max_iters):
                jax.block_until_ready(metrics)
                t_stop = time.time()
                profiling.stop_trace()
                t_log += time.time() - t_stop  # writing the trace is not training time
                tracing = False
                tqdm.write(f"traced steps {profile_from}-{step + K - 1} into {workdir / 'profile'}")
            pbar.update(K)
    finally:
        pbar.close()
    if pending is not None:
        report(*pending, check=True)  # the final state must be finite before it is saved
    final_step = int(placement.get_state(state).step)
    if final_step != config.max_iters:  # the loop's calls must end exactly at max_iters (_check_resume)
        raise RuntimeError(f"training ended at step {final_step}, not at max_iters={config.max_iters}")

    # ----- Final evaluation, checkpoint and loss curve. -----
    final = evaluate_and_log(config.max_iters)
    val_key = "val_reward" if rollouts else "val_loss"
    save(config.max_iters)
    writer.close()
    ckpt.close()
    plot_losses(workdir, title=f"{config.data.source}: {n_params / 1e6:.2f}M parameters")
    if tokenizer.kind == "palette" and jax.process_index() == 0:  # an image model: a look at what it draws
        tqdm.write(image.samples_png(placement.get_state(state).params, cfg, tokenizer, config, workdir))
    summary = {
        "step": config.max_iters,
        val_key: final,
        best_key: best_val,
        "wall_seconds": time.time() - t_start,
        "train_tokens_per_sec": train_tokens / train_seconds if train_seconds else None,
    }
    print(f"done: {summary}", flush=True)
    return summary
