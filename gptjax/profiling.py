"""Device traces of training steps (jax.profiler) and a plain-text summary of where the time went.

A trace is a TensorBoard profile directory (`<dir>/plugins/profile/<run>/*.xplane.pb`, open it with
TensorBoard's profile tab or XProf) plus a Perfetto JSON trace (`perfetto_trace.json.gz`, open it at
ui.perfetto.dev). `top_ops` reads the Perfetto trace back, so the busiest XLA ops and kernels can be
printed where no viewer runs (a remote machine, CI, a benchmark's JSON).
"""

import collections
import contextlib
import gzip
import json
import pathlib
import re
from collections.abc import Iterator

import jax

# Host-side runtime and Python events: they wrap the ops rather than being ops themselves.
_NOT_OPS = re.compile(
    r"^(\$|end: |ThreadpoolListener|ThunkExecutor|SlinkyThreadPool|PjRt|Pjit|CommonPjRt|ParseArguments|"
    r"Handle input|AllocateOutput|PythonRefManager|Wait for|TfrtCpu|np\.asarray)"
)


def start_trace(directory: str | pathlib.Path) -> pathlib.Path:
    """Starts tracing everything JAX runs into `directory` (TensorBoard + Perfetto formats)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    jax.profiler.start_trace(str(directory), create_perfetto_trace=True)
    return directory


def stop_trace() -> None:
    jax.profiler.stop_trace()


@contextlib.contextmanager
def trace(directory: str | pathlib.Path) -> Iterator[pathlib.Path]:
    directory = start_trace(directory)
    try:
        yield directory
    finally:
        stop_trace()


def step_annotation(step: int):
    """Marks one training call as step `step` in the trace (TensorBoard's step-time view reads it)."""
    return jax.profiler.StepTraceAnnotation("train", step_num=step)


def latest_perfetto_trace(directory: str | pathlib.Path) -> pathlib.Path:
    runs = sorted(pathlib.Path(directory).glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not runs:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {directory}/plugins/profile; trace first")
    return runs[-1]


def top_ops(directory: str | pathlib.Path, n: int = 20) -> list[dict]:
    """The `n` op kinds with the most total time in the latest trace under `directory`.

    An op kind is an event name without its numeric suffix (`fusion.12` and `fusion.3` are `fusion`),
    counted per timeline (process and thread, the threads of one pool together), since one op can show
    on several (an XLA op and its GPU kernels). Python frames and the runtime's bookkeeping events are
    left out. Each row: timeline, op, total_ms (summed over the pool's threads: thread time, not wall
    time), count, and share = total_ms over the total of all op kinds on that timeline.
    """
    with gzip.open(latest_perfetto_trace(directory)) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    names: dict[tuple, str] = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            names[(e["pid"],)] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            # Worker pools name each thread "<pool>/<id>": one timeline per pool.
            names[(e["pid"], e.get("tid"))] = re.sub(r"/-?\d+$", "", e["args"]["name"])
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or _NOT_OPS.match(e["name"]) or e["name"] == "train":
            continue
        timeline = f"{names.get((e['pid'],), e['pid'])} {names.get((e['pid'], e.get('tid')), e.get('tid'))}"
        key = (timeline, re.sub(r"[.\d]+$", "", e["name"]))
        total[key] += e.get("dur", 0.0)
        count[key] += 1
    per_timeline: collections.Counter = collections.Counter()
    for (timeline, _), us in total.items():
        per_timeline[timeline] += us
    return [
        {
            "timeline": timeline,
            "op": op,
            "total_ms": round(us / 1e3, 3),
            "count": count[(timeline, op)],
            "share": round(us / per_timeline[timeline], 4),
        }
        for (timeline, op), us in total.most_common(n)
    ]
