"""Building blocks shared by the attention and the model: Dense, norms, GELU, MLP, position encodings
(sinusoidal, rotary), and the activation sharding constraint used under a mesh.

Axis legend, used in every tensor suffix and einsum in gptjax:
  B batch, T query length, S key/value length, D model width (n_embd), N heads, H head dim,
  F MLP width (4*D), V vocab, L layers.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# GPT-2 initialises every weight from N(0, 0.02) (modeling_gpt2.py `_init_weights`, nanoGPT `_init_weights`).
INIT_STD = 0.02

# Mesh axes of activations (gptjax.parallel's mesh): the batch over every data-parallel axis, the
# vocabulary over the tensor axis, as the default parameter rules shard the embedding's vocab rows.
BATCH_AXES = ("data", "fsdp")
VOCAB_AXIS = "tensor"


def constrain(x: jax.Array, *spec: str | tuple[str, ...] | None) -> jax.Array:
    """x with its sharding pinned to PartitionSpec(*spec) when traced under a mesh that has these axes
    (gptjax.parallel traces the mesh steps under it); a dimension stays unsharded where its mesh axes do
    not divide it. Unchanged without a mesh (one device, pmap, decoding).

    Left to itself, XLA's sharding propagation all-reduced the whole [B, T, V] logits under FSDP instead of
    gathering the [V, D] embedding: 4.7 + 4.0 GB of collectives a step instead of 0.2 + 0.2 GB for a
    2-layer GPT-2 on fsdp=8 (16 x 1024 tokens).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    fitted = []
    for dim, axes in zip(x.shape, spec, strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if not set(names) <= set(mesh.axis_names):
            return x
        size = math.prod(mesh.shape[name] for name in names)
        fitted.append(axes if names and dim % size == 0 else None)
    return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(*fitted))


def gather_table(table_VD: jax.Array) -> jax.Array:
    """An embedding table ready for a lookup under a mesh that shards its vocabulary over `tensor`:
    gathered over the other axes first (the FSDP all-gather of a weight before its use).

    XLA cannot partition a lookup into a table sharded on both axes ("Involuntary full
    rematerialization"): for a 2-layer GPT-2 on (data, fsdp, tensor) = (2, 2, 2), 16 x 1024 tokens,
    0.65 GB of collectives a step, 0.32 GB with the gather. Without tensor parallelism XLA's own plan is
    cheaper (each fsdp shard computes its columns of the lookup's gradient: 0.43 GB on fsdp=8, 0.58 GB
    with the gather), so the table is left alone there, as it is without a mesh.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or dict(mesh.shape).get(VOCAB_AXIS, 1) == 1:
        return table_VD
    return constrain(table_VD, VOCAB_AXIS, None)


class Embed(nn.Embed):
    """nn.Embed (same parameter) whose lookup reads `gather_table(embedding)`."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return jnp.take(gather_table(self.embedding), inputs, axis=0).astype(self.dtype)


def normal_init(std: float = INIT_STD) -> Callable:
    return nn.initializers.normal(stddev=std)


def residual_init(n_layer: int) -> Callable:
    """GPT-2 scales projections that write into the residual stream by 1/sqrt(2*n_layer)."""
    return normal_init(INIT_STD / np.sqrt(2 * n_layer))


def norm(
    name: str, kind: str, *, use_bias: bool, dtype: Dtype, param_dtype: Dtype, eps: float = 1e-5
) -> nn.Module:
    """kind "layer": LayerNorm (GPT-2), with a bias when use_bias. "rms": x / sqrt(mean(x^2) + eps) * scale,
    no mean subtracted and no bias (ImageGPT's layer norm; also Llama's RMSNorm). eps 1e-5 by default, as
    GPT-2's layer_norm_epsilon and torch.nn.LayerNorm."""
    if kind == "rms":
        return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)
    return nn.LayerNorm(epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)


def sinusoidal_table(max_len: int, d: int) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...) (Vaswani et al. 2017, 3.5)."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    two_i = np.arange(0, d, 2, dtype=np.float64)[None, :]
    angle = pos / np.power(10000.0, two_i / d)
    table = np.zeros((max_len, d), dtype=np.float64)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, : d // 2])  # odd d: one fewer cosine column
    return table.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rotary frequencies slowed down for a longer context than the one a model was pretrained with, as
    HF's rope_parameters (transformers/modeling_rope_utils.py). "linear" (Chen et al. 2023, position
    interpolation) divides every frequency by `factor`; "llama3" (Llama 3.1 and 3.2) divides only the
    frequencies whose wavelength exceeds original_context / low_freq_factor, keeps those shorter than
    original_context / high_freq_factor, and blends the two in between."""

    kind: str  # "linear" or "llama3"
    factor: float
    low_freq_factor: float = 1.0  # llama3 only, as the three below
    high_freq_factor: float = 4.0
    original_context: int = 8192  # the pretraining context (HF's original_max_position_embeddings)


def rope_inv_freq(H: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """The H/2 frequencies theta^(-2i/H) (radians per position) of rope's channel pairs, float32; with
    `scaling`, slowed down as HF computes them in float32, so imported models give HF's logits."""
    inv_freq_h = theta ** (-np.arange(0, H, 2, dtype=np.float32) / H)
    if scaling is None:
        return inv_freq_h
    if scaling.kind == "linear":
        return inv_freq_h / np.float32(scaling.factor)
    if scaling.kind != "llama3":
        raise ValueError(f"rope scaling {scaling.kind!r} is unknown; use 'linear' or 'llama3'")
    s = scaling
    wavelen_h = 2 * np.pi / inv_freq_h  # positions per turn
    # 0 at wavelength original_context / low_freq_factor (and longer: divided), 1 at original_context /
    # high_freq_factor (and shorter: kept).
    smooth_h = (s.original_context / wavelen_h - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended_h = (1 - smooth_h) * inv_freq_h / s.factor + smooth_h * inv_freq_h
    long_h = wavelen_h > s.original_context / s.low_freq_factor
    short_h = wavelen_h < s.original_context / s.high_freq_factor
    scaled_h = np.where(long_h, inv_freq_h / np.float32(s.factor), np.where(short_h, inv_freq_h, blended_h))
    return scaled_h.astype(np.float32)


def rope(
    x_BTNH: jax.Array, positions_BT: jax.Array, theta: float, scaling: RopeScaling | None = None
) -> jax.Array:
    """Rotary position embedding (Su et al. 2021, RoFormer) as GPT-NeoX and Llama apply it (HF's
    rotate_half): each head's channel pairs (i, i + H/2) turned by the angle position * theta^(-2i/H)
    (`rope_inv_freq`, maybe scaled), in float32. Rotating queries and keys makes their dot products depend
    on relative positions only."""
    H = x_BTNH.shape[-1]
    inv_freq_h = rope_inv_freq(H, theta, scaling)
    angles_BTh = positions_BT.astype(jnp.float32)[..., None] * inv_freq_h[None, None, :]
    cos_BT1h, sin_BT1h = jnp.cos(angles_BTh)[:, :, None], jnp.sin(angles_BTh)[:, :, None]
    x1_BTNh, x2_BTNh = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    turned_BTNH = jnp.concatenate(
        [x1_BTNh * cos_BT1h - x2_BTNh * sin_BT1h, x2_BTNh * cos_BT1h + x1_BTNh * sin_BT1h], axis=-1
    )
    return turned_BTNH.astype(x_BTNH.dtype)


@dataclasses.dataclass(frozen=True)
class LoRA:
    """Low-rank adapters (Hu et al. 2021) on the Dense layers named in `targets` (c_attn, c_proj, fc, proj):
    y = x W + b + (dropout(x) A) B * alpha / rank, A [in, rank], B [rank, out] zeros, so an adapted model
    starts as the model it adapts; training then updates A and B only (gptjax.optim). The dropout (PEFT's
    lora_dropout) is on the adapters' input only, in training only."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float = 0.0

    def rank_of(self, name: str) -> int:
        return self.rank if name in self.targets else 0


def lora_rank(lora: LoRA | None, name: str) -> int:
    return lora.rank_of(name) if lora is not None else 0


class Dense(nn.Module):
    """y = x W + b; the params of flax's nn.Dense (kernel [in, out], bias [out], same initialisation).

    `out_in` stores the kernel transposed, [out, in]: XLA's CPU matrix-vector product (one row of x, as in
    batch-1 decoding) streams weights ~20% faster in that layout, and slower for several rows. Training and
    checkpoints always use [in, out]; gptjax.sample transposes the kernels for one-row decoding.
    """

    features: int
    use_bias: bool
    kernel_init: Callable
    dtype: Dtype
    param_dtype: Dtype
    out_in: bool = False
    lora: LoRA | None = None  # adapters, when lora.targets names this layer
    # > 1 (equal blocks) or the blocks' sizes: the output's column blocks as that many matmuls, returned as a
    # list (no copy slicing them out)
    splits: int | tuple[int, ...] = 1

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array | list[jax.Array]:
        d_in = x.shape[-1]
        if self.out_in:
            init = lambda key, shape, dtype: self.kernel_init(key, shape[::-1], dtype).T  # noqa: E731
            kernel = self.param("kernel", init, (self.features, d_in), self.param_dtype)
        else:
            kernel = self.param("kernel", self.kernel_init, (d_in, self.features), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        # A 2-D product, rows = every leading axis. The kernel gradient then contracts one axis: contracting
        # [B, T] made XLA's CPU backend recompute the (bias-free) MLP's GELU gradient inside a transposing
        # copy, which cost 17 of 60 ms a step on shakespeare_char:cpu.
        x_ND = x.reshape(-1, d_in)
        rank = lora_rank(self.lora, self.name)
        if rank:  # A as PEFT's (torch.nn.Linear's kaiming-uniform: U(+-1/sqrt(in))), B zeros
            a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
            a = self.param("lora_a", a_init, (d_in, rank), self.param_dtype)
            b = self.param("lora_b", nn.initializers.zeros_init(), (rank, self.features), self.param_dtype)
            a, b = jnp.asarray(a, self.dtype), jnp.asarray(b, self.dtype)
            xa_NR = nn.Dropout(self.lora.dropout)(x_ND, deterministic=deterministic) @ a
        sizes = (self.features // self.splits,) * self.splits if isinstance(self.splits, int) else self.splits
        n, at = len(sizes), np.cumsum(sizes)[:-1]
        kernels = jnp.split(kernel, at, axis=0 if self.out_in else 1)
        biases = jnp.split(bias, at) if bias is not None else [None] * n
        lora_bs = jnp.split(b, at, axis=1) if rank else [None] * n
        outs = []
        for size, kernel_i, bias_i, b_i in zip(sizes, kernels, biases, lora_bs, strict=True):
            y_NF = jax.lax.dot_general(x_ND, kernel_i, (((1,), (1 if self.out_in else 0,)), ((), ())))
            if bias_i is not None:
                y_NF = y_NF + bias_i.reshape(1, -1)
            if rank:
                y_NF = y_NF + xa_NR @ b_i * (self.lora.alpha / rank)
            outs.append(y_NF.reshape(*x.shape[:-1], size))
        return outs if n > 1 else outs[0]


_SQRT_HALF, _INV_SQRT_2PI = 0.7071067811865476, 0.3989422804014327


@jax.custom_vjp
def gelu_exact(x: jax.Array) -> jax.Array:
    """x Phi(x) = x/2 (1 + erf(x/sqrt 2)), torch's exact GELU, with its own gradient Phi(x) + x phi(x)
    recomputed from x. jax.nn.gelu's erfc and its autodiff cost XLA's CPU backend three elementwise
    passes a layer in the forward (~5 of 42 ms a step on shakespeare_char:cpu); this costs about none."""
    return x * 0.5 * (1 + jax.lax.erf(x * _SQRT_HALF))


def _gelu_exact_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (g * (0.5 * (1 + jax.lax.erf(x * _SQRT_HALF)) + x * _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)),)


gelu_exact.defvjp(lambda x: (gelu_exact(x), x), _gelu_exact_bwd)


def gelu(x: jax.Array, kind: str) -> jax.Array:
    """GELU by GPTConfig.gelu: "tanh" (GPT-2's gelu_new), "exact" (nanoGPT's), "quick" = x sigmoid(1.702 x)
    (ImageGPT's and CLIP's quick_gelu)."""
    if kind == "tanh":
        return nn.gelu(x, approximate=True)
    if kind == "quick":
        return x * jax.nn.sigmoid(1.702 * x)
    return gelu_exact(x)


def default_mlp_width(n_embd: int, kind: str) -> int:
    """GPT-2's 4 * n_embd; for "swiglu" 2/3 of it rounded up to a multiple of 64 (Llama's rule): its three
    matrices then hold about as many parameters as the GELU MLP's two."""
    return 4 * n_embd if kind == "gelu" else -(-8 * n_embd // 3 // 64) * 64


class MLP(nn.Module):
    """D -> F -> D. `kind` "gelu": GPT-2's, GELU(x W_fc) W_proj, `gelu` naming the form (see gelu);
    "swiglu": Llama's (Shazeer 2020), (SiLU(x W_gate) * x W_fc) W_proj, its gate a Dense of its own (so
    tensor parallelism splits gate and fc alike along F)."""

    n_embd: int
    n_layer: int
    use_bias: bool
    dropout: float
    gelu: str
    dtype: Dtype
    param_dtype: Dtype
    out_in: bool = False  # Dense kernels stored [out, in] (see Dense)
    lora: LoRA | None = None
    kind: str = "gelu"
    width: int = 0  # F; 0: default_mlp_width

    @nn.compact
    def __call__(self, x_BTD: jax.Array, *, deterministic: bool) -> jax.Array:
        dense = lambda features, init, name: Dense(  # noqa: E731
            features, self.use_bias, init, self.dtype, self.param_dtype, self.out_in, self.lora, name=name
        )
        F = self.width or default_mlp_width(self.n_embd, self.kind)
        h_BTF = dense(F, normal_init(), "fc")(x_BTD, deterministic)
        if self.kind == "swiglu":
            h_BTF = nn.silu(dense(F, normal_init(), "gate")(x_BTD, deterministic)) * h_BTF
        else:
            h_BTF = gelu(h_BTF, self.gelu)
        out_BTD = dense(self.n_embd, residual_init(self.n_layer), "proj")(h_BTF, deterministic)
        return nn.Dropout(self.dropout)(out_BTD, deterministic=deterministic)
