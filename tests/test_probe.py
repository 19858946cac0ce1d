"""iGPT's linear probe (gptjax/probe.py): the features are the model's own stream, layer by layer; the probe
scores the labels of the rows it is given; it refuses models it cannot judge fairly."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits
from gptjax import probe
from gptjax.data import Dataset
from gptjax.data.images import PaletteTokenizer
from gptjax.model import GPT, Block, GPTConfig, stack_layers
from gptjax.train import train_and_evaluate
from tests.test_images import stripes

pytestmark = pytest.mark.usefixtures("tmp_cache")  # encoded images are cached: never in ~/.cache

CFG = GPTConfig(vocab_size=4, block_size=16, n_layer=2, n_head=2, n_embd=16)  # 3 colours + SOS
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params():
    return GPT(CFG).init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]


def rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (n, 17): SOS then 16 pixels, labels): class 1 images are mostly colour 2, class 0 mostly 0."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    pixels = np.where(rng.random((n, 16)) < 0.7, 2 * labels[:, None], rng.integers(0, 3, (n, 16)))
    return np.concatenate([np.full((n, 1), 3), pixels], 1), labels


def pooled(x_NTD: np.ndarray) -> np.ndarray:
    x = np.asarray(x_NTD, np.float64)
    return ((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)).mean(1)


def test_features_are_the_normalised_stream_after_each_block_averaged(params):
    r, _ = rows(5, 0)
    x_NT = r[:, :-1]
    stream = np.asarray(params["wte"]["embedding"])[x_NT] + np.asarray(params["wpe"]["embedding"])[:16]
    np.testing.assert_allclose(probe.features(params, CFG, r, 0, batch_size=2), pooled(stream), atol=1e-5)
    for layer in (1, 2):  # the blocks run by hand, one after the other
        stream, _ = Block(CFG).apply({"params": params[f"h_{layer - 1}"]}, jnp.asarray(stream, jnp.float32))
        got = probe.features(params, CFG, r, layer, batch_size=4)  # the last batch padded
        np.testing.assert_allclose(got, pooled(stream), atol=1e-4)
    scanned = dataclasses.replace(CFG, scan_layers=True)
    np.testing.assert_allclose(
        probe.features(stack_layers(params, 2), scanned, r, 2), probe.features(params, CFG, r, 2), atol=1e-5
    )
    with pytest.raises(ValueError, match=r"layer=3 must be in \[0, 2\]"):
        probe.features(params, CFG, r, 3)


def test_the_probe_scores_the_labels_it_is_given(params):
    """The classes differ in their colours, which the embeddings already show: the probe finds them;
    with the labels shuffled against the rows it cannot."""
    tok = PaletteTokenizer([[0], [128], [255]], 4, 4)
    (train, train_y), (val, val_y) = rows(200, 1), rows(100, 2)
    data = Dataset(train, val, tok, train_y, val_y)
    (layer0,) = probe.probe((params, CFG, tok), data, layers=[0])
    assert layer0["layer"] == 0 and layer0["val_accuracy"] > 0.95
    shuffled = Dataset(train, val, tok, np.random.default_rng(3).permutation(train_y), val_y)
    assert probe.probe((params, CFG, tok), shuffled, layers=[0])[0]["val_accuracy"] < 0.75
    assert [r["layer"] for r in probe.probe((params, CFG, tok), data)] == [0, 1, 2]


def test_the_probe_refuses_what_it_cannot_judge(params):
    conditional = PaletteTokenizer([[0], [255]], 4, 4, classes=["a", "b"])
    data = Dataset(*rows(4, 0), PaletteTokenizer([[0]], 4, 4))
    with pytest.raises(ValueError, match="gives the class away"):
        probe.probe((params, CFG, conditional), data)
    with pytest.raises(ValueError, match="no labels"):
        probe.probe(
            (params, CFG, PaletteTokenizer([[0]], 4, 4)), Dataset(data.train, data.val, data.tokenizer)
        )
    with pytest.raises(ValueError, match="for image models"):
        probe.probe((params, CFG, object()), data)


@pytest.mark.parametrize("layers", ["", "0,x"])
def test_probe_script_names_a_bad_layers_flag(tmp_path, layers):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    args = [sys.executable, "scripts/probe.py", f"--workdir={tmp_path / 'w'}", f"--layers={layers}"]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.strip() == (
        f"error: ValueError: --layers={layers} must be layer numbers, e.g. --layers=0,2 (0: the embeddings); "
        "leave it out to probe every layer"
    )


@pytest.mark.slow
def test_probe_script_on_an_unconditional_workdir(tmp_path):
    images, labels = stripes(200, 4)
    np.savez(tmp_path / "s.npz", images=images, labels=labels)
    c = digits.get_config("uncond")
    c.data.update(source=str(tmp_path / "s.npz"), image_size=4, colors=2, channels=1)
    c.model.update(block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    c.update(
        max_iters=0, eval_interval=10, eval_iters=1, checkpoint_interval=10, steps_per_call=10
    )  # no training
    train_and_evaluate(c, tmp_path / "w")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    args = [sys.executable, "scripts/probe.py", f"--workdir={tmp_path / 'w'}", "--layers=0,2"]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["layer"] for r in lines[:2]] == [0, 2] and all(0 <= r["val_accuracy"] <= 1 for r in lines[:2])
    assert lines[2]["best_layer"] in (0, 2) and lines[2]["val_accuracy"] == max(
        r["val_accuracy"] for r in lines[:2]
    )
