"""Causal multi-head self-attention with an explicit KV cache passed in and returned.

softmax(Q K^T / sqrt(H)) V over N heads, with GPT-2's fused QKV projection (`c_attn` is one D x 3NH
matrix, columns ordered q | k | v) and `c_proj` NH x D; H is D / N unless set apart (Qwen3). With K < N
key/value heads (grouped-query attention, Ainslie et al. 2023; K = 1 is multi-query) `c_attn` is
D x (N + 2K)H, and query head n reads key/value head n // (N/K), as HF's repeat_kv. With qk_norm_eps,
each head's queries and keys are RMS-normed (a [H] scale each: q_norm, k_norm) before rope (Qwen3). With
a sliding `window` (Mistral) a query sees only the last `window` keys, itself included.
Logits and softmax are computed in float32 whatever the compute dtype. Decoding passes a cache
`{"k": BxKxHxS, "v": BxKxSxH, "end": int32}`; the new keys and values (normed, rotated) are written at
`end` and the updated cache is returned (no mutable Flax collections).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.layers import Dense, Dtype, LoRA, RopeScaling, norm, normal_init, residual_init, rope

# Added to the logits of masked (future or padded) keys. The float32 minimum makes their softmax weight
# exactly 0 while keeping a fully masked row finite (uniform) instead of NaN.
MASK_VALUE = float(np.finfo(np.float32).min)

Cache = dict[str, Any]
# "einsum": the reference written out here (the only one with attention-probability dropout);
# "xla" / "cudnn": jax.nn.dot_product_attention (cudnn = fused flash attention on NVIDIA GPUs, bf16/fp16).
# "auto": cudnn for bf16/fp16 training on a GPU, xla otherwise.
IMPLEMENTATIONS = ("einsum", "xla", "cudnn", "auto")


def init_cache(batch: int, max_len: int, n_kv_head: int, head_dim: int, dtype: Dtype) -> Cache:
    """An empty cache for one layer, room for `max_len` positions."""
    k_shape, v_shape = (batch, n_kv_head, head_dim, max_len), (batch, n_kv_head, max_len, head_dim)
    return {"k": jnp.zeros(k_shape, dtype), "v": jnp.zeros(v_shape, dtype), "end": jnp.int32(0)}


def _write(cache: Cache, k_BKHT: jax.Array, v_BKTH: jax.Array, at: jax.Array) -> Cache:
    """The cache with T new keys and values written from slot `at` on."""
    k = jax.lax.dynamic_update_slice(cache["k"], k_BKHT.astype(cache["k"].dtype), (0, 0, 0, at))
    v = jax.lax.dynamic_update_slice(cache["v"], v_BKTH.astype(cache["v"].dtype), (0, 0, at, 0))
    return {"k": k, "v": v, "end": cache["end"] + v_BKTH.shape[2]}


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
    rope_scaling: RopeScaling | None = None  # their frequencies slowed for a longer context; None: as is
    n_kv_head: int = 0  # K key/value heads, dividing n_head (grouped-query attention); 0: n_head
    qkv_bias: bool = False  # c_attn (q, k and v) has a bias even without use_bias (Qwen2)
    head_dim: int = 0  # H; 0: n_embd / n_head
    qk_norm_eps: float | None = None  # RMS norms over each head's q and k before rope (Qwen3); None: none
    window: int = 0  # sliding window (Mistral): a query sees the last `window` keys, itself included; 0: all

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
        N, K = self.n_head, self.n_kv_head or self.n_head
        H, G = self.head_dim or D // N, N // K  # head dim, query heads per key/value head
        implementation = self.implementation
        if implementation == "auto":
            half = jnp.dtype(self.dtype) in (jnp.bfloat16, jnp.float16)
            masked = cache is not None or kv_mask_BS is not None or segments_BT is not None
            gpu = jax.default_backend() == "gpu" and not masked
            implementation = "cudnn" if half and gpu else "xla"
        sizes = (N * H, K * H, K * H)  # q | k | v
        qkv_bias = self.use_bias or self.qkv_bias
        if implementation == "cudnn":  # q, k, v as three matmuls: cuDNN reads each in place
            c_attn = self._dense(sum(sizes), qkv_bias, normal_init(), "c_attn", splits=sizes)
            q, k, v = c_attn(x_BTD, deterministic)
        else:
            qkv = self._dense(sum(sizes), qkv_bias, normal_init(), "c_attn")(x_BTD, deterministic)
            q, k, v = jnp.split(qkv, np.cumsum(sizes)[:-1], axis=-1)
        q_BTNH = q.reshape(B, T, N, H)
        k_BTKH = k.reshape(B, T, K, H)
        v_BTKH = v.reshape(B, T, K, H)
        if self.qk_norm_eps is not None:  # over each head's H channels, in float32 as every norm
            kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, eps=self.qk_norm_eps)
            q_BTNH = norm("q_norm", "rms", **kw)(q_BTNH)
            k_BTKH = norm("k_norm", "rms", **kw)(k_BTKH)
        if self.rope_theta is not None:
            q_BTNH = rope(q_BTNH, positions_BT, self.rope_theta, self.rope_scaling)
            k_BTKH = rope(k_BTKH, positions_BT, self.rope_theta, self.rope_scaling)

        # Keys are kept as BKHS and values as BKSH: both matmuls then read them in place (other layouts
        # make XLA transpose, i.e. copy, the whole cache at every decoding step).
        k_BKHT, v_BKTH = k_BTKH.transpose(0, 2, 3, 1), v_BTKH.transpose(0, 2, 1, 3)
        end = 0 if cache is None else cache["end"]
        S = T if cache is None else cache["v"].shape[2]
        query_T1, key_1S = end + jnp.arange(T)[:, None], jnp.arange(S)[None, :]  # cache slots
        mask_BTS = (key_1S <= query_T1)[None]
        if self.window:  # slots are consecutive positions (left padding is masked): the last `window`
            mask_BTS = mask_BTS & (key_1S > query_T1 - self.window)[None]
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
            new_cache = None if cache is None else _write(cache, k_BKHT, v_BKTH, end)
            k_BKHS, v_BKSH = (k_BKHT, v_BKTH) if cache is None else (new_cache["k"], new_cache["v"])
            # Only a plain causal mask (with its window) lets cuDNN use its causal kernel; other masks are
            # passed whole.
            plain_causal = cache is None and kv_mask_BS is None and segments_BT is None
            out_BTNH = jax.nn.dot_product_attention(  # K < N key/value heads: grouped as above
                q_BTNH,
                k_BKHS.transpose(0, 3, 1, 2).astype(self.dtype),
                v_BKSH.transpose(0, 2, 1, 3).astype(self.dtype),
                mask=None if plain_causal else jnp.broadcast_to(mask_BTS[:, None], (B, 1, T, S)),
                is_causal=plain_causal,
                local_window_size=(self.window - 1, 0) if plain_causal and self.window else None,
                implementation=None if implementation == "xla" else "cudnn",
            )
            return self._project(out_BTNH, deterministic), new_cache

        # With a cache, its keys (slots < end) and the T new keys are two blocks of one softmax, so that
        # the matmuls read the cache as it was passed in and the new keys are written afterwards.
        # Query heads as K groups of G (n = k * G + g), each group reading its one key/value head.
        blocks = [(k_BKHT, v_BKTH, mask_BTS)]
        if cache is not None:
            old_mask_BTS = mask_BTS & (jnp.arange(S) < end)[None, None, :]
            new_mask_BTT = jax.lax.dynamic_slice_in_dim(mask_BTS, end, T, axis=2)
            blocks = [(cache["k"], cache["v"], old_mask_BTS), (k_BKHT, v_BKTH, new_mask_BTT)]
        scale = np.sqrt(H).astype(np.float32)
        q_BTKGH = q_BTNH.reshape(B, T, K, G, H)
        logits = [
            jnp.where(
                m_BTS[:, None],
                jnp.einsum(
                    "BTKGH,BKHS->BKGTS", q_BTKGH, k.astype(self.dtype), preferred_element_type=jnp.float32
                ).reshape(B, N, T, k.shape[3])
                / scale,
                MASK_VALUE,
            )
            for k, _, m_BTS in blocks
        ]
        probs_BNTS = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1).astype(self.dtype)
        probs_BNTS = nn.Dropout(self.dropout)(probs_BNTS, deterministic=deterministic)
        block_probs = jnp.split(probs_BNTS, np.cumsum([v.shape[2] for _, v, _ in blocks])[:-1], axis=-1)
        out_BTNH = sum(
            jnp.einsum(
                "BKGTS,BKSH->BTKGH", p_BNTS.reshape(B, K, G, T, v.shape[2]), v.astype(self.dtype)
            ).reshape(B, T, N, H)
            for p_BNTS, (_, v, _) in zip(block_probs, blocks, strict=True)
        )
        new_cache = None
        if cache is not None:
            # XLA would copy the cache to keep it for the matmuls unless the write comes after them: a zero
            # computed from their output (XLA cannot prove it is 0) delays it.
            after = jnp.minimum(jnp.argmax(out_BTNH[0, 0, 0]), 0).astype(jnp.int32)
            new_cache = _write(cache, k_BKHT, v_BKTH, end + after)
        return self._project(out_BTNH, deterministic), new_cache

    def _dense(
        self, features: int, use_bias: bool, init, name: str, splits: int | tuple[int, ...] = 1
    ) -> Dense:
        return Dense(
            features,
            use_bias,
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
        c_proj = self._dense(self.n_embd, self.use_bias, residual_init(self.n_layer), "c_proj")
        out_BTD = c_proj(out_BTNH.reshape(B, T, N * H), deterministic)
        return nn.Dropout(self.dropout)(out_BTD, deterministic=deterministic)
