"""Orbax checkpoints holding everything needed to resume or to sample: the TrainState (params,
optimizer state, step, dropout key), the config, the tokenizer and a little metadata (best val loss).

The data position needs no saving: batches are a pure function of (seed, step). Orbax writes each
step into a temporary directory and renames it when complete, so a killed run never leaves a
half-written checkpoint; a step that exists is never overwritten.
"""

import contextlib
import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "config", "tokenizer", "meta")


class _NoReadOnlyNote(logging.Filter):
    """Drops orbax's warning that a manager opened read-only is read-only: gptjax asked for it (readers
    such as gptjax.generate from a notebook would print it on every call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_NoReadOnlyNote())


class StepVanished(FileNotFoundError):
    """The step was deleted while being read: a run training in the workdir keeps only its latest few."""


def _fits(step_dir: pathlib.Path, abstract_state: Any) -> bool:
    """Whether a saved step's state has the parameter names and shapes of `abstract_state`."""
    try:
        saved = ocp.StandardCheckpointer().metadata(step_dir / "state").item_metadata
    except Exception:  # unreadable metadata: the step is damaged, not another model
        return True
    saved = {m.name: tuple(m.shape) for m in jax.tree_util.tree_leaves(saved)}
    if not saved:  # no metadata to compare with
        return True
    ours = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    return saved == {_dotted(path): tuple(a.shape) for path, a in ours}


def _dotted(path: tuple) -> str:
    """A tree path as orbax names the leaf: opt_state.1.0.mu.wte.embedding."""
    return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


class Checkpointer:
    """The checkpoints of one workdir (`workdir/checkpoints/<step>`)."""

    def __init__(self, workdir: str | pathlib.Path, *, max_to_keep: int = 2, read_only: bool = False):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(
                f"no checkpoint in {workdir}; train first with scripts/train.py --workdir={workdir}"
            )
        if read_only:
            options = ocp.CheckpointManagerOptions(
                read_only=True, create=False, save_interval_steps=0, max_to_keep=None
            )
        else:
            if max_to_keep < 1:  # orbax would delete each checkpoint as soon as it is written
                raise ValueError(
                    f"keep_checkpoints={max_to_keep} would delete every checkpoint, the final one too; "
                    "use keep_checkpoints >= 1"
                )
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                cleanup_tmp_directories=True,  # remove what a killed save left behind
                enable_async_checkpointing=False,
            )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, *, config: dict, tokenizer: dict, meta: dict) -> None:
        if step in self.manager.all_steps():
            return  # already saved (e.g. the final step coincides with an interval)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config),
                tokenizer=ocp.args.JsonSave(tokenizer),
                meta=ocp.args.JsonSave({**meta, "step": step}),
            ),
        )
        self.manager.wait_until_finished()

    def restore_json(self, step: int | None = None) -> dict[str, dict]:
        """config, tokenizer and meta of a step (default latest), without touching the arrays."""
        step = self._step(step)
        with self._reading(step):
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    config=ocp.args.JsonRestore(),
                    tokenizer=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        return {name: restored[name] for name in ("config", "tokenizer", "meta")}

    def restore_state(self, abstract_state: Any, step: int | None = None) -> Any:
        """The TrainState of a step, shaped and placed like `abstract_state` (from jax.eval_shape)."""
        step = self._step(step)
        # Leaves without a placement go to the first device, whatever topology saved them.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract_state = jax.tree_util.tree_map(
            lambda a: (
                a
                if getattr(a, "sharding", None) is not None
                else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device)
            ),
            abstract_state,
        )
        with self._reading(step, abstract_state):
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
        state = restored["state"]
        if int(state.step) != step:
            raise RuntimeError(f"checkpoint {self.directory}/{step} holds step {int(state.step)}")
        return state

    @contextlib.contextmanager
    def _reading(self, step: int, abstract_state: Any = None):
        """One-line errors for a step that cannot be read: gone (StepVanished: a run training in this
        workdir deleted it, keeping only its latest), laid out for another model, or damaged."""
        where = f"checkpoint {self.directory}/{step}"
        try:
            yield
        except Exception as e:  # orbax raises ValueError, OSError, JSON and tensorstore errors alike
            if not (self.directory / str(step)).is_dir():
                raise StepVanished(f"{where} was deleted while being read") from e
            first = " ".join(str(e).split())[:200]
            if abstract_state is not None and not _fits(self.directory / str(step), abstract_state):
                raise ValueError(
                    f"{where} does not fit this config's model/optimizer ({first}); train in a fresh "
                    "--workdir or use the original config"
                ) from e
            raise ValueError(
                f"{where} cannot be read ({type(e).__name__}: {first}); it is damaged: delete that "
                "directory to fall back to the previous checkpoint"
            ) from e

    def require(self, step: int) -> None:
        """One line naming the steps there are when `step` is not one of them (a user's --step)."""
        steps = sorted(self.manager.all_steps())
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint at step {step} in {self.directory}; "
                + (f"pick one of steps {steps}" if steps else "train first with scripts/train.py")
            )

    def _step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"no checkpoint in {self.directory}; train first with scripts/train.py --workdir=..."
            )
        return step

    def close(self) -> None:
        self.manager.close()
