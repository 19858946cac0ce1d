"""Shared pytest fixtures."""

import fcntl
import os
import pathlib

import pytest

# Eight fake CPU devices for the data/FSDP/tensor-parallel tests, set before anything imports jax.
# Training then runs in mesh mode ("auto" with several devices) across the end-to-end tests too.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
    """One JAX persistent compilation cache per test run (JAX_COMPILATION_CACHE_DIR unless set), shared by
    the pytest-xdist workers and the scripts tests launch, which compile the same small models over and
    over (test_train.py and five other files: 362 s -> 280 s on 2 cores). It starts empty every run, in
    the run's temporary directory, which pytest deletes after a few runs."""
    import jax

    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax-cache"
    cache.mkdir(exist_ok=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")  # not every eager op
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_collection_modifyitems(config, items):
    """The files with end-to-end tests (marked slow) first, each whole (its module fixtures set up once):
    pytest-xdist shares them out while the short tests fill in at the end, rather than one worker
    running a minute-long test alone while the other has finished."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture
def data_dir() -> pathlib.Path:
    """The shared data directory ($GPTJAX_DATA_DIR); fails, never skips, when it is missing."""
    root = os.environ.get("GPTJAX_DATA_DIR")
    if not root:
        pytest.fail(
            "GPTJAX_DATA_DIR is not set; point it at the shared data "
            "(e.g. GPTJAX_DATA_DIR=../shared/data pytest)"
        )
    path = pathlib.Path(root)
    if not path.is_dir():
        pytest.fail(f"GPTJAX_DATA_DIR={root} is not a directory; point it at the shared data")
    return path


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> pathlib.Path:
    """Points $GPTJAX_CACHE_DIR at a fresh temp dir so tests never touch ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTJAX_CACHE_DIR", str(cache))
    return cache


# ----- Tiny models shared by the model, train-step and checkpoint tests. -----
# Small enough that a forward pass compiles in about a second on 2 CPU cores. A jitted train step
# compiles again for every new TrainState (its apply_fn and tx are static), so tests that only need
# "a tiny state" share one through `tiny_state`, which hands out fresh copies of it.
TINY_VOCAB = 16


@pytest.fixture(scope="session")
def tiny_cfg():
    """A 2-layer, 16-wide GPT over a 16-token vocabulary with an 8-token context."""
    from gptjax.model import GPTConfig

    return GPTConfig(vocab_size=TINY_VOCAB, block_size=8, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture(scope="session")
def tiny_params(tiny_cfg):
    """The tiny model's parameters (seed 0)."""
    import jax
    import jax.numpy as jnp

    from gptjax.model import GPT

    return GPT(tiny_cfg).init(jax.random.key(0), jnp.zeros((1, tiny_cfg.block_size), jnp.int32))["params"]


@pytest.fixture
def strict_ranks():
    """Implicit rank promotion raises (a test module opts in with pytest.mark.usefixtures)."""
    import jax

    with jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture(scope="session")
def tiny_opt():
    """config.opt for the tiny model (frozen): constant lr, so a few steps make progress."""
    import ml_collections

    return ml_collections.FrozenConfigDict(
        dict(
            lr=1e-2,
            min_lr=1e-3,
            warmup_iters=0,
            lr_decay_iters=100,
            decay_lr=False,
            beta1=0.9,
            beta2=0.99,
            weight_decay=0.1,
            grad_clip=1.0,
        )
    )


@pytest.fixture(scope="session")
def tiny_state(tiny_cfg, tiny_opt):
    """A function returning a fresh copy of one initial TrainState of the tiny model (seed 0).

    Copies, because jit_train_step donates (deletes) the state it is given.
    """
    import jax
    import jax.numpy as jnp

    from gptjax.optim import make_optimizer
    from gptjax.train_step import create_train_state

    state = create_train_state(tiny_cfg, make_optimizer(tiny_opt), seed=0)
    # A strongly typed step (TrainState.create's is a weakly typed 0), placed on a device, as a
    # restored checkpoint is: then fresh and restored states share one compiled train step.
    state = jax.device_put(state.replace(step=jnp.int32(0)), jax.devices()[0])
    return lambda: jax.tree_util.tree_map(jnp.copy, state)


@pytest.fixture
def tiny_batch():
    """(x_BT, y_BT) int32 of shape [4, 8]: random tokens, y is x shifted by one."""
    import jax.numpy as jnp
    import numpy as np

    tokens = np.random.default_rng(0).integers(0, TINY_VOCAB, size=(4, 9), dtype=np.int32)
    return jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])


# ----- Models trained once per test run (the SFT policy of the scoring and DPO end-to-end tests). -----
@pytest.fixture(scope="session")
def made_once(tmp_path_factory):
    """A function (name, make) -> directory: the directory `name` of this test run, which make(directory)
    fills once. Under pytest-xdist every worker sees the same one (under the run's base temp directory):
    the first to lock it makes it while the others wait, then use what it made; a make that fails leaves
    it to the next. Without xdist, a fresh temp directory made at once."""

    def once(name: str, make) -> pathlib.Path:
        if not os.environ.get("PYTEST_XDIST_WORKER"):
            path = tmp_path_factory.mktemp(name)
            make(path)
            return path
        path = tmp_path_factory.getbasetemp().parent / name  # the run's, shared by its workers
        path.mkdir(exist_ok=True)
        with open(path / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (path / "done").is_file():
                make(path)
                (path / "done").touch()
        return path

    return once


def train_policy(tmp: pathlib.Path, pairs: list) -> None:
    """In `tmp`: sft.jsonl, each pair's prompt answered in one style or the other at random, and policy/,
    configs/sft.py:tiny trained on it."""
    import numpy as np

    from configs import sft
    from gptjax.train import train_and_evaluate
    from tests.test_dpo import write_lines

    rng = np.random.default_rng(1)
    mixed = [{"prompt": p, "completion": [c, r][rng.integers(2)]} for p, c, r in pairs]
    config = sft.get_config("tiny")
    config.data.source = write_lines(tmp / "sft.jsonl", mixed)
    config.update(eval_interval=200, checkpoint_interval=200)
    config.parallel.mode = "single"  # compiles faster than a mesh of the 8 test devices
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTJAX_CACHE_DIR", str(tmp / "cache"))  # never ~/.cache
        train_and_evaluate(config, tmp / "policy")


@pytest.fixture(scope="session")
def sft_policy(made_once):
    """(pairs, policy workdir, its sft.jsonl): configs/sft.py:tiny trained once per test run on the "two
    answer styles" task (tests/test_dpo.py's style_pairs: 1,000 pairs, no ties, the first-letter answer
    chosen, the last-letter one rejected), each prompt answered in one style or the other at random, so
    the policy writes both. The tests only read it: a fine-tune init_from it writes its own workdir."""
    from tests.test_dpo import style_pairs

    pairs = [pair for pair in style_pairs(1200) if pair[1] != pair[2]][:1000]
    tmp = made_once("sft_policy", lambda path: train_policy(path, pairs))
    return pairs, tmp / "policy", tmp / "sft.jsonl"
