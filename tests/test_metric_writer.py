"""metrics.jsonl: a line cut off by a kill is dropped on resume, and the file is rewritten atomically."""

import json

import pytest

from gptjax import metric_writer
from gptjax.metric_writer import METRICS_FILE, MetricWriter, read_metrics

RECORDS = [{"step": 10, "train_loss": 3.1}, {"step": 20, "train_loss": 2.9}]


def test_resume_skips_a_cut_off_last_line(tmp_path):
    lines = "".join(json.dumps(r) + "\n" for r in RECORDS)
    (tmp_path / METRICS_FILE).write_text(lines + '{"step": 30, "train_lo')  # killed mid-write
    assert read_metrics(tmp_path) == RECORDS
    MetricWriter(tmp_path, resume_step=20).close()
    assert (tmp_path / METRICS_FILE).read_text() == json.dumps(RECORDS[0]) + "\n"


def test_a_bad_line_before_the_last_is_an_error(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 10}\n{"step": 2\n{"step": 30}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not JSON .*; fix or delete that line$"):
        read_metrics(tmp_path)


def test_a_failed_rewrite_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    before = "".join(json.dumps(r) + "\n" for r in RECORDS)
    (tmp_path / METRICS_FILE).write_text(before)

    def killed(record):
        raise KeyboardInterrupt

    monkeypatch.setattr(metric_writer.json, "dumps", killed)
    with pytest.raises(KeyboardInterrupt):
        MetricWriter(tmp_path, resume_step=30)
    monkeypatch.undo()
    assert (tmp_path / METRICS_FILE).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [METRICS_FILE]  # no temp file left


def test_non_finite_values_are_written_as_strict_json(tmp_path):
    """JSON has no NaN or Infinity: a diverged step's values are written as strings any JSON reader takes."""
    writer = MetricWriter(tmp_path, resume_step=0)
    writer.write(3, {"train_loss": float("nan"), "grad_norm": float("inf"), "lr": 0.5})
    writer.close()

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    (line,) = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert json.loads(line, parse_constant=refuse) == {
        "step": 3,
        "train_loss": "nan",
        "grad_norm": "inf",
        "lr": 0.5,
    }


def test_a_cut_off_line_before_trailing_blank_lines_is_still_the_last(tmp_path):
    lines = "".join(json.dumps(r) + "\n" for r in RECORDS)
    (tmp_path / METRICS_FILE).write_text(lines + '{"step": 30, "train_lo\n\n  \n')
    assert read_metrics(tmp_path) == RECORDS


def test_plot_draws_each_logged_loss_over_its_steps(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    records = [
        {"step": 0, "train_loss": 4.0, "eval_train_loss": 4.1, "val_loss": 4.2},
        {"step": 10, "train_loss": 3.0},
        {"step": 20, "train_loss": "nan", "eval_train_loss": 2.9, "val_loss": 3.1},  # diverged: not drawn
        {"step": 20, "val_loss": 3.3},
    ]
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    lines, plot = {}, Axes.plot

    def recording_plot(self, x, y, *args, label=None, **kwargs):
        lines[label] = (list(x), list(y))
        return plot(self, x, y, *args, label=label, **kwargs)

    monkeypatch.setattr(Axes, "plot", recording_plot)
    assert metric_writer.plot_losses(tmp_path) == tmp_path / "loss.png"
    assert lines == {
        "train_loss": ([0, 10], [4.0, 3.0]),
        "eval_train_loss": ([0, 20], [4.1, 2.9]),
        "val_loss": ([0, 20, 20], [4.2, 3.1, 3.3]),
    }
    assert (tmp_path / "loss.png").stat().st_size > 1000
