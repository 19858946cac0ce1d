"""Shared pytest fixtures."""

import os
import pathlib

import pytest

# Eight fake CPU devices for the data/FSDP/tensor-parallel tests, set before anything imports jax.
# Training then runs in mesh mode ("auto" with several devices) across the end-to-end tests too.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()


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
