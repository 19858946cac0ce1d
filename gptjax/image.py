"""Drawing with an image model (config.data.tokenizer = "palette", gptjax.data.images): new images of a
class, completions of half-given images (iGPT's figure), and PNG grids of them.

Every image is decoded pixel by pixel with the KV-cache decoder (gptjax.sample.generate_ids); only the
palette's colours may be drawn (the start and class tokens are suppressed), so each sample is a whole
image of height x width pixels.
"""

import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from gptjax import sample
from gptjax.data.images import PaletteTokenizer
from gptjax.model import merge_lora


def _image_model(model: Any) -> tuple[Any, Any, PaletteTokenizer, dict]:
    """(params, GPTConfig, tokenizer, saved sample options) of a workdir or a tuple, read once."""
    params, config, tokenizer, saved = sample.load(model)
    if not isinstance(tokenizer, PaletteTokenizer):
        raise ValueError(
            f"this model was trained on {tokenizer.kind!r} tokens, not images; use scripts/sample.py for text"
        )
    return params, config, tokenizer, saved


MAX_ROWS = 256  # sequences decoded together (prompts x samples)


def _draw(model: tuple, prompts: list[list[int]], num_samples: int, options: dict) -> np.ndarray:
    """Images (prompts, num_samples, H, W, C) that continue each prompt (a start token and given pixels)."""
    params, config, tok, saved = model
    n_pixels = tok.height * tok.width
    new = n_pixels + 1 - len(prompts[0])
    opts = sample.merged_options(
        {k: v for k, v in saved.items() if k in ("temperature", "top_k", "top_p", "min_p", "seed")},
        tok,
        **options,
        max_new_tokens=new,
        min_new_tokens=None,
        num_return_sequences=num_samples,
        suppress_tokens=list(range(tok.num_colors, config.vocab_size)),  # colours only
    )
    # At most MAX_ROWS rows per decoding call: memory stays bounded, and XLA had spent minutes
    # constant-folding the prefill of one call of 1,440 rows. Every call has the same shape (the last
    # group padded with copies of its first prompt), so one compilation serves them all. A row's pixels
    # depend only on its prompt, the seed and its sample index, never on the rest of its call.
    group = max(1, MAX_ROWS // num_samples)
    ids = []
    for i in range(0, len(prompts), group):
        chunk = prompts[i : i + group]
        padded = chunk + [chunk[0]] * (min(group, len(prompts)) - len(chunk))
        ids += sample.generate_ids(params, config, padded, opts)[: len(chunk)]
    pixels = [
        np.concatenate([np.asarray(p[1:], np.int32), s])
        for p, seqs in zip(prompts, ids, strict=True)
        for s in seqs
    ]
    return tok.decode_images(np.stack(pixels)).reshape(len(prompts), num_samples, tok.height, tok.width, -1)


def draw(
    model: Any, classes: Sequence[int | str] | None = None, num_samples: int = 8, **options
) -> np.ndarray:
    """New images (len(classes) or 1, num_samples, H, W, C) uint8, a row per class (index or name);
    classes=None: every class of a class-conditional model, else one row from SOS. model: a workdir or
    (params, GPTConfig, tokenizer); options: GenerateOptions fields (temperature, top_k, top_p, seed ...)."""
    model = _image_model(model)
    tok = model[2]
    if classes is None:
        classes = range(len(tok.classes)) if tok.classes else [None]
    if not len(classes):
        raise ValueError("classes is empty; pass None to draw every class")
    if not tok.classes and any(c is not None for c in classes):
        raise ValueError(
            "this model was trained without classes (data.class_conditional=False); drop classes"
        )
    if tok.classes and None in classes:
        raise ValueError(f"this model draws a class of {tok.classes}: name one for every row")
    starts = [[tok.bos_id] if c is None else [tok.class_id(c)] for c in classes]
    return _draw(model, starts, num_samples, options)


def complete(model: Any, rows_NL: np.ndarray, given_rows: int, num_samples: int = 4, **options) -> np.ndarray:
    """Completions (N, num_samples, H, W, C) of images whose first `given_rows` pixel rows are given.
    rows_NL: token rows as gptjax.data.load_image_dataset makes them (start token, then H*W pixels)."""
    model = _image_model(model)
    tok = model[2]
    rows_NL = np.asarray(rows_NL)
    if rows_NL.ndim != 2 or rows_NL.shape[1] != tok.height * tok.width + 1:
        raise ValueError(
            f"rows of shape {rows_NL.shape} are not (N, 1 + {tok.height * tok.width}) token rows"
        )
    if not 0 <= given_rows < tok.height:
        raise ValueError(f"given_rows={given_rows} must be in [0, {tok.height}): at least one row is drawn")
    prompts = [list(map(int, r[: 1 + given_rows * tok.width])) for r in rows_NL]
    return _draw(model, prompts, num_samples, options)


def token_rows(tok: PaletteTokenizer, images_NHWC: np.ndarray, label: int | str | None = None) -> np.ndarray:
    """Token rows (N, 1 + H*W) of images of the model's size, as complete takes them: the start token of
    class `label` (None: SOS, for an unconditional model), then each pixel's palette id."""
    start = tok.bos_id if label is None else tok.class_id(label)
    return np.concatenate([np.full((len(images_NHWC), 1), start), tok.encode_images(images_NHWC)], axis=1)


GIVEN_SHADE = 128  # the grey that stands for the pixels the model was not given


def completion_grid(originals_NHWC: np.ndarray, drawn_NSHWC: np.ndarray, given_rows: int) -> np.ndarray:
    """Images (N, 2 + S, H, W, C) showing completions, a row per image: its original, what the model was
    given (its top `given_rows` pixel rows, the rest shaded GIVEN_SHADE), then its S completions."""
    shown = np.array(originals_NHWC)
    shown[:, given_rows:] = GIVEN_SHADE
    return np.concatenate([originals_NHWC[:, None], shown[:, None], drawn_NSHWC], axis=1)


def grid_image(images_RCHWC: np.ndarray, min_side: int = 64):
    """A PIL image of images (rows, columns, H, W, C) with 1-pixel white gaps, each image scaled up by a
    whole factor (nearest neighbour: pixels stay square) to at least `min_side` pixels."""
    from PIL import Image  # Pillow comes with matplotlib

    images_RCHWC = np.asarray(images_RCHWC, np.uint8)
    R, C, H, W, ch = images_RCHWC.shape
    s = max(1, -(-min_side // max(H, W)))
    big = images_RCHWC.repeat(s, axis=2).repeat(s, axis=3)
    grid = np.full((R * (H * s + 1) + 1, C * (W * s + 1) + 1, ch), 255, np.uint8)
    for r in range(R):
        for c in range(C):
            y, x = 1 + r * (H * s + 1), 1 + c * (W * s + 1)
            grid[y : y + H * s, x : x + W * s] = big[r, c]
    return Image.fromarray(grid.squeeze(-1) if ch == 1 else grid)


def save_grid(images_RCHWC: np.ndarray, path: str | pathlib.Path, min_side: int = 64) -> pathlib.Path:
    """Writes grid_image(images_RCHWC) as a PNG; returns its path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images_RCHWC, min_side).save(path)
    return path


def samples_png(params: Any, cfg: Any, tokenizer: PaletteTokenizer, config: Any, workdir: pathlib.Path):
    """Draws 8 images with a trained model's `params` (a GPTConfig `cfg`, LoRA unmerged) into
    workdir/samples.png; returns a line saying so, or why it cannot (parameters sharded over processes)."""
    readable = lambda x: not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated  # noqa: E731
    if not all(map(readable, jax.tree_util.tree_leaves(params))):  # process 0 alone cannot read them
        return (
            f"no samples.png: the parameters span processes; run scripts/sample_images.py --workdir={workdir}"
        )
    model = (*merge_lora(jax.device_get(params), cfg), tokenizer, config)
    grid = draw(model, num_samples=8, seed=config.seed)
    return f"drew {save_grid(grid, workdir / 'samples.png')}"
