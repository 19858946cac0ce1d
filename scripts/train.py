"""Trains a GPT: python scripts/train.py --config=configs/tiny.py --workdir=/tmp/tiny [--config.x=y]"""

from absl import flags
from ml_collections import config_flags

from gptjax import cli, train

config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
