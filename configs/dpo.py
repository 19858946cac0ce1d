"""Preference fine-tuning with DPO (gptjax.dpo; TRL's DPOTrainer) of a model that was already fine-tuned,
e.g. by configs/sft.py: it learns to prefer each pair's chosen answer to its rejected one, relative to
itself as it starts (the reference).

The data is a JSON-lines file, one {"prompt": "...", "chosen": "...", "rejected": "..."} per line (TRL's
preference format), or with lists of messages for a chat model (gptjax.data.preference); or Parquet files
with those columns, as a Hub dataset's shards are downloaded (a glob such as
'ultrafeedback/data/train-*.parquet' or a directory; read in sorted order). The last 10% of the pairs are
the val split.
  python scripts/train.py --config=configs/dpo.py --workdir=runs/dpo --config.init_from=runs/sft \
      --config.data.source=PAIRS.jsonl
The model's shape and tokenizer are the starting model's (init_from: a gptjax workdir, an HF directory or
Hub id), as configs/finetune_shakespeare.py takes them. TRL's defaults: beta 0.1, lr 1e-6 constant after
a short warmup, 8 pairs a step; rows of 1024 tokens (a pair is two rows, each answer after its prompt;
--config.model.block_size=256 crops them for short pairs). On an accelerator add
--config.model.dtype=bfloat16. The logs add reward_accuracy (the share of the step's pairs whose chosen
answer the model prefers more than the reference does) and reward_margin; train and val loss start at
ln 2 = 0.693.

`:tiny` variant, for CPU and tests: 100 steps of 16 pairs at a higher lr and beta 0.5, for a model of
configs/sft.py:tiny's size (pass its workdir as init_from). On tests/test_dpo.py's task (a model
fine-tuned on two answer styles, which answers in each about half the time) the val loss falls from
0.693 to 0.19 and greedy decoding answers every val prompt in the chosen style, in 4 s on 2 CPU cores.
"""

import ml_collections
from ml_collections import config_dict

from configs import finetune_shakespeare


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "tiny"):
        raise ValueError(f"unknown variant {arg!r} of configs/dpo.py; use '' or 'tiny'")
    c = finetune_shakespeare.get_config("gpt2")  # the shape and tokenizer of init_from (unset here)
    c.init_from = "gpt2"  # better: the workdir of a supervised fine-tune (configs/sft.py)
    c.data.source = config_dict.placeholder(str)  # required: JSON-lines or Parquet pairs, a glob, a directory
    c.data.format = "preference"
    c.data.val_fraction = 0.1
    # A Jinja chat template file replacing the model's (TRL's chat_template_path), e.g. the model's own with
    # {% generation %} around the answers when it writes earlier turns differently (Qwen3); "": the model's.
    c.data.chat_template = ""
    c.dpo = ml_collections.ConfigDict()
    c.dpo.beta = 0.1  # how far from the reference the policy may go: larger keeps it closer
    c.dpo.label_smoothing = 0.0  # > 0: conservative DPO, for labels that are sometimes wrong
    c.dpo.loss_type = "sigmoid"  # DPO; "ipo" (per-token means, no sigmoid), "hinge" (SLiC): TRL's names;
    # "simpo": no reference, per-token means, -log sigmoid(margin - simpo_gamma) (TRL's CPOTrainer; beta ~2);
    # "orpo": no reference, the chosen NLL plus beta x an odds-ratio term (TRL's ORPOTrainer); "kto":
    # unpaired examples {"prompt", "completion", "label": true|false} (TRL's KTOTrainer)
    c.dpo.simpo_gamma = 0.5
    c.dpo.desirable_weight = 1.0  # kto: the weight of a desirable example's loss (TRL's)
    c.dpo.undesirable_weight = 1.0  # kto: an undesirable one's (raise it when they are fewer)
    c.dpo.rpo_alpha = 0.0  # > 0: plus rpo_alpha x the chosen answers' NLL per token (RPO; TRL's)

    c.model.dropout = 0.0  # the reference was computed without dropout
    c.opt.lr = 1e-6
    c.opt.decay_lr = False
    c.opt.warmup_iters = 10
    c.opt.weight_decay = 0.0
    c.batch_size = 8  # pairs per step: 16 rows
    c.grad_accum = 1
    c.max_iters = 300
    c.eval_interval = 50
    c.eval_iters = 10
    c.log_interval = 10
    c.checkpoint_interval = 100
    c.steps_per_call = 10  # the intervals above are multiples of it
    c.sample.prompt = "\n"  # pass --prompt as the file writes its prompts
    c.sample.max_new_tokens = 256
    if arg == "tiny":
        c.init_from = "scratch"  # set it: a workdir trained by configs/sft.py:tiny
        c.model.block_size = 32
        c.dpo.beta = 0.5  # 0.1 with lr 1e-3 lowered the rejected answers by breaking them, not by
        c.opt.update(lr=3e-4, warmup_iters=10)  # preferring the chosen ones (tests/test_dpo.py's task)
        c.batch_size = 16
        c.max_iters = 100
        c.eval_interval = 50
        c.eval_iters = 5
        c.checkpoint_interval = 50
        c.sample.max_new_tokens = 32
    return c
