"""Trains a reward model (gptjax.reward; TRL's RewardTrainer) on preference pairs: the model a run starts
from (init_from: a gptjax workdir, e.g. of configs/sft.py, an HF directory or Hub id) gets a score head in
place of its LM head (model.score_head) and learns to score each pair's chosen answer above its rejected
one. The data is DPO's (configs/dpo.py): JSON lines {"prompt": "...", "chosen": "...", "rejected": "..."}
or lists of messages, or Parquet files with those columns, each with an optional "margin" (how much better
the chosen answer is: subtracted inside the sigmoid, TRL's margin); the last 10% of the pairs are the val
split.
  python scripts/train.py --config=configs/reward.py --workdir=runs/rm --config.init_from=runs/sft \
      --config.data.source=PAIRS.jsonl
  python scripts/sample.py --workdir=runs/sft --reward_model=runs/rm --num_samples=8 --prompt=...
A text's reward is the score at its last token (with its EOS), so the model ranks whole completions:
scripts/sample.py --reward_model prints the samples best first with their rewards (best-of-n), and
scripts/convert.py exports the model as HF's GPT2ForSequenceClassification (LlamaForSequenceClassification
for a Llama) with num_labels=1, the class TRL and transformers' pipelines read reward models as.

TRL's defaults: lr 1e-5 (here linear warmup then constant), dropout off, no reward centring
(reward.center_rewards_coefficient > 0, TRL suggests 0.01, adds that times the mean squared sum of each
pair's rewards: rewards centred on 0, comparable across prompts). The logs add reward_accuracy (the share
of pairs ranked right), reward_margin and mean_reward; train and val loss start near ln 2 = 0.693.

`:tiny` variant, for CPU and tests: 200 steps of 16 pairs at lr 3e-3, from scratch a 1-layer model of
characters, or with init_from (and the shape fields set to None) a configs/sft.py:tiny model. On
tests/test_reward.py's task (answers in two styles, the first-letter one chosen) the val loss falls from
0.693 to 0.08 and 96% of val pairs are ranked right, fine-tuned from sft.py:tiny in 5 s on 2 CPU cores.
"""

import ml_collections

from configs import dpo, shakespeare_char


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "tiny"):
        raise ValueError(f"unknown variant {arg!r} of configs/reward.py; use '' or 'tiny'")
    c = dpo.get_config()  # DPO's data, fine-tuning shape and loop
    del c.dpo
    c.model.score_head = True
    c.reward = ml_collections.ConfigDict()
    c.reward.center_rewards_coefficient = 0.0  # > 0: plus that x mean((r(chosen) + r(rejected))^2) (TRL's)
    c.opt.lr = 1e-5
    c.opt.warmup_iters = 10
    c.max_iters = 300
    if arg == "tiny":
        c.init_from = "scratch"
        c.data.tokenizer = "char"
        defaults = shakespeare_char.get_config().model
        for field, value in c.model.items():
            if value is None:  # the fields init_from would fill: nanoGPT's kinds, a small size
                c.model[field] = defaults[field]
        c.model.update(block_size=32, n_layer=1, n_head=2, n_embd=32)
        c.opt.update(lr=3e-3, warmup_iters=10)
        c.batch_size = 16
        c.max_iters = 200
        c.eval_interval = 50
        c.eval_iters = 5
        c.checkpoint_interval = 50
    return c
