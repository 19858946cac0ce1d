"""Online reinforcement learning with GRPO (gptjax.grpo; TRL's GRPOTrainer): a trained model (init_from,
e.g. a configs/sft.py run) samples num_generations completions of each prompt, rewards score them, and the
policy learns to write the completions that score above their group's mean.

The data is prompts: JSON lines {"prompt": "..."} or {"prompt": [messages]}, or Parquet files with a
"prompt" column (gptjax.data.prompts); a record's other fields go to the reward functions. The rewards are
functions of your own and/or a reward model (a configs/reward.py workdir or an HF one), weighted:
  # my_rewards.py: one float (or None: not rated) per completion, as TRL's reward functions
  def ends_with_period(prompts, completions, **columns):
      return [1.0 if c.endswith(".") else 0.0 for c in completions]
  python scripts/train.py --config=configs/grpo.py --workdir=runs/grpo --config.init_from=runs/sft \
      --config.data.source=PROMPTS.jsonl --config.grpo.reward_funcs=my_rewards.py:ends_with_period
A conversational prompt's completions reach the functions as [{"role": "assistant", "content": ...}], its
other fields (an answer to check) as keyword arguments of one value per completion.

TRL's defaults: 8 completions per prompt (batch_size counts completions: 8 per step here, one prompt),
max_new_tokens 256 at temperature 1, lr 1e-6, beta 0 (no KL term, no reference), epsilon 0.2, the "dapo"
loss (a mean over every completion token), rewards scaled by their group's std, one update per
generation. The logs add reward (the step's mean), reward_std (within groups), frac_reward_zero_std
(groups that teach nothing), completion_length, truncated_share (completions without EOS), clip_ratio, kl
with beta > 0; each evaluation samples the val prompts and logs val_reward. loss.png plots the rewards.

`:tiny` variant, for CPU and tests: a configs/sft.py:tiny model (pass its workdir as init_from), 4-token
completions, 8 prompts x 8 completions a step at lr 1e-3 for 30 steps. On tests/test_grpo.py's task (the
model writes two answer styles, a reward function pays 1 for the first-letter one) the sampled val reward
goes from 0.50 to 0.86 and greedy decoding answers 96% of val prompts in the rewarded style (66% before),
in 16 s on 2 CPU cores.
"""

import ml_collections

from configs import dpo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "tiny"):
        raise ValueError(f"unknown variant {arg!r} of configs/grpo.py; use '' or 'tiny'")
    c = dpo.get_config()  # a fine-tuning run's shape, tokenizer and data fields
    del c.dpo
    c.data.format = "prompt"
    c.grpo = ml_collections.ConfigDict()
    c.grpo.num_generations = 8  # G: completions per prompt, compared within their group
    c.grpo.max_new_tokens = 256  # per completion (TRL's max_completion_length); the prompt keeps the rest
    c.grpo.temperature = 1.0  # sampling's, and the loss's log-probabilities'
    c.grpo.top_k = 0  # 0: all tokens
    c.grpo.top_p = 1.0  # 1: all tokens
    # module:function or path/file.py:function, comma-separated: f(prompts, completions, completion_ids,
    # **other columns) -> one float or None per completion
    c.grpo.reward_funcs = ""
    c.grpo.reward_model = ""  # a reward model's workdir or HF directory (configs/reward.py)
    c.grpo.reward_weights = ""  # comma-separated, one per function then the reward model; "": all 1
    c.grpo.scale_rewards = "group"  # advantages / the group's reward std; "batch": the batch's; "none"
    c.grpo.loss_type = "dapo"  # "grpo": per-completion token means; "dr_grpo": / (completions x max_new)
    c.grpo.beta = 0.0  # > 0: + beta x KL to the starting model (k3 estimate, per token)
    c.grpo.epsilon = 0.2  # the ratio's clip range below 1 ...
    c.grpo.epsilon_high = 0.0  # ... and above 1 (0: epsilon; DAPO's clip-higher: 0.28)
    c.grpo.importance_sampling_level = "token"  # or "sequence" (GSPO: each completion's mean ratio)
    c.grpo.num_iterations = 1  # updates per generation (mu); > 1 clips the ratio to the sampler's
    c.grpo.mask_truncated_completions = False  # True: completions without EOS are not trained (DAPO)

    c.opt.lr = 1e-6
    c.batch_size = 8  # completions per step: batch_size / num_generations prompts
    c.max_iters = 500
    c.eval_interval = 50
    c.eval_iters = 2  # batches of val prompts sampled per evaluation
    c.log_interval = 1
    c.checkpoint_interval = 50
    c.steps_per_call = 1  # each step samples with the policy of the step before
    if arg == "tiny":
        c.init_from = "scratch"  # set it: a workdir trained by configs/sft.py:tiny
        c.model.block_size = 32
        c.grpo.max_new_tokens = 4
        c.opt.update(lr=1e-3, warmup_iters=5)
        c.batch_size = 64  # 8 prompts x 8 completions
        c.max_iters = 30
        c.eval_interval = 15
        c.eval_iters = 1
        c.log_interval = 5
        c.checkpoint_interval = 15
    return c
