"""Where training metrics go: workdir/metrics.jsonl (one JSON object per log step), TensorBoard
event files in workdir/tensorboard, and a loss-curve PNG at the end. Only process 0 writes."""

import json
import math
import os
import pathlib
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of workdir/metrics.jsonl; a cut-off last line (a run killed mid-write) is skipped."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines[: last + 1]):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == last:
                break  # the run redoes that step
            raise ValueError(f"{path} line {i + 1} is not JSON ({e.msg}); fix or delete that line") from e
    return records


class MetricWriter:
    def __init__(self, workdir: str | pathlib.Path, *, resume_step: int):
        self.workdir = pathlib.Path(workdir)
        self.enabled = jax.process_index() == 0
        self.tb = None
        if not self.enabled:
            return
        # A run killed after its last checkpoint logged steps it will redo: drop them so the file
        # reads like one uninterrupted run.
        kept = [r for r in read_metrics(self.workdir) if r["step"] < resume_step]
        # Into a temp file, then os.replace: a kill while rewriting leaves the old file whole.
        tmp = self.workdir / f".{METRICS_FILE}.tmp"
        try:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.workdir / METRICS_FILE)
        finally:
            tmp.unlink(missing_ok=True)
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # TensorBoard logging is optional; the JSONL file is always written
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=resume_step)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.workdir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for name, value in metrics.items():
                self.tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _plain(v: Any) -> Any:
    v = float(v)
    return v if math.isfinite(v) else str(v)  # JSON has no NaN/inf


def plot_losses(workdir: str | pathlib.Path, title: str = "") -> pathlib.Path | None:
    """Writes workdir/loss.png: train loss per log step and val loss per evaluation; for a GRPO run (its
    records hold rewards), the mean reward of each logged step's samples and of each evaluation's."""
    records = read_metrics(workdir)
    if not records or jax.process_index() != 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    curves = (("train_loss", "-"), ("eval_train_loss", "--"), ("val_loss", "o-"))
    label = "cross entropy (nats/token)"
    if any("reward" in r for r in records):  # GRPO: its loss is near 0 by design; its rewards are the curve
        curves, label = (("reward", "-"), ("val_reward", "o-")), "mean reward"
    for key, style in curves:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), float)]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, style, label=key, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = pathlib.Path(workdir) / "loss.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
