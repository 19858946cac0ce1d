"""Trains a byte-level BPE tokenizer (GPT-2's scheme) on your corpus with Hugging Face `tokenizers`.

  python scripts/train_tokenizer.py --input='corpus/*.txt' --vocab_size=8192 --out=tokenizer.json
  python scripts/prepare_data.py --input='corpus/*.txt' --tokenizer=tokenizer.json --out_dir=data/corpus

--out is a gptjax tokenizer JSON (kind "hf", the HF tokenizer inside it): gptjax.data.load_tokenizer,
scripts/prepare_data.py and scripts/convert.py --tokenizer read it. Needs `pip install tokenizers`.
"""

import glob
import os

from absl import flags

from gptjax import cli
from gptjax.data import DataError, bpe, save_tokenizer

flags.DEFINE_string("input", None, "A text file or a glob of them.")
flags.DEFINE_integer("vocab_size", 8192, "Ids in all: 256 bytes, <|endoftext|> (id 0) and the merges.")
flags.DEFINE_integer("min_frequency", 2, "A pair is merged only if it occurs at least this often.")
flags.DEFINE_string("out", None, "Where to write the gptjax tokenizer JSON.")
flags.mark_flags_as_required(["input", "out"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    files = [f for f in sorted(glob.glob(os.path.expanduser(FLAGS.input))) if os.path.isfile(f)]
    if not files:
        raise DataError(f"--input={FLAGS.input!r} matches no files")
    out_dir = os.path.dirname(os.path.abspath(FLAGS.out))  # checked before the (long) training
    if os.path.isdir(FLAGS.out):
        raise IsADirectoryError(
            f"--out={FLAGS.out} is a directory; give a file path, e.g. {FLAGS.out}/tokenizer.json"
        )
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"--out={FLAGS.out}: the directory {out_dir} does not exist; create it first")
    tok = bpe.train_bpe(files, FLAGS.vocab_size, FLAGS.min_frequency)
    save_tokenizer(tok, FLAGS.out)
    with open(files[0], encoding="utf-8") as f:
        sample = f.read(1 << 20)
    ratio = len(sample.encode("utf-8")) / max(len(tok.encode(sample)), 1)
    print(f"{FLAGS.out}: {tok.vocab_size} ids, {ratio:.2f} bytes per token on {files[0]}")


if __name__ == "__main__":
    cli.run(main)
