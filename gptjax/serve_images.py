"""POST /v1/images of gptjax.serve, for an image model:

{"classes": [...], "n": 8, "temperature", "top_k", "top_p", "min_p", "seed"}
    -> {"png": base64 PNG grid (a row per class), "classes", "shape", "seed"}
with "image" (a base64 PNG/JPEG or a data: URL) and "given_rows" (default: half the height): n completions
of its bottom rows, the image cropped and resized as training reads image files: a one-row grid of
original, given, completions.
"""

import base64
import io
from typing import Any

import numpy as np

from gptjax import image
from gptjax.data.images import square_crop
from gptjax.serve import IMAGE_OPTIONS, BadRequest, Served, request_seed

# An image to complete: a PNG of 1 MiB can hold gigapixels of one colour; refused from its header, unread.
MAX_IMAGE_PIXELS = 4096 * 4096
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")  # what a browser sends; Pillow tries no other decoder


def _given_image(data: Any, tok: Any) -> np.ndarray:
    """The pixels (H, W, C) of a request's "image" (base64 or a data: URL), cropped and resized to the
    model's size and converted to its channels as training reads image files (gptjax.data.images)."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    if not isinstance(data, str):
        raise BadRequest(f"image must be a base64 string (a PNG or JPEG file), not {type(data).__name__}")
    if data.startswith("data:"):  # a data URL, as a browser's FileReader.readAsDataURL gives
        head, _, data = data.partition(",")
        if not head.endswith(";base64"):
            raise BadRequest(f"image is a data URL of {head!r}, not base64; send data:image/png;base64,...")
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except ValueError as e:
        raise BadRequest(f"image is not base64 ({e})") from None
    too_big = f"more than this server's {MAX_IMAGE_PIXELS:,} pixels; send a smaller one"
    try:
        im = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)  # reads the header only
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise BadRequest(f"image is {im.width}x{im.height}, {too_big}")
        im = im.convert("RGB" if tok.channels == 3 else "L")
    except Image.DecompressionBombError:  # Pillow's own limit, far above this server's
        raise BadRequest(f"image has {too_big}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise BadRequest(
            f"image is not a {', '.join(IMAGE_FORMATS)} file Pillow can read ({type(e).__name__}: {e})"
        ) from None
    return square_crop(im, tok.height)


def _rows_to_complete(tok: Any, data: Any, given_rows: Any, classes: list | None) -> tuple[np.ndarray, int]:
    """(the token row (1, 1 + H*W) of a request's image, started by its class if the model has classes,
    and its given_rows: by default half the height) for image.complete, which checks the range."""
    given_rows = tok.height // 2 if given_rows is None else given_rows
    if not isinstance(given_rows, int) or isinstance(given_rows, bool):
        raise BadRequest(f"given_rows={given_rows!r} must be an integer in [0, {tok.height})")
    if tok.classes and (classes is None or len(classes) != 1):
        raise BadRequest(
            f"this model starts each image with its class: name one of {tok.classes} in classes to "
            "complete an image"
        )
    if not tok.classes and classes is not None:
        raise BadRequest("this model was trained without classes; drop classes to complete an image")
    return image.token_rows(tok, _given_image(data, tok)[None], classes[0] if classes else None), given_rows


def images(served: Served, body: dict) -> dict:
    """A PNG grid of new images: a row per class (every class when none are named), n per row; or, given
    an "image", one row: it, its top `given_rows` pixel rows given, and n completions of the rest."""
    if not served.is_image:
        raise BadRequest("this model writes text; POST /v1/completions")
    body = dict(body)
    classes, n = body.pop("classes", None), body.pop("n", None)
    given, given_rows = body.pop("image", None), body.pop("given_rows", None)
    n = 8 if n is None else n  # null: the default, as for every other field
    if isinstance(classes, str | int) and not isinstance(classes, bool):
        classes = [classes]
    if classes == []:
        raise BadRequest("classes is empty; leave it out to draw every class")
    if classes is not None and not (
        isinstance(classes, list)
        and all(isinstance(c, str | int) and not isinstance(c, bool) for c in classes)
    ):
        raise BadRequest(f"classes={classes!r} must be a list of class names or indices")
    options = {k: v for k, v in body.items() if v is not None}
    unknown = sorted(set(options) - set(IMAGE_OPTIONS))
    if unknown:
        raise BadRequest(
            f"unknown fields {unknown}; known: classes, n, image, given_rows, {', '.join(IMAGE_OPTIONS)}"
        )
    if not isinstance(n, int) or not 1 <= n <= 64:
        raise BadRequest(f"n={n!r} must be an integer in [1, 64]")
    tok = served.tokenizer
    if given is not None:
        rows, given_rows = _rows_to_complete(tok, given, given_rows, classes)
    elif given_rows is not None:
        raise BadRequest("given_rows goes with an image to complete; add image or drop given_rows")
    options["seed"] = request_seed(served, options)
    with served.lock:
        if given is None:
            grid = image.draw(served.model, classes, n, **options)
        else:
            drawn = image.complete(served.model, rows, given_rows, n, **options)
            grid = image.completion_grid(tok.decode_images(rows[:, 1:]), drawn, given_rows)
    png = io.BytesIO()
    image.grid_image(grid).save(png, format="PNG")
    names = [c if isinstance(c, str) else tok.classes[c] for c in classes] if classes else tok.classes
    png = base64.b64encode(png.getvalue()).decode("ascii")
    return {"png": png, "classes": names, "shape": list(grid.shape), "seed": options["seed"]}
