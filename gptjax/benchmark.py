"""Training throughput and model FLOPs utilisation (MFU) of a config, on whatever devices JAX sees.

FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's estimate_mfu):
  6 * N               forward + backward of every weight matmul, N = parameters without position embeddings
                      (a mixture of experts: a token's K of the E experts, and the router)
  + 12 * L * T * n*H  attention scores and weighted sums (QK^T and AV), forward + backward, T = context
                      (a sliding window W < T: W, the keys a query can see), n*H = query heads x head dim
                      (= D unless n_head_dim sets H apart)
MFU = achieved model FLOP/s / (devices x peak FLOP/s of one device at the compute dtype).
"""

import ast
import resource
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from gptjax import parallel, profiling
from gptjax.model import GPTConfig, count_params

# Dense peak FLOP/s per device from the vendors' spec sheets: (bf16, fp32 as the chip runs f32 matmuls).
PEAK_FLOPS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 494e12),  # SXM; fp32 matmuls run as TF32
    "H100": (989e12, 494e12),  # SXM
    "A100": (312e12, 156e12),  # TF32
    "TPU v6": (918e12, 918e12),  # v6e (Trillium); f32 matmuls run as bf16 passes
    "TPU v5p": (459e12, 459e12),
    "TPU v5 lite": (197e12, 197e12),  # v5e
    "TPU v5e": (197e12, 197e12),
    "TPU v4": (275e12, 275e12),
}


def flops_per_token(cfg: GPTConfig, n_params: int) -> float:
    """Training FLOPs per token: 6 per parameter that multiplies (forward 2, backward 4) plus attention's
    12·L·T·n·H (nanoGPT, PaLM appendix B: 12·L·T·D, where n·H = D). Lookup tables do no matmul: the
    position table, and the token table when the LM head is a matrix of its own (tied, the table is the head
    and counts once) or a reward model's score vector replaces the head. A mixture of experts multiplies by
    its router and a token's n_experts_per_token experts only (3 D x F SwiGLU matrices each): the other
    experts' parameters do no work for it."""
    n = n_params - (cfg.block_size * cfg.n_embd if cfg.position == "learned" else 0)
    if cfg.n_experts:
        n -= cfg.n_layer * (cfg.n_experts - cfg.n_experts_per_token) * 3 * cfg.n_embd * cfg.mlp_width
    if not cfg.tie_embeddings or cfg.score_head:  # a reward model's table is a lookup only
        n -= cfg.padded_vocab * cfg.n_embd
    keys = min(cfg.block_size, cfg.sliding_window or cfg.block_size)  # that a query may attend to
    return 6 * n + 12 * cfg.n_layer * keys * cfg.n_head * cfg.head_dim


def peak_flops(device: jax.Device, dtype: str) -> float | None:
    """Per-device peak for `dtype`, None where unknown (CPUs)."""
    kind = device.device_kind
    for name, (bf16, fp32) in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return bf16 if dtype in ("bfloat16", "float16") else fp32  # fp16 runs at the bf16 rate
    return None


def mfu(cfg: GPTConfig, n_params: int, tokens_per_sec: float) -> float | None:
    """Model FLOPs utilisation of all devices at `tokens_per_sec`; None where the peak is unknown (CPU)."""
    peak = peak_flops(jax.devices()[0], cfg.dtype)
    if not peak:
        return None
    return flops_per_token(cfg, n_params) * tokens_per_sec / (peak * jax.device_count())


def peak_memory_bytes() -> int:
    """Peak device memory (GPU/TPU allocator), or the process's peak RSS on CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def with_overrides(config: Any, overrides: str) -> Any:
    """A copy of `config` with "a.b=1,c=x" applied (values as Python literals, else strings), as
    --config.a.b=1 --config.c=x would; an unknown field is an error."""
    config = config.copy_and_resolve_references()
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        path, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not field=value, e.g. model.loss_chunk=128")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *parents, name = path.strip().split(".")
        node = config
        for parent in parents:
            node = node.get(parent) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise ValueError(
                f"override {item!r}: the config has no field {path.strip()} (see the config file)"
            )
        try:
            node[name] = value
        except TypeError as e:
            raise ValueError(f"override {item!r}: {e}") from None
    return config


def benchmark_train(
    config: Any, vocab_size: int, *, steps: int = 10, warmup: int = 2, profile_dir: str | None = None
) -> dict:
    """Times `steps` jitted calls of config.steps_per_call train steps on random tokens.

    With `profile_dir`, two more calls after the timed ones are traced there (jax.profiler, untimed) and
    the result lists the busiest op kinds of the trace (gptjax.profiling.top_ops).
    """
    from gptjax.train import abstract_state, model_config  # the benchmark builds exactly what training builds

    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps} and warmup={warmup}: time at least 1 call after 0 or more warm-ups")
    cfg = model_config(config, vocab_size)
    init, abstract = abstract_state(cfg, config.opt, config.seed)
    placement = parallel.make_placement(config.parallel, abstract, config.batch_size)
    K, B, T = config.steps_per_call, config.batch_size, cfg.block_size
    rng = np.random.default_rng(0)
    rows = placement.process_rows(B)
    xy = rng.integers(0, vocab_size, size=(K, B, T + 1), dtype=np.int32)[:, rows]
    batch = placement.put_batch((xy[..., :-1], xy[..., 1:]), B)

    if placement.mode == "mesh":
        state = jax.jit(init, out_shardings=placement.shardings)()
    else:
        state = placement.put_state(jax.jit(init)())
    step_fn = placement.step_fn(config.grad_accum)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile() if hasattr(step_fn, "lower") else step_fn
    compile_s = time.perf_counter() - t0
    # XLA's buffer assignment of the step (arguments, outputs and temporaries); XLA's CPU backend reports
    # no temporaries, so none on CPU.
    memory = None
    if hasattr(compiled, "memory_analysis") and jax.devices()[0].platform != "cpu":
        memory = compiled.memory_analysis()
    run = lambda s: compiled(s, batch)  # noqa: E731
    for _ in range(warmup):
        state, metrics = run(state)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = run(state)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t0) / K)
    step_s = float(np.median(times))
    hot_ops = None
    if profile_dir:
        with profiling.trace(profile_dir):
            for i in range(2):
                with profiling.step_annotation(i):
                    state, metrics = run(state)
                    jax.block_until_ready(metrics)
        hot_ops = profiling.top_ops(profile_dir)
    n_params = count_params(abstract.params)
    tokens_per_step = B * T
    fpt = flops_per_token(cfg, n_params)
    achieved = fpt * tokens_per_step / step_s
    utilisation = mfu(cfg, n_params, tokens_per_step / step_s)
    return {
        "mode": "train",
        "device": jax.devices()[0].device_kind,
        "n_devices": jax.device_count(),
        "parallel": placement.mode,
        "params": n_params,
        "dtype": cfg.dtype,
        "attention": cfg.attention,
        "remat": cfg.remat,
        "scan_layers": cfg.scan_layers,
        "loss_chunk": cfg.loss_chunk,
        "batch_size": B,
        "grad_accum": config.grad_accum,
        "block_size": T,
        "steps_per_call": K,
        "compile_s": round(compile_s, 2),
        "step_ms": round(step_s * 1e3, 3),
        "step_ms_min": round(min(times) * 1e3, 3),
        "tokens_per_sec": round(tokens_per_step / step_s, 1),
        "model_flops_per_token": fpt,
        "achieved_tflops": round(achieved / 1e12, 3),
        "mfu": round(utilisation, 4) if utilisation is not None else None,
        "peak_memory_gb": round(peak_memory_bytes() / 2**30, 3),  # the process's peak so far
        # what the compiled step itself needs: comparable between variants (GPU/TPU)
        "step_memory_gb": round(memory.peak_memory_in_bytes / 2**30, 3) if memory else None,
        "loss": float(np.asarray(placement.metrics(metrics)["loss"])[-1]),
        **({"profile_dir": str(profile_dir), "top_ops": hot_ops} if profile_dir else {}),
    }
