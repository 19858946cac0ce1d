"""nanoGPT's CPU Shakespeare recipe re-stated in plain PyTorch, to check gptjax's result against.

  python scripts/torch_reference.py [--seed=1337] [--steps=2000]

Same corpus split, character vocabulary, model (4 layers, 4 heads, 128 wide, context 64, no biases,
exact GELU, tied head, GPT-2 init with scaled residual projections), AdamW groups (decay on matrices),
warmup + cosine schedule, clipping and evaluation (20 random batches per split every 250 steps) as
configs/shakespeare_char.py:cpu. Prints one JSON line per evaluation, plus a 300-batch val estimate.
Needs `pip install -e .[torch]`.
"""

import argparse
import json
import math
import os
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BLOCK, N_LAYER, N_HEAD, N_EMBD, BATCH = 64, 4, 4, 128, 12
LR, MIN_LR, WARMUP, DECAY_ITERS = 1e-3, 1e-4, 100, 2000


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        D = N_EMBD
        self.ln_1, self.ln_2 = nn.LayerNorm(D, bias=False), nn.LayerNorm(D, bias=False)
        self.c_attn, self.c_proj = nn.Linear(D, 3 * D, bias=False), nn.Linear(D, D, bias=False)
        self.c_fc, self.mlp_c_proj = nn.Linear(D, 4 * D, bias=False), nn.Linear(4 * D, D, bias=False)

    def forward(self, x_BTD):
        B, T, D = x_BTD.shape
        q, k, v = self.c_attn(self.ln_1(x_BTD)).split(D, dim=2)
        q, k, v = (z.view(B, T, N_HEAD, D // N_HEAD).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        x_BTD = x_BTD + self.c_proj(y)
        return x_BTD + self.mlp_c_proj(F.gelu(self.c_fc(self.ln_2(x_BTD))))


class GPT(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, N_EMBD), nn.Embedding(BLOCK, N_EMBD)
        self.h = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(N_EMBD, bias=False)
        self.lm_head = nn.Linear(N_EMBD, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * N_LAYER))

    def forward(self, idx_BT, targets_BT):
        x_BTD = self.wte(idx_BT) + self.wpe(torch.arange(idx_BT.shape[1]))
        for block in self.h:
            x_BTD = block(x_BTD)
        logits = self.lm_head(self.ln_f(x_BTD))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets_BT.reshape(-1))


def lr_at(step: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / (WARMUP + 1)
    ratio = min(1.0, (step - WARMUP) / (DECAY_ITERS - WARMUP))
    return MIN_LR + 0.5 * (1 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--steps", type=int, default=2000)
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

    def batch(split):
        tokens = data[split]
        ix = torch.randint(len(tokens) - BLOCK, (BATCH,)).numpy()
        window = torch.from_numpy(np.stack([tokens[i : i + BLOCK + 1] for i in ix]))
        return window[:, :-1], window[:, 1:]

    model = GPT(len(stoi))
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.99))
    best, t0 = float("inf"), time.time()
    for step in range(args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        if step % 250 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                losses = {s: float(np.mean([model(*batch(s)).item() for _ in range(20)])) for s in data}
                precise = float(np.mean([model(*batch("val")).item() for _ in range(300)]))
            model.train()
            best = min(best, losses["val"])
            print(json.dumps({"step": step, **losses, "val_300_batches": precise}), flush=True)
        if step == args.steps:
            break
        loss = model(*batch("train"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    print(json.dumps({"best_val_loss": best, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
