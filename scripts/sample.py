"""Samples text from a trained model.

  python scripts/sample.py --workdir=W --prompt="ROMEO:" --num_samples=3 --top_p=0.9 --seed=1
  python scripts/sample.py --workdir=W --prompt=FILE:prompt.txt --num_beams=4 --out=samples.jsonl
  python scripts/sample.py --workdir=W --assistant=DRAFT_WORKDIR --num_assistant_tokens=5 --temperature=1
  python scripts/sample.py --workdir=W --prompt=FILE:article.txt --prompt_lookup_num_tokens=10   # no draft
  python scripts/sample.py --workdir=W --chat --prompt="What is 2+2?"   # a model fine-tuned on conversations
  python scripts/sample.py --workdir=W --reward_model=RM --best_of=16 --num_samples=2   # best-of-n

Options left unset take the values saved with the model's config (config.sample), then the defaults of
gptjax.sample.GenerateOptions (HF generate() names and meanings). One sample streams to the terminal as
it is generated; several are printed when done. --out=F.jsonl also writes one JSON object per sample.
With --reward_model (a configs/reward.py workdir) each prompt's samples are scored by it (gptjax.scoring)
and printed best first, each with its reward; --best_of=N generates N and prints the best --num_samples.
"""

import contextlib
import dataclasses
import json
import sys

from absl import flags

from gptjax import cli, sample, scoring
from gptjax.data import chat

flags.DEFINE_string(
    "workdir", None, "A training workdir (its latest checkpoint is used), or an HF model directory as it is."
)
flags.DEFINE_multi_string(
    "prompt", None, "Text to continue (\\n etc. understood); FILE:path reads a file as it is. Repeatable."
)
flags.DEFINE_boolean(
    "chat",
    False,
    'Each --prompt is a user message, which the model (fine-tuned on {"messages"} conversations) answers:'
    " ChatML as training writes it (gptjax.data.chat), stopped at <|im_end|>, or the model's own chat"
    " template and end tokens; only the answer is printed.",
)
flags.DEFINE_integer("num_samples", 1, "Sequences per prompt (samples, or the best beams).")
flags.DEFINE_string(
    "out",
    None,
    "Also write the samples to this .jsonl file (prompt, text, num_tokens, logprobs: the model's log p of"
    " each new token, options).",
)
flags.DEFINE_integer("max_new_tokens", None, "Tokens to generate per sample.")
flags.DEFINE_integer("max_length", None, "Longest prompt + new tokens (when max_new_tokens is unset).")
flags.DEFINE_integer("min_new_tokens", None, "No EOS token before this many new tokens.")
flags.DEFINE_integer("min_length", None, "No EOS token before the longest prompt + new tokens reach this.")
flags.DEFINE_boolean("do_sample", None, "Sample (default) or decode greedily (--nodo_sample).")
flags.DEFINE_float("temperature", None, "Softmax temperature; 0 is greedy.")
flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens; 0 keeps all.")
flags.DEFINE_float(
    "top_p", None, "Sample among the most likely tokens holding this probability mass, in (0, 1]."
)
flags.DEFINE_float("min_p", None, "Drop tokens less likely than min_p times the most likely one.")
flags.DEFINE_float("typical_p", None, "Locally typical sampling: keep this mass of the most typical tokens.")
flags.DEFINE_float("epsilon_cutoff", None, "Drop tokens less likely than this, in [0, 1).")
flags.DEFINE_float("eta_cutoff", None, "Drop tokens below min(eta, sqrt(eta) * exp(-entropy)), in [0, 1).")
flags.DEFINE_float("repetition_penalty", None, "> 1 makes tokens already in the text less likely.")
flags.DEFINE_integer("no_repeat_ngram_size", None, "No n-gram of this many tokens occurs twice.")
flags.DEFINE_multi_string(
    "bad_words", None, "Text never generated, encoded as given (GPT-2: ' word' with its space); repeatable."
)
flags.DEFINE_multi_integer("suppress_tokens", None, "A token id never generated; repeat for several.")
flags.DEFINE_multi_integer("begin_suppress_tokens", None, "A token id never generated first; repeatable.")
flags.DEFINE_integer(
    "num_beams", None, "Beam search with this many beams (deterministic; with --do_sample, beam sampling)."
)
flags.DEFINE_float("length_penalty", None, "Beam search: score = sum(log p) / length ** length_penalty.")
flags.DEFINE_enum("early_stopping", None, ["true", "false", "never"], "Beam search stopping rule (HF's).")
flags.DEFINE_multi_integer("eos_token_id", None, "A sample ends after this token; repeat for several.")
flags.DEFINE_multi_string("stop", None, "The text ends before this string (\\n etc. understood); repeatable.")
flags.DEFINE_integer("seed", None, "Same seed, same text.")
flags.DEFINE_string(
    "assistant",
    None,
    "Assisted generation: a draft model's workdir (same tokenizer, smaller model) proposes tokens that the"
    " model checks in one pass; the same text distribution, faster. Prints the acceptance rate to stderr.",
)
flags.DEFINE_integer("num_assistant_tokens", 5, "Assisted generation: tokens the draft proposes at a time.")
flags.DEFINE_integer(
    "prompt_lookup_num_tokens",
    None,
    "Prompt lookup decoding: propose up to this many tokens that followed an earlier occurrence of the"
    " text's last n-gram (no draft model; pays where the text repeats its prompt). Prints the acceptance"
    " rate to stderr.",
)
flags.DEFINE_integer("max_matching_ngram_size", None, "Prompt lookup: the longest n-gram looked up (2).")
flags.DEFINE_string(
    "reward_model",
    None,
    "A reward model's workdir (configs/reward.py): it scores each prompt's samples, printed best first with"
    " their rewards (best-of-n). Its own tokenizer reads the texts.",
)
flags.DEFINE_integer(
    "best_of",
    None,
    "With --reward_model: generate this many samples per prompt, print the best --num_samples.",
)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS

OPTIONS = [f.name for f in dataclasses.fields(sample.GenerateOptions) if f.name in FLAGS]


def read_prompt(prompt: str) -> str:
    if prompt.startswith("FILE:"):
        with open(prompt[len("FILE:") :], encoding="utf-8") as f:
            return f.read()
    return cli.unescape(prompt)


def main(argv):
    del argv
    n = scoring.samples_to_draw(FLAGS.num_samples, FLAGS.best_of, FLAGS.reward_model)
    model = sample.load(FLAGS.workdir)
    rm = scoring.RewardModel.load(FLAGS.reward_model) if FLAGS.reward_model else None
    prompts = [read_prompt(p) for p in FLAGS.prompt or [model[3].get("prompt") or "\n"]]
    options = {name: FLAGS[name].value for name in OPTIONS if FLAGS[name].value is not None}
    if "early_stopping" in options:
        options["early_stopping"] = {"true": True, "false": False, "never": "never"}[
            options["early_stopping"]
        ]
    if "stop" in options:
        options["stop"] = [cli.unescape(s) for s in options["stop"]]
    shown_prompt = "" if FLAGS.chat else prompts[0]  # printed before a single sample's text
    asked = [[{"role": "user", "content": p}] if FLAGS.chat else p for p in prompts]  # what rm reads
    if FLAGS.chat:
        prompts = [chat.generation_prompt([{"role": "user", "content": p}], model[2]) for p in prompts]
        options["stop"] = [*options.get("stop", []), *chat.stops(model[2])]
    if FLAGS.bad_words:
        words = [model[2].encode(cli.unescape(w)) for w in FLAGS.bad_words]
        if not all(words):
            raise ValueError(
                f"--bad_words={FLAGS.bad_words}: an empty word; give text of one character or more"
            )
        options["bad_words_ids"] = words
    # Stream one sample as it comes; the saved defaults count too (a saved num_beams > 1 is beam search).
    merged = sample.merged_options(model[3], model[2], num_return_sequences=n, **options)
    single = len(prompts) == 1 and n == 1 and merged.mode not in sample.BEAM_MODES and not rm
    # A bad --out fails now, not after generating; "a" keeps an old file until there is something to write.
    out = open(FLAGS.out, "a", encoding="utf-8") if FLAGS.out else contextlib.nullcontext()
    shown = False

    def stream(text: str) -> None:  # the prompt first, once it has been encoded and checked
        nonlocal shown
        if not shown:
            print(shown_prompt, end="")
            shown = True
        print(text, end="", flush=True)

    with out:
        assisted = {}
        if FLAGS.assistant:
            assisted = dict(assistant=FLAGS.assistant, num_assistant_tokens=FLAGS.num_assistant_tokens)
        completions = sample.complete(
            model,
            prompts,
            stream=single and stream,
            num_return_sequences=n,
            **assisted,
            **options,
        )
        if single and not shown:  # nothing new (e.g. a stop string at once): the prompt alone
            print(shown_prompt, end="", flush=True)
        if single:
            print(flush=True)  # the streamed text ends its line
        rewards = [None] * len(completions)
        if rm:  # each prompt's best FLAGS.num_samples of its n, best first
            answers = [
                [{"role": "assistant", "content": c.text}] if FLAGS.chat else c.text for c in completions
            ]
            best = scoring.best_of_n(rm, [a for a in asked for _ in range(n)], answers, n, FLAGS.num_samples)
            completions, rewards = [completions[i] for i, _ in best], [r for _, r in best]
        if not single:
            for i, (c, r) in enumerate(zip(completions, rewards, strict=True)):
                head = f"sample {i}" if r is None else f"sample {i}, reward {r:.4f}"
                print(f"----- {head} -----\n{'' if FLAGS.chat else c.prompt}{c.text}", flush=True)
        if FLAGS.assistant or merged.prompt_lookup_num_tokens:  # on stderr: stdout stays the text
            rates = [c.acceptance_rate for c in completions]
            if FLAGS.assistant:
                what = (
                    f"the assistant's proposals accepted (num_assistant_tokens={FLAGS.num_assistant_tokens})"
                )
            else:
                K = merged.prompt_lookup_num_tokens
                what = f"prompt lookup's proposals accepted (prompt_lookup_num_tokens={K})"
            print(
                f"assisted generation: {100 * sum(rates) / len(rates):.1f}% of {what}",
                file=sys.stderr,
                flush=True,
            )
        if FLAGS.out:
            out.truncate(0)
            for c, r in zip(completions, rewards, strict=True):
                record = dict(
                    prompt=c.prompt,
                    text=c.text,
                    num_tokens=len(c.token_ids),
                    logprobs=[round(float(x), 6) for x in c.logprobs],
                    options=dataclasses.asdict(c.options),
                )
                if c.acceptance_rate is not None:
                    record["acceptance_rate"] = round(c.acceptance_rate, 4)
                if r is not None:
                    record["reward"] = round(r, 6)
                out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    cli.run(main)
