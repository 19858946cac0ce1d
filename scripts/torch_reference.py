"""nanoGPT's CPU Shakespeare recipe re-stated in plain PyTorch, to check gptjax's result against.

  python scripts/torch_reference.py [--seed=1337] [--steps=2000] [--precise_batches=300]

nanoGPT's model (gptjax.torch_gpt: 4 layers, 4 heads, 128 wide, context 64, no biases, exact GELU, tied
head, GPT-2 init with scaled residual projections) and training loop: the same corpus split and character
vocabulary, AdamW groups (decay on matrices), warmup + cosine schedule, clipping and evaluation (20 random
batches per split every 250 steps), with torch's global generator drawn in nanoGPT's order (model init,
the first batch, then each evaluation before the step that uses the prefetched batch). Prints one JSON
line per evaluation, plus a 300-batch (--precise_batches) val estimate drawn from a separate generator. Needs
`pip install -e .[torch]`.
"""

import argparse
import json
import math
import os
import pathlib
import time

import numpy as np
import torch

from gptjax.model import GPTConfig
from gptjax.torch_gpt import GPT

BLOCK, N_LAYER, N_HEAD, N_EMBD, BATCH = 64, 4, 4, 128, 12
LR, MIN_LR, WARMUP, DECAY_ITERS = 1e-3, 1e-4, 100, 2000


def lr_at(step: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / (WARMUP + 1)
    ratio = min(1.0, (step - WARMUP) / (DECAY_ITERS - WARMUP))
    return MIN_LR + 0.5 * (1 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument(
        "--precise_batches", type=int, default=300, help="batches of the precise val estimate"
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    root = pathlib.Path(os.environ.get("GPTJAX_DATA_DIR", "../shared/data"))
    text = (root / "tinyshakespeare" / "input.txt").read_text()
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    n = int(len(text) * 0.9)
    data = {
        "train": np.array([stoi[c] for c in text[:n]], np.int64),
        "val": np.array([stoi[c] for c in text[n:]], np.int64),
    }
    precise_gen = torch.Generator().manual_seed(args.seed + 1)

    def batch(split, generator=None):
        tokens = data[split]
        ix = torch.randint(len(tokens) - BLOCK, (BATCH,), generator=generator).numpy()
        window = torch.from_numpy(np.stack([tokens[i : i + BLOCK + 1] for i in ix]))
        return window[:, :-1], window[:, 1:]

    cfg = GPTConfig(
        vocab_size=len(stoi),
        block_size=BLOCK,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        n_embd=N_EMBD,
        dropout=0.0,
        bias=False,
        gelu="exact",
    )
    model = GPT(cfg).init_weights()
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.99))
    best, t0 = float("inf"), time.time()
    x, y = batch("train")  # nanoGPT fetches the first batch before its loop
    for step in range(args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        if step % 250 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                losses = {s: float(np.mean([model(*batch(s)).item() for _ in range(20)])) for s in data}
                val = [model(*batch("val", precise_gen)).item() for _ in range(args.precise_batches)]
                precise = float(np.mean(val))
            model.train()
            best = min(best, losses["val"])
            print(json.dumps({"step": step, **losses, "val_300_batches": precise}), flush=True)
        if step == args.steps:
            break
        loss = model(x, y)
        x, y = batch("train")  # prefetched during the step, as nanoGPT does
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(json.dumps({"best_val_loss": best, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
