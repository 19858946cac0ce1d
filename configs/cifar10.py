"""iGPT-S's shape on CIFAR-10: 32x32 RGB images in a 512-colour palette, 1,024 pixels a sequence.

The model of iGPT-S (Chen et al. 2020: 24 layers, 512 wide, ~76M parameters; 8 heads here) on
CIFAR-10 from TensorFlow Datasets, prepared once as array_record (reading it needs no TensorFlow):
  tfds build cifar10 --file_format=array_record      # where TensorFlow and the internet are, then copy
  TFDS_DATA_DIR=~/tensorflow_datasets python scripts/train.py --config=configs/cifar10.py --workdir=runs/c10
  python scripts/sample_images.py --workdir=runs/c10 --complete=8      # completions of val images
Unconditional, as iGPT (variant `:cond` starts each image with its class). An accelerator run: not yet
measured here (this project's machine has no GPU and no CIFAR-10); the optimizer settings are ours.
Variant `:imagegpt` fine-tunes OpenAI's pretrained iGPT-S (HF `openai/imagegpt-small`, or a local copy:
--config.init_from=DIR) with its own palette: ImageGPT's norms, GELU and head (gptjax.convert).
"""

import ml_collections

from configs import digits


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = digits.get_config("uncond" if arg != "cond" else None)
    c.data.source = "tfds:cifar10"  # 60,000 images (train and test); gptjax keeps 10% as val
    c.data.update(image_size=32, channels=3, colors=512)  # iGPT's 9-bit palette: k-means on RGB
    c.model.update(block_size=32 * 32, n_layer=24, n_head=8, n_embd=512, dropout=0.0)
    c.model.dtype = "bfloat16"  # compute in bf16, parameters and optimizer state in fp32
    c.model.attention = "auto"  # cuDNN flash attention on NVIDIA GPUs in bf16, XLA's elsewhere
    c.opt.update(lr=3e-4, min_lr=3e-5, warmup_iters=1000, lr_decay_iters=100_000, beta2=0.95)
    c.batch_size = 64  # images: 65,536 pixels a step
    c.max_iters = 100_000
    c.eval_interval = 2000
    c.eval_iters = 50
    c.log_interval = 50
    c.checkpoint_interval = 2000
    if arg == "imagegpt":
        c.init_from = "openai/imagegpt-small"
        c.model.update(bias=True, norm="rms", gelu="quick", output_vocab=512, tie_embeddings=False)
        c.opt.update(lr=1e-4, min_lr=1e-5, warmup_iters=100, lr_decay_iters=10_000)
        c.max_iters = 10_000
    if arg not in (None, "", "cond", "imagegpt"):
        raise ValueError(f"configs/cifar10.py takes no variant, 'cond' or 'imagegpt', got {arg!r}")
    return c
