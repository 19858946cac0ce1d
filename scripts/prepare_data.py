"""Encodes text files, or JSON-lines/Parquet documents, of any size into token files (train.bin, val.bin,
meta.json), streaming.

  python scripts/prepare_data.py --input='corpus/*.txt' --out_dir=data/corpus_gpt2 --tokenizer=gpt2 --eot
  python scripts/prepare_data.py --input='fineweb-edu/sample/10BT/*.parquet' --out_dir=data/edu_gpt2 \
      --val_fraction=0.005 --num_proc=8

--input: text files, or document files: .jsonl/.json (one JSON object per line; gzipped .gz too) and
.parquet, each record a document in its --text_field. Documents are followed by the end-of-text token
unless --noeot, and the last --val_fraction of them (in file order, not shuffled) are val; text files
are split by bytes, from the next line start, and get the token after each file only with --eot.
--tokenizer: gpt2 (GPT-2 BPE), a GPT-2 ranks file (PATH.tiktoken, offline), byte, char (the corpus's
characters), or a tokenizer JSON file (from scripts/train_tokenizer.py or gptjax.data.save_tokenizer).
--num_proc processes parse JSON lines and encode (the files are the same for any number). A progress bar
on stderr shows the input bytes read and the tokens written (--noprogress hides it). --out_dir is
written whole and then renamed into place: a failed run leaves an older one as it was.
Read the result with gptjax.data.prepare.open_prepared (np.memmap; uint16 below 65,536 ids).
"""

import glob
import os
import pathlib

from absl import flags

from gptjax import cli
from gptjax.data import DataError, prepare

flags.DEFINE_string(
    "input", None, "A file or a glob of them (read in sorted order): text, .jsonl/.json(.gz) or .parquet."
)
flags.DEFINE_string("out_dir", None, "Directory for train.bin, val.bin and meta.json.")
flags.DEFINE_string("tokenizer", "gpt2", "gpt2, a GPT-2 PATH.tiktoken, byte, char, or a tokenizer JSON file.")
flags.DEFINE_float(
    "val_fraction", 0.1, "The last fraction of the documents (JSON lines, Parquet) or text bytes that is val."
)
flags.DEFINE_boolean(
    "eot",
    None,
    "Append the end-of-text token after each document (default for .jsonl/.parquet: --noeot runs the "
    "documents together with nothing between them) or after each text file (default: not).",
)
flags.DEFINE_string("text_field", "text", "The field (JSON lines) or column (Parquet) holding each document.")
flags.DEFINE_integer(
    "num_proc",
    1,
    "Processes that parse JSON lines and encode (os.cpu_count() is a good choice for big inputs).",
)
flags.DEFINE_boolean("progress", True, "Show a progress bar on stderr (--noprogress hides it).")
flags.mark_flags_as_required(["input", "out_dir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    files = [pathlib.Path(f) for f in sorted(glob.glob(os.path.expanduser(FLAGS.input))) if os.path.isfile(f)]
    if not files:
        raise DataError(f"--input={FLAGS.input!r} matches no files")
    tokenizer = prepare.make_tokenizer(FLAGS.tokenizer, files, FLAGS.text_field)
    meta = prepare.prepare_files(
        files,
        FLAGS.out_dir,
        tokenizer,
        val_fraction=FLAGS.val_fraction,
        eot=FLAGS.eot,
        text_field=FLAGS.text_field,
        num_proc=FLAGS.num_proc,
        progress=FLAGS.progress,
    )
    counts = f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens"
    if "train_documents" in meta:
        counts += f" from {meta['train_documents']:,} and {meta['val_documents']:,} documents"
    print(f"{FLAGS.out_dir}: {counts} ({meta['dtype']})")


if __name__ == "__main__":
    cli.run(main)
