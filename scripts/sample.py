"""Samples text from a trained model: python scripts/sample.py --workdir=W --prompt="ROMEO:"

Options left unset take the values saved with the model's config (config.sample).
"""

from absl import flags

from gptjax import cli, sample
from gptjax.train import load_params

flags.DEFINE_string("workdir", None, "A training workdir (its latest checkpoint is used).")
flags.DEFINE_string("prompt", None, "Text to continue; FILE:path reads it from a file.")
flags.DEFINE_integer("max_new_tokens", None, "Tokens to generate per sample.")
flags.DEFINE_integer("num_samples", 1, "How many samples to draw.")
flags.DEFINE_float("temperature", None, "Softmax temperature; 0 is greedy.")
flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens; 0 keeps all.")
flags.DEFINE_integer("seed", 0, "Same seed, same text.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    params, config, tokenizer, saved = load_params(FLAGS.workdir)
    defaults = saved.get("sample", {})
    pick = lambda flag, key: flag if flag is not None else defaults.get(key)  # noqa: E731
    prompt = pick(FLAGS.prompt, "prompt") or "\n"
    if prompt.startswith("FILE:"):
        with open(prompt[len("FILE:") :], encoding="utf-8") as f:
            prompt = f.read()
    options = sample.SampleOptions(
        max_new_tokens=pick(FLAGS.max_new_tokens, "max_new_tokens"),
        temperature=pick(FLAGS.temperature, "temperature"),
        top_k=pick(FLAGS.top_k, "top_k"),
    )
    ids = sample.generate_tokens(
        params,
        config,
        tokenizer.encode(prompt),
        options,
        num_samples=FLAGS.num_samples,
        seed=FLAGS.seed,
    )
    for i, row in enumerate(ids):
        print(f"----- sample {i} -----\n{prompt}{tokenizer.decode(row)}", flush=True)


if __name__ == "__main__":
    cli.run(main)
