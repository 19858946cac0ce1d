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
