"""TFDS images without TensorFlow (gptjax.data.tfds_images): tiny array_record sets written offline."""

import importlib.util
import io
import json
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds  # the tfds extra: missing fails, never skips
from PIL import Image

from gptjax.data import DataError
from gptjax.data.tfds_images import load_tfds_images

pytestmark = pytest.mark.usefixtures("tmp_cache")  # encoded images are cached: never in ~/.cache


def write_tfds(
    root, set_name: str, version: str, splits: dict, features: dict, *, shuffle: bool = False
) -> None:
    """Prepares `set_name` (splits: {split: [example dict]}) as array_record under root, offline and with
    no TensorFlow: images go in as PNG bytes (TFDS encodes numpy images with TensorFlow), and the info is
    built directly (dataset_info_from_configs reads metadata files beside the builder's module). TFDS
    4.9.10's download_and_prepare imports importlib_resources, which it does not declare on Python >= 3.9
    (tensorflow/datasets#11212): the test extra installs it."""

    def encoded(example: dict) -> dict:
        out = dict(example)
        if "image" in out:
            buf = io.BytesIO()
            Image.fromarray(out["image"].squeeze(-1) if out["image"].shape[-1] == 1 else out["image"]).save(
                buf, format="PNG"
            )
            out["image"] = buf.getvalue()
        return out

    class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = set_name  # the folder name and the name tfds.builder finds it by
        VERSION = tfds.core.Version(version)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features), disable_shuffling=not shuffle
            )

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(examples) for s, examples in splits.items()}

        def _generate_examples(self, examples):
            for i, example in enumerate(examples):
                yield i, encoded(example)

    offline = tfds.download.DownloadConfig(try_download_gcs=False)  # never fetch a prepared copy
    Builder(data_dir=str(root), file_format="array_record").download_and_prepare(download_config=offline)


def pictures(n: int, size: int, channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


@pytest.fixture(scope="module")
def tfds_root(tmp_path_factory):
    """A data_dir holding `tiny_shapes` (RGB 8x8, 2 classes, train 8 + test 4), a fake `cifar10` under the
    registered builder's name and version, and `no_pictures` (labels only)."""
    root = tmp_path_factory.mktemp("tfds")
    images = pictures(12, 8, 3, seed=0)
    labels = np.arange(12) % 2
    rows = [{"image": images[i], "label": int(labels[i])} for i in range(12)]
    write_tfds(
        root,
        "tiny_shapes",
        "1.0.0",
        {"test": rows[8:], "train": rows[:8]},  # test first: the loader still puts train first
        {"image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(names=["a", "b"])},
    )
    cifar = pictures(6, 32, 3, seed=1)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_tfds(
        root,
        "cifar10",
        str(tfds.builder_cls("cifar10").VERSION),
        {"train": [{"id": f"train_{i}", "image": cifar[i], "label": i} for i in range(6)]},
        {
            "id": tfds.features.Text(),
            "image": tfds.features.Image(shape=(32, 32, 3)),
            "label": tfds.features.ClassLabel(names=names),
        },
        shuffle=True,
    )
    write_tfds(
        root,
        "no_pictures",
        "1.0.0",
        {"train": [{"label": 0}]},
        {"label": tfds.features.ClassLabel(num_classes=2)},
    )
    return root, images, labels, cifar, names


def test_reads_every_split_train_first_without_tensorflow(tfds_root):
    root, images, labels, _, _ = tfds_root
    got_images, got_labels, classes = load_tfds_images("tiny_shapes", data_dir=str(root))
    assert got_images.dtype == np.uint8 and got_images.shape == (12, 8, 8, 3)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_labels, labels)
    assert classes == ["a", "b"]
    assert "tensorflow" not in sys.modules


def test_reads_one_split_and_a_slice(tfds_root):
    root, images, labels, _, _ = tfds_root
    got_images, got_labels, _ = load_tfds_images("tiny_shapes", split="test", data_dir=str(root))
    np.testing.assert_array_equal(got_images, images[8:])
    np.testing.assert_array_equal(got_labels, labels[8:])
    got_images, _, _ = load_tfds_images("tiny_shapes", split="train[:3]", data_dir=str(root))
    np.testing.assert_array_equal(got_images, images[:3])


def test_registered_name_from_tfds_data_dir_keeps_class_names(tfds_root, monkeypatch):
    root, _, _, cifar, names = tfds_root
    monkeypatch.setenv("TFDS_DATA_DIR", str(root))
    got_images, got_labels, classes = load_tfds_images("cifar10")
    assert classes == names  # restored from the prepared label.labels.txt, not the builder's code
    assert got_images.shape == (6, 32, 32, 3)
    # Shuffled on writing, as real TFDS sets are: the same images, each with its own label.
    np.testing.assert_array_equal(got_images, cifar[got_labels])
    assert sorted(got_labels.tolist()) == list(range(6))


def one_line_error(match: str, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as e:
        load_tfds_images(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_unprepared_and_unknown_data_sets_say_how_to_prepare(tmp_path):
    msg = one_line_error("not prepared", "mnist", data_dir=str(tmp_path))
    assert str(tmp_path / "mnist") in msg and f"tfds build mnist --data_dir={tmp_path}" in msg
    assert "download_and_prepare(file_format='array_record')" in msg
    msg = one_line_error("neither a TFDS data set", "no_such_set_xyz", data_dir=str(tmp_path))
    assert str(tmp_path / "no_such_set_xyz") in msg


def test_tfrecord_data_set_is_named_as_such(tmp_path):
    root = tmp_path / "tfrecord"
    write_tfds(
        root,
        "tiny_shapes",
        "1.0.0",
        {"train": [{"image": pictures(1, 4, 1, seed=2)[0]}]},
        {"image": tfds.features.Image(shape=(4, 4, 1))},
    )
    info = root / "tiny_shapes" / "1.0.0" / "dataset_info.json"
    # What an older TFDS, or a default `tfds build`, leaves: the same folder in tfrecord format.
    info.write_text(json.dumps({**json.loads(info.read_text()), "fileFormat": "tfrecord"}))
    msg = one_line_error("tfrecord format", "tiny_shapes", data_dir=str(root))
    assert "convert_format" in msg and "out_file_format=array_record" in msg


def test_no_image_feature_and_unknown_split(tfds_root):
    root = str(tfds_root[0])
    one_line_error("no Image feature", "no_pictures", data_dir=root)
    one_line_error("split 'validation'.*'train'", "tiny_shapes", split="validation", data_dir=root)


def test_grey_images_unlabelled(tmp_path):
    grey = pictures(3, 4, 1, seed=3)
    write_tfds(
        tmp_path,
        "grey_set",
        "0.1.0",
        {"train": [{"image": g} for g in grey]},
        {"image": tfds.features.Image(shape=(4, 4, 1))},
    )
    got_images, got_labels, classes = load_tfds_images("grey_set", data_dir=str(tmp_path))
    np.testing.assert_array_equal(got_images, grey)
    assert got_labels is None and classes == []


def test_missing_packages_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import` raises ImportError
    one_line_error("pip install tensorflow-datasets array_record", "mnist", data_dir=str(tmp_path))
    monkeypatch.undo()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "array_record" else real_find_spec(name, *a),
    )
    one_line_error("array_record is missing.*pip install", "mnist", data_dir=str(tmp_path))


def test_a_tfds_source_trains_like_any_image_source(tfds_root, monkeypatch):
    """config.data.source="tfds:NAME": the images of every split, resized, in gptjax's own 90/10 split."""
    from gptjax.data import load_image_dataset

    root, images, labels, _, _ = tfds_root
    monkeypatch.setenv("TFDS_DATA_DIR", str(root))
    ds = load_image_dataset("tfds:tiny_shapes", image_size=4, colors=8, channels=3, class_conditional=True)
    tok = ds.tokenizer
    assert (ds.train.shape, ds.val.shape) == ((10, 17), (2, 17)) and tok.classes == ["a", "b"]
    assert sorted((np.concatenate([ds.train, ds.val])[:, 0] - tok.class_id(0)).tolist()) == sorted(labels)
