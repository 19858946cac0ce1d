"""Images of a TensorFlow Datasets (TFDS) data set, read without TensorFlow.

`tfds.data_source` reads array_record data sets by random access with numpy and Pillow only (TFDS >= 4.9),
so a data set prepared once in a TFDS data_dir (`tfds build mnist --file_format=array_record`) trains
offline with no TensorFlow. Nothing is downloaded here: an unprepared data set is an error.
"""

import importlib.util
import os
import pathlib

import numpy as np

from gptjax.data.sources import DataError

_INSTALL = "pip install tensorflow-datasets array_record"
_SPLIT_ORDER = ("train", "validation", "test")  # then any others, by name
_READ_CHUNK = 1024  # records per batched read: array_record fetches a batch in parallel


def tfds_data_dir(data_dir: str | None = None) -> pathlib.Path:
    """`data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's own default)."""
    # Resolved here, not by TFDS: it reads $TFDS_DATA_DIR once, at import.
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return pathlib.Path(root).expanduser()


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"the tfds source needs TensorFlow Datasets ({e}); {_INSTALL}") from None
    if importlib.util.find_spec("array_record") is None:
        raise DataError(f"the tfds source reads array_record files, and array_record is missing; {_INSTALL}")
    return tfds


def _builder(tfds, name: str, root: pathlib.Path):
    """The prepared builder of `name` in `root`, else a DataError saying how to prepare it."""
    # Preparing encodes the images with TensorFlow (and the `tfds` CLI imports it): reading needs neither.
    how = (
        f"prepare it on a machine with internet and TensorFlow: `tfds build {name} --data_dir={root} "
        f"--file_format=array_record` or tfds.builder({name!r}, data_dir={str(root)!r})"
        ".download_and_prepare(file_format='array_record'), then copy the folder here"
    )
    try:
        builder = tfds.builder(name, data_dir=os.fspath(root))
    except tfds.core.registered.DatasetNotFoundError:
        # Its message lists every registered data set: too long for one line.
        raise DataError(
            f"tfds:{name} is neither a TFDS data set nor prepared under {root / name}; "
            f"check the name or the data_dir ($TFDS_DATA_DIR), or {how}"
        ) from None
    # An unknown config (ValueError) or version (AssertionError), an unreadable dataset_info.json.
    except (ValueError, AssertionError, FileNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"tfds:{name} in {root}: {first}; fix the name (NAME[/CONFIG][:VERSION])") from None
    if not builder.is_prepared():
        found = sorted(p.name for p in (root / name.split(":")[0]).glob("*") if p.is_dir())
        seen = f" (found {', '.join(found)} there)" if found else ""
        raise DataError(f"tfds:{name} is not prepared in {builder.data_dir}{seen}; {how}")
    return builder


def _features(name: str, builder) -> tuple[str, str | None, list[str]]:
    """(image key, label key or None, class names) of the builder's top-level features."""
    from tensorflow_datasets.core.features import ClassLabel, Image

    features = dict(builder.info.features)
    images = [k for k, f in features.items() if isinstance(f, Image)]
    if not images:
        raise DataError(
            f"tfds:{name} has no Image feature (features: {sorted(features)}); choose an image data set"
        )
    image_key = "image" if "image" in images else images[0]
    if np.dtype(features[image_key].np_dtype) != np.uint8:
        raise DataError(
            f"tfds:{name}'s {image_key!r} images are {np.dtype(features[image_key].np_dtype)}, "
            "not uint8; choose a data set of 8-bit images"
        )
    label = features.get("label")
    if not isinstance(label, ClassLabel):
        return image_key, None, []
    return image_key, "label", [str(c) for c in label.names]


def _read(name: str, source, image_key: str, label_key: str | None):
    """(images (N, H, W, C) uint8, labels (N,) int64 or None) of one split's data source."""
    n = len(source)
    images_NHWC = labels_N = None
    get_many = getattr(source, "__getitems__", lambda idx: [source[i] for i in idx])
    for start in range(0, n, _READ_CHUNK):
        for i, example in enumerate(get_many(range(start, min(n, start + _READ_CHUNK))), start):
            image_HWC = np.asarray(example[image_key], np.uint8)
            if image_HWC.ndim == 2:
                image_HWC = image_HWC[..., None]
            if images_NHWC is None:  # filled in place: a list of arrays would hold the set twice
                images_NHWC = np.empty((n, *image_HWC.shape), np.uint8)
                labels_N = np.empty(n, np.int64) if label_key else None
            if image_HWC.shape != images_NHWC.shape[1:]:
                raise DataError(
                    f"tfds:{name} image {i} is {image_HWC.shape}, image 0 {images_NHWC.shape[1:]}: "
                    "this source needs one image size; choose a fixed-size data set or export it to an "
                    "image folder"
                )
            images_NHWC[i] = image_HWC
            if label_key:
                labels_N[i] = example[label_key]
    return images_NHWC, labels_N


def load_tfds_images(
    name: str, *, split: str | None = None, data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(images (N, H, W, C) uint8, labels (N,) int64 or None, class names) of the TFDS data set `name`
    (NAME[/CONFIG][:VERSION]) prepared as array_record in `data_dir` (default $TFDS_DATA_DIR, else
    ~/tensorflow_datasets). `split` is a TFDS split ("train", "test[:10%]"); None joins every split,
    train first. Labels are the "label" ClassLabel's; None (and no class names) without one."""
    tfds = _import_tfds()
    root = tfds_data_dir(data_dir)
    builder = _builder(tfds, name, root)
    image_key, label_key, classes = _features(name, builder)
    formats = {getattr(f, "value", str(f)) for f in builder.info.available_file_formats()}
    if not formats & {"array_record", "parquet"}:  # the formats TFDS reads by random access
        raise DataError(
            f"tfds:{name} in {builder.data_dir} is in {' and '.join(sorted(formats)) or 'tfrecord'} "
            "format, which only TensorFlow reads; on a machine with TensorFlow, convert it with `tfds "
            f"convert_format --dataset_version_dir={builder.data_dir} --out_file_format=array_record` or "
            f"prepare it again with `tfds build {name} --file_format=array_record`"
        )
    splits = list(builder.info.splits)
    if split is None:
        order = sorted(splits, key=lambda s: (_SPLIT_ORDER.index(s) if s in _SPLIT_ORDER else 3, s))
    else:
        order = [split]
    images, labels = [], []
    for s in order:
        try:
            source = builder.as_data_source(split=s)
        except (ValueError, KeyError) as e:
            raise DataError(
                f"tfds:{name} cannot read split {s!r} ({str(e).strip().splitlines()[0]}); "
                f"give one of {splits}, or a slice such as 'train[:10%]'"
            ) from None
        except ImportError as e:
            raise DataError(f"tfds:{name} could not be read ({e}); {_INSTALL}") from None
        images_NHWC, labels_N = _read(name, source, image_key, label_key)
        if images_NHWC is not None:
            images.append(images_NHWC)
            labels.append(labels_N)
    if not images:
        raise DataError(f"tfds:{name} split {split or 'all'} in {builder.data_dir} holds no examples")
    if len({im.shape[1:] for im in images}) > 1:
        raise DataError(
            f"tfds:{name}'s splits hold images of sizes {sorted({im.shape[1:] for im in images})}; "
            "export one split to an .npz or an image folder and train on that"
        )
    images_NHWC = np.concatenate(images)
    return images_NHWC, (np.concatenate(labels) if label_key else None), classes
