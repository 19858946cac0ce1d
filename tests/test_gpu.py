"""Checks that need an NVIDIA GPU: cuDNN flash attention and bf16 training against the float32 reference.

Skipped where JAX sees no GPU (CI has none); run them on one with `pytest tests/test_gpu.py`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.model import GPT, GPTConfig

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (JAX sees none)")

# GPT-2's width, heads and context with 2 layers: the shapes cuDNN sees in configs/gpt2.py.
CFG = GPTConfig(vocab_size=50257, vocab_multiple=64, block_size=1024, n_layer=2, bias=False)


def loss_and_grads(cfg: GPTConfig, params, tokens):
    def loss(p):
        return GPT(cfg).apply({"params": p}, tokens[:, :-1], targets_BT=tokens[:, 1:])[0]

    return jax.jit(jax.value_and_grad(loss))(params)


def relative_error(got, want) -> float:
    got, want = (
        np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree.leaves(t)]) for t in (got, want)
    )
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.fixture(scope="module")
def setup():
    params = GPT(CFG).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50257, (4, 1025), dtype=np.int32))
    return params, tokens, loss_and_grads(CFG, params, tokens)  # the float32 einsum reference


@pytest.mark.parametrize("attention", ["cudnn", "xla", "einsum"])
def test_bf16_training_matches_float32(setup, attention):
    """bf16 compute (each attention backend) gives float32's loss and gradients to bf16 precision."""
    params, tokens, (want_loss, want_grads) = setup
    cfg = dataclasses.replace(CFG, dtype="bfloat16", attention=attention)
    loss, grads = loss_and_grads(cfg, params, tokens)
    assert float(loss) == pytest.approx(float(want_loss), rel=2e-3)
    assert relative_error(grads, want_grads) < 2e-2


def test_auto_attention_is_cudnn_in_bf16():
    """attention="auto" lowers to cuDNN's fused attention kernel for bf16 on a GPU."""
    cfg = dataclasses.replace(CFG, dtype="bfloat16", attention="auto")
    params = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    tokens = jax.ShapeDtypeStruct((2, 1024), jnp.int32)
    hlo = jax.jit(lambda p, t: GPT(cfg).apply({"params": p}, t)[0]).lower(params, tokens).compile().as_text()
    assert "__cudnn$fmha" in hlo


def test_bf16_logits_keep_the_loss(setup):
    """logits_dtype=bfloat16, full and chunked, stays within bf16 rounding of the float32 loss."""
    params, tokens, (want_loss, want_grads) = setup
    for chunk in (0, 256):
        cfg = dataclasses.replace(
            CFG, dtype="bfloat16", attention="cudnn", logits_dtype="bfloat16", loss_chunk=chunk
        )
        loss, grads = loss_and_grads(cfg, params, tokens)
        assert float(loss) == pytest.approx(float(want_loss), rel=2e-3), chunk
        assert relative_error(grads, want_grads) < 2e-2, chunk
