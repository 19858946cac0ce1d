"""Converts GPT-2 and ImageGPT weights between Hugging Face directories and gptjax checkpoints.

  python scripts/convert.py --from_hf=DIR_OR_HUB_ID --workdir=W [--tokenizer=auto|gpt2|byte|tok.json]
  python scripts/convert.py --workdir=W --to_hf=DIR
  python scripts/convert.py --workdir=W --to_peft=DIR   # a LoRA run's adapters only (gptjax.hf_lora)
  python scripts/convert.py --from_peft=DIR [--from_hf=BASE] --workdir=W   # a PEFT adapter merged in

--from_hf writes W's step 0 (then scripts/sample.py --workdir=W, or train with --config.init_from=W;
training can also start from the HF model itself: --config.init_from=DIR_OR_HUB_ID).
--to_hf writes config.json + model.safetensors for transformers.GPT2LMHeadModel.from_pretrained(DIR), and
the tokenizer's files for transformers.AutoTokenizer.from_pretrained(DIR) when it has an HF equivalent
(GPT-2's BPE: vocab.json + merges.txt; a scripts/train_tokenizer.py BPE: tokenizer.json). A padded
vocabulary (model.vocab_multiple) exports without its pad rows. An ImageGPT (openai/imagegpt-small, ...)
converts with its palette (preprocessor_config.json) both ways: scripts/sample_images.py draws with it.
--to_peft writes a LoRA run's adapters as PEFT's adapter_config.json + adapter_model.safetensors, for
peft.PeftModel.from_pretrained(base, DIR) on the base it fine-tuned in HF format (--to_hf merges them).
--from_peft merges a PEFT LoRA adapter into its base (adapter_config.json's base_model_name_or_path, or
--from_hf) and writes that model as W's step 0.
"""

from absl import flags

from gptjax import cli, convert, hf_lora

flags.DEFINE_string(
    "from_hf", None, "An HF GPT-2 or ImageGPT directory (config.json + weights) or a Hub id like gpt2."
)
flags.DEFINE_string("to_hf", None, "Directory to write the workdir's latest checkpoint to, HF format.")
flags.DEFINE_string("from_peft", None, "A PEFT LoRA adapter directory to merge into its HF base.")
flags.DEFINE_string("to_peft", None, "Directory to write a LoRA run's adapters to, PEFT format.")
flags.DEFINE_string("workdir", None, "The gptjax workdir written (--from_hf) or read (--to_hf, --to_peft).")
flags.DEFINE_string(
    "tokenizer", "auto", "--from_hf: auto (GPT-2 BPE for 50257 ids, bytes for 256), or a JSON."
)
flags.DEFINE_integer("step", None, "--to_hf, --to_peft: the checkpoint step (default latest).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if sum(map(bool, (FLAGS.from_hf or FLAGS.from_peft, FLAGS.to_hf, FLAGS.to_peft))) != 1:
        raise ValueError(
            "pass exactly one of --from_hf=DIR (HF -> gptjax; with --from_peft, the adapter's base), "
            "--from_peft=DIR (a PEFT adapter merged -> gptjax), --to_hf=DIR (gptjax -> HF) or "
            "--to_peft=DIR (a LoRA run's adapters -> PEFT)"
        )
    if FLAGS.from_peft:
        cfg, base = hf_lora.peft_to_workdir(FLAGS.from_peft, FLAGS.workdir, FLAGS.from_hf, FLAGS.tokenizer)
        print(f"wrote {FLAGS.workdir} (step 0): {base} with {FLAGS.from_peft} merged: {cfg}")
    elif FLAGS.to_peft:
        base, is_workdir = hf_lora.workdir_to_peft(FLAGS.workdir, FLAGS.to_peft, FLAGS.step)
        print(f"wrote {FLAGS.to_peft}: the adapters of {FLAGS.workdir} on its base {base}")
        if is_workdir:
            print(f"for PEFT, export the base in HF format too: --workdir={base} --to_hf=DIR")
    elif FLAGS.from_hf:
        cfg = convert.hf_to_workdir(FLAGS.from_hf, FLAGS.workdir, tokenizer=FLAGS.tokenizer)
        print(f"wrote {FLAGS.workdir} (step 0): {cfg}")
    else:
        cfg = convert.workdir_to_hf(FLAGS.workdir, FLAGS.to_hf, FLAGS.step)
        print(f"wrote {FLAGS.to_hf}: {cfg}")


if __name__ == "__main__":
    cli.run(main)
