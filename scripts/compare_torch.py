"""Trains one model in gptjax and in PyTorch from the same weights on the same batches; prints JSON.

  python scripts/compare_torch.py --config=configs/shakespeare_char.py:cpu --steps=50 --plot=compare.png

Prints one JSON object: the loss curves (gptjax, torch_eager, torch_compile), the largest relative loss
difference, and training tokens/s of each (warmup excluded). The model keeps the config's model.bias;
dropout is off (the frameworks draw different masks). Needs the `torch` extra. See gptjax/compare_torch.py.
"""

import json

from absl import flags
from ml_collections import config_flags

from gptjax import cli, compare_torch

config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).", lock_config=True)
flags.DEFINE_integer("steps", 50, "Training steps on each side (a multiple of config.steps_per_call).")
flags.DEFINE_boolean("compile", True, "Also time torch.compile (--nocompile skips it).")
flags.DEFINE_string("plot", "compare_torch.png", "Where to write the PNG overlay of the loss curves.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    result = compare_torch.compare(FLAGS.config, steps=FLAGS.steps, torch_compile=FLAGS.compile)
    if FLAGS.plot:
        compare_torch.plot(result, FLAGS.plot)
    print(json.dumps(result))


if __name__ == "__main__":
    cli.run(main)
