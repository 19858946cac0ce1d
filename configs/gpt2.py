"""GPT-2 124M reproduction on OpenWebText (nanoGPT's config/train_gpt2.py), and the model that
scripts/bench.py measures for MFU.

  python scripts/bench.py --config=configs/gpt2.py --mode=train        # step time, tokens/s, MFU
  python scripts/prepare_data.py --input='openwebtext/*.jsonl' --out_dir=data/owt --val_fraction=0.0005 \
      --num_proc=16
  python scripts/train.py --config=configs/gpt2.py --workdir=runs/gpt2 --config.data.source=data/owt

nanoGPT reaches a val loss of ~2.85 after 600k steps of ~0.5M tokens (about 4 days on 8 A100s).
Training reads OpenWebText as token files from scripts/prepare_data.py (GPT-2's BPE, each document
ending in <|endoftext|>, as nanoGPT's data/openwebtext/prepare.py): from JSON lines or Parquet with a
"text" field (as HF datasets download it; FineWeb-Edu's parquet shards the same way), or from text files
of one document each with --eot. Pass their directory as --config.data.source (the default "openwebtext"
names no directory). The benchmark needs no data.
"""

import ml_collections

from configs import shakespeare_char


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = shakespeare_char.get_config()
    c.data.source = "openwebtext"  # prepared token files (see the docstring)
    c.data.tokenizer = "gpt2"  # GPT-2 BPE

    c.model.update(block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=False)
    c.model.gelu = "tanh"  # GPT-2's gelu_new
    c.model.vocab_multiple = 64  # 50257 ids in 50304 rows: faster matmuls (nanoGPT); pads are masked
    c.model.dtype = "bfloat16"  # compute in bf16, parameters and optimizer state in fp32
    c.model.attention = "auto"  # cuDNN flash attention on NVIDIA GPUs in bf16, XLA's elsewhere
    c.model.loss_chunk = 256  # LM head + loss 256 positions at a time: no B x T x V logits at once
    c.model.logits_dtype = "bfloat16"  # the head's output as PyTorch autocast gives it; softmax in f32

    c.opt.update(lr=6e-4, min_lr=6e-5, warmup_iters=2000, lr_decay_iters=600_000, beta2=0.95)
    # ~0.5M tokens per step: 480 sequences of 1024 tokens. grad_accum splits them into micro-batches
    # of 96 on one 80 GB GPU (grad_accum=10 on 40 GB); with 8 GPUs in mesh mode each holds 480 / 8 and
    # grad_accum can be 1.
    c.batch_size = 480
    c.grad_accum = 5
    c.max_iters = 600_000
    c.eval_interval = 1000
    c.eval_iters = 200
    c.log_interval = 10
    c.checkpoint_interval = 1000
    c.sample.max_new_tokens = 200
    if arg:
        raise ValueError(f"configs/gpt2.py takes no variant, got {arg!r}")
    return c
