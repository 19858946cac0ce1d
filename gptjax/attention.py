"""Causal multi-head self-attention with an explicit KV cache passed in and returned.

softmax(Q K^T / sqrt(H)) V over N heads, with GPT-2's fused QKV projection (`c_attn` is one D x 3D
matrix, columns ordered q | k | v). Logits and softmax are computed in float32 whatever the compute
dtype. Decoding passes a cache `{"k": BxNxHxS, "v": BxNxSxH, "end": int32}`; the new keys and values
are written at `end` and the updated cache is returned (no mutable Flax collections).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.layers import Dense, Dtype, LoRA, normal_init, residual_init, rope

# Added to the logits of masked (future or padded) keys. The float32 minimum makes their softmax weight
# exactly 0 while keeping a fully masked row finite (uniform) instead of NaN.
MASK_VALUE = float(np.finfo(np.float32).min)

Cache = dict[str, Any]
# "einsum": the reference written out here (the only one with attention-probability dropout);
# "xla" / "cudnn": jax.nn.dot_product_attention (cudnn = fused flash attention on NVIDIA GPUs, bf16/fp16).
# "auto": cudnn for bf16/fp16 training on a GPU, xla otherwise.
IMPLEMENTATIONS = ("einsum", "xla", "cudnn", "auto")


def init_cache(batch: int, max_len: int, n_head: int, head_dim: int, dtype: Dtype) -> Cache:
    """An empty cache for one layer, room for `max_len` positions."""
    k_shape, v_shape = (batch, n_head, head_dim, max_len), (batch, n_head, max_len, head_dim)
    return {"k": jnp.zeros(k_shape, dtype), "v": jnp.zeros(v_shape, dtype), "end": jnp.int32(0)}


def _write(cache: Cache, k_BNHT: jax.Array, v_BNTH: jax.Array, at: jax.Array) -> Cache:
    """The cache with T new keys and values written from slot `at` on."""
    k = jax.lax.dynamic_update_slice(cache["k"], k_BNHT.astype(cache["k"].dtype), (0, 0, 0, at))
    v = jax.lax.dynamic_update_slice(cache["v"], v_BNTH.astype(cache["v"].dtype), (0, 0, at, 0))
    return {"k": k, "v": v, "end": cache["end"] + v_BNTH.shape[2]}


class CausalSelfAttention(nn.Module):
    n_head: int
    n_embd: int
    n_layer: int
    use_bias: bool
    dropout: float
    dtype: Dtype
    param_dtype: Dtype
    implementation: str = "einsum"
    out_in: bool = False  # Dense kernels stored [out, in] (see gptjax.layers.Dense)
    lora: LoRA | None = None  # low-rank adapters on c_attn / c_proj (gptjax.layers.LoRA)
    rope_theta: float | None = None  # rotary positions (gptjax.layers.rope) on q and k; None: none

    @nn.compact
    def __call__(
        self,
        x_BTD: jax.Array,
        *,
        cache: Cache | None = None,
        kv_mask_BS: jax.Array | None = None,
        segments_BT: jax.Array | None = None,
        positions_BT: jax.Array | None = None,
        deterministic: bool,
    ) -> tuple[jax.Array, Cache | None]:
        """Attends each query to itself and earlier keys; `kv_mask_BS` (bool) also hides padded keys, and
        `segments_BT` (int, packed examples) the keys of other segments than the query's. With rope_theta,
        q and k are rotated by `positions_BT` (the cache keeps keys rotated)."""
        B, T, D = x_BTD.shape
        N = self.n_head
        H = D // N
        implementation = self.implementation
        if implementation == "auto":
            half = jnp.dtype(self.dtype) in (jnp.bfloat16, jnp.float16)
            masked = cache is not None or kv_mask_BS is not None or segments_BT is not None
            gpu = jax.default_backend() == "gpu" and not masked
            implementation = "cudnn" if half and gpu else "xla"
        if implementation == "cudnn":  # q, k, v as three matmuls: cuDNN reads each in place
            q_BTD, k_BTD, v_BTD = self._dense(3 * D, normal_init(), "c_attn", splits=3)(x_BTD, deterministic)
        else:
            qkv_BT3D = self._dense(3 * D, normal_init(), "c_attn")(x_BTD, deterministic)
            q_BTD, k_BTD, v_BTD = jnp.split(qkv_BT3D, 3, axis=-1)
        q_BTNH = q_BTD.reshape(B, T, N, H)
        k_BTNH = k_BTD.reshape(B, T, N, H)
        v_BTNH = v_BTD.reshape(B, T, N, H)
        if self.rope_theta is not None:
            q_BTNH = rope(q_BTNH, positions_BT, self.rope_theta)
            k_BTNH = rope(k_BTNH, positions_BT, self.rope_theta)

        # Keys are kept as BNHS and values as BNSH: both matmuls then read them in place (other layouts
        # make XLA transpose, i.e. copy, the whole cache at every decoding step).
        k_BNHT, v_BNTH = k_BTNH.transpose(0, 2, 3, 1), v_BTNH.transpose(0, 2, 1, 3)
        end = 0 if cache is None else cache["end"]
        S = T if cache is None else cache["v"].shape[2]
        mask_BTS = (jnp.arange(S)[None, :] <= end + jnp.arange(T)[:, None])[None]
        if kv_mask_BS is not None:
            mask_BTS = mask_BTS & kv_mask_BS[:, None, :].astype(bool)
        if segments_BT is not None:
            if cache is not None:
                raise ValueError("segments_BT (packed training rows) cannot be used with a KV cache")
            mask_BTS = mask_BTS & (segments_BT[:, :, None] == segments_BT[:, None, :])

        if implementation != "einsum":
            if self.dropout and not deterministic:
                raise ValueError(
                    f"attention={self.implementation!r} has no attention dropout; "
                    "set model.dropout=0 or model.attention='einsum'"
                )
            new_cache = None if cache is None else _write(cache, k_BNHT, v_BNTH, end)
            k_BNHS, v_BNSH = (k_BNHT, v_BNTH) if cache is None else (new_cache["k"], new_cache["v"])
            # Only a plain causal mask lets cuDNN use its causal kernel; other masks are passed whole.
            plain_causal = cache is None and kv_mask_BS is None and segments_BT is None
            out_BTNH = jax.nn.dot_product_attention(
                q_BTNH,
                k_BNHS.transpose(0, 3, 1, 2).astype(self.dtype),
                v_BNSH.transpose(0, 2, 1, 3).astype(self.dtype),
                mask=None if plain_causal else jnp.broadcast_to(mask_BTS[:, None], (B, 1, T, S)),
                is_causal=plain_causal,
                implementation=None if implementation == "xla" else "cudnn",
            )
            return self._project(out_BTNH, deterministic), new_cache

        # With a cache, its keys (slots < end) and the T new keys are two blocks of one softmax, so that
        # the matmuls read the cache as it was passed in and the new keys are written afterwards.
        blocks = [(k_BNHT, v_BNTH, mask_BTS)]
        if cache is not None:
            old_mask_BTS = mask_BTS & (jnp.arange(S) < end)[None, None, :]
            new_mask_BTT = jax.lax.dynamic_slice_in_dim(mask_BTS, end, T, axis=2)
            blocks = [(cache["k"], cache["v"], old_mask_BTS), (k_BNHT, v_BNTH, new_mask_BTT)]
        scale = np.sqrt(H).astype(np.float32)
        logits = [
            jnp.where(
                m_BTS[:, None],
                jnp.einsum(
                    "BTNH,BNHS->BNTS", q_BTNH, k.astype(self.dtype), preferred_element_type=jnp.float32
                )
                / scale,
                MASK_VALUE,
            )
            for k, _, m_BTS in blocks
        ]
        probs_BNTS = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1).astype(self.dtype)
        probs_BNTS = nn.Dropout(self.dropout)(probs_BNTS, deterministic=deterministic)
        block_probs = jnp.split(probs_BNTS, np.cumsum([v.shape[2] for _, v, _ in blocks])[:-1], axis=-1)
        out_BTNH = sum(
            jnp.einsum("BNTS,BNSH->BTNH", p_BNTS, v.astype(self.dtype))
            for p_BNTS, (_, v, _) in zip(block_probs, blocks, strict=True)
        )
        new_cache = None
        if cache is not None:
            # XLA would copy the cache to keep it for the matmuls unless the write comes after them: a zero
            # computed from their output (XLA cannot prove it is 0) delays it.
            after = jnp.minimum(jnp.argmax(out_BTNH[0, 0, 0]), 0).astype(jnp.int32)
            new_cache = _write(cache, k_BNHT, v_BNTH, end + after)
        return self._project(out_BTNH, deterministic), new_cache

    def _dense(self, features: int, init, name: str, splits: int = 1) -> Dense:
        return Dense(
            features,
            self.use_bias,
            init,
            self.dtype,
            self.param_dtype,
            self.out_in,
            self.lora,
            splits,
            name=name,
        )

    def _project(self, out_BTNH: jax.Array, deterministic: bool) -> jax.Array:
        B, T, N, H = out_BTNH.shape
        c_proj = self._dense(N * H, residual_init(self.n_layer), "c_proj")
        out_BTD = c_proj(out_BTNH.reshape(B, T, N * H), deterministic)
        return nn.Dropout(self.dropout)(out_BTD, deterministic=deterministic)
