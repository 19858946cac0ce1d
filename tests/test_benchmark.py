"""The training benchmark: the FLOPs formula, the peak table, and one short run."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import pytest

from configs import tiny
from gptjax import benchmark
from gptjax.model import GPT, GPTConfig


def test_flops_per_token_is_6n_plus_attention():
    cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    n_params = 124_439_808  # GPT-2 small with biases
    wpe = 1024 * 768
    expected = 6 * (n_params - wpe) + 12 * 12 * 1024 * 768
    assert benchmark.flops_per_token(cfg, n_params) == expected


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_flops_per_token_matches_xla_count_of_the_forward_pass(tie_embeddings):
    cfg = GPTConfig(
        vocab_size=4096, block_size=64, n_layer=2, n_head=4, n_embd=128, tie_embeddings=tie_embeddings
    )
    tokens = jnp.zeros((2, cfg.block_size), jnp.int32)
    params = jax.eval_shape(lambda: GPT(cfg).init(jax.random.PRNGKey(0), tokens)["params"])
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    forward = jax.jit(lambda p, x: GPT(cfg).apply({"params": p}, x)[0]).lower(params, tokens).compile()
    xla_per_token = 3 * forward.cost_analysis()["flops"] / tokens.size  # backward = 2 x forward
    assert benchmark.flops_per_token(cfg, n_params) == pytest.approx(xla_per_token, rel=0.03)


def test_flops_per_token_counts_attention_over_query_heads_times_head_dim():
    """With n_head_dim apart from n_embd / n_head, attention's matmuls are over N*H (here 4 D) channels:
    the formula still matches XLA's count, where 12·L·T·D would be far off."""
    cfg = GPTConfig(vocab_size=512, block_size=256, n_layer=2, n_head=4, n_embd=64, n_head_dim=64)
    tokens = jnp.zeros((1, cfg.block_size), jnp.int32)
    params = jax.eval_shape(lambda: GPT(cfg).init(jax.random.PRNGKey(0), tokens)["params"])
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    forward = jax.jit(lambda p, x: GPT(cfg).apply({"params": p}, x)[0]).lower(params, tokens).compile()
    xla_per_token = 3 * forward.cost_analysis()["flops"] / tokens.size
    assert benchmark.flops_per_token(cfg, n_params) == pytest.approx(xla_per_token, rel=0.03)
    with_d = benchmark.flops_per_token(cfg, n_params) - 12 * 2 * 256 * (4 * 64 - 64)
    assert with_d < 0.8 * xla_per_token
    # A sliding window of 32 keys: attention counts those a query may see (XLA computes and masks all).
    windowed = dataclasses.replace(cfg, sliding_window=32)
    saved = benchmark.flops_per_token(cfg, n_params) - benchmark.flops_per_token(windowed, n_params)
    assert saved == 12 * 2 * (256 - 32) * 4 * 64


def test_flops_per_token_leaves_out_the_padded_token_table_of_an_untied_model():
    """Untied, the token table (all padded_vocab rows) is a lookup; the LM head's matmul counts."""
    cfg = GPTConfig(
        vocab_size=65, vocab_multiple=64, block_size=32, n_layer=2, n_head=2, n_embd=16, tie_embeddings=False
    )
    tokens = jnp.zeros((1, cfg.block_size), jnp.int32)
    params = jax.eval_shape(lambda: GPT(cfg).init(jax.random.PRNGKey(0), tokens)["params"])
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    matmul_params = n_params - 32 * 16 - 128 * 16  # minus wpe and the 128-row (padded) wte
    assert benchmark.flops_per_token(cfg, n_params) == 6 * matmul_params + 12 * 2 * 32 * 16


def test_mfu_divides_by_every_devices_peak_at_the_compute_dtype(monkeypatch):
    h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
    fake_jax = types.SimpleNamespace(devices=lambda: [h100] * 4, device_count=lambda: 4)
    monkeypatch.setattr(benchmark, "jax", fake_jax)
    cfg = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64, dtype="bfloat16")
    fpt = benchmark.flops_per_token(cfg, 200_000)
    tokens_per_sec = 0.5 * 4 * 989e12 / fpt  # half of 4 H100s' bf16 peak
    assert benchmark.mfu(cfg, 200_000, tokens_per_sec) == pytest.approx(0.5)
    f32 = GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=64, dtype="float32")
    assert benchmark.mfu(f32, 200_000, tokens_per_sec) == pytest.approx(0.5 * 989 / 494)


def test_peak_table_matches_device_kinds():
    h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
    v5e = types.SimpleNamespace(device_kind="TPU v5 lite")
    cpu = types.SimpleNamespace(device_kind="cpu")
    assert benchmark.peak_flops(h100, "bfloat16") == 989e12
    assert benchmark.peak_flops(h100, "float32") == 494e12
    assert benchmark.peak_flops(h100, "float16") == 989e12
    assert benchmark.peak_flops(v5e, "bfloat16") == 197e12
    h200 = types.SimpleNamespace(device_kind="NVIDIA H200")
    assert (benchmark.peak_flops(h200, "bfloat16"), benchmark.peak_flops(h200, "float32")) == (989e12, 494e12)
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


def test_benchmark_train_refuses_no_timed_calls():
    with pytest.raises(ValueError, match=r"steps=0 and warmup=1: time at least 1 call after 0 or more"):
        benchmark.benchmark_train(tiny.get_config(), vocab_size=65, steps=0, warmup=1)


def test_bench_script_names_the_sizes_it_knows():
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run(
        [sys.executable, "scripts/bench.py", "--sizes=gpt2,foo", "--nohf"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.strip() == "error: ValueError: --sizes=foo unknown; pick from shakespeare_char_cpu,gpt2"


def test_with_overrides_sets_fields_like_config_flags():
    base = tiny.get_config()
    config = benchmark.with_overrides(base, "model.loss_chunk=16, batch_size=8,model.dtype=bfloat16")
    assert (config.model.loss_chunk, config.batch_size, config.model.dtype) == (16, 8, "bfloat16")
    assert (base.model.loss_chunk, base.batch_size) == (0, 32)  # the base config is untouched
    assert benchmark.with_overrides(base, "parallel.mesh.fsdp=2").parallel.mesh.fsdp == 2
    with pytest.raises(ValueError, match="no field model.nope"):
        benchmark.with_overrides(base, "model.nope=1")
    with pytest.raises(ValueError, match="no field batch_size.x"):
        benchmark.with_overrides(base, "batch_size.x=1")
    with pytest.raises(ValueError, match="batch_size=abc"):
        benchmark.with_overrides(base, "batch_size=abc")
    with pytest.raises(ValueError, match="not field=value"):
        benchmark.with_overrides(base, "batch_size")


def test_bench_script_measures_variants_in_one_run():
    """scripts/bench.py --variant: a JSON list, the base config first, each variant with its overrides."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    args = ["scripts/bench.py", "--mode=train", "--config=configs/tiny.py", "--steps=1", "--warmup=0"]
    args += ["--config.steps_per_call=2", "--variant=model.loss_chunk=16,batch_size=16"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run(
        [sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    base, variant = json.loads(out.stdout.splitlines()[-1])
    assert (base["variant"], base["loss_chunk"], base["batch_size"]) == ("", 0, 32)
    assert (variant["variant"], variant["loss_chunk"], variant["batch_size"]) == (
        "model.loss_chunk=16,batch_size=16",
        16,
        16,
    )
    assert variant["step_memory_gb"] is None and variant["tokens_per_sec"] > 0  # no buffer sizes on CPU


@pytest.mark.slow
def test_bench_script_times_generation_beside_hf_and_records_the_load():
    """--mode=generate: a row per size and batch with gptjax's and HF's tokens/s measured in the same run,
    their ratio, and the load average before and after (a busy machine slows HF far more)."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    args = ["scripts/bench.py", "--mode=generate", "--sizes=shakespeare_char_cpu", "--batch_sizes=2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run(
        [sys.executable, *args, "--repeats=1"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout[out.stdout.index("{\n") :])  # the rows stream first, one line each
    (row,) = report["results"]
    assert (row["model"], row["batch"], row["new_tokens"]) == ("shakespeare_char_cpu", 2, 63)
    assert row["gptjax_tok_s"] > 0 and row["hf_tok_s"] > 0
    assert row["speedup"] == pytest.approx(row["gptjax_tok_s"] / row["hf_tok_s"], abs=0.01)
    before, after, cores = row["load_average_1min"]
    assert before >= 0 and after >= 0 and cores == os.cpu_count()


@pytest.mark.slow
def test_bench_script_times_assisted_generation_beside_the_model_alone(tmp_path):
    """--mode=assisted: for greedy and sampling (and each K: one here, to keep the test short), the model
    alone and with the draft measured in one run, the acceptance rate, and (greedy) the model's own text."""
    from gptjax.convert import save_checkpoint
    from gptjax.data import CharTokenizer

    tokenizer = CharTokenizer("abcdefghijklmnop")
    for name, cfg in [
        ("model", GPTConfig(vocab_size=16, block_size=32, n_layer=2, n_head=2, n_embd=16)),
        ("draft", GPTConfig(vocab_size=16, block_size=24, n_layer=1, n_head=2, n_embd=8)),
    ]:
        params = jax.jit(GPT(cfg).init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
        save_checkpoint(tmp_path / name, params, cfg, tokenizer)
    repo = pathlib.Path(__file__).resolve().parents[1]
    args = ["scripts/bench.py", "--mode=assisted", f"--model={tmp_path / 'model'}", "--repeats=1"]
    # Prompts of 2 lengths, none of 1 token (that one skips prefill, and its decode loop compiles again).
    args += [f"--assistant={tmp_path / 'draft'}", "--num_assistant_tokens=3", "--prompt=abc", "--prompt=de"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run(
        [sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout[out.stdout.index("{\n") :])  # the rows stream first, one line each
    assert (report["new_tokens"], report["prompts"]) == (24 - 3, 2)
    rows = report["results"]
    assert [(r["decoding"], r["num_assistant_tokens"]) for r in rows] == [("greedy", 3), ("sample", 3)]
    for r in rows:
        assert r["model_tok_s"] > 0 and r["assisted_tok_s"] > 0 and 0 <= r["acceptance_rate"] <= 1
        assert r["speedup"] == pytest.approx(r["assisted_tok_s"] / r["model_tok_s"], abs=0.01)
        assert 1 <= r["tokens_per_model_call"] <= r["num_assistant_tokens"] + 1
    assert all(r["same_text_as_model"] for r in rows if r["decoding"] == "greedy")
    # No --assistant: prompt lookup, its rows named by prompt_lookup_num_tokens, no draft timed alone.
    args = [a for a in args if not a.startswith(("--assistant", "--prompt="))] + ["--prompt=abab"]
    out = subprocess.run(
        [sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout[out.stdout.index("{\n") :])
    assert report["assistant"] == "prompt lookup" and report["new_tokens"] == 32 - 4
    rows = report["results"]
    assert [(r["decoding"], r["prompt_lookup_num_tokens"]) for r in rows] == [("greedy", 3), ("sample", 3)]
    assert all("assistant_alone_tok_s" not in r and r["assisted_tok_s"] > 0 for r in rows)
    assert rows[0]["same_text_as_model"]
