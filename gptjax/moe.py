"""Sparse mixture-of-experts feed-forward layer (MoE) as Mixtral's (Jiang et al. 2024; HF
MixtralSparseMoeBlock): a router sends each token to K of E SwiGLU experts and sums their outputs
weighted by its router probabilities renormalised over the K; a load-balancing loss (Switch Transformer,
Fedus et al. 2021, eq. 4-6) keeps it from sending every token to the same few experts.

Axes beside gptjax.layers' legend: E experts, K experts per token (top-k), X = B*T tokens, R = X*K
(token, expert) assignments.

Two implementations of one function (GPTConfig.moe_impl), equal in value and gradient:
  "ragged": the R assignments sorted by expert, each expert's rows through its own weights by
            jax.lax.ragged_dot (grouped matmuls; MaxText's megablox path): dropless, and only the chosen
            experts compute on GPUs and TPUs. On CPU JAX lowers ragged_dot to a masked product over
            every expert: K times the work of "dense". JAX cannot vmap ragged_dot over its input
            alone (jax.vmap, jacrev or jacfwd of the model raise NotImplementedError): use "dense".
  "dense":  every expert on every token, weighted by gates that are 0 for the experts not chosen: E / K
            times the chosen experts' work; the simple reference.
"auto" (the default) is "dense" on CPU, "ragged" on GPUs and TPUs.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax.layers import Dense, Dtype, normal_init, residual_init

IMPLEMENTATIONS = ("ragged", "dense", "auto")
# The flax collection each MoE layer sows its load-balancing loss into ("router_aux_loss"): the train
# step applies the model with it mutable and adds the layers' mean to the loss (mean_aux_loss); every
# other call leaves it immutable, and the sow does nothing.
AUX_LOSS = "aux_loss"


def route(logits_XE: jax.Array, k: int, normalize: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(probs_XE, weights_XK, experts_XK) as HF's MixtralTopKRouter: a float32 softmax over the E experts,
    its K largest, and their probabilities renormalised to sum to 1 (`normalize`; else as they are, as
    Qwen3-MoE's router with norm_topk_prob=False)."""
    probs_XE = jax.nn.softmax(logits_XE.astype(jnp.float32), axis=-1)
    top_XK, experts_XK = jax.lax.top_k(probs_XE, k)
    weights_XK = top_XK / jnp.sum(top_XK, axis=-1, keepdims=True) if normalize else top_XK
    return probs_XE, weights_XK, experts_XK


def load_balancing_loss(probs_XE: jax.Array, experts_XK: jax.Array) -> jax.Array:
    """E * sum_e f_e P_e, HF's load_balancing_loss_func of one layer without an attention mask (every
    token counts: the model has no padding mask here): f_e the assignments to expert e per token, P_e its
    mean router probability. K for a uniform, balanced router (f_e = K / E, P_e = 1 / E); its gradient
    reaches the router through P (f counts choices)."""
    X, E = probs_XE.shape
    f_E = jnp.sum(jax.nn.one_hot(experts_XK, E, dtype=jnp.float32), axis=(0, 1)) / X
    return E * jnp.sum(f_E * jnp.mean(probs_XE, axis=0))


def mean_aux_loss(sown: Any) -> jax.Array:
    """The mean over layers of the load-balancing losses sown into AUX_LOSS (per layer h_i, or stacked [L]
    by scan_layers), float32, as MaxText's moe_lb_loss. HF's load_balancing_loss_func pools the layers'
    counts and probabilities before the product instead: the same for one layer, close for several."""
    losses = [jnp.ravel(x) for x in jax.tree_util.tree_leaves(sown)]
    return jnp.mean(jnp.concatenate(losses)).astype(jnp.float32)


def ragged_experts(x_XD, weights_XK, experts_XK, gate_EDF, fc_EDF, proj_EFD) -> jax.Array:
    """sum_k weight * SwiGLU_expert(x) over each token's K experts: the R assignments grouped by expert
    (a stable sort), the E groups through their weights by ragged_dot, then back in token order."""
    X, K = experts_XK.shape
    E = gate_EDF.shape[0]
    expert_R = experts_XK.reshape(X * K)
    order_R = jnp.argsort(expert_R, stable=True)  # assignments by expert, token order within one
    x_RD = x_XD[order_R // K]
    sizes_E = jnp.bincount(expert_R, length=E).astype(jnp.int32)  # rows of each group
    up = lambda w_EDF: jax.lax.ragged_dot(x_RD, w_EDF, sizes_E)  # noqa: E731
    h_RF = nn.silu(up(gate_EDF)) * up(fc_EDF)
    y_RD = jax.lax.ragged_dot(h_RF, proj_EFD, sizes_E)
    y_XKD = y_RD[jnp.argsort(order_R)].reshape(X, K, -1)  # unsorted: token x's k-th expert at [x, k]
    return jnp.einsum("XKD,XK->XD", y_XKD, weights_XK.astype(y_XKD.dtype))


def dense_experts(x_XD, weights_XK, experts_XK, gate_EDF, fc_EDF, proj_EFD) -> jax.Array:
    """ragged_experts' function, every expert on every token: each hidden layer scaled by its token's gate
    (the router weight, 0 for an expert not chosen), then one product over experts and F."""
    E = gate_EDF.shape[0]
    one_hot_XKE = jax.nn.one_hot(experts_XK, E, dtype=x_XD.dtype)
    gates_XE = jnp.einsum("XKE,XK->XE", one_hot_XKE, weights_XK.astype(x_XD.dtype))
    h_XEF = nn.silu(jnp.einsum("XD,EDF->XEF", x_XD, gate_EDF)) * jnp.einsum("XD,EDF->XEF", x_XD, fc_EDF)
    return jnp.einsum("XEF,EFD->XD", h_XEF * gates_XE[:, :, None], proj_EFD)


class ExpertKernel(nn.Module):
    """The E experts' kernels of one matrix, stacked [E, in, out]. A module of its own so that its param
    is a `kernel` as a Dense's: weight decay, Muon (each expert a matrix) and the sharding rules find it
    by that name. out_in stores it with all axes reversed, [out, in, E], as decode.for_matvec turns every
    kernel (jnp.transpose); it is returned [E, in, out] either way."""

    shape: tuple[int, int, int]
    kernel_init: Callable
    param_dtype: Dtype
    out_in: bool = False

    @nn.compact
    def __call__(self) -> jax.Array:
        if not self.out_in:
            return self.param("kernel", self.kernel_init, self.shape, self.param_dtype)
        init = lambda key, shape, dtype: jnp.transpose(self.kernel_init(key, shape[::-1], dtype))  # noqa: E731
        return jnp.transpose(self.param("kernel", init, self.shape[::-1], self.param_dtype))


class MoE(nn.Module):
    """D -> D, in place of the MLP: a router (Dense D -> E, no bias) and E SwiGLU experts of width F
    without biases (Mixtral's w1 = gate, w3 = fc, w2 = proj); sows its load-balancing loss (AUX_LOSS).
    Each token is computed alone, so the KV-cache decoding of gptjax.decode needs nothing else."""

    n_embd: int
    n_layer: int
    n_experts: int  # E
    top_k: int  # K
    width: int  # F, each expert's
    dropout: float
    dtype: Dtype
    param_dtype: Dtype
    out_in: bool = False  # kernels stored [out, in] (see Dense, ExpertKernel)
    impl: str = "auto"  # IMPLEMENTATIONS
    norm_topk: bool = True  # the K router weights renormalised to sum to 1 (route)

    @nn.compact
    def __call__(self, x_BTD: jax.Array, *, deterministic: bool) -> jax.Array:
        B, T, D = x_BTD.shape
        E, F = self.n_experts, self.width
        x_XD = x_BTD.reshape(B * T, D)
        router = Dense(E, False, normal_init(), self.dtype, self.param_dtype, self.out_in, name="router")
        probs_XE, weights_XK, experts_XK = route(router(x_XD), self.top_k, self.norm_topk)
        self.sow(AUX_LOSS, "router_aux_loss", load_balancing_loss(probs_XE, experts_XK))

        def kernel(shape, init, name):
            w = ExpertKernel(shape, init, self.param_dtype, self.out_in, name=name)()
            return jnp.asarray(w, self.dtype)

        gate_EDF = kernel((E, D, F), normal_init(), "expert_gate")
        fc_EDF = kernel((E, D, F), normal_init(), "expert_fc")
        proj_EFD = kernel((E, F, D), residual_init(self.n_layer), "expert_proj")
        impl = self.impl if self.impl != "auto" else "dense" if jax.default_backend() == "cpu" else "ragged"
        experts = ragged_experts if impl == "ragged" else dense_experts
        out_XD = experts(x_XD.astype(self.dtype), weights_XK, experts_XK, gate_EDF, fc_EDF, proj_EFD)
        return nn.Dropout(self.dropout)(out_XD.reshape(B, T, D), deterministic=deterministic)
