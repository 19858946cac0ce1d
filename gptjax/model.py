"""The GPT model: a frozen GPTConfig, a table of named sizes, the decoder Block and GPT itself.

Pre-LayerNorm decoder (GPT-2): x + attn(ln_1(x)), then x + mlp(ln_2(x)), a final LayerNorm and an LM
head tied to the token embedding. Logits are float32.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax import attention
from gptjax.layers import MLP, layer_norm, normal_init, sinusoidal_table

# Named sizes. baby = nanoGPT's shakespeare_char model, baby-cpu its CPU run; gpt2* = OpenAI's GPT-2
# family (Radford et al. 2019, table 2; HF config.json of each checkpoint).
VARIANTS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32),
    "baby-cpu": dict(n_layer=4, n_head=4, n_embd=128),
    "baby": dict(n_layer=6, n_head=6, n_embd=384),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}

POSITIONS = ("learned", "sinusoidal")
GELUS = ("tanh", "exact")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Everything that fixes the model's shapes and numerics; hashable, so jit can treat it as static."""

    vocab_size: int
    block_size: int = 1024  # context length: the most positions the model attends over
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768  # D; head dim H = D / N
    dropout: float = 0.0  # on embeddings, attention probabilities and residual branches
    bias: bool = True  # biases in Dense layers and LayerNorms (GPT-2: True)
    position: str = "learned"  # "learned" (GPT-2) or "sinusoidal" (fixed table)
    tie_embeddings: bool = True  # LM head = token embedding transposed (GPT-2)
    gelu: str = "tanh"  # GELU form: "tanh" approximation (GPT-2's gelu_new) or "exact" (nanoGPT)
    dtype: str = "float32"  # compute dtype of matmuls and activations
    param_dtype: str = "float32"  # storage dtype of parameters

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                "pick n_head that divides n_embd (head dim = n_embd / n_head)"
            )
        if self.gelu not in GELUS:
            raise ValueError(f"gelu={self.gelu!r} is unknown; use one of {GELUS}")
        if self.position not in POSITIONS:
            raise ValueError(f"position={self.position!r} is unknown; use one of {POSITIONS}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_mapping(cls, model: Mapping[str, Any], **overrides: Any) -> "GPTConfig":
        """Builds the config from `config.model` (a ConfigDict or dict); `variant` names a VARIANTS row."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = dict(model)
        variant = kwargs.pop("variant", None)
        if variant:
            if variant not in VARIANTS:
                raise ValueError(f"model variant {variant!r} is unknown; use one of {list(VARIANTS)}")
            kwargs = {**VARIANTS[variant], **{k: v for k, v in kwargs.items() if v is not None}}
        kwargs.update(overrides)
        unknown = set(kwargs) - fields
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**kwargs)


def init_cache(config: GPTConfig, batch: int, max_len: int | None = None) -> list[attention.Cache]:
    """An empty KV cache for every layer, for up to `max_len` (default block_size) positions."""
    max_len = max_len or config.block_size
    return [
        attention.init_cache(batch, max_len, config.n_head, config.head_dim, config.dtype)
        for _ in range(config.n_layer)
    ]


class Block(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x_BTD, *, cache=None, kv_mask_BS=None, deterministic: bool):
        c = self.config
        norm = lambda name: layer_norm(  # noqa: E731
            name, use_bias=c.bias, dtype=c.dtype, param_dtype=c.param_dtype
        )
        h_BTD, cache = attention.CausalSelfAttention(
            n_head=c.n_head,
            n_embd=c.n_embd,
            n_layer=c.n_layer,
            use_bias=c.bias,
            dropout=c.dropout,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            name="attn",
        )(norm("ln_1")(x_BTD), cache=cache, kv_mask_BS=kv_mask_BS, deterministic=deterministic)
        x_BTD = x_BTD + h_BTD
        mlp = MLP(
            c.n_embd,
            c.n_layer,
            c.bias,
            c.dropout,
            c.gelu == "tanh",
            c.dtype,
            c.param_dtype,
            name="mlp",
        )
        x_BTD = x_BTD + mlp(norm("ln_2")(x_BTD), deterministic=deterministic)
        return x_BTD, cache


class GPT(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(
        self,
        tokens_BT: jax.Array,
        *,
        positions_BT: jax.Array | None = None,
        cache: Sequence[attention.Cache] | None = None,
        kv_mask_BS: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, list[attention.Cache] | None]:
        """Returns float32 logits_BTV and the updated cache (None when no cache was given).

        positions_BT defaults to 0..T-1 (offset by the cache's fill level when decoding); pass it
        explicitly for left-padded batches.
        """
        c = self.config
        B, T = tokens_BT.shape
        if positions_BT is None:
            offset = cache[0]["end"] if cache is not None else 0
            positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32) + offset, (B, T))

        wte = nn.Embed(
            c.vocab_size,
            c.n_embd,
            embedding_init=normal_init(),
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            name="wte",
        )
        x_BTD = wte(tokens_BT)
        if c.position == "learned":
            wpe = nn.Embed(
                c.block_size,
                c.n_embd,
                embedding_init=normal_init(),
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                name="wpe",
            )
            x_BTD = x_BTD + wpe(positions_BT)
        else:
            table = jnp.asarray(sinusoidal_table(c.block_size, c.n_embd), c.dtype)
            x_BTD = x_BTD + table[positions_BT]
        x_BTD = nn.Dropout(c.dropout)(x_BTD, deterministic=deterministic)

        new_cache = [] if cache is not None else None
        for i in range(c.n_layer):
            x_BTD, layer_cache = Block(c, name=f"h_{i}")(
                x_BTD,
                cache=cache[i] if cache is not None else None,
                kv_mask_BS=kv_mask_BS,
                deterministic=deterministic,
            )
            if cache is not None:
                new_cache.append(layer_cache)
        x_BTD = layer_norm("ln_f", use_bias=c.bias, dtype=c.dtype, param_dtype=c.param_dtype)(x_BTD)

        if c.tie_embeddings:
            head_VD = wte.embedding
        else:
            head_VD = self.param("lm_head", normal_init(), (c.vocab_size, c.n_embd), c.param_dtype)
        logits_BTV = jnp.einsum(
            "BTD,VD->BTV",
            x_BTD,
            jnp.asarray(head_VD, c.dtype),
            preferred_element_type=jnp.float32,
        )
        return logits_BTV, new_cache


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
