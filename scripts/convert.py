"""Converts GPT-2 and ImageGPT weights between Hugging Face directories and gptjax checkpoints.

  python scripts/convert.py --from_hf=DIR_OR_HUB_ID --workdir=W [--tokenizer=auto|gpt2|byte|tok.json]
  python scripts/convert.py --workdir=W --to_hf=DIR

--from_hf writes W's step 0 (then scripts/sample.py --workdir=W, or train with --config.init_from=W;
training can also start from the HF model itself: --config.init_from=DIR_OR_HUB_ID).
--to_hf writes config.json + model.safetensors for transformers.GPT2LMHeadModel.from_pretrained(DIR), and
the tokenizer's files for transformers.AutoTokenizer.from_pretrained(DIR) when it has an HF equivalent
(GPT-2's BPE: vocab.json + merges.txt; a scripts/train_tokenizer.py BPE: tokenizer.json). A padded
vocabulary (model.vocab_multiple) exports without its pad rows. An ImageGPT (openai/imagegpt-small, ...)
converts with its palette (preprocessor_config.json) both ways: scripts/sample_images.py draws with it.
"""

from absl import flags

from gptjax import cli, convert

flags.DEFINE_string(
    "from_hf", None, "An HF GPT-2 or ImageGPT directory (config.json + weights) or a Hub id like gpt2."
)
flags.DEFINE_string("to_hf", None, "Directory to write the workdir's latest checkpoint to, HF format.")
flags.DEFINE_string("workdir", None, "The gptjax workdir written (--from_hf) or read (--to_hf).")
flags.DEFINE_string(
    "tokenizer", "auto", "--from_hf: auto (GPT-2 BPE for 50257 ids, bytes for 256), or a JSON."
)
flags.DEFINE_integer("step", None, "--to_hf: the checkpoint step (default latest).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if bool(FLAGS.from_hf) == bool(FLAGS.to_hf):
        raise ValueError("pass exactly one of --from_hf=DIR (HF -> gptjax) or --to_hf=DIR (gptjax -> HF)")
    if FLAGS.from_hf:
        cfg = convert.hf_to_workdir(FLAGS.from_hf, FLAGS.workdir, tokenizer=FLAGS.tokenizer)
        print(f"wrote {FLAGS.workdir} (step 0): {cfg}")
    else:
        cfg = convert.workdir_to_hf(FLAGS.workdir, FLAGS.to_hf, FLAGS.step)
        print(f"wrote {FLAGS.to_hf}: {cfg}")


if __name__ == "__main__":
    cli.run(main)
