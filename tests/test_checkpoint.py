"""Tests for gptjax.checkpoint: exact round trips, retention, no overwrites, killed saves, and the
message for a workdir without checkpoints."""

import dataclasses
import functools
import json
import logging
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gptjax.checkpoint import Checkpointer, StepVanished
from gptjax.optim import make_optimizer
from gptjax.train import abstract_state
from gptjax.train_step import create_train_state, jit_train_step

jax.config.update("jax_numpy_rank_promotion", "raise")

TOKENIZER = {"kind": "char", "chars": "\n !abc"}


def assert_trees_equal(a, b):
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)


def save(workdir, step, state, **kwargs):
    ckpt = Checkpointer(workdir, **kwargs)
    ckpt.save(step, state, config={"seed": step}, tokenizer=TOKENIZER, meta={"best_val_loss": 1.5})
    ckpt.close()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_round_trip_is_exact_and_training_continues_identically(
    tmp_path, tiny_state, tiny_cfg, tiny_opt, tiny_batch, optimizer
):
    """AdamW's state, or Muon's (optax.partition: Muon's momentum for the block kernels, AdamW's moments
    for the rest), comes back exactly, and so does the next step."""
    if optimizer == "muon":
        tiny_opt = ml_collections.FrozenConfigDict(
            {**tiny_opt, "name": "muon", "muon_lr": 0.05, "muon_momentum": 0.95}
        )
        tiny_state = functools.partial(create_train_state, tiny_cfg, make_optimizer(tiny_opt), 0)
    state = tiny_state()
    for _ in range(2):
        state, _ = jit_train_step(state, tiny_batch)
    config = {"model": dataclasses.asdict(tiny_cfg), "opt": tiny_opt.to_dict(), "seed": 0}
    ckpt = Checkpointer(tmp_path)
    ckpt.save(2, state, config=config, tokenizer=TOKENIZER, meta={"best_val_loss": 2.25})
    ckpt.close()

    abstract = jax.eval_shape(tiny_state)
    # gptjax.train restores into abstract_state(...): it must describe the same arrays.
    _, train_abstract = abstract_state(tiny_cfg, tiny_opt, seed=0)
    describe = lambda tree: [(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(tree)]
    assert describe(train_abstract) == describe(abstract)

    reader = Checkpointer(tmp_path, read_only=True)
    assert reader.latest_step() == 2
    restored = reader.restore_state(abstract)
    assert_trees_equal(restored.params, state.params)
    assert_trees_equal(restored.opt_state, state.opt_state)
    assert int(restored.step) == int(state.step) == 2
    np.testing.assert_array_equal(restored.rng, state.rng)
    saved = reader.restore_json()
    reader.close()
    assert saved["config"] == json.loads(json.dumps(config))  # as JSON keeps it: tuples come back lists
    assert saved["tokenizer"] == TOKENIZER
    assert saved["meta"] == {"best_val_loss": 2.25, "step": 2}

    # One more step from each gives the same parameters (the Adam moments and count came back).
    after, _ = jit_train_step(state, tiny_batch)
    after_restored, _ = jit_train_step(restored, tiny_batch)
    assert_trees_equal(after_restored.params, after.params)
    assert int(after_restored.step) == 3


def test_max_to_keep_keeps_the_newest(tmp_path, tiny_state):
    state = tiny_state()
    for step in (1, 2, 3):
        save(tmp_path, step, state.replace(step=jnp.int32(step)), max_to_keep=2)
    reader = Checkpointer(tmp_path, read_only=True)
    assert reader.manager.all_steps() == [2, 3]
    reader.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "3"]


def test_keeping_no_checkpoint_is_refused(tmp_path):
    """max_to_keep=0 made orbax delete every checkpoint as it was written, the final one too."""
    with pytest.raises(ValueError, match="keep_checkpoints=0 would delete every checkpoint.*>= 1"):
        Checkpointer(tmp_path, max_to_keep=0)


def test_saving_an_existing_step_keeps_the_first(tmp_path, tiny_state):
    first = tiny_state().replace(step=jnp.int32(1))
    second = first.replace(params=jax.tree_util.tree_map(lambda p: p + 1.0, first.params))
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, first, config={"n": 1}, tokenizer=TOKENIZER, meta={})
    ckpt.save(1, second, config={"n": 2}, tokenizer=TOKENIZER, meta={})
    ckpt.close()
    reader = Checkpointer(tmp_path, read_only=True)
    restored = reader.restore_state(jax.eval_shape(lambda: first))
    assert_trees_equal(restored.params, first.params)
    assert reader.restore_json()["config"] == {"n": 1}
    reader.close()


def test_a_killed_save_is_ignored(tmp_path, tiny_state):
    state = tiny_state()
    for step in (1, 2):
        save(tmp_path, step, state.replace(step=jnp.int32(step)))
    # What a save killed mid-write leaves: orbax's temporary directory, never renamed to "7".
    leftover = tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1700000000"
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "partial").write_bytes(b"\0" * 10)

    reader = Checkpointer(tmp_path, read_only=True)
    assert reader.latest_step() == 2
    assert reader.manager.all_steps() == [1, 2]
    reader.close()
    writer = Checkpointer(tmp_path)
    assert writer.latest_step() == 2
    # The run resumes and saves step 7 for real.
    writer.save(7, state.replace(step=jnp.int32(7)), config={}, tokenizer=TOKENIZER, meta={})
    assert writer.latest_step() == 7
    writer.close()
    assert not leftover.exists()


def test_read_only_without_checkpoints_explains(tmp_path):
    workdir = tmp_path / "never_trained"
    with pytest.raises(FileNotFoundError) as err:
        Checkpointer(workdir, read_only=True)
    message = str(err.value)
    assert str(workdir) in message and "train" in message
    # A checkpoints directory that exists but holds no step fails on restore, not silently.
    (workdir / "checkpoints").mkdir(parents=True)
    reader = Checkpointer(workdir, read_only=True)
    assert reader.latest_step() is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        reader.restore_json()
    reader.close()


def test_unreadable_steps_give_one_line_each(tmp_path, tiny_state, tiny_cfg, tiny_opt):
    """A damaged step names itself and the fix; a step of another model says so; a step deleted while
    being read (a run training in the workdir keeps only its latest) is StepVanished, which readers retry."""
    state = tiny_state()
    for step in (1, 2):
        save(tmp_path, step, state.replace(step=jnp.int32(step)))
    abstract = jax.eval_shape(lambda: state)
    other = abstract_state(dataclasses.replace(tiny_cfg, n_layer=tiny_cfg.n_layer + 1), tiny_opt, 0)[1]
    reader = Checkpointer(tmp_path, read_only=True)
    with pytest.raises(ValueError, match=r"checkpoints/2 does not fit this config's model/optimizer") as e:
        reader.restore_state(other)
    assert "\n" not in str(e.value)

    (tmp_path / "checkpoints" / "2" / "config" / "metadata").write_text('{"seed": ')  # cut off
    with pytest.raises(ValueError, match=r"checkpoints/2 cannot be read \(.*\); it is damaged: delete") as e:
        reader.restore_json(2)
    assert "\n" not in str(e.value)
    for f in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
        if f.is_file() and "d" in f.parent.name:  # the array data files
            f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(ValueError, match=r"checkpoints/2 cannot be read .* it is damaged"):
        reader.restore_state(abstract, 2)
    shutil.rmtree(tmp_path / "checkpoints" / "2")
    with pytest.raises(StepVanished, match=r"checkpoints/2 was deleted while being read"):
        reader.restore_state(abstract, 2)
    reader.close()


def test_a_step_holding_another_steps_state_is_refused(tmp_path, tiny_state):
    state = tiny_state()
    save(tmp_path, 7, state.replace(step=jnp.int32(5)))  # e.g. a directory renamed by hand
    reader = Checkpointer(tmp_path, read_only=True)
    with pytest.raises(RuntimeError, match=r"checkpoints/7 holds step 5"):
        reader.restore_state(jax.eval_shape(lambda: state))
    reader.close()


def test_a_step_with_unreadable_metadata_is_damaged_not_another_model(tmp_path, tiny_state, monkeypatch):
    """When the saved state's own description cannot be read, the step is reported damaged: nothing says
    it belongs to another model. (This orbax returns no metadata for a cut-off _METADATA; others raise,
    as faked here.)"""
    import orbax.checkpoint as ocp

    state = tiny_state()
    save(tmp_path, 1, state.replace(step=jnp.int32(1)))
    (tmp_path / "checkpoints" / "1" / "state" / "_METADATA").write_text('{"tree_metadata": ')  # cut off
    reader = Checkpointer(tmp_path, read_only=True)
    damaged = r"checkpoints/1 cannot be read \(.*\); it is damaged: delete"
    with pytest.raises(ValueError, match=damaged):
        reader.restore_state(jax.eval_shape(lambda: state))

    def unreadable(self, directory):
        raise OSError(f"cannot read the metadata in {directory}")

    monkeypatch.setattr(ocp.StandardCheckpointer, "metadata", unreadable)
    with pytest.raises(ValueError, match=damaged):
        reader.restore_state(jax.eval_shape(lambda: state))
    reader.close()


def test_readers_print_no_read_only_note(tmp_path, tiny_state, caplog):
    """Opening a checkpoint read-only (every gptjax.generate call) logs nothing: orbax's note is dropped."""
    save(tmp_path, 1, tiny_state())
    with caplog.at_level(logging.DEBUG):
        Checkpointer(tmp_path, read_only=True).close()
        logging.getLogger("absl").warning("Given directory is read only=%s", "x")  # as orbax logs it
        logging.getLogger("absl").warning("another note")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == ["another note"]
