"""The training benchmark: the FLOPs formula, the peak table, and one short run."""

import types

from configs import tiny
from gptjax import benchmark
from gptjax.model import GPTConfig


def test_flops_per_token_is_6n_plus_attention():
    cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    n_params = 124_439_808  # GPT-2 small with biases
    wpe = 1024 * 768
    expected = 6 * (n_params - wpe) + 12 * 12 * 1024 * 768
    assert benchmark.flops_per_token(cfg, n_params) == expected


def test_peak_table_matches_device_kinds():
    h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
    v5e = types.SimpleNamespace(device_kind="TPU v5 lite")
    cpu = types.SimpleNamespace(device_kind="cpu")
    assert benchmark.peak_flops(h100, "bfloat16") == 989e12
    assert benchmark.peak_flops(h100, "float32") == 494e12
    assert benchmark.peak_flops(v5e, "bfloat16") == 197e12
    assert benchmark.peak_flops(cpu, "float32") is None


def test_benchmark_train_runs_the_training_step(tmp_path):
    config = tiny.get_config()
    config.steps_per_call = 2
    config.parallel.mode = "single"
    out = benchmark.benchmark_train(config, vocab_size=65, steps=2, warmup=1, profile_dir=str(tmp_path))
    assert out["tokens_per_sec"] > 0 and out["step_ms"] > 0
    assert out["mfu"] is None  # no peak for CPUs
    assert 3.0 < out["loss"] < 4.5  # near ln(65) = 4.17 after a few steps on random tokens
    assert out["model_flops_per_token"] > 6 * (out["params"] - 32 * 64)  # + attention, - wpe
    # --profile_dir: the top op kinds of a trace of two more calls, busiest first.
    assert out["profile_dir"] == str(tmp_path)
    totals = [row["total_ms"] for row in out["top_ops"]]
    assert totals == sorted(totals, reverse=True) and totals[0] > 0
    assert any("dot" in row["op"] or "fusion" in row["op"] for row in out["top_ops"])
