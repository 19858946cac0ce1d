"""nanoGPT's GPT in PyTorch, built from a gptjax GPTConfig: the PyTorch side of gptjax.compare_torch and
the model of scripts/torch_reference.py.

The same function as gptjax.model.GPT for learned positions: pre-LayerNorm blocks (eps 1e-5, biases
optional), a fused QKV projection into torch's scaled_dot_product_attention (causal, flash kernels where
torch has them), a GELU MLP (exact or tanh), final LayerNorm, tied or separate LM head. Modules are built
in nanoGPT's order, so a seed draws nanoGPT's initial weights, and `init_weights` is nanoGPT's
(normal 0.02, residual projections 0.02 / sqrt(2 n_layer)). Parameter names are HF GPT-2's with
nn.Linear's [out, in] weights, as nanoGPT's. Needs the `torch` extra.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptjax import convert
from gptjax.layers import INIT_STD
from gptjax.model import GPTConfig

LINEAR_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        D = cfg.n_embd
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(D, 3 * D, bias=cfg.bias)
        self.c_proj = nn.Linear(D, D, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        q, k, v = self.c_attn(x_BTD).split(D, dim=2)
        q, k, v = (z.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y_BNTH = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.resid_dropout(self.c_proj(y_BNTH.transpose(1, 2).reshape(B, T, D)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        D = cfg.n_embd
        self.c_fc = nn.Linear(D, cfg.mlp_width, bias=cfg.bias)
        self.gelu = nn.GELU(approximate="tanh" if cfg.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(cfg.mlp_width, D, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x_BTD))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=convert.LAYER_NORM_EPS, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=convert.LAYER_NORM_EPS, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        x_BTD = x_BTD + self.attn(self.ln_1(x_BTD))
        return x_BTD + self.mlp(self.ln_2(x_BTD))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.position != "learned":
            raise ValueError(f"position={cfg.position!r}: the PyTorch GPT has learned positions only")
        if cfg.mlp != "gelu":
            raise ValueError(f"mlp={cfg.mlp!r}: the PyTorch GPT has GPT-2's GELU MLP only")
        if cfg.kv_heads != cfg.n_head:
            raise ValueError(
                f"n_kv_head={cfg.n_kv_head}: the PyTorch GPT has a key/value head per query head"
            )
        if (cfg.norm, cfg.output_vocab, cfg.lora_rank) != ("layer", 0, 0) or cfg.gelu == "quick":
            raise ValueError(
                f"norm={cfg.norm!r}, gelu={cfg.gelu!r}, output_vocab={cfg.output_vocab}, lora_rank="
                f"{cfg.lora_rank}: the PyTorch GPT is nanoGPT's (LayerNorm, tanh or exact GELU, a head over "
                "every id, no adapters); compare ImageGPT with HF's"
            )
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                "wpe": nn.Embedding(cfg.block_size, cfg.n_embd),
                "drop": nn.Dropout(cfg.dropout),
                "h": nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                "ln_f": nn.LayerNorm(cfg.n_embd, eps=convert.LAYER_NORM_EPS, bias=cfg.bias),
            }
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight

    def init_weights(self) -> "GPT":
        """nanoGPT's initialisation (GPT-2's), drawn from torch's global generator in nanoGPT's order."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * self.cfg.n_layer))
        return self

    def forward(self, idx_BT: torch.Tensor, targets_BT: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits [B, T, V], or with `targets_BT` the mean cross entropy."""
        positions = torch.arange(idx_BT.shape[1], device=idx_BT.device)
        x_BTD = self.transformer.drop(self.transformer.wte(idx_BT) + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x_BTD = block(x_BTD)
        logits_BTV = self.lm_head(self.transformer.ln_f(x_BTD)).float()
        if targets_BT is None:
            return logits_BTV
        return F.cross_entropy(logits_BTV.flatten(0, 1), targets_BT.flatten())


def from_gptjax(params: Any, cfg: GPTConfig) -> GPT:
    """A float32 GPT holding gptjax `params` (the same function: tested against gptjax's logits)."""
    model = GPT(cfg)
    state = {}
    for name, value in convert.params_to_hf(params, cfg).items():
        if name.endswith(".bias") and not cfg.bias:
            continue  # params_to_hf writes zero biases for a bias-free model
        state[name] = torch.tensor(value.T if name.endswith(LINEAR_WEIGHTS) else value)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True)
    return model.float()
