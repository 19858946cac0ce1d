"""Devices and placement: single device, `pmap` data parallelism, or a named mesh with sharded
parameters (data / fsdp / tensor), plus multi-host start-up through `jax.distributed`.

JAX's runtime is the engine: XLA inserts every collective. This file only says where arrays live.

Mesh mode gives each parameter (and its optimizer moments) logical axis names from the table
below, chosen by the parameter's name; `config.parallel.rules` maps logical axes to mesh axes.
A dimension that the mesh axis does not divide stays replicated.
"""

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gptjax.layers import BATCH_AXES  # the batch dimension is split over every data-parallel axis
from gptjax.train_step import eval_steps, train_steps, weights

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axes of each parameter, by the last two names of its path (module, param). Attention's
# fused c_attn output (3*D: q | k | v, heads inside) and the MLP's hidden units are "tensor"-parallel
# dims; "embed" (D) is what FSDP shards.
LOGICAL_AXES: dict[tuple[str, str], tuple[str | None, ...]] = {
    ("wte", "embedding"): ("vocab", "embed"),
    ("wpe", "embedding"): (None, "embed"),
    ("c_attn", "kernel"): ("embed", "qkv"),
    ("c_attn", "bias"): ("qkv",),
    ("c_proj", "kernel"): ("heads", "embed"),
    ("c_proj", "bias"): ("embed",),
    ("fc", "kernel"): ("embed", "mlp"),
    ("fc", "bias"): ("mlp",),
    ("gate", "kernel"): ("embed", "mlp"),
    ("gate", "bias"): ("mlp",),
    ("proj", "kernel"): ("mlp", "embed"),
    ("proj", "bias"): ("embed",),
    ("ln_1", "scale"): ("embed",),
    ("ln_1", "bias"): ("embed",),
    ("ln_2", "scale"): ("embed",),
    ("ln_2", "bias"): ("embed",),
    ("ln_f", "scale"): ("embed",),
    ("ln_f", "bias"): ("embed",),
}
# LoRA adapters (gptjax.layers.LoRA) of each Dense: A [in, rank] shards like the kernel's input, B [rank, out]
# like its output; the rank stays whole.
for (_module, _param), (_in, _out) in [(k, v) for k, v in LOGICAL_AXES.items() if k[1] == "kernel"]:
    LOGICAL_AXES[(_module, "lora_a")] = (_in, None)
    LOGICAL_AXES[(_module, "lora_b")] = (None, _out)
# A mixture of experts (gptjax.moe): the router [D, E] and the experts' kernels stacked [E, in, out], their
# D and F as the MLP's. "expert" (E) is in no default rule: each device holds every expert (sharded as the
# MLP is); a rule such as ("expert", "data") spreads them over a mesh axis (expert parallelism left to GSPMD:
# correct, not tuned; the ragged path sorts the whole batch's tokens).
LOGICAL_AXES.update(
    {
        ("router", "kernel"): ("embed", None),
        ("expert_gate", "kernel"): ("expert", "embed", "mlp"),
        ("expert_fc", "kernel"): ("expert", "embed", "mlp"),
        ("expert_proj", "kernel"): ("expert", "mlp", "embed"),
    }
)
# An untied LM head is a single parameter named lm_head: [V, D].
HEAD_AXES = ("vocab", "embed")

DEFAULT_RULES = (
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("qkv", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
)


def init_distributed(parallel: Any) -> None:
    """Starts jax.distributed when several processes take part; a no-op for one process.

    config.parallel.num_processes: 0 = one process, unless SLURM runs several tasks (then JAX reads
    SLURM's variables); -1 = let jax.distributed.initialize() find everything (TPU pod slices, SLURM,
    Open MPI); N > 1 = explicit, with coordinator_address and process_id from the config or from
    JAX_COORDINATOR_ADDRESS / JAX_PROCESS_ID (JAX_NUM_PROCESSES may replace num_processes).
    """
    if jax.distributed.is_initialized():
        return
    num = parallel.get("num_processes") or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    if num == -1 or (num == 0 and slurm):
        jax.distributed.initialize()
    elif num > 1:
        process_id = parallel.get("process_id")
        jax.distributed.initialize(
            coordinator_address=parallel.get("coordinator_address") or os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=num,
            process_id=process_id if process_id is not None else int(os.environ["JAX_PROCESS_ID"]),
        )


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "mesh" if jax.device_count() > 1 else "single"
    if mode not in ("single", "pmap", "mesh"):
        raise ValueError(f"parallel.mode={mode!r} is unknown; use auto, single, pmap or mesh")
    return mode


def make_mesh(shape: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all devices with axes data, fsdp, tensor; one size may be -1 (the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"parallel.mesh {shape}: at most one axis may be -1")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"parallel.mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {int(np.prod(sizes))} "
            f"devices but there are {len(devices)}; make the sizes multiply to the device count"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_axes(path: tuple, leaf: Any) -> tuple[str | None, ...]:
    """Logical axes of one state leaf (parameter or optimizer moment); () means replicated."""
    names = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
    axes: tuple[str | None, ...] = ()
    if names and names[-1] == "lm_head":
        axes = HEAD_AXES
    elif len(names) >= 2:
        axes = LOGICAL_AXES.get((str(names[-2]), str(names[-1])), ())
    ndim = len(getattr(leaf, "shape", ()))
    if not axes or ndim < len(axes):
        return (None,) * ndim
    return (None,) * (ndim - len(axes)) + axes  # leading stacked-layer axis, if any


def state_shardings(abstract_state: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """A NamedSharding for every leaf of the TrainState, from its logical axes and `rules`."""
    rule = dict(rules)

    def sharding(path, leaf):
        spec = []
        for dim, axis in zip(leaf.shape, logical_axes(path, leaf), strict=True):
            mesh_axis = rule.get(axis)
            fits = mesh_axis is not None and dim % mesh.shape[mesh_axis] == 0
            spec.append(mesh_axis if fits and mesh.shape[mesh_axis] > 1 else None)
        return NamedSharding(mesh, P(*spec))

    return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are [K steps, B, T]: B split over the data-parallel axes."""
    return NamedSharding(mesh, P(None, BATCH_AXES, None))


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the TrainState and batches live for one parallel mode, and the matching step function."""

    mode: str  # single | pmap | mesh
    mesh: Mesh | None = None
    shardings: Any = None  # mesh mode: NamedSharding tree of the TrainState

    def put_state(self, state: Any) -> Any:
        if self.mode == "pmap":  # one copy per local device, stacked on a leading axis
            devices = jax.local_devices()
            sharding = NamedSharding(Mesh(np.asarray(devices), ("devices",)), P("devices"))
            stack = lambda x: jax.numpy.broadcast_to(x, (len(devices), *x.shape))  # noqa: E731
            return jax.device_put(jax.tree_util.tree_map(stack, state), sharding)
        if self.mode == "mesh":
            return jax.device_put(state, self.shardings)
        return state

    def get_state(self, state: Any) -> Any:
        """The state as one logical copy (pmap keeps one per device): what is saved and evaluated."""
        if self.mode == "pmap":
            return jax.tree_util.tree_map(_local_copy, state)
        return state

    def state_to_save(self, state: Any) -> Any:
        """get_state for orbax: pmap's copy on this process's devices as host arrays when there are
        several processes (orbax refuses arrays local to one process; every process holds the same)."""
        state = self.get_state(state)
        return jax.device_get(state) if self.mode == "pmap" and jax.process_count() > 1 else state

    def process_rows(self, global_batch: int) -> slice | np.ndarray:
        """The rows of each global batch that this process loads: in mesh mode those its devices hold
        (all of them where the batch axes do not span the processes, e.g. tensor parallelism over
        processes), else an equal share per process (all of them on one process)."""
        if self.mode != "mesh":
            return process_rows(global_batch)
        indices = batch_sharding(self.mesh).addressable_devices_indices_map((1, global_batch, 1))
        return np.unique(np.concatenate([np.arange(global_batch)[index[1]] for index in indices.values()]))

    def put_batch(self, batch: tuple[np.ndarray, np.ndarray], global_batch: int | None = None) -> Any:
        """Places this process's rows (x_KbT, y_KbT: `process_rows`) of the global batch."""
        if self.mode == "pmap":
            n = jax.local_device_count()
            return jax.tree_util.tree_map(
                lambda a: a.reshape(a.shape[0], n, a.shape[1] // n, a.shape[2]).swapaxes(0, 1), batch
            )
        if self.mode == "mesh":
            sharding = batch_sharding(self.mesh)
            # The global batch size tells rows that several processes load (replicated) from split ones.
            return jax.tree_util.tree_map(
                lambda a: jax.make_array_from_process_local_data(
                    sharding, a, None if global_batch is None else (a.shape[0], global_batch, a.shape[2])
                ),
                batch,
            )
        return batch

    def step_fn(self, grad_accum: int):
        """train_steps compiled for this placement, with the state donated."""
        if self.mode == "pmap":
            fn = functools.partial(train_steps, grad_accum=grad_accum, axis_name="devices")
            return jax.pmap(fn, axis_name="devices", donate_argnums=0)
        fn = functools.partial(train_steps, grad_accum=grad_accum)
        if self.mode == "mesh":
            return jax.jit(
                in_mesh(fn, self.mesh),
                in_shardings=(self.shardings, batch_sharding(self.mesh)),
                out_shardings=(self.shardings, NamedSharding(self.mesh, P())),
                donate_argnums=0,
            )
        return jax.jit(fn, donate_argnums=0)

    def eval_fn(self, grad_accum: int = 1):
        """eval_steps (state, batch from put_batch) -> {"loss", the objective's metrics} [K] of the global
        batch, in `grad_accum` micro-batches; one compiled function per mode, mesh and grad_accum, reused by
        every evaluation. pmap splits the batch over the devices (of every process) and averages their
        means."""
        if self.mode == "pmap":
            return _pmap_eval(grad_accum)
        return _jit_eval(self.mesh if self.mode == "mesh" else None, grad_accum)

    def rows_fn(self, fn):
        """`fn(state, batches) -> [K, B]` (a value per row, e.g. train_step.answer_logps_steps) compiled
        for this placement: it takes the state as placed and this process's rows (put_batch) and gives
        every process the global batch's values, as numpy."""
        if self.mode == "pmap":  # each device's rows, gathered from all of them in the batch's order

            def gathered(state, batches):
                return jax.lax.all_gather(fn(state, batches), "devices", axis=1, tiled=True)

            pmapped = jax.pmap(gathered, axis_name="devices")
            return lambda state, batches: np.asarray(_local_copy(pmapped(state, batches)))
        if self.mode == "mesh":
            jitted = jax.jit(
                in_mesh(fn, self.mesh),
                in_shardings=(self.shardings, batch_sharding(self.mesh)),
                out_shardings=NamedSharding(self.mesh, P()),  # replicated: whole on every device
            )
            return lambda state, batches: np.asarray(jitted(state, batches).addressable_data(0))
        jitted = jax.jit(fn)
        return lambda state, batches: np.asarray(jitted(state, batches))

    def metrics(self, metrics: Any) -> Any:
        return jax.tree_util.tree_map(_local_copy, metrics) if self.mode == "pmap" else metrics


def in_mesh(fn, mesh: Mesh):
    """fn traced with `mesh` as the abstract mesh, so the model's activation constraints
    (gptjax.layers.constrain) apply."""

    @functools.wraps(fn)
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)

    return traced


@functools.cache
def _pmap_eval(grad_accum: int):
    def fn(state, batches):  # each device's means count by its share of the targets trained on (pairs)
        weights_K = weights(batches[1], state.objective)
        total_K = jnp.maximum(jax.lax.psum(weights_K, "devices"), 1.0)
        means = eval_steps(state, batches, grad_accum, axis_name="devices")
        return {k: jax.lax.psum(v_K * weights_K, "devices") / total_K for k, v_K in means.items()}

    pmapped = jax.pmap(fn, axis_name="devices")
    return lambda state, batches: jax.tree_util.tree_map(_local_copy, pmapped(state, batches))


def _local_copy(x: jax.Array) -> jax.Array:
    """The copy on this process's first device of a pmapped value ([devices, ...]). x[0] would be the
    copy on the first device of all: with several processes, another process's."""
    return x.addressable_shards[0].data[0]


@functools.cache
def _jit_eval(mesh: Mesh | None, grad_accum: int):
    fn = functools.partial(eval_steps, grad_accum=grad_accum)
    return jax.jit(fn if mesh is None else in_mesh(fn, mesh))


def make_placement(parallel: Any, abstract_state: Any, global_batch: int) -> Placement:
    mode = resolve_mode(parallel.mode)
    if mode == "single":
        if jax.process_count() > 1:
            raise ValueError("parallel.mode='single' cannot span processes; use mesh or pmap")
        return Placement("single")
    if mode == "pmap":
        n = jax.device_count()
        if global_batch % n:
            raise ValueError(f"batch_size={global_batch} must be divisible by the {n} devices in pmap mode")
        return Placement("pmap")
    mesh = make_mesh(dict(parallel.mesh))
    n = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    if global_batch % n:
        raise ValueError(
            f"batch_size={global_batch} must be divisible by the {n} batch shards ({' x '.join(BATCH_AXES)} "
            f"of parallel.mesh) in mesh mode"
        )
    rules = tuple((k, v) for k, v in parallel.get("rules", DEFAULT_RULES))
    return Placement("mesh", mesh, state_shardings(abstract_state, mesh, rules))


def process_rows(global_batch: int) -> slice:
    """An equal share of each global batch for each process (all of it on one process); in mesh mode
    Placement.process_rows follows the batch sharding instead."""
    per = global_batch // jax.process_count()
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)
