"""Memory and speed variants compute the same function: nn.scan == a loop of blocks, remat == no
remat, and jax.nn.dot_product_attention == the einsum reference (also with a KV cache and padding)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.model import GPT, GPTConfig, cross_entropy, init_cache, unstack_layers

jax.config.update("jax_numpy_rank_promotion", "raise")

BASE = GPTConfig(vocab_size=40, block_size=16, n_layer=3, n_head=4, n_embd=32)


def tokens(B=2, T=16, seed=1):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, BASE.vocab_size)


def loss_and_grads(cfg, params, x_BT):
    def loss(p):
        logits_BTV, _ = GPT(cfg).apply({"params": p}, x_BT[:, :-1])
        return cross_entropy(logits_BTV, x_BT[:, 1:])

    return jax.value_and_grad(loss)(params)


def assert_close(a, b, atol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


def stack_layers(params, n_layer):
    params = dict(params)
    layers = [params.pop(f"h_{i}") for i in range(n_layer)]
    params["h"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    return params


@pytest.fixture(scope="module")
def params():
    return GPT(BASE).init(jax.random.key(0), tokens())["params"]


def test_scan_over_layers_equals_the_loop(params):
    scan = dataclasses.replace(BASE, scan_layers=True)
    stacked = stack_layers(params, BASE.n_layer)
    assert jax.tree_util.tree_leaves(stacked["h"])[0].shape[0] == BASE.n_layer
    # Same parameter tree shapes as the scanned model initialises itself.
    own = jax.eval_shape(lambda: GPT(scan).init(jax.random.key(0), tokens())["params"])
    assert jax.tree_util.tree_map(np.shape, own) == jax.tree_util.tree_map(np.shape, stacked)
    loss, grads = loss_and_grads(BASE, params, tokens())
    loss_s, grads_s = loss_and_grads(scan, stacked, tokens())
    np.testing.assert_allclose(loss, loss_s, rtol=1e-6)
    assert_close(grads, unstack_layers(grads_s), atol=1e-6)
    assert_close(unstack_layers(stacked), params, atol=0)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
@pytest.mark.parametrize("scan", [False, True])
def test_remat_equals_no_remat(params, policy, scan):
    p = stack_layers(params, BASE.n_layer) if scan else params
    ref = dataclasses.replace(BASE, scan_layers=scan)
    loss, grads = loss_and_grads(ref, p, tokens())
    loss_r, grads_r = loss_and_grads(dataclasses.replace(ref, remat=policy), p, tokens())
    np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
    assert_close(grads, grads_r, atol=1e-6)


def test_attention_backends_agree_in_training(params):
    loss, grads = loss_and_grads(BASE, params, tokens())
    loss_x, grads_x = loss_and_grads(dataclasses.replace(BASE, attention="xla"), params, tokens())
    np.testing.assert_allclose(loss, loss_x, rtol=1e-5)
    assert_close(grads, grads_x, atol=1e-5)


def test_attention_backends_agree_with_cache_and_padding(params):
    """Prefill with left padding, then decode one token: einsum and xla give the same logits."""
    x_BT = tokens(T=8)
    kv_mask_BS = jnp.ones((2, 12), bool).at[0, :3].set(False)  # row 0: three pads on the left
    positions_BT = jnp.maximum(jnp.cumsum(kv_mask_BS[:, :8], axis=1) - 1, 0).astype(jnp.int32)
    out = {}
    for impl in ("einsum", "xla"):
        cfg = dataclasses.replace(BASE, attention=impl)
        model = GPT(cfg)
        logits, cache = model.apply(
            {"params": params},
            x_BT,
            positions_BT=positions_BT,
            cache=init_cache(cfg, 2, 12),
            kv_mask_BS=kv_mask_BS,
        )
        step, _ = model.apply(
            {"params": params},
            x_BT[:, :1],
            positions_BT=positions_BT[:, -1:] + 1,
            cache=cache,
            kv_mask_BS=kv_mask_BS,
        )
        out[impl] = (logits[1], logits[0, 3:], step)
    assert_close(out["einsum"], out["xla"], atol=1e-5)


def test_non_einsum_attention_refuses_attention_dropout(params):
    cfg = dataclasses.replace(BASE, attention="xla", dropout=0.1)
    with pytest.raises(ValueError, match="no attention dropout"):
        GPT(cfg).apply({"params": params}, tokens(), deterministic=False, rngs={"dropout": jax.random.key(0)})


def test_scanned_model_refuses_a_cache(params):
    cfg = dataclasses.replace(BASE, scan_layers=True)
    with pytest.raises(ValueError, match="unstack_layers"):
        GPT(cfg).apply({"params": stack_layers(params, 3)}, tokens(), cache=init_cache(BASE, 2))


def test_padded_vocab_masks_the_pads_and_keeps_the_loss(params):
    """vocab_multiple pads the embedding rows; pads get no probability, real tokens the same logits."""
    padded = dataclasses.replace(BASE, vocab_multiple=64)
    assert padded.padded_vocab == 64 and BASE.vocab_size == 40
    p = dict(params)
    extra = jax.random.normal(jax.random.key(3), (24, BASE.n_embd))  # anything: masked out
    p["wte"] = {"embedding": jnp.concatenate([params["wte"]["embedding"], extra])}
    logits, _ = GPT(BASE).apply({"params": params}, tokens())
    logits_p, _ = GPT(padded).apply({"params": p}, tokens())
    assert logits_p.shape[-1] == 64
    np.testing.assert_allclose(logits_p[..., :40], logits, atol=1e-6)
    assert np.all(np.asarray(jax.nn.softmax(logits_p)[..., 40:]) == 0)
    np.testing.assert_allclose(
        loss_and_grads(padded, p, tokens())[0], loss_and_grads(BASE, params, tokens())[0], rtol=1e-6
    )
