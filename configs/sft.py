"""Supervised fine-tuning of OpenAI's GPT-2 on prompt/completion pairs, the loss on the completions only.

The data is a JSON-lines file, one {"prompt": "...", "completion": "..."} per line (TRL's
prompt-completion format; OpenAI's legacy fine-tuning format), or {"messages": [...]} conversations (TRL's
conversational format, written in ChatML and trained on the assistant's turns; serve the model's
/v1/chat/completions); or Parquet files with those columns, as a Hub dataset's shards are downloaded (a
glob such as 'ultrachat/data/train_sft-*.parquet' or a directory; read in sorted order). gptjax.data.sft
says how an example becomes a row and how a long one is cut. The last 10% of the examples are the val
split.
  python scripts/train.py --config=configs/sft.py --workdir=runs/sft --config.data.source=FILE.jsonl
  python scripts/sample.py --workdir=runs/sft --prompt="<a prompt as the file writes them>"
Training starts from the HF model gpt2 (as configs/finetune_shakespeare.py: the HF hub cache, else
downloaded once; offline, --config.init_from=path/to/gpt2), taking its shape and tokenizer from it, so
another --config.init_from (a Llama-family model, a gptjax workdir) needs no other flag. Each example is
a row padded to GPT-2's whole context of 1024 tokens (--config.model.block_size=256 crops it, nanoGPT's
crop_block_size), the completion followed by <|endoftext|>, so the model learns where to stop;
--config.data.packing=True packs several short examples into each row instead (each still attends only
to itself).
300 steps of 8 examples at a small constant lr; no expected numbers: they depend on the data, and this
machine cannot download GPT-2. On an accelerator add --config.model.dtype=bfloat16.

`:tiny` variant, for CPU and tests: a 2-layer, 32-wide model from scratch over the file's characters
(no EOS: a character tokenizer has none), context 32, 200 steps in seconds on 2 cores.
  python scripts/train.py --config=configs/sft.py:tiny --workdir=/tmp/sft_tiny --config.data.source=FILE.jsonl
On tests/test_sft.py's task (1,000 pairs such as {"prompt": "dhab>", "completion": "ddd."}: repeat the
first letter) the val loss falls from 2.14 to 0.012 at step 200 and greedy decoding answers all 100 val
prompts, in 4 s on 2 CPU cores; with --config.data.packing=True (3 examples a row) 2.15 -> 0.010.
"""

import ml_collections
from ml_collections import config_dict

from configs import finetune_shakespeare, shakespeare_char


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg == "tiny":
        c = shakespeare_char.get_config()
    elif not arg:
        c = finetune_shakespeare.get_config("gpt2")  # init_from="gpt2", its shape and tokenizer (unset here)
    else:
        raise ValueError(f"unknown variant {arg!r} of configs/sft.py; use '' or 'tiny'")
    c.data.source = config_dict.placeholder(str)  # required: JSON-lines or Parquet file(s), glob or directory
    c.data.format = "prompt_completion"  # one row per example, trained on the completion only
    c.data.val_fraction = 0.1  # the last 10% of the examples, in file order
    # True: several examples per row (TRL's packing=True, best-fit decreasing), each attending only to
    # itself with its own positions, so a short example spends no compute on padding; batch_size then
    # counts rows, not examples. False: one example per row, padded.
    c.data.packing = False
    # A Jinja chat template file replacing the model's (TRL's chat_template_path), e.g. the model's own with
    # {% generation %} around the answers when it writes earlier turns differently (Qwen3); "": the model's.
    c.data.chat_template = ""

    if arg == "tiny":
        c.init_from = "scratch"
        c.data.tokenizer = "char"  # the characters of every prompt and completion
        c.model.update(block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
        c.opt.update(lr=3e-3, min_lr=3e-4, warmup_iters=10, lr_decay_iters=200)  # high for a tiny model
        c.batch_size = 16  # examples per step
        c.max_iters = 200
        c.eval_interval = 100
        c.eval_iters = 5  # batches of 16 examples per split
        c.log_interval = 10
        c.checkpoint_interval = 100
        c.steps_per_call = 10  # the intervals above are multiples of it
        c.sample.max_new_tokens = 32
        return c

    # GPT-2's whole context, 1024; for short pairs --config.model.block_size=256 crops it (rows 4x shorter).
    c.model.dropout = 0.1  # a small SFT set is seen many times: some regularisation (GPT-2 trained with 0.1)
    c.opt.lr = 3e-5  # small and constant (finetune_shakespeare's): nudge the pretrained weights
    c.opt.lr_decay_iters = 300  # unused while decay_lr is False; = max_iters if it is turned on
    c.batch_size = 8  # examples per step: 8 rows of 1024 tokens, most of them padding for short examples
    c.grad_accum = 1  # 124M parameters and 8 x 1024 tokens fit one accelerator at once
    c.max_iters = 300  # a few epochs of a set of ~1,000 examples
    c.eval_interval = 50
    c.eval_iters = 20  # 160 random val examples per evaluation
    c.log_interval = 10
    c.checkpoint_interval = 100
    c.steps_per_call = 10  # the intervals above are multiples of it
    c.sample.prompt = "\n"  # pass --prompt as the file writes its prompts
    c.sample.max_new_tokens = 256
    return c
