"""iGPT's linear probe of an unconditional image model: the val accuracy of a logistic regression on each
layer's features (gptjax/probe.py); prints a JSON line per layer, then the best.

  python scripts/train.py --config=configs/digits.py:uncond --workdir=runs/digits_uncond
  python scripts/probe.py --workdir=runs/digits_uncond [--layers=2,3]
"""

import json

from absl import flags

from gptjax import cli, probe
from gptjax.data.from_config import image_source, load_data
from gptjax.train import load_params

flags.DEFINE_string("workdir", None, "A training workdir of an unconditional image model.")
flags.DEFINE_list("layers", None, "Layers to probe (0: the embeddings; default: every one).")
flags.DEFINE_integer("batch_size", 64, "Images per forward pass.", lower_bound=1)
flags.DEFINE_string("source", None, "Labelled images to probe on (default: the workdir's training data).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.layers is not None and not (FLAGS.layers and all(x.isdigit() for x in FLAGS.layers)):
        raise ValueError(
            f"--layers={','.join(FLAGS.layers)} must be layer numbers, e.g. --layers=0,2 (0: the "
            "embeddings); leave it out to probe every layer"
        )
    params, cfg, tok, config = load_params(FLAGS.workdir)
    if getattr(tok, "kind", None) != "palette":
        raise ValueError(f"{FLAGS.workdir} holds a text model ({tok.kind!r} tokens); the probe is for images")
    layers = None if FLAGS.layers is None else [int(x) for x in FLAGS.layers]
    data = load_data(image_source(config.data, FLAGS.source, FLAGS.workdir), tok)
    results = probe.probe((params, cfg, tok), data, layers, FLAGS.batch_size)
    for row in results:
        print(json.dumps(row), flush=True)
    best = max(results, key=lambda r: r["val_accuracy"])
    print(
        json.dumps(
            {"workdir": FLAGS.workdir, "best_layer": best["layer"], "val_accuracy": best["val_accuracy"]}
        )
    )


if __name__ == "__main__":
    cli.run(main)
