"""Causal multi-head self-attention with an explicit KV cache passed in and returned.

softmax(Q K^T / sqrt(H)) V over N heads, with GPT-2's fused QKV projection (`c_attn` is one D x 3D
matrix, columns ordered q | k | v). Logits and softmax are computed in float32 whatever the compute
dtype. Decoding passes a cache `{"k": BxSxNxH, "v": BxSxNxH, "end": int32}`; the new keys and values
are written at `end` and the updated cache is returned (no mutable Flax collections).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.layers import Dtype, normal_init, residual_init

# Added to the logits of masked (future or padded) keys. The float32 minimum makes their softmax weight
# exactly 0 while keeping a fully masked row finite (uniform) instead of NaN.
MASK_VALUE = float(np.finfo(np.float32).min)

Cache = dict[str, Any]
# "einsum": the reference written out here (the only one with attention-probability dropout);
# "xla" / "cudnn": jax.nn.dot_product_attention (cudnn = fused flash attention on NVIDIA GPUs, bf16/fp16).
IMPLEMENTATIONS = ("einsum", "xla", "cudnn")


def init_cache(batch: int, max_len: int, n_head: int, head_dim: int, dtype: Dtype) -> Cache:
    """An empty cache for one layer, room for `max_len` positions."""
    shape = (batch, max_len, n_head, head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype), "end": jnp.int32(0)}


class CausalSelfAttention(nn.Module):
    n_head: int
    n_embd: int
    n_layer: int
    use_bias: bool
    dropout: float
    dtype: Dtype
    param_dtype: Dtype
    implementation: str = "einsum"

    @nn.compact
    def __call__(
        self,
        x_BTD: jax.Array,
        *,
        cache: Cache | None = None,
        kv_mask_BS: jax.Array | None = None,
        deterministic: bool,
    ) -> tuple[jax.Array, Cache | None]:
        """Attends each query to itself and earlier keys; `kv_mask_BS` (bool) also hides padded keys."""
        B, T, D = x_BTD.shape
        N = self.n_head
        H = D // N
        dense = lambda features, init, name: nn.Dense(  # noqa: E731
            features,
            use_bias=self.use_bias,
            kernel_init=init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        qkv_BT3D = dense(3 * D, normal_init(), "c_attn")(x_BTD)
        q_BTD, k_BTD, v_BTD = jnp.split(qkv_BT3D, 3, axis=-1)
        q_BTNH = q_BTD.reshape(B, T, N, H)
        k_BTNH = k_BTD.reshape(B, T, N, H)
        v_BTNH = v_BTD.reshape(B, T, N, H)

        if cache is None:
            k_BSNH, v_BSNH, new_cache = k_BTNH, v_BTNH, None
            q_pos_T = jnp.arange(T)
        else:
            end = cache["end"]
            k_BSNH = jax.lax.dynamic_update_slice(cache["k"], k_BTNH.astype(cache["k"].dtype), (0, end, 0, 0))
            v_BSNH = jax.lax.dynamic_update_slice(cache["v"], v_BTNH.astype(cache["v"].dtype), (0, end, 0, 0))
            new_cache = {"k": k_BSNH, "v": v_BSNH, "end": end + T}
            q_pos_T = end + jnp.arange(T)
        S = k_BSNH.shape[1]

        mask_BTS = (jnp.arange(S)[None, :] <= q_pos_T[:, None])[None]
        if kv_mask_BS is not None:
            mask_BTS = mask_BTS & kv_mask_BS[:, None, :].astype(bool)

        if self.implementation != "einsum":
            if self.dropout and not deterministic:
                raise ValueError(
                    f"attention={self.implementation!r} has no attention dropout; "
                    "set model.dropout=0 or model.attention='einsum'"
                )
            plain_causal = cache is None and kv_mask_BS is None  # lets cuDNN use its causal kernel
            out_BTNH = jax.nn.dot_product_attention(
                q_BTNH,
                k_BSNH.astype(self.dtype),
                v_BSNH.astype(self.dtype),
                mask=None if plain_causal else jnp.broadcast_to(mask_BTS[:, None], (B, 1, T, S)),
                is_causal=plain_causal,
                implementation=None if self.implementation == "xla" else "cudnn",
            )
            return self._project(out_BTNH, deterministic), new_cache

        logits_BNTS = jnp.einsum(
            "BTNH,BSNH->BNTS", q_BTNH, k_BSNH.astype(self.dtype), preferred_element_type=jnp.float32
        ) / np.sqrt(H).astype(np.float32)
        logits_BNTS = jnp.where(mask_BTS[:, None], logits_BNTS, MASK_VALUE)
        probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1).astype(self.dtype)
        probs_BNTS = nn.Dropout(self.dropout)(probs_BNTS, deterministic=deterministic)
        out_BTNH = jnp.einsum("BNTS,BSNH->BTNH", probs_BNTS, v_BSNH.astype(self.dtype))
        return self._project(out_BTNH, deterministic), new_cache

    def _project(self, out_BTNH: jax.Array, deterministic: bool) -> jax.Array:
        B, T, N, H = out_BTNH.shape
        out_BTD = nn.Dense(
            N * H,
            use_bias=self.use_bias,
            kernel_init=residual_init(self.n_layer),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="c_proj",
        )(out_BTNH.reshape(B, T, N * H))
        return nn.Dropout(self.dropout)(out_BTD, deterministic=deterministic)
