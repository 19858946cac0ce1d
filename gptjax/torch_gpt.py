"""nanoGPT's GPT in PyTorch, built from a gptjax GPTConfig: the PyTorch side of gptjax.compare_torch and
the model of scripts/torch_reference.py.

The same function as gptjax.model.GPT: pre-norm blocks (LayerNorm with or without biases, or RMSNorm;
norm_eps), a fused QKV projection (Qwen2's qkv_bias too; heads of n_head_dim; Qwen3's per-head q and k
RMS norms for qk_norm) into torch's scaled_dot_product_attention (causal, flash kernels where torch has
them; fewer key/value heads for n_kv_head; a sliding_window mask), a GELU MLP (exact or tanh) or SwiGLU,
final norm, tied or separate LM head; positions learned, sinusoidal, or rotary on queries and keys
(rope_theta and its scaling, gptjax.layers.rope_inv_freq's frequencies). Modules are built in nanoGPT's
order, so a seed draws nanoGPT's initial weights for its model, and `init_weights` is nanoGPT's (normal
0.02, residual projections 0.02 / sqrt(2 n_layer)). Parameter names are HF GPT-2's with nn.Linear's
[out, in] weights, as nanoGPT's (SwiGLU's third matrix is mlp.gate; the q/k norms attn.q_norm,
attn.k_norm). Needs the `torch` extra.
"""

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gptjax.layers import INIT_STD, rope_inv_freq, sinusoidal_table
from gptjax.model import GPTConfig, unstack_layers


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rms":
        return nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


def rotate(x_BTNH: torch.Tensor, inv_freq_h: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in HF's rotate_half layout (gptjax.layers.rope), positions 0..T-1, in float32."""
    T = x_BTNH.shape[1]
    angles_Th = torch.arange(T, device=x_BTNH.device, dtype=torch.float32)[:, None] * inv_freq_h[None, :]
    cos_T1h, sin_T1h = angles_Th.cos()[:, None], angles_Th.sin()[:, None]
    x1_BTNh, x2_BTNh = x_BTNH.float().chunk(2, dim=-1)
    turned = torch.cat([x1_BTNh * cos_T1h - x2_BTNh * sin_T1h, x2_BTNh * cos_T1h + x1_BTNh * sin_T1h], -1)
    return turned.to(x_BTNH.dtype)


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        D, N, K, H = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.heads, self.dropout, self.window = (N, K, H), cfg.dropout, cfg.sliding_window
        self.c_attn = nn.Linear(D, (N + 2 * K) * H, bias=cfg.bias or cfg.qkv_bias)
        self.c_proj = nn.Linear(N * H, D, bias=cfg.bias)
        head_norm = lambda: nn.RMSNorm(H, eps=cfg.norm_eps) if cfg.qk_norm else None  # noqa: E731
        self.q_norm, self.k_norm = head_norm(), head_norm()  # over each head's H channels, before rope
        self.resid_dropout = nn.Dropout(cfg.dropout)
        inv_freq = rope_inv_freq(H, cfg.rope_theta, cfg.scaled_rope) if cfg.position == "rope" else None
        self.register_buffer("inv_freq_h", None if inv_freq is None else torch.tensor(inv_freq), False)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        (B, T, _), (N, K, H) = x_BTD.shape, self.heads
        q, k, v = self.c_attn(x_BTD).split([N * H, K * H, K * H], dim=2)
        q_BTNH, k_BTKH, v_BTKH = q.view(B, T, N, H), k.view(B, T, K, H), v.view(B, T, K, H)
        if self.q_norm is not None:
            q_BTNH, k_BTKH = self.q_norm(q_BTNH), self.k_norm(k_BTKH)
        if self.inv_freq_h is not None:
            q_BTNH, k_BTKH = rotate(q_BTNH, self.inv_freq_h), rotate(k_BTKH, self.inv_freq_h)
        p = self.dropout if self.training else 0.0
        mask_TS = None
        if self.window:  # causal, and the last `window` keys only
            t = torch.arange(T, device=x_BTD.device)
            mask_TS = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - self.window)
        y_BNTH = F.scaled_dot_product_attention(
            q_BTNH.transpose(1, 2),
            k_BTKH.transpose(1, 2),
            v_BTKH.transpose(1, 2),
            attn_mask=mask_TS,
            dropout_p=p,
            is_causal=mask_TS is None,
            enable_gqa=K != N,
        )
        return self.resid_dropout(self.c_proj(y_BNTH.transpose(1, 2).reshape(B, T, N * H)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        D, F_ = cfg.n_embd, cfg.mlp_width
        self.c_fc = nn.Linear(D, F_, bias=cfg.bias)
        self.gate = nn.Linear(D, F_, bias=cfg.bias) if cfg.mlp == "swiglu" else None
        self.gelu = nn.GELU(approximate="tanh" if cfg.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(F_, D, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:  # SwiGLU: silu(x W_gate) * (x W_up)
            return self.dropout(self.c_proj(F.silu(self.gate(x_BTD)) * self.c_fc(x_BTD)))
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x_BTD))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = SelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        x_BTD = x_BTD + self.attn(self.ln_1(x_BTD))
        return x_BTD + self.mlp(self.ln_2(x_BTD))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.output_vocab or cfg.lora_rank or (cfg.mlp == "gelu" and cfg.gelu == "quick"):
            raise ValueError(
                f"gelu={cfg.gelu!r}, output_vocab={cfg.output_vocab}, lora_rank={cfg.lora_rank}: the PyTorch "
                "GPT is nanoGPT's (tanh or exact GELU, a head over every id, no adapters); compare ImageGPT "
                "with HF's, and a LoRA model merged"
            )
        self.cfg = cfg
        modules = {"wte": nn.Embedding(cfg.vocab_size, cfg.n_embd)}
        if cfg.position == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        modules["drop"] = nn.Dropout(cfg.dropout)
        modules["h"] = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        modules["ln_f"] = make_norm(cfg)
        self.transformer = nn.ModuleDict(modules)
        table = sinusoidal_table(cfg.block_size, cfg.n_embd) if cfg.position == "sinusoidal" else None
        self.register_buffer("sinusoids_TD", None if table is None else torch.tensor(table), False)
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
        x_BTD = self.transformer.wte(idx_BT)
        T = idx_BT.shape[1]
        if "wpe" in self.transformer:
            x_BTD = x_BTD + self.transformer.wpe(torch.arange(T, device=idx_BT.device))
        elif self.sinusoids_TD is not None:
            x_BTD = x_BTD + self.sinusoids_TD[:T]
        x_BTD = self.transformer.drop(x_BTD)
        for block in self.transformer.h:
            x_BTD = block(x_BTD)
        logits_BTV = self.lm_head(self.transformer.ln_f(x_BTD)).float()
        if targets_BT is None:
            return logits_BTV
        return F.cross_entropy(logits_BTV.flatten(0, 1), targets_BT.flatten())


def from_gptjax(params: Any, cfg: GPTConfig) -> GPT:
    """A float32 GPT holding gptjax `params` (the same function: tested against gptjax's logits)."""
    if cfg.kernel_layout != "in_out":
        raise ValueError("kernel_layout='out_in' is decoding's layout; pass the params as trained (in_out)")
    params = unstack_layers(params) if cfg.scan_layers else params
    V = cfg.vocab_size
    state = {"transformer.wte.weight": params["wte"]["embedding"][:V]}
    if cfg.position == "learned":
        state["transformer.wpe.weight"] = params["wpe"]["embedding"]

    def add(name: str, p: dict, linear: bool = False) -> None:  # a Dense ([in, out] -> [out, in]) or a norm
        state[f"{name}.weight"] = np.asarray(p["kernel" if linear else "scale"]).T
        if "bias" in p:
            state[f"{name}.bias"] = p["bias"]

    for i in range(cfg.n_layer):
        layer, to = params[f"h_{i}"], f"transformer.h.{i}"
        add(f"{to}.ln_1", layer["ln_1"])
        add(f"{to}.attn.c_attn", layer["attn"]["c_attn"], linear=True)
        add(f"{to}.attn.c_proj", layer["attn"]["c_proj"], linear=True)
        if cfg.qk_norm:
            add(f"{to}.attn.q_norm", layer["attn"]["q_norm"])
            add(f"{to}.attn.k_norm", layer["attn"]["k_norm"])
        add(f"{to}.ln_2", layer["ln_2"])
        add(f"{to}.mlp.c_fc", layer["mlp"]["fc"], linear=True)
        if cfg.mlp == "swiglu":
            add(f"{to}.mlp.gate", layer["mlp"]["gate"], linear=True)
        add(f"{to}.mlp.c_proj", layer["mlp"]["proj"], linear=True)
    add("transformer.ln_f", params["ln_f"])
    state["lm_head.weight"] = state["transformer.wte.weight"] if cfg.tie_embeddings else params["lm_head"][:V]
    model = GPT(cfg)
    model.load_state_dict({k: torch.tensor(np.asarray(v, np.float32)) for k, v in state.items()}, strict=True)
    return model.float()
