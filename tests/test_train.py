"""End-to-end training: learning, exact resume (also after SIGKILL), fine-tuning, one-line errors."""

import fcntl
import gzip
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
from gptjax import benchmark, checkpoint, cli, profiling
from gptjax.data import DataError
from gptjax.metric_writer import read_metrics
from gptjax.model import count_params, unstack_layers
from gptjax.optim import lr_schedule
from gptjax.train import load_params, train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
    c = tiny.get_config()
    c.update(overrides)
    return c


def assert_params_equal(a, b):
    flat_a, tree_a = jax.tree_util.tree_flatten(a)
    flat_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def run_script(*args, check=True, timeout=300):
    # One CPU device (conftest's 8 fake devices are for the in-process tests): faster start-up.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_tiny_config_learns(tmp_path, data_dir, tmp_cache):
    """configs/tiny.py: the val loss falls from ~ln(65)=4.17 to below 2.8 by step 100."""
    summary = train_and_evaluate(tiny.get_config(), tmp_path)
    records = read_metrics(tmp_path)
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert val[0] > 4.0
    assert val[100] < 2.8, val
    assert summary["best_val_loss"] == min(val.values())
    train = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train] == list(range(0, 100, 10))
    assert all(r["tokens_per_sec"] > 0 and r["lr"] >= 0 for r in train)
    assert not [r for r in train if "mfu" in r]  # no peak FLOP/s known for CPUs
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert list((tmp_path / "tensorboard").iterdir())
    # scripts/eval.py estimates the val loss as training logs it, on other random batches.
    args = ["scripts/eval.py", f"--workdir={tmp_path}", "--split=val", "--random_batches=40"]
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    estimate = json.loads(out.stdout.splitlines()[-1])
    assert (estimate["batches"], estimate["group"]) == (40, 20)
    assert estimate["loss"] == pytest.approx(val[100], abs=0.1)
    assert estimate["group_min"] <= estimate["loss"] <= estimate["group_max"]
    # --choices: the trained model tells Shakespeare's next 12 characters from the same ones shuffled.
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()[-20_000:]
    rng = np.random.default_rng(0)
    rows = []
    for start in rng.integers(0, len(text) - 40, 20):
        context, real = text[start : start + 20], text[start + 20 : start + 32]
        fake, label = "".join(rng.permutation(list(real))), int(rng.integers(2))  # ties would pick 0
        rows.append({"context": context, "choices": [fake, real] if label else [real, fake], "label": label})
    (tmp_path / "mc.jsonl").write_text("\n".join(map(json.dumps, rows)))
    args = ["scripts/eval.py", f"--workdir={tmp_path}", f"--choices={tmp_path / 'mc.jsonl'}"]
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    scores = json.loads(out.stdout.splitlines()[-1])
    assert scores["examples"] == 20 and scores["acc"] >= 0.8 and scores["acc_norm"] == scores["acc"], scores


def test_profile_steps_trace_whole_calls_after_compilation(tmp_path, data_dir, tmp_cache, monkeypatch):
    """profile_steps=8, 5 steps a call: the calls at steps 5 and 10 are traced into workdir/profile,
    with no compilation inside; top_ops reads back op kinds, not Python frames. The logged lr is the
    schedule's, and tokens/s counts the traced calls but not the writing of the trace (made slow here)."""
    stop_trace = profiling.stop_trace
    monkeypatch.setattr(profiling, "stop_trace", lambda: (stop_trace(), time.sleep(2.0)))
    # Short calls of a 1-layer model: the trace (its writing, reading) grows with the steps and ops in it.
    c = tiny_config(max_iters=20, eval_interval=20, checkpoint_interval=20, profile_steps=8)
    c.steps_per_call = c.log_interval = 5
    c.model.n_layer = 1
    train_and_evaluate(c, tmp_path)
    tok_s = [r["tokens_per_sec"] for r in read_metrics(tmp_path) if "tokens_per_sec" in r and r["step"] > 0]
    assert len(tok_s) == 3 and max(tok_s) < 4 * min(tok_s), tok_s  # it was 20x off (the traced call left out)
    with gzip.open(profiling.latest_perfetto_trace(tmp_path / "profile")) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    steps = sorted(
        int(e["args"]["step_num"]) for e in events if e.get("name") == "train" and e.get("ph") == "X"
    )
    assert steps == [5, 10]
    assert not [e for e in events if "compile" in e.get("name", "").lower()]
    rows = profiling.top_ops(tmp_path / "profile", n=10)
    assert rows and not [r for r in rows if r["op"].startswith("$") or r["op"] == "train"]
    assert all(0 < r["share"] <= 1 for r in rows)
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path) if "lr" in r}
    schedule = lr_schedule(c.opt)
    # Steps 0 and 5 in the warm-up (10 steps), 10 and 15 after it.
    assert lrs == pytest.approx({step: float(schedule(step)) for step in range(0, 20, 5)}, rel=1e-6)


def test_logs_mfu_where_the_device_peak_is_known(tmp_path, data_dir, tmp_cache, monkeypatch):
    """With a known peak (GPU/TPU; faked here) each train record has mfu = model FLOP/s / (devices x peak)."""
    monkeypatch.setattr(benchmark, "peak_flops", lambda device, dtype: 1e12)
    train_and_evaluate(tiny_config(max_iters=20, eval_interval=20, checkpoint_interval=20), tmp_path)
    params, cfg, _, _ = load_params(tmp_path)
    flops_per_token = benchmark.flops_per_token(cfg, count_params(params))
    train = [r for r in read_metrics(tmp_path) if "train_loss" in r]
    assert len(train) == 2
    for r in train:
        assert r["mfu"] == pytest.approx(flops_per_token * r["tokens_per_sec"] / (1e12 * jax.device_count()))


def test_resume_equals_uninterrupted(tmp_path, data_dir, tmp_cache):
    """Training 30 steps in one go == 20 steps, stop, then resume to 30 (dropout on). (Muon's state comes
    back exactly too: test_checkpoint.py.)"""
    kw = dict(eval_interval=10, checkpoint_interval=10, log_interval=5)
    config = tiny_config(max_iters=30, **kw)
    config.model.dropout = 0.1
    train_and_evaluate(config, tmp_path / "a")
    config.max_iters = 20
    train_and_evaluate(config, tmp_path / "b")
    config.max_iters = 30
    train_and_evaluate(config, tmp_path / "b")
    assert_params_equal(load_params(tmp_path / "a")[0], load_params(tmp_path / "b")[0])
    # The resumed run's log reads like the uninterrupted one.
    losses = lambda w: [(r["step"], r.get("train_loss")) for r in read_metrics(w)]  # noqa: E731
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    val = {r["step"]: r["val_loss"] for r in read_metrics(tmp_path / "a") if "val_loss" in r}
    assert val[30] < val[0] - 0.5, val


@pytest.mark.slow
def test_sigkill_then_rerun_ends_like_uninterrupted(tmp_path, data_dir, tmp_cache):
    args = [
        "scripts/train.py",
        "--config=configs/tiny.py",
        "--config.max_iters=120",
        "--config.checkpoint_interval=20",
        "--config.eval_interval=60",
        "--config.model.dropout=0.1",
    ]
    run_script(*args, f"--workdir={tmp_path / 'straight'}")

    killed = tmp_path / "killed"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    proc = subprocess.Popen(
        [sys.executable, *args, f"--workdir={killed}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    ckpts = killed / "checkpoints"
    while time.time() < deadline:
        steps = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
        if steps and max(steps) >= 40:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()]
    assert steps and max(steps) < 120, f"the run was not killed mid-way: {steps}"

    run_script(*args, f"--workdir={killed}")
    assert_params_equal(load_params(tmp_path / "straight")[0], load_params(killed)[0])


def test_each_split_is_evaluated_on_its_own_tokens(tmp_path, tmp_cache, monkeypatch):
    """The val loss is measured on the val split's tokens, the train loss on the train split's."""
    from gptjax import train
    from gptjax.data import load_dataset

    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}\n" for i in range(200)))
    ds = load_dataset(str(path))
    want = {"train": len(ds.train), "val": len(ds.val)}
    assert want["train"] != want["val"]
    seen, batches = [], train.batches

    def recording_batches(tokens, config, **kwargs):
        seen.append((kwargs.get("split", "train"), len(tokens)))
        return batches(tokens, config, **kwargs)

    monkeypatch.setattr(train, "batches", recording_batches)
    config = tiny_config(max_iters=0, eval_iters=1)
    config.data.source = str(path)
    train_and_evaluate(config, tmp_path / "w")
    assert {split for split, _ in seen} == {"train", "val"}
    assert all(n == want[split] for split, n in seen), seen
    assert [r["step"] for r in read_metrics(tmp_path / "w") if "val_loss" in r] == [0]


def test_finetune_from_another_workdir(tmp_path, data_dir, tmp_cache):
    train_and_evaluate(tiny_config(max_iters=20), tmp_path / "base")
    base_params, _, base_tok, _ = load_params(tmp_path / "base")
    # max_iters=0: the fine-tuning run only loads, evaluates and saves its starting point.
    train_and_evaluate(tiny_config(max_iters=0, init_from=str(tmp_path / "base")), tmp_path / "ft")
    ft_params, _, ft_tok, _ = load_params(tmp_path / "ft")
    assert_params_equal(base_params, ft_params)
    assert ft_tok.to_json() == base_tok.to_json()
    # scan_layers is free for fine-tuning: the source's layers are restacked.
    scanned = tiny_config(max_iters=0, init_from=str(tmp_path / "base"))
    scanned.model.scan_layers = True
    train_and_evaluate(scanned, tmp_path / "ft_scan")
    assert_params_equal(base_params, unstack_layers(load_params(tmp_path / "ft_scan")[0]))
    # ...and trains from there: its val loss falls further.
    train_and_evaluate(tiny_config(max_iters=40, init_from=str(tmp_path / "base")), tmp_path / "ft")
    val = [r["val_loss"] for r in read_metrics(tmp_path / "ft") if "val_loss" in r]
    assert val[-1] < val[0]


def test_diverged_run_keeps_the_last_good_checkpoint(tmp_path, data_dir, tmp_cache):
    config = tiny_config(max_iters=10, checkpoint_interval=10, eval_interval=10)
    train_and_evaluate(config, tmp_path)
    good = load_params(tmp_path)[0]
    config.max_iters = 40
    config.opt.update(lr=1e30, min_lr=1e30, decay_lr=False, grad_clip=0.0)
    with pytest.raises(FloatingPointError, match="diverged") as diverged:
        train_and_evaluate(config, tmp_path)
    assert checkpoint.Checkpointer(tmp_path, read_only=True).latest_step() == 10
    assert_params_equal(good, load_params(tmp_path)[0])
    # The evaluation of step 10, held to join that step's (diverged) training metrics, is written.
    assert [r["step"] for r in read_metrics(tmp_path) if "val_loss" in r] == [0, 10]
    with pytest.raises(SystemExit, match="^error: FloatingPointError: training diverged at step 10"):
        with cli.one_line_errors():  # what the scripts print: one line
            raise diverged.value


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"keep_checkpoints": 0}, "keep_checkpoints=0 must be >= 1"),
        ({"eval_interval": 0}, "eval_interval=0 must be >= 1"),
        ({"steps_per_call": 0}, "steps_per_call=0 must be >= 1"),
        ({"batch_size": 0}, "batch_size=0 must be >= 1"),
        ({"grad_accum": 3}, "batch_size=32 is not divisible by grad_accum=3"),
        ({"grad_accum": 8, "parallel.mode": "pmap"}, "each of the 8 devices 4 rows .* grad_accum=8"),
    ],
)
def test_loop_settings_that_cannot_work_are_refused_up_front(tmp_path, data_dir, tmp_cache, overrides, match):
    config = tiny_config(max_iters=10, eval_interval=10, checkpoint_interval=10)
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_object_store_workdirs_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pathlib would have made a local "gs:" directory here
    with pytest.raises(ValueError, match="object stores .* are not supported yet"):
        train_and_evaluate(tiny_config(), "gs://bucket/run")
    assert not (tmp_path / "gs:").exists()


def test_resume_refuses_what_it_cannot_continue(tmp_path, data_dir, tmp_cache):
    """A resume step that is not a multiple of steps_per_call (the calls would miss the intervals and
    end past max_iters), one past max_iters, another architecture: one line each, nothing written."""
    train_and_evaluate(tiny_config(max_iters=30, eval_interval=30, checkpoint_interval=30), tmp_path)
    records = read_metrics(tmp_path)
    intervals = dict(eval_interval=20, checkpoint_interval=20)
    with pytest.raises(
        ValueError, match="step 30, which is not a multiple of steps_per_call=20; set steps_per_call=10"
    ):
        train_and_evaluate(tiny_config(steps_per_call=20, **intervals), tmp_path)
    with pytest.raises(ValueError, match="holds step 30, past max_iters=20; set max_iters >= 30"):
        train_and_evaluate(tiny_config(max_iters=20, **intervals), tmp_path)
    config = tiny_config()
    config.model.update(n_head=2, gelu="tanh", attention="xla")  # same shapes; the kernel is free
    match = r"n_head=2 \(saved: 4\), gelu=tanh \(saved: exact\); "
    match += "set --config.model.n_head=4 --config.model.gelu=exact"
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(config, tmp_path)
    scanned = tiny_config()
    scanned.model.scan_layers = True  # the optimizer state's layout changes with the params'
    with pytest.raises(ValueError, match="trained with model.scan_layers=False; resume with --config.model"):
        train_and_evaluate(scanned, tmp_path)
    assert checkpoint.Checkpointer(tmp_path, read_only=True).manager.all_steps() == [30]
    assert read_metrics(tmp_path) == records
    # Fine-tuning from the workdir compares the same fields.
    config.init_from = str(tmp_path)
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(config, tmp_path / "ft")
    # The suggested steps_per_call resumes.
    assert (
        train_and_evaluate(tiny_config(max_iters=40, steps_per_call=10, **intervals), tmp_path)["step"] == 40
    )
    assert checkpoint.Checkpointer(tmp_path, read_only=True).manager.all_steps() == [30, 40]


@pytest.mark.parametrize(
    "text, block_size, match",
    [
        (None, 32, "neither a built-in corpus .* nor an existing file"),
        ("", 32, "empty"),
        ("To be, or not to be", 32, "fewer than block_size"),
    ],
)
def test_bad_data_gives_one_clear_line(tmp_path, tmp_cache, text, block_size, match):
    path = tmp_path / "corpus.txt"
    if text is not None:
        path.write_text(text)
    config = tiny_config()
    config.data.source = str(path)
    config.model.block_size = block_size
    with pytest.raises(DataError, match=match) as info:
        train_and_evaluate(config, tmp_path / "w")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "w").exists()  # a refused run leaves no workdir (holding only its .lock)
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match=match):
        train_and_evaluate(config, tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()  # but never removes a directory it did not create


def test_scripts_print_one_line_errors(tmp_path, data_dir, tmp_cache):
    short = tmp_path / "short.txt"
    short.write_text("hello world\n")
    cases = [
        (["scripts/train.py", "--config=configs/tiny.py", "--config.model.foo=1"], "foo"),
        (["scripts/train.py", "--config=configs/tiny.py", "--config.model.n_head=3"], "n_head=3"),
        (["scripts/sample.py"], "no checkpoint"),
        # Once printed orbax's traceback from the clean-up thread a writing Checkpointer starts.
        (["scripts/train.py", "--config=configs/tiny.py", f"--config.data.source={short}"], "fewer than"),
        # Before it fetches GPT-2 (no network here: that would be another error).
        (["scripts/train.py", "--config=configs/sft.py"], "data.source is not set; pass --config.data"),
    ]
    for args, needle in cases:
        result = run_script(*args, f"--workdir={tmp_path / 'none'}", check=False)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert "Traceback" not in result.stderr, result.stderr
        assert lines[-1].startswith("error:") and needle in lines[-1], lines[-1]


def test_trains_on_a_directory_prepared_by_prepare_data(tmp_path, data_dir, tmp_cache):
    """scripts/prepare_data.py's token files are a data source; their tokenizer comes along."""
    from gptjax.data import ByteTokenizer, GPT2Tokenizer
    from gptjax.data.prepare import prepare_files

    prepare_files([data_dir / "tinyshakespeare" / "input.txt"], tmp_path / "tokens", ByteTokenizer())
    config = tiny_config(max_iters=20, eval_interval=10, checkpoint_interval=10)
    config.data.source = str(tmp_path / "tokens")
    train_and_evaluate(config, tmp_path / "w")
    params, cfg, tokenizer, _ = load_params(tmp_path / "w")
    assert tokenizer.kind == "byte" and cfg.vocab_size == 256
    val = [r["val_loss"] for r in read_metrics(tmp_path / "w") if "val_loss" in r]
    assert val[-1] < val[0] - 0.5  # learns from the prepared tokens (ln 256 = 5.5 at the start)
    # A checkpoint's tokenizer that does not match the prepared files is refused in one line.
    prepare_files(
        [data_dir / "tinyshakespeare" / "input.txt"],
        tmp_path / "gpt2",
        GPT2Tokenizer(),
    )
    config.data.source = str(tmp_path / "gpt2")
    with pytest.raises(DataError, match="prepared with tokenizer 'gpt2'"):
        train_and_evaluate(config, tmp_path / "w")


def test_workdir_problems_and_a_second_run_are_refused(tmp_path, data_dir, tmp_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="workdir is empty; pass --workdir=DIR"):
        train_and_evaluate(tiny_config(), "")  # Path("") would have trained into the current directory
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt is a file; pass a directory"):
        train_and_evaluate(tiny_config(), tmp_path / "notes.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "w").mkdir()
    with open(tmp_path / "w" / ".lock", "a") as held:  # what a run training in w holds
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = r"another run is training in w \(it holds w/.lock\); wait for it to end"
        with pytest.raises(SystemExit, match=f"^error: WorkdirInUse: {busy}"), cli.one_line_errors():
            train_and_evaluate(tiny_config(), "w")
    assert not (tmp_path / "w" / "checkpoints").exists()
    config = tiny_config(max_iters=10, eval_interval=10, checkpoint_interval=10)
    assert train_and_evaluate(config, "w")["step"] == 10  # the lock is free again


def test_readers_follow_a_run_that_deletes_the_step_they_read(tmp_path, data_dir, tmp_cache, monkeypatch):
    """keep_checkpoints deletes older steps while a sampler or fine-tuning run may be reading one."""
    train_and_evaluate(tiny_config(max_iters=20, eval_interval=20, checkpoint_interval=10), tmp_path)
    step_10 = load_params(tmp_path, step=10)[0]
    with pytest.raises(
        FileNotFoundError, match=r"no checkpoint at step 7 in .*; pick one of steps \[10, 20\]$"
    ):
        load_params(tmp_path, step=7)  # a step that never was is not "deleted while being read"
    restore, victims = checkpoint.Checkpointer.restore_state, {20}

    def restore_while_deleted(self, abstract, step=None):
        if step in victims:  # deleted between choosing the step and reading its arrays
            victims.remove(step)
            shutil.rmtree(self.directory / str(step))
        return restore(self, abstract, step)

    monkeypatch.setattr(checkpoint.Checkpointer, "restore_state", restore_while_deleted)
    assert_params_equal(step_10, load_params(tmp_path)[0])  # the latest vanished: read the newest left
    victims.add(10)
    with pytest.raises(checkpoint.StepVanished, match="checkpoints/10 was deleted while being read"):
        load_params(tmp_path, step=10)  # an explicit step is never swapped for another


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"max_iters": -1}, "max_iters=-1 must be >= 0"),
        ({"max_iters": 25}, "max_iters=25 must be a multiple of steps_per_call=10"),
        ({"eval_interval": 15}, "eval_interval=15 must be a multiple of steps_per_call=10"),
        ({"checkpoint_interval": 5}, "checkpoint_interval=5 must be a multiple of steps_per_call=10"),
    ],
)
def test_loop_lengths_that_miss_the_calls_are_refused_up_front(tmp_path, overrides, match):
    """Calls of steps_per_call steps must land on every interval and end exactly at max_iters."""
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(tiny_config(**overrides), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_init_from_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="init_from='resume' but .* has no checkpoint; use init_from='scratch'"
    ):
        train_and_evaluate(tiny_config(init_from="resume"), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_evaluations_draw_fresh_batches_apart_from_training(tmp_path, data_dir, tmp_cache, monkeypatch):
    """Each evaluation draws eval_iters batches no other evaluation (even a closer one than eval_iters
    steps) and no training step sees; its losses join that step's training record in one line."""
    from gptjax import train

    seen, batches = [], train.batches

    def recording_batches(tokens, config, **kwargs):
        xy = batches(tokens, config, **kwargs)
        if kwargs["seed"] == 0 and kwargs["steps"] == range(1):
            return xy  # the up-front check that each split holds a batch
        seen.append((kwargs.get("split", "training"), [x.tobytes() for x in xy[0]]))
        return xy

    monkeypatch.setattr(train, "batches", recording_batches)
    config = tiny_config(
        max_iters=4, steps_per_call=1, eval_interval=2, checkpoint_interval=4, log_interval=2
    )
    train_and_evaluate(config, tmp_path)
    split_batches = {
        s: [x for split, xs in seen if split == s for x in xs] for s in ("train", "val", "training")
    }
    assert [len(split_batches[s]) for s in ("train", "val", "training")] == [12, 12, 4]  # evals at 0, 2, 4
    for xs in split_batches.values():
        assert len(set(xs)) == len(xs)  # no batch drawn twice
    assert not set(split_batches["train"]) & set(split_batches["training"])
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 2, 4]
    assert all({"train_loss", "val_loss", "eval_train_loss"} <= r.keys() for r in records[:2])


def test_finetune_from_a_scanned_workdir_into_the_layer_loop(tmp_path, data_dir, tmp_cache):
    """A source trained with scan_layers=True fine-tunes into scan_layers=False: its layers are unstacked."""
    base = tiny_config(max_iters=0)
    base.model.scan_layers = True
    train_and_evaluate(base, tmp_path / "base")
    train_and_evaluate(tiny_config(max_iters=0, init_from=str(tmp_path / "base")), tmp_path / "ft")
    assert_params_equal(unstack_layers(load_params(tmp_path / "base")[0]), load_params(tmp_path / "ft")[0])


def test_a_diverged_state_is_not_saved_between_evaluations(tmp_path, data_dir, tmp_cache):
    """A checkpoint due at a step with no evaluation (and no log) first reads the previous call's metrics:
    diverged parameters never replace the last good checkpoint."""
    config = tiny_config(max_iters=10, checkpoint_interval=10, eval_interval=10)
    train_and_evaluate(config, tmp_path)
    config.update(max_iters=40, eval_interval=40, log_interval=40)
    config.opt.update(lr=1e30, min_lr=1e30, decay_lr=False, grad_clip=0.0)
    with pytest.raises(FloatingPointError, match="training diverged at step 10"):
        train_and_evaluate(config, tmp_path)
    assert checkpoint.Checkpointer(tmp_path, read_only=True).manager.all_steps() == [10]
    # The last call's steps are all read before the final evaluation: the error names where it diverged.
    config.update(max_iters=20, eval_interval=20, checkpoint_interval=20, log_interval=20)
    with pytest.raises(FloatingPointError, match="training diverged at step 10"):
        train_and_evaluate(config, tmp_path)
    assert checkpoint.Checkpointer(tmp_path, read_only=True).manager.all_steps() == [10]


def test_resume_carries_best_val_and_tokenizer_and_reruns_a_finished_run(tmp_path, data_dir, tmp_cache):
    """A resumed run keeps the checkpoint's best val loss and tokenizer (not the config's), evaluates the
    step it resumes at again, and a finished run run again changes nothing."""
    intervals = dict(eval_interval=10, checkpoint_interval=10, log_interval=10)
    train_and_evaluate(tiny_config(max_iters=10, **intervals), tmp_path)
    meta_file = tmp_path / "checkpoints" / "10" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    assert meta["best_val_loss"] > 1.0
    meta_file.write_text(json.dumps({**meta, "best_val_loss": 0.5}))  # as if an earlier eval had reached 0.5
    config = tiny_config(max_iters=20, **intervals)
    config.data.tokenizer = "byte"  # the checkpoint's char tokenizer wins
    summary = train_and_evaluate(config, tmp_path)
    assert summary["best_val_loss"] == 0.5
    _, cfg, tokenizer, _ = load_params(tmp_path)
    assert tokenizer.kind == "char" and cfg.vocab_size == 65
    reader = checkpoint.Checkpointer(tmp_path, read_only=True)
    assert reader.restore_json(20)["meta"]["best_val_loss"] == 0.5
    records = read_metrics(tmp_path)
    assert [(r["step"], "val_loss" in r) for r in records] == [(0, True), (10, True), (20, True)]
    # Run again when finished: nothing to train; the final evaluation, logged again, replaces its line.
    assert train_and_evaluate(config, tmp_path)["step"] == 20
    assert reader.manager.all_steps() == [10, 20]
    assert read_metrics(tmp_path) == records


def test_keep_checkpoints_keeps_that_many_of_the_newest(tmp_path, data_dir, tmp_cache):
    config = tiny_config(
        max_iters=4, steps_per_call=1, eval_interval=4, checkpoint_interval=1, keep_checkpoints=3
    )
    train_and_evaluate(config, tmp_path)
    assert checkpoint.Checkpointer(tmp_path, read_only=True).manager.all_steps() == [2, 3, 4]


def test_a_run_starting_from_non_finite_parameters_stops_at_its_first_evaluation(
    tmp_path, data_dir, tmp_cache
):
    """A fine-tuning source holding NaNs is refused by the evaluation at step 0: nothing is saved."""
    from gptjax.convert import save_checkpoint
    from gptjax.data import CharTokenizer
    from gptjax.train import abstract_state, model_config

    config = tiny_config(max_iters=0)
    chars = CharTokenizer.from_text((data_dir / "tinyshakespeare" / "input.txt").read_text())
    cfg = model_config(config, chars.vocab_size)
    init, _ = abstract_state(cfg, config.opt, config.seed)
    params = jax.tree_util.tree_map(lambda p: np.full(p.shape, np.nan, p.dtype), init().params)
    save_checkpoint(tmp_path / "nan", params, cfg, chars, config=config)
    config.init_from = str(tmp_path / "nan")
    with pytest.raises(FloatingPointError, match="training diverged at step 0"):
        train_and_evaluate(config, tmp_path / "w")
    assert checkpoint.Checkpointer(tmp_path / "w", read_only=True).latest_step() is None
