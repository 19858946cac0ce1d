"""Images as tokens (gptjax.data.images): palettes, sources, whole-image batches, one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from gptjax.data import DataError, get_batch, load_image_dataset, load_images, tokenizer_from_json
from gptjax.data.images import PaletteTokenizer, fit_palette, nearest_color

pytestmark = pytest.mark.usefixtures("tmp_cache")  # encoded images are cached: never in ~/.cache


def stripes(n: int, size: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n grey images: class 0 horizontal stripes, class 1 vertical, each black/white with a random phase."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    phase = rng.integers(0, 2, n)
    idx = np.arange(size)
    rows = (idx[None, :, None] + phase[:, None, None]) % 2 * np.ones((1, 1, size), int)
    cols = (idx[None, None, :] + phase[:, None, None]) % 2 * np.ones((1, size, 1), int)
    images = np.where(labels[:, None, None] == 0, rows, cols) * 255
    return images.astype(np.uint8), labels


def test_palette_keeps_every_colour_when_there_are_few():
    pixels = np.array([[200], [0], [200], [90]], np.uint8)
    np.testing.assert_array_equal(fit_palette(pixels, 3), [[0], [90], [200]])  # darkest first


def test_kmeans_palette_finds_separated_clusters_deterministically():
    rng = np.random.default_rng(1)
    means = np.array([[20, 30, 200], [240, 240, 240], [200, 10, 10]])
    pixels = np.concatenate([np.clip(m + rng.normal(0, 4, (500, 3)), 0, 255) for m in means]).astype(np.uint8)
    palette = fit_palette(pixels, 3)
    assert palette.shape == (3, 3) and palette.dtype == np.uint8
    for m in means:  # each cluster's centre within a few levels of its mean
        assert np.abs(palette.astype(int) - m).sum(1).min() <= 6, palette
    np.testing.assert_array_equal(palette, fit_palette(pixels, 3))
    assert (nearest_color(pixels, palette)[:500] == nearest_color(pixels[:1], palette)[0]).all()


def test_tokenizer_round_trip_ids_and_json():
    tok = PaletteTokenizer([[0, 0, 0], [255, 0, 0], [255, 255, 255]], 2, 3, classes=["cat", "dog"])
    assert (tok.num_colors, tok.bos_id, tok.vocab_size) == (3, 3, 6)
    assert (tok.class_id(0), tok.class_id("dog")) == (4, 5)
    images = tok.palette_KC[np.array([[0, 1, 2, 2, 1, 0]])].reshape(1, 2, 3, 3)
    near = np.clip(images.astype(int) + [3, -3, 2], 0, 255).astype(np.uint8)  # off by a few levels
    ids = tok.encode_images(near)
    np.testing.assert_array_equal(ids, [[0, 1, 2, 2, 1, 0]])
    np.testing.assert_array_equal(tok.decode_images(ids), images)
    again = tokenizer_from_json(json.loads(json.dumps(tok.to_json())))
    assert isinstance(again, PaletteTokenizer) and again.to_json() == tok.to_json()
    for bad, message in [("bird", "not one of"), (2, "outside")]:
        with pytest.raises(DataError, match=message):
            tok.class_id(bad)
    with pytest.raises(DataError, match="not colours"):
        tok.decode_images(np.array([[0, 1, 2, 3, 1, 0]]))
    with pytest.raises(DataError, match="not text"):
        tok.encode("hello")


def test_grey_tokenizer_takes_rgb_images_as_luma():
    tok = PaletteTokenizer([[0], [128], [255]], 1, 2)
    rgb = np.array([[[[255, 255, 255], [0, 0, 250]]]], np.uint8)  # white; a dark blue (luma ~29)
    np.testing.assert_array_equal(tok.encode_images(rgb), [[2, 0]])


def test_npz_dataset_rows_start_with_their_class_and_split_deterministically(tmp_path):
    images, labels = stripes(50)
    np.savez(tmp_path / "s.npz", images=images, labels=labels, classes=np.array(["horizontal", "vertical"]))
    ds = load_image_dataset(
        str(tmp_path / "s.npz"), image_size=4, colors=4, channels=1, class_conditional=True
    )
    tok = ds.tokenizer
    assert (ds.train.shape, ds.val.shape) == ((45, 17), (5, 17))
    assert tok.classes == ["horizontal", "vertical"] and tok.num_colors == 2 and tok.vocab_size == 5
    # Every row is some image of the file, after its class's start token.
    pixels = {
        (int(lab), tok.decode_images(r[None, 1:]).tobytes())
        for r in np.concatenate([ds.train, ds.val])
        for lab in [r[0] - tok.class_id(0)]
    }
    assert pixels == {(int(lab), im[..., None].tobytes()) for im, lab in zip(images, labels, strict=True)}
    again = load_image_dataset(
        str(tmp_path / "s.npz"), image_size=4, colors=4, channels=1, class_conditional=True
    )
    np.testing.assert_array_equal(again.val, ds.val)
    np.testing.assert_array_equal(ds.train_labels, ds.train[:, 0] - tok.class_id(0))
    uncond = load_image_dataset(str(tmp_path / "s.npz"), image_size=4, colors=4, channels=1)
    assert (uncond.train[:, 0] == uncond.tokenizer.bos_id).all() and uncond.tokenizer.classes == []
    np.testing.assert_array_equal(uncond.val_labels, ds.val_labels)  # the labels, without a class token
    # A checkpoint's tokenizer encodes new data with its own palette.
    reused = load_image_dataset(
        str(tmp_path / "s.npz"), image_size=4, colors=9, channels=1, tokenizer=tok, class_conditional=True
    )
    np.testing.assert_array_equal(reused.train, ds.train)


def test_batches_of_images_are_whole_rows_and_depend_on_seed_and_step(tmp_path):
    rows = np.arange(7 * 5, dtype=np.uint16).reshape(7, 5)
    x, y = get_batch(rows, batch_size=6, block_size=4, seed=3, step=2)
    assert x.dtype == np.int32 and x.shape == y.shape == (6, 4)
    for xr, yr in zip(x, y, strict=True):
        row = rows[xr[0] // 5]
        np.testing.assert_array_equal(xr, row[:-1])
        np.testing.assert_array_equal(yr, row[1:])
    np.testing.assert_array_equal(get_batch(rows, batch_size=6, block_size=4, seed=3, step=2)[0], x)
    assert not np.array_equal(get_batch(rows, batch_size=6, block_size=4, seed=3, step=3)[0], x)
    with pytest.raises(DataError, match="set --config.model.block_size=4"):
        get_batch(rows, batch_size=6, block_size=8, seed=3, step=2)


def test_image_folder_classes_rgb_crop_and_resize(tmp_path):
    for cls, colour in [("blue", (0, 0, 255)), ("red", (255, 0, 0))]:
        (tmp_path / cls).mkdir()
        for i in range(3):
            im = np.zeros((10, 16, 3), np.uint8)
            im[:, 3:13] = colour  # the centre 10x10 square is the colour; the cropped sides are black
            Image.fromarray(im).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    images, labels, classes = load_images(str(tmp_path), 5, 3)
    assert images.shape == (6, 5, 5, 3) and classes == ["blue", "red"]
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    assert (images[:3] == [0, 0, 255]).all() and (images[3:] == [255, 0, 0]).all()
    unlabelled, no_labels, _ = load_images(str(tmp_path / "*" / "*.png"), 4, 1)
    (tmp_path / "blue").rename(tmp_path / "b[1]")  # a folder whose name has glob characters is a folder
    assert load_images(str(tmp_path), 5, 3)[2] == ["b[1]", "red"]
    assert load_images(str(tmp_path / "b[1]"), 5, 3)[0].shape == (3, 5, 5, 3)
    assert unlabelled.shape == (6, 4, 4, 1) and no_labels is None


def test_digits_builtin_is_sklearns_8x8_digits():
    images, labels, classes = load_images("digits", 8, 1)
    assert images.shape == (1797, 8, 8, 1) and classes == [str(i) for i in range(10)]
    assert sorted(set(labels.tolist())) == list(range(10))
    assert len(np.unique(images)) == 17  # grey levels 0..16 scaled to 0..255


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (lambda p: np.savez(p / "x.npz", images=stripes(4)[0]), {"class_conditional": True}, "has no labels"),
        (lambda p: np.savez(p / "x.npz", pixels=stripes(4)[0]), {}, "no 'images'"),
        (lambda p: np.savez(p / "x.npz", images=stripes(4)[0].astype(float)), {}, "give uint8"),
        (lambda p: np.savez(p / "x.npz", images=stripes(4)[0], labels=[0, 1, 2, -1]), {}, "ints >= 0"),
        (lambda p: np.savez(p / "x.npz", images=stripes(1)[0]), {}, "empty split"),
        (lambda p: (p / "x.npz").write_text("not an npz, a text file"), {}, "not a numpy .npz of arrays"),
        (lambda p: (p / "x.npz").mkdir() or (p / "x.npz" / "a.png").write_text("no"), {}, "not an image"),
        (lambda p: np.savez(p / "x.npz", images=stripes(4)[0]), {"channels": 2}, "1 \\(grey\\) or 3"),
        (
            lambda p: np.savez(p / "x.npz", images=stripes(4)[0], labels=np.ones(4) / 2),
            {},
            "labels are float64",
        ),
        (
            lambda p: np.savez(p / "x.npz", images=stripes(4)[0], labels=list("abab")),
            {},
            "give integer labels",
        ),
        (lambda p: None, {}, "x.npz does not exist"),
        (
            lambda p: np.savez(p / "x.npz", images=np.zeros((0, 8, 8), np.uint8)),
            {},
            r"x.npz holds no images \('images' of shape \(0, 8, 8\)\); save at least one",
        ),
        (
            lambda p: np.savez(p / "x.npz", images=stripes(4)[0]),
            {"image_size": 0},
            r"image_size=0 must be >= 1 \(pixels per side\); fix --config.data.image_size",
        ),
        (
            lambda p: np.savez(p / "x.npz", images=np.zeros((4, 4, 4, 4), np.uint8)),
            {"channels": 3},
            r"\(4, 4, 4, 4\) must be .*; drop the alpha channel: images\[\.\.\., :3\]$",
        ),
    ],
)
def test_bad_image_input_gets_one_line(tmp_path, make, kwargs, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message) as e:
        load_image_dataset(str(tmp_path / "x.npz"), colors=4, **{"image_size": 4, "channels": 1, **kwargs})
    assert "\n" not in str(e.value)


def test_a_loose_image_beside_class_folders_is_named(tmp_path):
    for name in ("cat/a.png", "dog/b.png", "c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name)
    with pytest.raises(DataError, match=r"c.png lies beside the class folders of .*; move it into one"):
        load_image_dataset(str(tmp_path), image_size=4, colors=2, channels=1, class_conditional=True)


def test_a_checkpoints_tokenizer_fixes_whether_images_start_with_their_class(tmp_path):
    images, labels = stripes(20)
    np.savez(tmp_path / "s.npz", images=images, labels=labels)
    kwargs = dict(image_size=4, colors=2, channels=1)
    conditional = load_image_dataset(str(tmp_path / "s.npz"), class_conditional=True, **kwargs).tokenizer
    unconditional = load_image_dataset(str(tmp_path / "s.npz"), **kwargs).tokenizer
    for tok, flag in ((conditional, False), (unconditional, True)):
        with pytest.raises(DataError, match=f"set --config.data.class_conditional={not flag}$"):
            load_image_dataset(str(tmp_path / "s.npz"), class_conditional=flag, tokenizer=tok, **kwargs)


def test_encoded_images_are_cached_and_keyed_by_their_settings(tmp_path, tmp_cache, monkeypatch):
    """A second load reads the palette and pixel ids back (no k-means, no encoding); other colours, or a
    checkpoint's palette, are other entries."""
    from gptjax.data import images as images_lib

    images, labels = stripes(30, 4)
    images[:, 0, 0] = 128  # a third grey: colors=2 must merge it
    np.savez(tmp_path / "s.npz", images=images, labels=labels)
    load = lambda **kw: load_image_dataset(str(tmp_path / "s.npz"), image_size=4, channels=1, **kw)  # noqa: E731
    first = load(colors=2)
    assert len(list((tmp_cache / "images").iterdir())) == 1

    def never(*args, **kwargs):
        raise AssertionError("encoded again")

    with monkeypatch.context() as patch:
        patch.setattr(images_lib, "fit_palette", never)
        patch.setattr(images_lib, "nearest_color", never)
        again = load(colors=2)
    np.testing.assert_array_equal(again.train, first.train)
    assert again.tokenizer.to_json() == first.tokenizer.to_json()
    three = load(colors=3)
    assert three.tokenizer.num_colors == 3 and len(list((tmp_cache / "images").iterdir())) == 2
    given = PaletteTokenizer([[0], [255]], 4, 4)  # a checkpoint's palette: encoded with it, cached apart
    with_given = load(colors=3, tokenizer=given)
    assert with_given.train.max() <= 2 and len(list((tmp_cache / "images").iterdir())) == 3
