"""Images as token sequences, as iGPT (Chen et al. 2020): a k-means colour palette, one token per pixel.

An image of H x W pixels becomes H*W + 1 tokens in raster order: a start token (the class's token for a
class-conditional model, else SOS), then the palette index of each pixel. Ids: the K palette colours
0..K-1, SOS = K, then one token per class. The model's block_size is H*W: it predicts every pixel from
the start token and the pixels before it. Sources: the built-in `digits` (scikit-learn's 8x8 handwritten
digits, 1,797 images in 17 grey levels, bundled with the package: no download), `tfds:NAME` (a TensorFlow
Datasets set prepared as array_record in $TFDS_DATA_DIR, read without TensorFlow), an .npz file with
`images` (N, H, W[, C]) uint8 and optional `labels` (N,) ints and `classes` (names), or a directory or
glob of image files (PNG, JPEG, ...; a directory's sub-directories are its classes, as torchvision's
ImageFolder).
"""

import glob
import hashlib
import os
import pathlib
import warnings
import zipfile

import numpy as np

from gptjax.data.sources import DataError, cache_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_CACHE_FORMAT = 1  # bump when the cached arrays change meaning
_CHUNK = 16_384  # pixels per distance computation: bounds the (pixels x colours) matrix to ~32 MB at K=512


class PaletteTokenizer:
    """Pixels <-> palette ids for images of one size; the palette and classes are saved in its JSON.

    The palette's colours may lie between 8-bit values (an imported ImageGPT's clusters do): pixels are
    encoded to the nearest of them as given (`centers_KC`), and decoded to them rounded (`palette_KC`)."""

    kind = "palette"

    def __init__(self, palette, height: int, width: int, classes=()):
        self.centers_KC = np.asarray(palette, np.float32)
        if self.centers_KC.ndim != 2 or self.centers_KC.shape[1] not in (1, 3) or not len(self.centers_KC):
            raise DataError(f"palette of shape {self.centers_KC.shape} must be (colours, 1 or 3 channels)")
        if not np.all((self.centers_KC >= 0) & (self.centers_KC <= 255)):
            raise DataError("palette colours must lie in [0, 255]")
        self.palette_KC = np.rint(self.centers_KC).astype(np.uint8)
        self.height, self.width = int(height), int(width)
        self.classes = [str(c) for c in classes]
        self.bos_id = self.num_colors  # SOS: the start of an unconditional image
        self.eos_id = None  # every image has height * width pixels: nothing ends early

    @property
    def exact_colors(self) -> bool:
        """Whether every colour is an 8-bit one (a fitted palette's are)."""
        return bool(np.array_equal(self.centers_KC, self.palette_KC))

    @property
    def num_colors(self) -> int:
        return len(self.palette_KC)

    @property
    def channels(self) -> int:
        return self.palette_KC.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.num_colors + 1 + len(self.classes)

    def class_id(self, label: int | str) -> int:
        """The start token of class `label` (its index or its name)."""
        if isinstance(label, str):
            if label not in self.classes:
                raise DataError(f"class {label!r} is not one of the model's classes {self.classes}")
            label = self.classes.index(label)
        if not 0 <= label < len(self.classes):
            raise DataError(
                f"class {label} is outside the model's {len(self.classes)} classes {self.classes}"
            )
        return self.num_colors + 1 + int(label)

    def encode_images(self, images_NHWC: np.ndarray) -> np.ndarray:
        """Palette index (uint16) of every pixel, (N, H*W) in raster order: the nearest colour in RGB/grey."""
        images_NHWC = _with_channels(np.asarray(images_NHWC), self.channels)
        n, h, w, _ = images_NHWC.shape
        if (h, w) != (self.height, self.width):
            raise DataError(f"images are {h}x{w}; this tokenizer's are {self.height}x{self.width}")
        return nearest_color(images_NHWC.reshape(-1, self.channels), self.centers_KC).reshape(n, h * w)

    def decode_images(self, ids_NP: np.ndarray) -> np.ndarray:
        """Images (N, H, W, C) uint8 of palette ids (N, H*W)."""
        ids_NP = np.asarray(ids_NP)
        if ids_NP.dtype.kind not in "iu":
            raise DataError(f"ids are {ids_NP.dtype}; give integer palette ids")
        if ids_NP.ndim != 2 or ids_NP.shape[1] != self.height * self.width:
            raise DataError(
                f"ids of shape {ids_NP.shape} are not (N, {self.height * self.width}) pixels of "
                f"{self.height}x{self.width} images"
            )
        if ids_NP.size and not (0 <= ids_NP.min() and ids_NP.max() < self.num_colors):
            raise DataError(
                f"ids {sorted(set(ids_NP[ids_NP >= self.num_colors].tolist()))[:10]} are not colours"
            )
        return self.palette_KC[ids_NP].reshape(len(ids_NP), self.height, self.width, self.channels)

    def encode(self, text: str) -> list[int]:
        raise DataError("this model draws images (palette tokenizer), not text; use scripts/sample_images.py")

    decode = encode

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "palette": (self.palette_KC if self.exact_colors else self.centers_KC).tolist(),
            "height": self.height,
            "width": self.width,
            "classes": self.classes,
        }

    @classmethod
    def from_json(cls, d: dict) -> "PaletteTokenizer":
        return cls(d["palette"], d["height"], d["width"], d.get("classes", ()))


def _with_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(N, H, W, channels) uint8 of (N, H, W) grey or (N, H, W, 1|3) images."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        alpha = {2: 1, 4: 3}.get(images.shape[-1]) if images.ndim == 4 else None  # grey or RGB + alpha
        hint = f"; drop the alpha channel: images[..., :{alpha}]" if alpha else ""
        raise DataError(f"images of shape {images.shape} must be (N, H, W) or (N, H, W, 1 or 3){hint}")
    if images.dtype != np.uint8:
        raise DataError(f"images are {images.dtype}; give uint8 pixels in [0, 255]")
    if images.shape[-1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    weights = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as PIL's convert("L")
    return np.rint(images.astype(np.float32) @ weights)[..., None].astype(np.uint8)


def _distances(x_MC: np.ndarray, palette_KC: np.ndarray) -> np.ndarray:
    """Squared distances (M, K) in float32."""
    x, c = x_MC.astype(np.float32), palette_KC.astype(np.float32)
    return (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]


def nearest_color(pixels_MC: np.ndarray, palette_KC: np.ndarray) -> np.ndarray:
    """Index (uint16) of the nearest palette colour of each pixel."""
    out = np.empty(len(pixels_MC), np.uint16)
    for i in range(0, len(pixels_MC), _CHUNK):
        out[i : i + _CHUNK] = _distances(pixels_MC[i : i + _CHUNK], palette_KC).argmin(1)
    return out


def fit_palette(pixels_MC: np.ndarray, k: int, *, seed: int = 0, iters: int = 30, sample: int = 200_000):
    """A palette of at most `k` colours (uint8, darkest first): every distinct colour if there are no more
    than k, else k-means (k-means++ start, `iters` Lloyd steps) on a sample of the pixels, each distinct
    colour weighted by its count. iGPT clusters RGB into k=512 the same way."""
    if k < 1:
        raise DataError(f"colors={k} must be >= 1")
    rng = np.random.default_rng(seed)
    pixels_MC = np.asarray(pixels_MC, np.uint8)
    if len(pixels_MC) > sample:
        pixels_MC = pixels_MC[rng.choice(len(pixels_MC), sample, replace=False)]
    colors_UC, counts_U = np.unique(pixels_MC, axis=0, return_counts=True)
    if len(colors_UC) > k:
        x, w = colors_UC.astype(np.float32), counts_U.astype(np.float64)
        centers = [x[rng.choice(len(x), p=w / w.sum())]]
        d2 = _distances(x, centers[0][None])[:, 0]
        for _ in range(k - 1):  # k-means++: each next centre drawn in proportion to count x distance^2
            p = w * np.maximum(d2, 0)
            centers.append(x[rng.choice(len(x), p=p / p.sum())])
            d2 = np.minimum(d2, _distances(x, centers[-1][None])[:, 0])
        centers = np.stack(centers)
        for _ in range(iters):
            assign = nearest_color(x, centers).astype(np.intp)
            mass = np.bincount(assign, weights=w, minlength=k)
            sums = np.stack(
                [np.bincount(assign, weights=w * x[:, c], minlength=k) for c in range(x.shape[1])], 1
            )
            kept = mass > 0  # an emptied cluster keeps its centre
            centers[kept] = (sums[kept] / mass[kept, None]).astype(np.float32)
        colors_UC = np.unique(np.clip(np.rint(centers), 0, 255).astype(np.uint8), axis=0)
    return colors_UC[np.argsort(colors_UC.astype(np.float32).mean(1), kind="stable")]


# ----- Sources ------------------------------------------------------------------------------------------


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits source needs scikit-learn: pip install -e '.[art]'") from None
    digits = load_digits()  # 8x8 grey levels 0..16, read from the file inside scikit-learn's package
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    return images, digits.target.astype(np.int64), [str(c) for c in range(10)]


def _npz(file: pathlib.Path) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    try:
        npz = np.load(file, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as e:  # not a zip of arrays, or object arrays
        raise DataError(
            f"{file} is not a numpy .npz of arrays ({type(e).__name__}); write it with np.savez"
        ) from e
    with npz as z:
        if "images" not in z:
            raise DataError(
                f"{file} has arrays {sorted(z.files)} but no 'images'; save images=(N, H, W[, C]) uint8"
            )
        images = z["images"]
        labels = z["labels"] if "labels" in z else None
        classes = [str(c) for c in z["classes"]] if "classes" in z else []
    if images.shape[:1] == (0,):
        raise DataError(f"{file} holds no images ('images' of shape {images.shape}); save at least one")
    if labels is not None:
        if labels.dtype.kind not in "iu":
            raise DataError(
                f"{file}: labels are {labels.dtype}; give integer labels (N,) and names in 'classes'"
            )
        if labels.shape != (len(images),) or (len(labels) and labels.min() < 0):
            raise DataError(
                f"{file}: labels of shape {labels.shape} must be (N,) = ({len(images)},) ints >= 0"
            )
        labels = labels.astype(np.int64)
        classes = classes or [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
        if len(labels) and labels.max() >= len(classes):
            raise DataError(f"{file}: label {labels.max()} has no name among its {len(classes)} classes")
    return images, labels, classes


def _image_files(source: str) -> tuple[list[pathlib.Path], np.ndarray | None, list[str]]:
    """Files of a glob or a directory (recursive), sorted; a directory's sub-directories are classes."""
    is_image = lambda p: p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES  # noqa: E731
    if any(c in source for c in "*?[") and not pathlib.Path(source).expanduser().is_dir():
        return (
            sorted(p for p in map(pathlib.Path, glob.glob(os.path.expanduser(source))) if is_image(p)),
            None,
            [],
        )
    root = pathlib.Path(source).expanduser()
    files = sorted(p for p in root.rglob("*") if is_image(p))
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    if not classes or any(len(p.relative_to(root).parts) == 1 for p in files):
        return files, None, []  # no classes, or loose files beside class folders: unlabelled
    labels = np.array([classes.index(p.relative_to(root).parts[0]) for p in files], np.int64)
    return files, labels, classes


def _read_image(file: pathlib.Path, size: int, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    try:
        with Image.open(file) as im:
            im = im.convert("RGB" if channels == 3 else "L")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(
            f"{file} is not an image Pillow can read ({type(e).__name__}); fix or remove it"
        ) from e
    return square_crop(im, size)


def square_crop(im, size: int) -> np.ndarray:
    """The centre square of a PIL image, resized to size x size (area-averaged when shrinking)."""
    from PIL import Image

    w, h = im.size
    side = min(w, h)
    im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != size:
        im = im.resize((size, size), Image.Resampling.BOX if side > size else Image.Resampling.BICUBIC)
    return np.asarray(im, np.uint8).reshape(size, size, -1)


def load_images(source: str, size: int, channels: int) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(images (N, size, size, channels) uint8, labels (N,) or None, class names) of `source`."""
    if channels not in (1, 3):
        raise DataError(f"channels={channels} must be 1 (grey) or 3 (RGB)")
    if size < 1:
        raise DataError(f"image_size={size} must be >= 1 (pixels per side); fix --config.data.image_size")
    if not source:  # Path("") is the working directory: never read it by accident
        raise DataError(
            "the image source is empty; set --config.data.source (digits, tfds:NAME, .npz, folder)"
        )
    path = pathlib.Path(source).expanduser()
    if source == "digits":
        images, labels, classes = _digits()
    elif source.startswith("tfds:"):  # prepared as array_record in $TFDS_DATA_DIR; read without TensorFlow
        from gptjax.data.tfds_images import load_tfds_images

        images, labels, classes = load_tfds_images(source[len("tfds:") :])
    elif path.suffix == ".npz" and path.is_file():
        images, labels, classes = _npz(path)
    elif path.is_dir() or any(c in source for c in "*?["):
        files, labels, classes = _image_files(source)
        if not files:
            raise DataError(f"{source} holds no image files ({', '.join(IMAGE_SUFFIXES)}); check the path")
        return np.stack([_read_image(f, size, channels) for f in files]), labels, classes
    elif not path.exists():
        raise DataError(f"image source {source} does not exist; fix --config.data.source")
    else:
        raise DataError(
            f"image source {source!r} is neither 'digits', 'tfds:NAME', an .npz file, a directory nor a glob "
            "of images; fix --config.data.source"
        )
    images = _with_channels(images, channels)
    if images.shape[1:3] != (size, size):
        from PIL import Image

        images = np.stack(
            [square_crop(Image.fromarray(im.squeeze(-1) if channels == 1 else im), size) for im in images]
        )
    return images, labels, classes


def _palette_ids(images_NHWC: np.ndarray, train_idx: np.ndarray, colors: int, palette_KC: np.ndarray | None):
    """(palette, palette id of every pixel (N, H*W) uint16): the palette fitted on the train images unless
    given. Cached under $GPTJAX_CACHE_DIR/images by the images' bytes and the settings: k-means and
    nearest-colour encoding take ~1.5 minutes for CIFAR-10's 61M pixels on 2 cores; a rerun, a resume or
    an evaluation then reads them back."""
    from gptjax.data.tokens import write_atomically  # not at the top: tokens -> tokenizers -> this module

    N, H, W, C = images_NHWC.shape
    h = hashlib.sha256()
    fitted = b"fit" if palette_KC is None else np.ascontiguousarray(palette_KC, np.float32).tobytes()
    for part in (
        str(_CACHE_FORMAT).encode(),
        str((N, H, W, C, colors)).encode(),
        train_idx.tobytes(),
        fitted,
    ):
        h.update(len(part).to_bytes(8, "little") + part)
    h.update(np.ascontiguousarray(images_NHWC).data)
    final = cache_dir() / "images" / h.hexdigest()[:16]
    if (final / "ids.npy").is_file():
        return np.load(final / "palette.npy"), np.load(final / "ids.npy", mmap_mode="r")
    if palette_KC is None:
        palette_KC = fit_palette(images_NHWC[train_idx].reshape(-1, C), colors)
    ids_NP = nearest_color(images_NHWC.reshape(-1, C), palette_KC).reshape(N, H * W)
    try:
        with write_atomically(final) as tmp:
            np.save(tmp / "palette.npy", palette_KC)
            np.save(tmp / "ids.npy", ids_NP)
    except OSError as e:  # a read-only cache: go on without it
        warnings.warn(
            f"could not cache the encoded images in {final} ({e}); they are encoded again next time",
            stacklevel=3,
        )
    return palette_KC, ids_NP


def load_image_dataset(
    source: str,
    *,
    image_size: int,
    colors: int,
    channels: int = 3,
    class_conditional: bool = False,
    val_fraction: float = 0.1,
    tokenizer: PaletteTokenizer | None = None,
):
    """Images of `source` as a Dataset whose train/val are (images, H*W + 1) token rows, split after a
    fixed shuffle (seed 0; the last val_fraction is val). The palette is fitted on the train images unless
    `tokenizer` (a checkpoint's) is given."""
    from gptjax.data.tokens import Dataset  # not at the top: tokens -> tokenizers -> this module

    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction} must be in (0, 1)")
    images, labels, classes = load_images(source, image_size, channels)
    if class_conditional and labels is None:
        root = pathlib.Path(source).expanduser()
        loose = [p for p in _image_files(source)[0] if p.parent == root] if root.is_dir() else []
        if loose and any(p.is_dir() for p in root.iterdir()):
            raise DataError(
                f"{loose[0]} lies beside the class folders of {source}; move it into one, or set "
                "--config.data.class_conditional=False"
            )
        raise DataError(
            f"{source} has no labels (class folders, an .npz 'labels' array); "
            "set --config.data.class_conditional=False"
        )
    order = np.random.default_rng(0).permutation(len(images))
    n_train = int(len(images) * (1 - val_fraction))
    if n_train < 1 or n_train == len(images):
        raise DataError(
            f"{len(images)} images leave an empty split at val_fraction={val_fraction}; add images"
        )
    train_idx, val_idx = order[:n_train], order[n_train:]
    if tokenizer is None:
        palette, pixel_ids = _palette_ids(images, train_idx, colors, None)
        tokenizer = PaletteTokenizer(palette, image_size, image_size, classes if class_conditional else ())
    elif (tokenizer.height, tokenizer.width, tokenizer.channels) != (image_size, image_size, channels):
        raise DataError(
            f"the checkpoint's images are {tokenizer.height}x{tokenizer.width}x{tokenizer.channels}, not "
            f"{image_size}x{image_size}x{channels}; set --config.data.image_size and --config.data.channels "
            "to match"
        )
    elif class_conditional != bool(tokenizer.classes):
        have = "starts each image with its class" if tokenizer.classes else "has no class tokens"
        raise DataError(
            f"the checkpoint's model {have}; set --config.data.class_conditional={bool(tokenizer.classes)}"
        )
    elif class_conditional and tokenizer.classes != classes:
        raise DataError(
            f"{source}'s classes {classes[:10]} differ from the checkpoint's {tokenizer.classes[:10]}"
        )

    else:
        _, pixel_ids = _palette_ids(images, train_idx, colors, tokenizer.centers_KC)

    def rows(idx: np.ndarray) -> np.ndarray:
        start = [tokenizer.class_id(int(c)) for c in labels[idx]] if class_conditional else tokenizer.bos_id
        out = np.empty((len(idx), image_size * image_size + 1), np.uint16)
        out[:, 0] = start
        out[:, 1:] = pixel_ids[idx]
        return out

    train_labels, val_labels = (None, None) if labels is None else (labels[train_idx], labels[val_idx])
    return Dataset(rows(train_idx), rows(val_idx), tokenizer, train_labels, val_labels)
