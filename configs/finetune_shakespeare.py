"""Fine-tunes OpenAI's GPT-2 on Tiny Shakespeare with GPT-2's BPE (nanoGPT's config/finetune_shakespeare.py).

One command: training starts from the Hugging Face model named by the variant (found in the HF hub cache,
$HF_HUB_CACHE or $HF_HOME/hub, else downloaded there once) with GPT-2's BPE tokenizer:
  python scripts/train.py --config=configs/finetune_shakespeare.py:gpt2 --workdir=runs/finetune_gpt2
  python scripts/sample.py --workdir=runs/finetune_gpt2 --prompt="ROMEO:"
Offline, point init_from at a local HF directory (config.json + model.safetensors) or at a workdir that
scripts/convert.py --from_hf wrote; both still work: --config.init_from=path/to/gpt2.
The variant names the source model (gpt2, gpt2-medium, gpt2-large, gpt2-xl; nanoGPT uses gpt2-xl). The
model's shape is not written here: the fields that fix its function are left unset and the run takes them
from the source (gptjax.init_from.fill_model, as HF's from_pretrained), so any GPT-2 or Llama-family model
fine-tunes with this config, e.g. --config.init_from=HuggingFaceTB/SmolLM2-135M, with its own tokenizer
(data.tokenizer="auto"). Only the context is set: rows of 1024 tokens, GPT-2's whole context (a model
with a longer one is cropped to it, nanoGPT's crop_block_size). 20 iterations of 32 x 1024 tokens, ~2
epochs of the 301,966 training tokens (the count nanoGPT's shakespeare/prepare.py reports), at a small
constant lr: the val loss falls within the first iterations, then the model starts to overfit (nanoGPT
keeps the best checkpoint).
Expected numbers are not measured here: this machine cannot download GPT-2. On an accelerator add
--config.model.dtype=bfloat16; the 124M gpt2 on 2 CPU cores takes minutes per iteration.
A `-lora` suffix (gpt2-lora, gpt2-xl-lora, ...) trains LoRA adapters of rank 8 on every attention and MLP
layer instead (0.6% of gpt2-xl's weights, and Adam state for those only), at PEFT's usual 10x larger lr.
"""

import ml_collections
from ml_collections import config_dict

from configs import shakespeare_char

# The GPT-2 family on the Hub; any other HF id or directory works through --config.init_from.
SOURCES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# The config.model fields that fix the function a pretrained model computes: left unset (None), a run takes
# them from its init_from model; one set on the command line must match it (or the run refuses to start).
FROM_SOURCE = (
    "n_layer", "n_head", "n_kv_head", "n_embd", "n_head_dim", "qk_norm", "sliding_window", "bias", "qkv_bias",
    "position", "rope_theta", "rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
    "rope_original_context", "tie_embeddings", "gelu", "mlp", "n_inner", "norm", "norm_eps", "output_vocab",
    "n_experts", "n_experts_per_token", "moe_norm_topk",
)  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    source = arg or "gpt2"
    lora = source.endswith("-lora")
    source = source.removesuffix("-lora")
    if source not in SOURCES:
        raise ValueError(
            f"unknown source model {source!r}; use one of {list(SOURCES)}, or another with --config.init_from"
        )
    c = shakespeare_char.get_config()
    c.init_from = source  # an HF Hub id (or local HF directory, or a gptjax workdir) to start from
    c.data.tokenizer = "auto"  # the source model's own: GPT-2's BPE for GPT-2 (a workdir's tokenizer)

    for field in FROM_SOURCE:
        c.model[field] = config_dict.placeholder(type(c.model[field]))
    c.model.block_size = 1024  # rows of GPT-2's whole context; a longer-context source is cropped to it
    c.model.dropout = 0.0  # nanoGPT's default; few steps on a small corpus
    c.model.attention = "auto"  # cuDNN flash attention on NVIDIA GPUs in bf16, XLA's elsewhere

    c.opt.lr = 3e-5  # small and constant: nudge the pretrained weights, do not retrain them
    c.opt.decay_lr = False
    c.opt.warmup_iters = 0
    c.opt.beta2 = 0.95  # nanoGPT's train.py default (GPT-2/3 pretraining value)

    c.batch_size = 32  # sequences per step: 32 x 1024 = 32,768 tokens (nanoGPT: 1 x 32 accumulation)
    c.grad_accum = 32  # one sequence per micro-batch: fits gpt2-xl's activations on one accelerator
    c.max_iters = 20
    c.eval_interval = 5
    c.eval_iters = 40
    c.log_interval = 1
    c.checkpoint_interval = 20  # the end; evaluations every 5 steps show where overfitting starts
    c.steps_per_call = 5  # intervals are multiples of it
    c.sample.prompt = "ROMEO:"
    if lora:
        c.model.lora_rank = 8
        c.opt.lr = 3e-4
    return c
