"""An image model end to end: train on stripes, draw each class, complete half images, write PNG grids."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import digits
from gptjax import image
from gptjax.data.images import PaletteTokenizer
from gptjax.metric_writer import read_metrics
from gptjax.train import load_params, train_and_evaluate
from tests.test_images import stripes

pytestmark = pytest.mark.usefixtures("tmp_cache")  # encoded images are cached: never in ~/.cache

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 4


def horizontal(im_HWC: np.ndarray) -> bool:
    """Rows alternate black and white, each row one colour (class 0 of `stripes`)."""
    im = im_HWC[..., 0].astype(int)
    return bool((im == im[:, :1]).all() and (im[1:, 0] != im[:-1, 0]).all())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("stripes")
    images, labels = stripes(400, SIZE)
    np.savez(root / "stripes.npz", images=images, labels=labels, classes=np.array(["horizontal", "vertical"]))
    c = digits.get_config()
    c.data.update(source=str(root / "stripes.npz"), image_size=SIZE, colors=4, channels=1)
    c.model.update(block_size=SIZE * SIZE, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    c.opt.update(lr=3e-3, min_lr=3e-4, warmup_iters=10, lr_decay_iters=300)
    c.update(max_iters=300, eval_interval=100, eval_iters=2, checkpoint_interval=100, steps_per_call=10)
    with pytest.MonkeyPatch.context() as patch:  # tmp_cache is per test; this fixture serves the module
        patch.setenv("GPTJAX_CACHE_DIR", str(root / "cache"))
        train_and_evaluate(c, root / "w")
    return root / "w"


@pytest.mark.slow
def test_stripes_model_learns_and_draws_its_classes(workdir):
    """Only the first pixel is random (the phase): the best loss is ln 2 / 16 = 0.043 nats a pixel."""
    val = [r["val_loss"] for r in read_metrics(workdir) if "val_loss" in r]
    assert val[0] > 1.0 and val[-1] < 0.08, val
    params, cfg, tok, config = load_params(workdir)
    assert tok.classes == ["horizontal", "vertical"] and tok.num_colors == 2
    # Training ends with a grid of what the model draws: a row of 8 per class, 4 pixels scaled 16x.
    assert np.asarray(Image.open(workdir / "samples.png")).shape == (2 * 65 + 1, 8 * 65 + 1)
    drawn = image.draw(workdir, num_samples=16, seed=1)
    assert drawn.shape == (2, 16, SIZE, SIZE, 1) and drawn.dtype == np.uint8
    assert np.mean([horizontal(im) for im in drawn[0]]) >= 0.9
    assert np.mean([horizontal(np.swapaxes(im, 0, 1)) for im in drawn[1]]) >= 0.9
    assert len({im.tobytes() for im in drawn[0]}) == 2  # both phases drawn: sampling, not one mode
    np.testing.assert_array_equal(image.draw(workdir, ["vertical"], 16, seed=1), drawn[1:])  # same seed
    one = image.draw((params, cfg, tok, config), [0], num_samples=3, seed=2)
    assert one.shape == (1, 3, SIZE, SIZE, 1)


@pytest.mark.slow
def test_greedy_completion_of_half_images_continues_the_stripes(workdir):
    params, cfg, tok, config = load_params(workdir)
    from gptjax.train import load_data

    rows = load_data(config.data, tok).val[:6]
    done = image.complete(workdir, rows, given_rows=2, num_samples=1, temperature=0.0)
    originals = tok.decode_images(rows[:, 1:])
    assert done.shape == (6, 1, SIZE, SIZE, 1)
    np.testing.assert_array_equal(done[:, 0], originals)  # given the phase, the rest is determined
    sampled = image.complete(workdir, rows, given_rows=1, num_samples=3, seed=3)
    assert np.mean(sampled == originals[:, None]) > 0.95
    with pytest.raises(ValueError, match="given_rows=4"):
        image.complete(workdir, rows, given_rows=4)
    with pytest.raises(ValueError, match="trained on 'char' tokens"):
        image.draw((params, cfg, _char_tokenizer(), config))


def _char_tokenizer():
    from gptjax.data import CharTokenizer

    return CharTokenizer("ab")


def test_save_grid_scales_pixels_and_separates_images(tmp_path):
    images = np.zeros((2, 3, 4, 5, 3), np.uint8)
    images[1, 2] = [255, 0, 0]
    path = image.save_grid(images, tmp_path / "g" / "grid.png", min_side=20)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * (4 * 4 + 1) + 1, 3 * (5 * 4 + 1) + 1, 3)  # scale 4: 5 * 4 >= 20
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all()  # white gaps
    assert (grid[18:34, 43:63] == [255, 0, 0]).all() and (grid[1:17, 1:21] == 0).all()


def test_completion_grid_shows_the_original_what_was_given_and_the_samples():
    originals = np.arange(2 * 3 * 2, dtype=np.uint8).reshape(2, 3, 2, 1)  # 2 images of 3x2 pixels
    drawn = np.full((2, 4, 3, 2, 1), 255, np.uint8)  # 4 completions of each
    grid = image.completion_grid(originals, drawn, given_rows=1)
    assert grid.shape == (2, 6, 3, 2, 1)
    np.testing.assert_array_equal(grid[:, 0], originals)
    np.testing.assert_array_equal(grid[:, 1, :1], originals[:, :1])
    assert (grid[:, 1, 1:] == image.GIVEN_SHADE).all() and (grid[:, 2:] == 255).all()
    assert originals.max() == 11  # a copy was shaded


def run_script(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sample_images_script_writes_grids_and_refuses_bad_input_in_one_line(workdir, tmp_path):
    out = run_script(
        "scripts/sample_images.py", f"--workdir={workdir}", "--num_samples=3", f"--out={tmp_path}/a.png"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 rows (horizontal, vertical) of 3 images" in out.stdout
    assert np.asarray(Image.open(tmp_path / "a.png")).shape == (2 * 65 + 1, 3 * 65 + 1)  # 4 px x 16
    out = run_script("scripts/sample_images.py", f"--workdir={workdir}", "--complete=2", "--num_samples=2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert np.asarray(Image.open(workdir / "completions.png")).shape == (2 * 65 + 1, 4 * 65 + 1)
    for script, flag, message in [
        ("scripts/sample_images.py", "--classes=diagonal", "class 'diagonal' is not one of"),
        ("scripts/sample_images.py", "--complete=-1", "--complete=-1: -1 is not a non-negative integer"),
        ("scripts/sample.py", "--num_samples=1", "draws images (palette tokenizer), not text"),
    ]:
        out = run_script(script, f"--workdir={workdir}", flag)
        assert out.returncode == 1 and message in out.stderr, out.stderr[-2000:]
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.slow
def test_image_loss_counts_every_pixel_once_and_the_eval_script_reports_bits_per_dim(workdir):
    from gptjax import evaluate
    from gptjax.train import load_data

    params, cfg, tok, config = load_params(workdir)
    val = load_data(config.data, tok).val
    whole = evaluate.image_loss(params, cfg, val, batch_size=len(val))
    padded = evaluate.image_loss(params, cfg, val, batch_size=7)  # the last batch padded
    assert whole["images"] == padded["images"] == len(val)
    assert padded["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert whole["bits_per_dim"] == pytest.approx(whole["loss"] / np.log(2))
    assert np.log(2) / 16 - 1e-3 < whole["loss"] < 0.1  # above the entropy of the stripes, near it
    out = run_script("scripts/eval.py", f"--workdir={workdir}", "--split=val", "--batch_size=16")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1])["loss"] == pytest.approx(whole["loss"], rel=1e-4)


def test_image_model_resumes_exactly(tmp_path):
    """20 steps, then 20 more from the checkpoint == 40 steps at once (the palette comes from the
    checkpoint, the batches from (seed, step))."""
    images, labels = stripes(64, SIZE)
    np.savez(tmp_path / "s.npz", images=images, labels=labels)

    def config(max_iters):
        c = digits.get_config()
        c.data.update(source=str(tmp_path / "s.npz"), image_size=SIZE, colors=2, channels=1)
        c.model.update(block_size=SIZE * SIZE, n_layer=1, n_head=2, n_embd=16, dropout=0.1)
        c.opt.update(lr_decay_iters=40)
        c.update(
            max_iters=max_iters, eval_interval=20, eval_iters=1, checkpoint_interval=20, steps_per_call=10
        )
        return c

    train_and_evaluate(config(40), tmp_path / "once")
    train_and_evaluate(config(20), tmp_path / "twice")
    train_and_evaluate(config(40), tmp_path / "twice")
    a, b = load_params(tmp_path / "once")[0], load_params(tmp_path / "twice")[0]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_run_refuses_a_checkpoint_of_the_other_kind_or_other_images(tmp_path):
    """A text workdir under an image config (or back), and an image run resumed with other image settings
    (conditional or not, colours, size), each end in one line before anything runs."""
    from ml_collections import ConfigDict

    from gptjax.data import CharTokenizer
    from gptjax.data.from_config import check_same_images, load_data

    image_data = digits.get_config().data
    with pytest.raises(ValueError, match="reads 'char' tokens, and config.data.tokenizer is 'palette'"):
        load_data(image_data, CharTokenizer("ab"))
    text_data = ConfigDict(
        {"source": "tiny_shakespeare", "path": None, "val_fraction": 0.1, "tokenizer": "char"}
    )
    with pytest.raises(ValueError, match="reads 'palette' tokens, and config.data.tokenizer is 'char'"):
        load_data(text_data, PaletteTokenizer([[0]], 8, 8))
    saved = image_data.to_dict()
    check_same_images(saved, image_data, tmp_path)  # the same images: resumes
    changed = digits.get_config("uncond").data
    changed.colors = 8
    with pytest.raises(
        ValueError, match=r"data.colors=8 \(the checkpoint's: 17\), data.class_conditional=False"
    ):
        check_same_images(saved, changed, tmp_path)


@pytest.mark.slow
def test_many_rows_are_drawn_in_calls_of_one_shape_with_the_same_result(workdir, monkeypatch):
    from gptjax.train import load_data

    model = load_params(workdir)
    rows = load_data(model[3].data, model[2]).val[:6]
    whole = (
        image.complete(model, rows, given_rows=1, num_samples=2, seed=5),
        image.draw(model, None, 3, seed=6),
    )
    monkeypatch.setattr(image, "MAX_ROWS", 8)  # completions: 4 images a call, the last call padded
    np.testing.assert_array_equal(image.complete(model, rows, given_rows=1, num_samples=2, seed=5), whole[0])
    monkeypatch.setattr(image, "MAX_ROWS", 4)  # draws: one class a call
    np.testing.assert_array_equal(image.draw(model, None, 3, seed=6), whole[1])
