"""Evaluates a checkpoint on a text: loss (nats/token), perplexity, bits per byte and per character.

  python scripts/eval.py --workdir=W --text=FILE [--split=val] [--batch_size=8]

--text is a file, a glob or "tiny_shakespeare"; --split=val|train takes the part of it that training
used as that split (config.data.val_fraction, cut by characters), default all. Prints one JSON object.
"""

import json

from absl import flags

from gptjax import cli, evaluate
from gptjax.data import load_text
from gptjax.train import load_params

flags.DEFINE_string("workdir", None, "A training or converted workdir (its latest checkpoint).")
flags.DEFINE_string("text", None, "A text file, a glob, or tiny_shakespeare.")
flags.DEFINE_enum("split", "all", ["all", "train", "val"], "Which part of the text to evaluate.")
flags.DEFINE_integer("batch_size", 8, "Windows of block_size tokens per forward pass.")
flags.DEFINE_integer("step", None, "Checkpoint step (default latest).")
flags.mark_flags_as_required(["workdir", "text"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    params, cfg, tokenizer, config = load_params(FLAGS.workdir, FLAGS.step)
    text = load_text(FLAGS.text)
    if FLAGS.split != "all":
        n = int(len(text) * (1 - config.data.val_fraction))  # as gptjax.data.prepare_tokens splits
        text = text[:n] if FLAGS.split == "train" else text[n:]
    result = evaluate.text_loss(params, cfg, tokenizer, text, FLAGS.batch_size)
    print(json.dumps({"workdir": FLAGS.workdir, "text": FLAGS.text, "split": FLAGS.split, **result}))


if __name__ == "__main__":
    cli.run(main)
