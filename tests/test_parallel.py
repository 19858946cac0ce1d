"""Data, FSDP and tensor parallelism on 8 fake CPU devices (see conftest), and two processes
training together through jax.distributed."""

import dataclasses
import math
import os
import pathlib
import re
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import tiny
from gptjax import parallel
from gptjax.lm_head import IGNORE
from gptjax.metric_writer import read_metrics
from gptjax.train import abstract_state, load_params, train_and_evaluate
from gptjax.train_step import eval_steps, train_step, train_steps

REPO = pathlib.Path(__file__).resolve().parents[1]
N_DEVICES = 8


def close(a, b, atol=1e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


@pytest.fixture(scope="module")
def setup():
    """A tiny model whose widths divide by 8, its initial state, and 3 steps of global batches."""
    assert jax.device_count() == N_DEVICES, "conftest sets 8 fake CPU devices"
    config = tiny.get_config()
    config.model.update(n_embd=64, n_head=8, block_size=16, dropout=0.0)  # pmap draws per-device masks
    cfg = __import__("gptjax.train", fromlist=["model_config"]).model_config(config, vocab_size=64)
    init, abstract = abstract_state(cfg, config.opt, seed=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=(3, 16, 17), dtype=np.int32)  # K=3 steps of B=16
    batches = (tokens[..., :-1], tokens[..., 1:])
    single = jax.jit(train_steps)(jax.jit(init)(), batches)[0]
    return config, init, abstract, batches, single


def run(placement, init, batches):
    state = placement.put_state(jax.jit(init)())
    state, metrics = placement.step_fn(grad_accum=1)(state, placement.put_batch(batches))
    return placement.get_state(state), placement.metrics(metrics)


def test_pmap_equals_single_device(setup):
    config, init, abstract, batches, single = setup
    config = ml_collections.ConfigDict(config.to_dict())
    config.parallel.mode = "pmap"
    state, metrics = run(parallel.make_placement(config.parallel, abstract, 16), init, batches)
    assert metrics["loss"].shape == (3,)
    close(state.params, single.params)
    close(state.opt_state, single.opt_state)


@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=8, tensor=1)])
def test_mesh_equals_single_device(setup, mesh):
    config, init, abstract, batches, single = setup
    config = ml_collections.ConfigDict(config.to_dict())
    config.parallel.mode = "mesh"
    config.parallel.mesh = mesh
    placement = parallel.make_placement(config.parallel, abstract, 16)
    state, _ = run(placement, init, batches)
    close(state.params, single.params)
    # Parameters sharded by the default rules: the width D ("embed") over fsdp; vocab rows, the fused
    # q|k|v columns, the heads and the MLP's hidden units over tensor (where that axis has devices).
    f, t = "fsdp", "tensor" if mesh["tensor"] > 1 else None
    want = {
        "wte/embedding": P(t, f),  # [V, D]
        "wpe/embedding": P(None, f),  # [T, D]
        "h_0/attn/c_attn/kernel": P(f, t),  # [D, 3D]
        "h_1/attn/c_proj/kernel": P(t, f),  # [D (heads), D]
        "h_1/mlp/fc/kernel": P(f, t),  # [D, 4D]
        "h_1/mlp/proj/kernel": P(t, f),  # [4D, D]
        "h_0/ln_1/scale": P(f),  # [D]
        "ln_f/scale": P(f),  # [D]
    }
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    got = {"/".join(k.key for k in path): leaf.sharding.spec for path, leaf in flat}
    assert {name: got[name] for name in want} == want


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_muon_under_pmap_and_mesh_equals_single_device(setup, mode):
    """opt.name="muon": 3 steps under pmap and a data x fsdp x tensor mesh equal one device's, and in the
    mesh each Muon momentum is sharded as the kernel it follows."""
    config, _, _, batches, _ = setup
    config = ml_collections.ConfigDict(config.to_dict())
    config.opt.name = "muon"
    cfg = __import__("gptjax.train", fromlist=["model_config"]).model_config(config, vocab_size=64)
    init, abstract = abstract_state(cfg, config.opt, seed=0)
    single = jax.jit(train_steps)(jax.jit(init)(), batches)[0]
    config.parallel.update(mode=mode, mesh=dict(data=2, fsdp=2, tensor=2))
    state, _ = run(parallel.make_placement(config.parallel, abstract, 16), init, batches)
    close(state.params, single.params)
    close(state.opt_state, single.opt_state)
    if mode == "pmap":
        return
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    param_specs = {"/".join(k.key for k in path): leaf.sharding.spec for path, leaf in flat}
    momentum_specs = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        if keys[:1] == ["muon"] and "mu" in [getattr(k, "name", None) for k in path]:
            momentum_specs["/".join(keys[1:])] = leaf.sharding.spec
    assert sorted(momentum_specs) == sorted(
        f"h_{i}/{m}/kernel" for i in range(2) for m in ("attn/c_attn", "attn/c_proj", "mlp/fc", "mlp/proj")
    )
    assert momentum_specs == {name: param_specs[name] for name in momentum_specs}
    assert momentum_specs["h_0/attn/c_attn/kernel"] == P("fsdp", "tensor")


def test_fused_loss_under_mesh_equals_single_device(setup):
    """model.loss_chunk (the chunked LM head + loss with its own gradients) under data/fsdp/tensor
    sharding trains as the plain loss does on one device."""
    config, _, _, batches, single = setup
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.loss_chunk = 5  # 16 positions: chunks of 5, the last one padded
    config.parallel.update(mode="mesh", mesh=dict(data=2, fsdp=2, tensor=2))
    cfg = __import__("gptjax.train", fromlist=["model_config"]).model_config(config, vocab_size=64)
    init, abstract = abstract_state(cfg, config.opt, seed=0)
    state, _ = run(parallel.make_placement(config.parallel, abstract, 16), init, batches)
    close(state.params, single.params)


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_packed_fine_tuning_batches_weigh_devices_as_one_device(setup, mode):
    """Fine-tuning batches whose devices train on very different numbers of targets (the first device's
    rows on none, the next on one, ...), their rows packed with several examples (segment ids): pmap and
    mesh steps and evaluations still give the mean over the global batch's targets, as one device does."""
    config, init, abstract, (x_KBT, y_KBT), _ = setup
    keep_KBT = (
        np.arange(16)[None, :, None] * 16 + np.arange(16)[None, None, :]
        < np.arange(3)[:, None, None] * 40 + 30
    )
    segments_KBT = np.cumsum(np.random.default_rng(1).random(x_KBT.shape) < 0.3, axis=-1, dtype=np.int32)
    batches = (x_KBT, np.where(keep_KBT, y_KBT, IGNORE).astype(np.int32), segments_KBT)
    single, single_metrics = jax.jit(train_steps)(jax.jit(init)(), batches)
    want_eval = jax.jit(eval_steps)(single, batches)
    config = ml_collections.ConfigDict(config.to_dict())
    config.parallel.update(mode=mode, mesh=dict(data=2, fsdp=2, tensor=2))
    placement = parallel.make_placement(config.parallel, abstract, 16)
    state, metrics = run(placement, init, batches)
    close(state.params, single.params)
    close(metrics["loss"], single_metrics["loss"])
    got_eval = placement.eval_fn(1)(placement.put_state(single), placement.put_batch(batches))
    close(got_eval, want_eval)


def test_fsdp8_holds_an_eighth_of_the_parameters_per_device(setup):
    config, init, abstract, _, _ = setup
    config = ml_collections.ConfigDict(config.to_dict())
    config.parallel.update(mode="mesh", mesh=dict(data=1, fsdp=8, tensor=1))
    placement = parallel.make_placement(config.parallel, abstract, 16)
    state = jax.jit(init, out_shardings=placement.shardings)()
    total = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    per_device = {d: 0 for d in jax.devices()}
    for x in jax.tree_util.tree_leaves(state.params):
        for shard in x.addressable_shards:
            per_device[shard.device] += shard.data.size
    assert max(per_device.values()) == total // 8, (total, per_device)
    # Adam's moments are sharded the same way.
    mu = state.opt_state[1][0].mu
    assert mu["wte"]["embedding"].sharding.spec == state.params["wte"]["embedding"].sharding.spec


def collective_bytes(hlo_text: str) -> int:
    """Bytes of the results of every all-gather / all-reduce / reduce-scatter / all-to-all in compiled HLO."""
    size = {"f32": 4, "bf16": 2, "s32": 4, "u32": 4, "pred": 1}
    total = 0
    kinds = r"all-gather|all-reduce|reduce-scatter|all-to-all"
    for shapes in re.findall(rf"= (\(?[^=]*?\)?) (?:{kinds})(?:-start)?\(", hlo_text):
        for dtype, dims in re.findall(r"(f32|bf16|s32|u32|pred)\[([\d,]*)\]", shapes):
            total += size[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


@pytest.mark.parametrize("mesh", [dict(data=1, fsdp=8, tensor=1), dict(data=2, fsdp=2, tensor=2)])
def test_mesh_step_communicates_parameters_not_logits(mesh, capfd):
    """Under FSDP a step gathers the parameters and reduces their gradients; the model's activation
    constraints keep XLA from all-reducing the [B, T, V] logits instead (16x the parameter bytes here),
    and with tensor parallelism the embedding table is gathered for its lookup (layers.gather_table), which
    XLA otherwise partitions by replicating activations (2.9x the parameter bytes on (2, 2, 2))."""
    config = tiny.get_config()
    config.model.update(n_layer=1, n_embd=64, n_head=8, block_size=64, dropout=0.0)
    config.grad_accum = 1
    cfg = __import__("gptjax.train", fromlist=["model_config"]).model_config(config, vocab_size=4096)
    _, abstract = abstract_state(cfg, config.opt, seed=0)
    config.parallel.update(mode="mesh", mesh=mesh)
    placement = parallel.make_placement(config.parallel, abstract, 16)
    shaped = lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)  # noqa: E731
    state = jax.tree_util.tree_map(shaped, abstract, placement.shardings)
    tokens = jax.ShapeDtypeStruct((1, 16, 64), np.int32, sharding=parallel.batch_sharding(placement.mesh))
    hlo = placement.step_fn(grad_accum=1).lower(state, (tokens, tokens)).compile().as_text()
    param_bytes = sum(x.size * 4 for x in jax.tree_util.tree_leaves(abstract.params))
    logits_bytes = 16 * 64 * 4096 * 4
    assert logits_bytes > 10 * param_bytes  # the test can tell the two apart
    assert 0 < collective_bytes(hlo) < 2.5 * param_bytes, (collective_bytes(hlo), param_bytes)
    assert "Involuntary full rematerialization" not in capfd.readouterr().err


def test_scan_of_steps_equals_a_loop_of_steps(setup):
    _, init, _, batches, single = setup
    state = jax.jit(init)()
    step = jax.jit(train_step)
    for k in range(3):
        state, _ = step(state, (batches[0][k], batches[1][k]))
    close(state.params, single.params, atol=1e-6)


def test_mesh_shape_errors():
    with pytest.raises(ValueError, match="needs 12 devices but there are 8"):
        parallel.make_mesh(dict(data=3, fsdp=4, tensor=1))
    assert parallel.make_mesh(dict(data=-1, fsdp=2, tensor=2)).shape["data"] == 2
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        parallel.make_mesh(dict(data=-1, fsdp=-1, tensor=2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_in_two_processes(workdir, overrides: dict, *args: str) -> str:
    """scripts/train.py in 2 processes x 2 CPU devices (jax.distributed on 127.0.0.1); process 0's output."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_NUM_PROCESSES": "2",
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}",
    }
    cmd = [
        sys.executable,
        "scripts/train.py",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        *[f"--config.{k}={v}" for k, v in overrides.items()],
        *args,
    ]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**env, "JAX_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs[0]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, data_dir, tmp_cache):
    """2 processes x 2 devices == 1 process x 8 devices: with the batch split over the processes (data
    parallel), and with it replicated on both (tensor parallel over the 4 devices of both processes)."""
    overrides = dict(max_iters=20, eval_interval=10, checkpoint_interval=10, log_interval=5)
    config = tiny.get_config()
    config.update(overrides)
    train_and_evaluate(config, tmp_path / "one")
    one = load_params(tmp_path / "one")[0]

    out = _train_in_two_processes(tmp_path / "data", overrides)
    assert "devices: 4 x cpu, mode mesh" in out
    # The checkpoint the two processes saved together restores in this single process.
    # 4 vs 8 devices sum gradients in another order, and Adam's first steps magnify rounding (~1e-5);
    # a process training on the wrong rows would be off by ~lr = 3e-3 per step.
    close(load_params(tmp_path / "data")[0], one, atol=5e-5)

    # Each process loads every row (its devices hold all of them), not half of the batch.
    _train_in_two_processes(
        tmp_path / "tensor", overrides, "--config.parallel.mesh.data=1", "--config.parallel.mesh.tensor=-1"
    )
    close(load_params(tmp_path / "tensor")[0], one, atol=5e-5)

    # pmap over both processes: its checkpoints save (host copies), and evaluations average the rows of
    # both processes, as one process evaluates the whole batch.
    _train_in_two_processes(tmp_path / "pmap", overrides, "--config.parallel.mode=pmap")
    close(load_params(tmp_path / "pmap")[0], one, atol=5e-5)
    val = lambda w: [(r["step"], r["val_loss"]) for r in read_metrics(w) if "val_loss" in r]  # noqa: E731
    assert [s for s, _ in val(tmp_path / "pmap")] == [s for s, _ in val(tmp_path / "one")] == [0, 10, 20]
    # (one process's rows alone were ~1e-3 off)
    np.testing.assert_allclose(
        [v for _, v in val(tmp_path / "pmap")], [v for _, v in val(tmp_path / "one")], rtol=1e-4
    )

    # Fine-tuning from a workdir, on devices of both processes.
    _train_in_two_processes(tmp_path / "ft", dict(overrides, max_iters=0, init_from=tmp_path / "one"))
    close(load_params(tmp_path / "ft")[0], one, atol=0)


def test_parameter_shardings_follow_the_logical_axes_and_the_rules():
    """c_attn and fc split their outputs over tensor and their inputs over fsdp, c_proj and proj the
    reverse (Megatron's pairs); the vocabulary rows of wte and of an untied lm_head go over tensor, wpe's
    positions nowhere; scanned layers keep their leading L axis replicated; a dimension its mesh axis
    does not divide (63 rows) stays replicated; other rules map the same logical axes elsewhere."""
    from gptjax.model import GPT, GPTConfig

    cfg = GPTConfig(
        vocab_size=63, block_size=6, n_layer=2, n_head=2, n_embd=16, tie_embeddings=False, scan_layers=True
    )
    init = lambda cfg: GPT(cfg).init(jax.random.key(0), np.zeros((1, 6), np.int32))["params"]  # noqa: E731
    shapes = jax.eval_shape(lambda: init(cfg))
    mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
    spec = lambda shardings: jax.tree_util.tree_map(lambda s: tuple(s.spec), shardings)  # noqa: E731
    got = spec(parallel.state_shardings(shapes, mesh))
    h = got["h"]
    assert h["attn"]["c_attn"]["kernel"] == (None, "fsdp", "tensor")
    assert h["attn"]["c_attn"]["bias"] == (None, "tensor")
    assert h["attn"]["c_proj"]["kernel"] == (None, "tensor", "fsdp")
    assert h["mlp"]["fc"]["kernel"] == (None, "fsdp", "tensor")
    assert h["mlp"]["proj"]["kernel"] == (None, "tensor", "fsdp")
    assert h["ln_1"]["scale"] == (None, "fsdp")
    assert got["wpe"]["embedding"] == (None, "fsdp")
    assert got["wte"]["embedding"] == got["lm_head"] == (None, "fsdp")  # 63 rows: not over tensor
    bigger = jax.eval_shape(lambda: init(dataclasses.replace(cfg, vocab_multiple=2)))  # 64 rows
    assert spec(parallel.state_shardings(bigger, mesh))["lm_head"] == ("tensor", "fsdp")
    rules = (("embed", None), ("mlp", "fsdp"))
    other = spec(parallel.state_shardings(shapes, mesh, rules))
    assert other["h"]["mlp"]["fc"]["kernel"] == (None, None, "fsdp")
    assert other["h"]["attn"]["c_attn"]["kernel"] == (None, None, None)


def test_each_process_loads_an_equal_share_of_the_batch(monkeypatch):
    """Outside mesh mode, process i of n loads rows [i * B/n, (i + 1) * B/n) of each global batch."""
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    rows = []
    for i in range(4):
        monkeypatch.setattr(jax, "process_index", lambda i=i: i)
        rows.append(np.arange(32)[parallel.process_rows(32)])
        assert parallel.Placement("single").process_rows(32) == parallel.process_rows(32)
    np.testing.assert_array_equal(np.concatenate(rows), np.arange(32))
    assert all(len(r) == 8 for r in rows)
