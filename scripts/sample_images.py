"""Draws images with a model trained on images (configs/digits.py, data.tokenizer="palette") into a PNG.

  python scripts/sample_images.py --workdir=W                          # a row of new images per class
  python scripts/sample_images.py --workdir=W --classes=3,7 --num_samples=16 --temperature=0.9
  python scripts/sample_images.py --workdir=W --complete=8             # iGPT's completions of val images

--complete=N takes the first N validation images, gives the model their top --given_rows pixel rows and
draws the rest --num_samples times: each grid row shows the original, what was given, then the samples.
With --source (a folder, glob, .npz, ...: config.data.source's forms) it takes the first N images there
instead, resized to the model's size: e.g. for a model converted from HF ImageGPT, which has no data.
"""

import numpy as np
from absl import flags

from gptjax import cli, image, train
from gptjax.data.from_config import image_source, load_data
from gptjax.data.images import load_images

flags.DEFINE_string("workdir", None, "A training workdir of an image model (its latest checkpoint).")
flags.DEFINE_list("classes", None, "Classes to draw, by name or index (default: every class, a row each).")
flags.DEFINE_integer("num_samples", 8, "Images per class (or per completed image).", lower_bound=1)
flags.DEFINE_integer(
    "complete", 0, "Complete this many validation images instead of drawing new ones.", lower_bound=0
)
flags.DEFINE_integer("given_rows", None, "--complete: pixel rows given to the model (default: half).")
flags.DEFINE_string("source", None, "--complete: images to complete (default: the training data's val).")
flags.DEFINE_float("temperature", None, "Softmax temperature; 0 is greedy (default: config.sample).")
flags.DEFINE_integer("top_k", None, "Sample among the k most likely colours; 0 keeps all.")
flags.DEFINE_float("top_p", None, "Sample among the most likely colours holding this mass, in (0, 1].")
flags.DEFINE_integer("seed", None, "Same seed, same images.")
flags.DEFINE_string("out", None, "PNG to write (default: WORKDIR/samples.png or WORKDIR/completions.png).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def completion_rows(config, tok) -> np.ndarray:
    """Token rows (start token, pixels) of the images --complete draws from: --source's, else val's."""
    if FLAGS.source:
        if tok.classes:
            raise ValueError(
                "--source images have no class, which this class-conditional model starts each image "
                "with; leave --source out to complete its validation images"
            )
        images, _, _ = load_images(FLAGS.source, tok.height, tok.channels)
        return image.token_rows(tok, images)
    return load_data(image_source(config.data, None, FLAGS.workdir), tok).val


def main(argv):
    del argv
    params, cfg, tok, config = train.load_params(FLAGS.workdir)
    model = (params, cfg, tok, config)
    if getattr(tok, "kind", None) != "palette":
        raise ValueError(f"{FLAGS.workdir} holds a text model ({tok.kind!r} tokens); use scripts/sample.py")
    options = {
        k: FLAGS[k].value for k in ("temperature", "top_k", "top_p", "seed") if FLAGS[k].value is not None
    }
    if FLAGS.complete > 0:
        if FLAGS.classes:
            raise ValueError("--classes draws new images; --complete takes validation images as they come")
        rows = completion_rows(config, tok)
        kind = "--source" if FLAGS.source else "validation"
        if FLAGS.complete > len(rows):
            print(f"note: --complete={FLAGS.complete}, but there are {len(rows)} {kind} images", flush=True)
        rows = rows[: FLAGS.complete]
        given = tok.height // 2 if FLAGS.given_rows is None else FLAGS.given_rows
        drawn = image.complete(model, rows, given, FLAGS.num_samples, **options)
        grid = image.completion_grid(tok.decode_images(rows[:, 1:]), drawn, given)
        path = image.save_grid(grid, FLAGS.out or f"{FLAGS.workdir}/completions.png")
        print(
            f"wrote {path}: {len(rows)} {kind} images (original, top {given} rows given, "
            f"{FLAGS.num_samples} completions)"
        )
        return
    classes = FLAGS.classes
    if classes is not None:
        classes = [c if c in tok.classes or not c.isdigit() else int(c) for c in classes]
    drawn = image.draw(model, classes, FLAGS.num_samples, **options)
    path = image.save_grid(drawn, FLAGS.out or f"{FLAGS.workdir}/samples.png")
    names = [tok.classes[c] if isinstance(c, int) else c for c in classes] if classes else tok.classes
    rows = f"{drawn.shape[0]} row{'s' * (drawn.shape[0] > 1)}"
    print(f"wrote {path}: {rows} ({', '.join(names) or 'unconditional'}) of {FLAGS.num_samples} images")


if __name__ == "__main__":
    cli.run(main)
