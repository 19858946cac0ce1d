"""Encodes text files of any size into token files (train.bin, val.bin, meta.json), streaming.

  python scripts/prepare_data.py --input='corpus/*.txt' --out_dir=data/corpus_gpt2 --tokenizer=gpt2 --eot

--tokenizer: gpt2 (GPT-2 BPE), a GPT-2 ranks file (PATH.tiktoken, offline), byte, char (the corpus's
characters), or a tokenizer JSON file (from scripts/train_tokenizer.py or gptjax.data.save_tokenizer).
The last --val_fraction of the bytes is val, from the next line start. --out_dir is written whole and
then renamed into place: a failed run leaves an older one as it was.
Read the result with gptjax.data.prepare.open_prepared (np.memmap; uint16 below 65,536 ids).
"""

import glob
import os
import pathlib

from absl import flags

from gptjax import cli
from gptjax.data import DataError, prepare

flags.DEFINE_string("input", None, "A text file or a glob of them (read in sorted order).")
flags.DEFINE_string("out_dir", None, "Directory for train.bin, val.bin and meta.json.")
flags.DEFINE_string("tokenizer", "gpt2", "gpt2, a GPT-2 PATH.tiktoken, byte, char, or a tokenizer JSON file.")
flags.DEFINE_float("val_fraction", 0.1, "The last fraction of the text (by bytes) that is the val split.")
flags.DEFINE_boolean("eot", False, "Append the end-of-text token after each file (documents).")
flags.mark_flags_as_required(["input", "out_dir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    files = [pathlib.Path(f) for f in sorted(glob.glob(os.path.expanduser(FLAGS.input))) if os.path.isfile(f)]
    if not files:
        raise DataError(f"--input={FLAGS.input!r} matches no files")
    tokenizer = prepare.make_tokenizer(FLAGS.tokenizer, files)
    meta = prepare.prepare_files(
        files, FLAGS.out_dir, tokenizer, val_fraction=FLAGS.val_fraction, eot=FLAGS.eot
    )
    counts = f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens"
    print(f"{FLAGS.out_dir}: {counts} ({meta['dtype']})")


if __name__ == "__main__":
    cli.run(main)
