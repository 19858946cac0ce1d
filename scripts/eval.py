"""Evaluates a checkpoint on a text: loss (nats/token), perplexity, bits per byte and per character; or
on multiple-choice questions (HellaSwag): accuracy.

  python scripts/eval.py --workdir=W --text=FILE [--split=val] [--batch_size=8]
  python scripts/eval.py --workdir=W --split=val --random_batches=2000 [--group=20]
  python scripts/eval.py --workdir=W --split=val     # an image model: every val image, bits per dim
  python scripts/eval.py --workdir=W --choices=hellaswag_val.jsonl [--limit=1000]
  python scripts/eval.py --workdir=RM --pairs=PAIRS.jsonl [--split=val]   # a reward model: accuracy

--text is a file, a glob or "tiny_shakespeare"; --split=val|train takes the part of it that training
used as that split (config.data.val_fraction, cut by characters), default all. --random_batches=N
instead estimates the loss as training logs it (nanoGPT's estimate_loss): N random batches of the
workdir's own data split, and how much the mean of --group of them (eval_iters) scatters. An image
model (configs/digits.py) is evaluated on every image of its own data's --split: nats and bits per
pixel. --choices scores every choice of every example as the continuation of its context
(gptjax.evaluate.read_choices names the formats: HellaSwag's jsonl as published, or context/choices/label)
and gives acc and acc_norm as lm-eval defines them. A reward model (configs/reward.py) is evaluated on
preference pairs (--pairs: a file, glob or directory as config.data.source takes them; --split=train|val
the part training used as that split): the share ranked right, as RewardBench counts it, the mean margin
and reward. Prints one JSON object.
"""

import json
import pathlib

import numpy as np
from absl import flags
from tqdm import tqdm

from gptjax import cli, evaluate, scoring
from gptjax.data import load_text
from gptjax.data.from_config import image_source, load_data
from gptjax.data.preference import pair_records
from gptjax.data.sft import files_name, source_files, train_count
from gptjax.data.sources import BUILTINS
from gptjax.train import load_params

flags.DEFINE_string("workdir", None, "A training or converted workdir (its latest checkpoint).")
flags.DEFINE_string("text", None, "A text file, a glob, or tiny_shakespeare.")
flags.DEFINE_enum("split", "all", ["all", "train", "val"], "Which part of the text to evaluate.")
flags.DEFINE_integer(
    "batch_size", 8, "Windows of block_size tokens (or images) per forward pass.", lower_bound=1
)
flags.DEFINE_integer("step", None, "Checkpoint step (default latest).")
flags.DEFINE_integer(
    "random_batches", 0, "N > 0: the loss of N random batches of the workdir's --split.", lower_bound=0
)
flags.DEFINE_integer(
    "group", 20, "--random_batches: batches per estimate (eval_iters) for the scatter.", lower_bound=1
)
flags.DEFINE_string("source", None, "An image model: images to evaluate on (default: its training data).")
flags.DEFINE_string("choices", None, "A JSON-lines file of multiple-choice examples (HellaSwag's).")
flags.DEFINE_integer("limit", None, "--choices: the first N examples only.", lower_bound=1)
flags.DEFINE_string("pairs", None, "A reward model: preference pairs to rank (JSON lines, Parquet, a glob).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    params, cfg, tokenizer, config = load_params(FLAGS.workdir, FLAGS.step)
    if cfg.score_head or FLAGS.pairs:
        pairs = _pairs(cfg, config)
        result = scoring.pair_accuracy((params, cfg, tokenizer), pairs, FLAGS.batch_size)
        print(json.dumps({"workdir": FLAGS.workdir, "pairs": FLAGS.pairs, "split": FLAGS.split, **result}))
        return
    if FLAGS.choices:
        if tokenizer.kind == "palette":
            raise ValueError("--choices scores text; this is an image model")
        examples = evaluate.read_choices(FLAGS.choices)[: FLAGS.limit]
        progress = lambda xs: tqdm(xs, desc="examples", unit="ex")  # noqa: E731
        result = evaluate.multiple_choice(params, cfg, tokenizer, examples, FLAGS.batch_size, progress)
        print(json.dumps({"workdir": FLAGS.workdir, "choices": FLAGS.choices, **result}))
        return
    if FLAGS.random_batches:
        if FLAGS.split == "all":
            raise ValueError("--random_batches needs --split=train or --split=val")
        if config.data.get("format") == "preference":
            raise ValueError(
                f"{FLAGS.workdir} was trained with DPO on preference pairs, which --random_batches does not "
                "score; its DPO loss and reward accuracy are in metrics.jsonl (or score --text or --choices)"
            )
        dataset = load_data(config.data, tokenizer, block_size=cfg.block_size)
        result = evaluate.random_batch_loss(
            params,
            cfg,
            getattr(dataset, FLAGS.split),
            batch_size=config.batch_size,
            batches=FLAGS.random_batches,
            group=FLAGS.group,
            split=FLAGS.split,
        )
        print(json.dumps({"workdir": FLAGS.workdir, "split": FLAGS.split, **result}))
        return
    if tokenizer.kind == "palette":
        if FLAGS.text:
            raise ValueError("an image model is evaluated on its own images: drop --text")
        dataset = load_data(image_source(config.data, FLAGS.source, FLAGS.workdir), tokenizer)
        splits = ("train", "val") if FLAGS.split == "all" else (FLAGS.split,)
        rows = np.concatenate([getattr(dataset, s) for s in splits])
        result = evaluate.image_loss(params, cfg, rows, FLAGS.batch_size)
        print(json.dumps({"workdir": FLAGS.workdir, "split": FLAGS.split, **result}))
        return
    if not FLAGS.text:
        raise ValueError("pass --text=FILE|GLOB|tiny_shakespeare, or --random_batches=N")
    is_glob = any(c in FLAGS.text for c in "*?[")
    if FLAGS.text not in BUILTINS and not is_glob and not pathlib.Path(FLAGS.text).expanduser().is_file():
        raise FileNotFoundError(  # load_text's own message names train.py's flag
            f"--text={FLAGS.text} is neither a built-in corpus {sorted(BUILTINS)}, a glob nor an existing "
            "file; fix the path"
        )
    text = load_text(FLAGS.text)
    if FLAGS.split != "all":
        n = int(len(text) * (1 - config.data.val_fraction))  # as gptjax.data.prepare_tokens splits
        text = text[:n] if FLAGS.split == "train" else text[n:]
    result = evaluate.text_loss(params, cfg, tokenizer, text, FLAGS.batch_size)
    print(json.dumps({"workdir": FLAGS.workdir, "text": FLAGS.text, "split": FLAGS.split, **result}))


def _pairs(cfg, config) -> list:
    """The --pairs a reward model ranks (their --split, cut as training splits them); one line for a
    language model given --pairs, or a reward model given anything else."""
    if not cfg.score_head:
        raise ValueError(
            f"--pairs ranks preference pairs by a reward model's scores; {FLAGS.workdir} is a language "
            "model: evaluate it with --text, --random_batches or --choices"
        )
    if not FLAGS.pairs or FLAGS.text or FLAGS.choices or FLAGS.random_batches:
        raise ValueError(
            f"{FLAGS.workdir} is a reward model: evaluate it on preference pairs with --pairs=FILE.jsonl "
            "(and no --text, --choices or --random_batches)"
        )
    files = source_files(FLAGS.pairs)
    pairs = pair_records(files)
    if FLAGS.split != "all":
        n = train_count(files_name(files), len(pairs), config.data.get("val_fraction", 0.1), "pair")
        pairs = pairs[:n] if FLAGS.split == "train" else pairs[n:]
    return pairs


if __name__ == "__main__":
    cli.run(main)
