"""The GPT model: the decoder Block and GPT itself, built from a GPTConfig (gptjax.gpt_config).

Pre-LayerNorm decoder (GPT-2): x + attn(ln_1(x)), then x + mlp(ln_2(x)), a final LayerNorm and an LM
head tied to the token embedding (the head and the loss: gptjax.lm_head). Logits are float32.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax import attention, moe
from gptjax.gpt_config import REMAT_POLICIES, VARIANTS, GPTConfig  # noqa: F401 (VARIANTS: gptjax.model's API)
from gptjax.layers import (
    BATCH_AXES,
    MLP,
    VOCAB_AXIS,
    Embed,
    constrain,
    gather_table,
    norm,
    normal_init,
    sinusoidal_table,
)
from gptjax.lm_head import cross_entropy, head_logits, lm_head_logps, lm_head_loss, target_logps


def init_cache(config: GPTConfig, batch: int, max_len: int | None = None) -> list[attention.Cache]:
    """An empty KV cache for every layer, for up to `max_len` (default block_size) positions."""
    max_len = max_len or config.block_size
    return [
        attention.init_cache(batch, max_len, config.kv_heads, config.head_dim, config.dtype)
        for _ in range(config.n_layer)
    ]


class Block(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)) (or a mixture of experts, moe.MoE, whose load-balancing
    loss the train step collects from the moe.AUX_LOSS collection). Positional arguments and a static
    `deterministic` field, as nn.remat and nn.scan need."""

    config: GPTConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BTD, cache=None, kv_mask_BS=None, segments_BT=None, positions_BT=None):
        c = self.config
        deterministic = self.deterministic
        ln = lambda name: norm(  # noqa: E731
            name, c.norm, use_bias=c.bias, dtype=c.dtype, param_dtype=c.param_dtype, eps=c.norm_eps
        )
        h_BTD, cache = attention.CausalSelfAttention(
            n_head=c.n_head,
            n_kv_head=c.kv_heads,
            n_embd=c.n_embd,
            head_dim=c.head_dim,
            n_layer=c.n_layer,
            use_bias=c.bias,
            qkv_bias=c.qkv_bias,
            dropout=c.dropout,
            implementation=c.attention,
            out_in=c.kernel_layout == "out_in",
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            lora=c.lora,
            rope_theta=c.rope_theta if c.position == "rope" else None,
            rope_scaling=c.scaled_rope,
            qk_norm_eps=c.norm_eps if c.qk_norm else None,
            window=c.sliding_window,
            name="attn",
        )(
            ln("ln_1")(x_BTD),
            cache=cache,
            kv_mask_BS=kv_mask_BS,
            segments_BT=segments_BT,
            positions_BT=positions_BT,
            deterministic=deterministic,
        )
        x_BTD = x_BTD + h_BTD
        out_in = c.kernel_layout == "out_in"
        if c.n_experts:  # Mixtral's sparse mixture of SwiGLU experts in place of the MLP (gptjax.moe)
            mlp = moe.MoE(
                c.n_embd,
                c.n_layer,
                c.n_experts,
                c.n_experts_per_token,
                c.mlp_width,
                c.dropout,
                c.dtype,
                c.param_dtype,
                out_in,
                c.moe_impl,
                c.moe_norm_topk,
                name="moe",
            )
        else:
            mlp = MLP(
                c.n_embd,
                c.n_layer,
                c.bias,
                c.dropout,
                c.gelu,
                c.dtype,
                c.param_dtype,
                out_in,
                c.lora,
                kind=c.mlp,
                width=c.mlp_width,
                name="mlp",
            )
        x_BTD = x_BTD + mlp(ln("ln_2")(x_BTD), deterministic=deterministic)
        return x_BTD, cache


def stacked_layers(config: GPTConfig):
    """The block module class: remat'ed by policy, and scanned over L when config.scan_layers."""
    layer = Block
    if config.remat != "none":
        layer = nn.remat(layer, policy=REMAT_POLICIES[config.remat], prevent_cse=not config.scan_layers)
    if config.scan_layers:
        layer = nn.scan(
            layer,
            variable_axes={"params": 0, moe.AUX_LOSS: 0},  # the MoE layers' losses stacked [L] too
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * 4,  # cache, kv_mask_BS, segments_BT, positions_BT
            length=config.n_layer,
        )
    return layer


def unstack_layers(params: Any) -> Any:
    """Params of a scan_layers model in the per-layer layout (h_0, h_1, ...), e.g. for decoding."""
    params = dict(params)
    stacked = params.pop("h")
    n_layer = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    for i in range(n_layer):
        params[f"h_{i}"] = jax.tree_util.tree_map(lambda x: x[i], stacked)
    return params


def stack_layers(params: Any, n_layer: int) -> Any:
    """Per-layer params (h_0, h_1, ...) in a scan_layers model's stacked layout; unstack_layers' inverse."""
    params = dict(params)
    layers = [params.pop(f"h_{i}") for i in range(n_layer)]
    params["h"] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)
    return params


def segment_positions(segments_BT: jax.Array) -> jax.Array:
    """Each token's position in its segment (a run of equal ids): 0 where the id changes, then 1, 2, ..."""
    B, T = segments_BT.shape
    t_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    starts_BT = jnp.concatenate([jnp.ones((B, 1), bool), segments_BT[:, 1:] != segments_BT[:, :-1]], axis=1)
    return t_BT - jax.lax.cummax(jnp.where(starts_BT, t_BT, 0), axis=1)


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
        segments_BT: jax.Array | None = None,
        deterministic: bool = True,
        targets_BT: jax.Array | None = None,
        row_logps: bool = False,
    ) -> tuple[jax.Array, list[attention.Cache] | None]:
        """Returns float32 logits_BTV (a reward model, config.score_head: scores_BT) and the updated
        cache (None when no cache was given); with
        `targets_BT` (as nanoGPT's forward), the mean next-token cross entropy instead of the logits (over
        the targets that are not lm_head.IGNORE), or with `row_logps` each row's summed log-probability of
        its targets [B] (DPO's); both chunked with loss_chunk.

        positions_BT defaults to 0..T-1 (offset by the cache's fill level when decoding); pass it
        explicitly for left-padded batches. `segments_BT` (int) packs several examples in a row: each
        token attends only to earlier tokens of its own segment (equal ids, consecutive), and positions
        restart at 0 where a segment starts, so each example is computed as if it were alone in its row.
        """
        c = self.config
        B, T = tokens_BT.shape
        span = T if cache is None else cache[0]["v"].shape[2]  # positions this call can reach
        if span > c.block_size:
            what = f"{T} tokens" if cache is None else f"a KV cache of {span} positions"
            raise ValueError(
                f"{what} exceed block_size={c.block_size} (the model has no positions beyond it); "
                "crop the input to its last block_size tokens"
            )
        if positions_BT is None and segments_BT is not None:
            positions_BT = segment_positions(segments_BT)
        elif positions_BT is None:
            offset = cache[0]["end"] if cache is not None else 0
            positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32) + offset, (B, T))

        wte = Embed(
            c.padded_vocab,
            c.n_embd,
            embedding_init=normal_init(),
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            name="wte",
        )
        x_BTD = wte(tokens_BT)
        # Added to the embeddings here; rope's enter every attention layer instead (Block).
        if c.position == "learned":
            wpe = nn.Embed(
                c.block_size,
                c.n_embd,
                embedding_init=normal_init(),
                dtype=c.dtype,
                param_dtype=c.param_dtype,
                name="wpe",
            )
            # Replicated for its lookup (T x D is small); XLA could not partition the lookup into the table
            # sharded over fsdp either (see gather_table).
            table_TD = constrain(wpe.embedding, None, None)
            x_BTD = x_BTD + jnp.take(table_TD, positions_BT, axis=0).astype(c.dtype)
        elif c.position == "sinusoidal":
            table = jnp.asarray(sinusoidal_table(c.block_size, c.n_embd), c.dtype)
            x_BTD = x_BTD + table[positions_BT]
        x_BTD = nn.Dropout(c.dropout)(x_BTD, deterministic=deterministic)
        x_BTD = constrain(x_BTD, BATCH_AXES, None, None)  # batch-parallel, whatever the tables' shardings

        layer = stacked_layers(c)
        new_cache = None
        if c.scan_layers:
            if cache is not None:
                raise ValueError(
                    "KV-cache decoding needs per-layer params: use GPTConfig(scan_layers=False) "
                    "with gptjax.model.unstack_layers(params)"
                )
            x_BTD, _ = layer(c, deterministic, name="h")(x_BTD, None, kv_mask_BS, segments_BT, positions_BT)
        else:
            new_cache = [] if cache is not None else None
            for i in range(c.n_layer):
                layer_cache = cache[i] if cache is not None else None
                x_BTD, layer_cache = layer(c, deterministic, name=f"h_{i}")(
                    x_BTD, layer_cache, kv_mask_BS, segments_BT, positions_BT
                )
                if cache is not None:
                    new_cache.append(layer_cache)
        ln_f = norm("ln_f", c.norm, use_bias=c.bias, dtype=c.dtype, param_dtype=c.param_dtype, eps=c.norm_eps)
        x_BTD = ln_f(x_BTD)

        if c.score_head:  # a reward model: every position's score, float32 (gptjax.reward reads the last)
            if targets_BT is not None:
                raise ValueError("a reward model (score_head=True) has no LM head to score targets with")
            score_D = jnp.asarray(self.param("score", normal_init(), (c.n_embd,), c.param_dtype), c.dtype)
            scores_BT = jnp.einsum("BTD,D->BT", x_BTD, score_D, preferred_element_type=jnp.float32)
            return constrain(scores_BT, BATCH_AXES, None), new_cache
        if c.tie_embeddings:
            head_VD = wte.embedding
        else:
            head_VD = self.param("lm_head", normal_init(), (c.padded_vocab, c.n_embd), c.param_dtype)
        head_VD = jnp.asarray(gather_table(head_VD), c.dtype)
        if targets_BT is not None and c.loss_chunk:
            fused = lm_head_logps if row_logps else lm_head_loss
            return fused(
                x_BTD, head_VD, targets_BT, c.predicted_vocab, c.loss_chunk, c.logits_dtype
            ), new_cache
        out_dtype = c.logits_dtype if targets_BT is not None else "float32"
        logits_BTV = head_logits(x_BTD, head_VD, c.predicted_vocab, out_dtype)
        logits_BTV = constrain(logits_BTV, BATCH_AXES, None, VOCAB_AXIS)
        if targets_BT is not None:
            loss = target_logps if row_logps else cross_entropy
            return loss(logits_BTV, targets_BT), new_cache
        return logits_BTV, new_cache


def merge_lora(params: Any, config: GPTConfig) -> tuple[Any, GPTConfig]:
    """(params, config) of the same function without adapters: each adapted kernel W becomes
    W + A B * alpha / rank (transposed for kernel_layout out_in; stacked layers too), A and B dropped."""
    if not config.lora_rank:
        return params, config
    scale = config.lora_alpha / config.lora_rank

    def merge(node):
        if not isinstance(node, Mapping):
            return node
        node = {k: merge(v) for k, v in node.items()}
        if "lora_a" in node:
            a, b = node.pop("lora_a"), node.pop("lora_b")
            delta = jnp.einsum("...ir,...ro->...io", a, b) * scale
            if config.kernel_layout == "out_in":
                delta = jnp.swapaxes(delta, -1, -2)
            node["kernel"] = (node["kernel"] + delta).astype(node["kernel"].dtype)
        return node

    return merge(params), dataclasses.replace(config, lora_rank=0)


def drop_lora(params: Any) -> Any:
    """The params without their LoRA adapters (lora_a, lora_b)."""
    if not isinstance(params, Mapping):
        return params
    return {k: drop_lora(v) for k, v in params.items() if k not in ("lora_a", "lora_b")}


def with_lora(params: Any, adapted: Any) -> Any:
    """`params` (a model without adapters) with the LoRA adapters of `adapted` (the adapted model's), and
    every other param of `adapted` that `params` lacks (a reward model's score head: fresh, as the
    adapters)."""
    if not isinstance(adapted, Mapping):
        return params
    return {k: with_lora(params[k], adapted[k]) if k in params else adapted[k] for k in adapted}


def count_params(params: Any) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
