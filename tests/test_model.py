"""Tests for gptjax.model (with gptjax.layers and gptjax.attention): shapes, causality, positions,
the tied head, GPT-2 initialisation, the KV cache, config validation and the configs' sizes."""

import dataclasses
import functools
import importlib
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.init_from import fill_model
from gptjax.layers import MLP, rope, sinusoidal_table
from gptjax.model import GPT, VARIANTS, GPTConfig, count_params, drop_lora, init_cache
from gptjax.train import abstract_state, model_config

# Implicit rank promotion hides shape bugs; the model must not rely on it (as nanodo's tests).
jax.config.update("jax_numpy_rank_promotion", "raise")


@functools.cache
def init_params(cfg: GPTConfig, seed: int = 0):
    """Parameters of `cfg`, cached: eager init of a tiny model is faster than compiling it."""
    tokens_BT = jnp.zeros((1, cfg.block_size), jnp.int32)
    return GPT(cfg).init(jax.random.PRNGKey(seed), tokens_BT)["params"]


def abstract_params(cfg: GPTConfig):
    tokens_BT = jax.ShapeDtypeStruct((1, cfg.block_size), jnp.int32)
    return jax.eval_shape(GPT(cfg).init, jax.random.PRNGKey(0), tokens_BT)["params"]


def random_tokens(cfg: GPTConfig, shape, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, shape, np.int32))


def param_paths(params) -> dict[str, jax.Array]:
    """{'h_0/attn/c_attn/kernel': array, ...}"""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(k.key for k in path): leaf for path, leaf in flat}


def capture_output(module_name: str, store: dict):
    """An interceptor that records the output of `module_name.__call__` in `store`."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name == module_name and context.method_name == "__call__":
            store[module_name] = out
        return out

    return nn.intercept_methods(interceptor)


# ----- Shapes and dtypes. -----


@pytest.mark.parametrize(
    "dtype, param_dtype",
    [("float32", "float32"), ("bfloat16", "float32"), ("bfloat16", "bfloat16")],
)
def test_logits_are_float32_BTV_and_params_keep_param_dtype(tiny_cfg, dtype, param_dtype):
    cfg = dataclasses.replace(tiny_cfg, dtype=dtype, param_dtype=param_dtype)
    params = abstract_params(cfg)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(param_dtype)}
    tokens_BT = jax.ShapeDtypeStruct((3, 5), jnp.int32)
    logits_BTV, cache = jax.eval_shape(GPT(cfg).apply, {"params": params}, tokens_BT)
    assert logits_BTV.shape == (3, 5, cfg.vocab_size)
    assert logits_BTV.dtype == jnp.float32
    assert cache is None


def test_bfloat16_compute_is_close_to_float32(tiny_cfg):
    params = init_params(tiny_cfg)  # the compute dtype does not change the parameters
    tokens_BT = random_tokens(tiny_cfg, (2, tiny_cfg.block_size))
    f32_BTV, _ = GPT(tiny_cfg).apply({"params": params}, tokens_BT)
    bf16_cfg = dataclasses.replace(tiny_cfg, dtype="bfloat16")
    bf16_BTV, _ = jax.jit(GPT(bf16_cfg).apply)({"params": params}, tokens_BT)
    assert bf16_BTV.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(bf16_BTV)))
    assert not np.array_equal(bf16_BTV, f32_BTV)  # it did compute in bfloat16
    # bfloat16 keeps 8 mantissa bits (relative error 2^-8 per rounding).
    scale = float(jnp.abs(f32_BTV).max())
    np.testing.assert_allclose(bf16_BTV, f32_BTV, rtol=0, atol=0.05 * scale)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
def test_bfloat16_compute_keeps_the_residual_stream_in_bfloat16(tiny_cfg, position):
    """dtype is the activations' dtype: float32 parameters (wte, wpe) must not promote the stream."""
    cfg = dataclasses.replace(tiny_cfg, dtype="bfloat16", position=position)
    seen = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.name in ("h_0", "h_1", "ln_f"):
            seen[context.module.name] = args[0].dtype
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        GPT(cfg).apply({"params": init_params(cfg)}, random_tokens(cfg, (2, cfg.block_size)))
    assert seen == {"h_0": jnp.bfloat16, "h_1": jnp.bfloat16, "ln_f": jnp.bfloat16}


def test_bfloat16_attention_takes_logits_and_softmax_in_float32():
    """With dtype=bfloat16 the attention logits are accumulated and soft-maxed in float32: two keys whose
    logits are 256 and 256.5 (bfloat16 spacing is 2 there, so both would round to 256) get the weights
    softmax([256, 256.5]), not 1/2 each. One head of width 4 on the one-hot inputs e0, e1; every weight
    below is exact in bfloat16."""
    from gptjax.attention import CausalSelfAttention

    D = 4
    w_q, w_k, w_v = np.zeros((D, D)), np.zeros((D, D)), np.eye(D)
    w_q[1, :2] = [32, 1]  # the second token's query
    w_k[0, 0], w_k[1, :2] = 16, [16, 1]  # keys: q.k = 512 and 513, / sqrt(4)
    params = {"c_attn": {"kernel": np.concatenate([w_q, w_k, w_v], axis=1)}, "c_proj": {"kernel": np.eye(D)}}
    params = jax.tree_util.tree_map(lambda w: jnp.asarray(w, jnp.float32), params)
    attn = CausalSelfAttention(
        n_head=1, n_embd=D, n_layer=1, use_bias=False, dropout=0.0, dtype="bfloat16", param_dtype="float32"
    )
    x_BTD = jnp.asarray(np.eye(D)[None, :2], jnp.float32)
    out_BTD, _ = attn.apply({"params": params}, x_BTD, deterministic=True)
    weights = np.exp([256.0, 256.5] - np.logaddexp(256.0, 256.5))  # 0.378, 0.622
    np.testing.assert_allclose(np.asarray(out_BTD[0, 1, :2], np.float64), weights, atol=4e-3)


# ----- Causality. -----


def logits_with_embedding_delta(cfg, params, tokens_BT, delta_BTD, **kwargs):
    """The logits with `delta_BTD` added to the token embeddings (a differentiable input); `kwargs` go
    to GPT.__call__."""

    def add_delta(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name == "wte" and context.method_name == "__call__":
            out = out + delta_BTD.astype(out.dtype)
        return out

    with nn.intercept_methods(add_delta):
        logits_BTV, _ = GPT(cfg).apply({"params": params}, tokens_BT, **kwargs)
    return logits_BTV


# Qwen3's shape on the tiny model: 4 heads of 16 (N*H = 64, not D = 16), 2 key/value heads, q/k norms.
QWEN3 = dict(
    position="rope", n_head=4, n_kv_head=2, n_head_dim=16, qk_norm=True, mlp="swiglu", norm="rms", bias=False
)


@pytest.mark.parametrize(
    "options",
    [{}, dict(position="rope", n_head=4, n_kv_head=2, mlp="swiglu", norm="rms"), QWEN3],
    ids=["gpt2", "llama", "qwen3"],
)
def test_causal_by_gradient(tiny_cfg, options):
    """d logits[t] / d embedding[s] is exactly 0 for s > t and nonzero for every s <= t."""
    cfg = dataclasses.replace(tiny_cfg, **options)  # 2 layers: a leak through the second layer would show
    T, D = cfg.block_size, cfg.n_embd
    params = init_params(cfg)
    tokens_1T = random_tokens(cfg, (1, T))
    # A random projection of the logits, so that no cancellation can make a gradient vanish.
    r_V = jax.random.normal(jax.random.PRNGKey(2), (cfg.vocab_size,))

    def projected_logits_T(delta_1TD):
        logits_1TV = logits_with_embedding_delta(cfg, params, tokens_1T, delta_1TD)
        return jnp.einsum("BTV,V->T", logits_1TV, r_V)

    jac_T1TD = jax.jit(jax.jacrev(projected_logits_T))(jnp.zeros((1, T, D)))
    jac_TS = np.abs(np.asarray(jac_T1TD[:, 0])).sum(-1)  # [output position t, input position s]
    future = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(jac_TS[future] == 0.0), jac_TS
    assert np.all(jac_TS[~future] > 0.0), jac_TS


def test_future_tokens_do_not_change_past_logits(tiny_cfg):
    params = init_params(tiny_cfg)
    T, t = tiny_cfg.block_size, 3
    tokens_BT = random_tokens(tiny_cfg, (2, T), seed=1)
    other_BT = tokens_BT.at[:, t + 1 :].set(random_tokens(tiny_cfg, (2, T - t - 1), seed=5))
    assert bool(jnp.any(other_BT != tokens_BT))
    apply = GPT(tiny_cfg).apply
    logits_BTV, _ = apply({"params": params}, tokens_BT)
    other_BTV, _ = apply({"params": params}, other_BT)
    np.testing.assert_allclose(logits_BTV[:, : t + 1], other_BTV[:, : t + 1], rtol=0, atol=1e-6)
    assert not np.allclose(logits_BTV[:, t + 1 :], other_BTV[:, t + 1 :])


# ----- Packed rows (segments_BT). -----

# Three examples of 3, 2 and 2 tokens, then one padding token (segment 0), in tiny_cfg's 8 positions.
SEGMENTS_T = np.array([1, 1, 1, 2, 2, 3, 3, 0], np.int32)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"attention": "xla"},
        {"position": "sinusoidal"},
        {"position": "rope"},
        {"scan_layers": True, "remat": "full"},
    ],
    ids=["einsum", "xla", "sinusoidal", "rope", "scan_remat"],
)
def test_packed_row_computes_each_example_as_if_alone(tiny_cfg, options):
    """The logits of each segment of a packed row are those of its tokens alone at positions 0, 1, ..."""
    cfg = dataclasses.replace(tiny_cfg, **options)
    params = init_params(cfg)
    tokens_1T = random_tokens(cfg, (1, cfg.block_size), seed=3)
    packed_1TV, _ = GPT(cfg).apply({"params": params}, tokens_1T, segments_BT=jnp.asarray(SEGMENTS_T)[None])
    for segment in (1, 2, 3, 0):
        (at,) = np.nonzero(SEGMENTS_T == segment)
        alone_1tV, _ = GPT(cfg).apply({"params": params}, tokens_1T[:, at])
        np.testing.assert_allclose(packed_1TV[:, at], alone_1tV, rtol=1e-5, atol=1e-5)
    # Not vacuous: without the segments, the later examples see the earlier ones and their positions.
    plain_1TV, _ = GPT(cfg).apply({"params": params}, tokens_1T)
    assert not np.allclose(plain_1TV[:, 3:], packed_1TV[:, 3:], atol=1e-3)


def test_packed_segments_are_causal_by_gradient(tiny_cfg):
    """d logits[t] / d embedding[s] is nonzero exactly for s <= t in t's segment."""
    T, D = tiny_cfg.block_size, tiny_cfg.n_embd
    params = init_params(tiny_cfg)
    tokens_1T = random_tokens(tiny_cfg, (1, T))
    r_V = jax.random.normal(jax.random.PRNGKey(2), (tiny_cfg.vocab_size,))
    segments_1T = jnp.asarray(SEGMENTS_T)[None]

    def projected_logits_T(delta_1TD):
        logits_1TV = logits_with_embedding_delta(
            tiny_cfg, params, tokens_1T, delta_1TD, segments_BT=segments_1T
        )
        return jnp.einsum("BTV,V->T", logits_1TV, r_V)

    jac_TS = np.abs(np.asarray(jax.jit(jax.jacrev(projected_logits_T))(jnp.zeros((1, T, D)))[:, 0])).sum(-1)
    seen_TS = (SEGMENTS_T[:, None] == SEGMENTS_T[None, :]) & np.tril(np.ones((T, T), bool))
    assert np.all(jac_TS[~seen_TS] == 0.0), jac_TS
    assert np.all(jac_TS[seen_TS] > 0.0), jac_TS


def test_segments_with_a_kv_cache_are_refused(tiny_cfg):
    params = init_params(tiny_cfg)
    with pytest.raises(ValueError, match="segments_BT .* KV cache"):
        GPT(tiny_cfg).apply(
            {"params": params},
            jnp.zeros((1, 2), jnp.int32),
            cache=init_cache(tiny_cfg, 1),
            segments_BT=jnp.ones((1, 2), jnp.int32),
        )


# ----- Grouped-query attention (n_kv_head). -----


def with_repeated_kv_heads(params, cfg: GPTConfig):
    """The multi-head params computing what `cfg`'s grouped-query model computes: each key/value head's
    columns of c_attn repeated for its n_head / n_kv_head query heads (HF's repeat_kv)."""
    N, K, H = cfg.n_head, cfg.kv_heads, cfg.head_dim

    def widen(a):  # [..., (N + 2K) H] -> [..., 3 N H]
        q, k, v = np.split(np.asarray(a), [N * H, (N + K) * H], axis=-1)
        repeat = lambda x: np.repeat(x.reshape(*x.shape[:-1], K, H), N // K, axis=-2).reshape(
            x.shape[:-1] + (N * H,)
        )  # noqa: E731
        return np.concatenate([q, repeat(k), repeat(v)], axis=-1)

    return {
        name: {
            **layer,
            "attn": {**layer["attn"], "c_attn": {k: widen(a) for k, a in layer["attn"]["c_attn"].items()}},
        }
        if name.startswith("h_")
        else layer
        for name, layer in params.items()
    }


@pytest.mark.parametrize("attention", ["einsum", "xla"])
@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_grouped_query_attention_is_multi_head_with_shared_kv_heads(tiny_cfg, attention, n_kv_head):
    """n_kv_head K < n_head N: c_attn has (N + 2K) H columns, and the model computes what the multi-head
    model with each key/value head repeated for its N / K query heads computes, with a cache too."""
    cfg = dataclasses.replace(tiny_cfg, n_head=4, n_kv_head=n_kv_head, attention=attention, bias=True)
    params = init_params(cfg)
    assert params["h_0"]["attn"]["c_attn"]["kernel"].shape == (16, (4 + 2 * n_kv_head) * 4)
    mha = dataclasses.replace(cfg, n_kv_head=0)
    tokens_BT = random_tokens(cfg, (2, cfg.block_size))
    got_BTV, _ = GPT(cfg).apply({"params": params}, tokens_BT)
    want_BTV, _ = GPT(mha).apply({"params": with_repeated_kv_heads(params, cfg)}, tokens_BT)
    np.testing.assert_allclose(got_BTV, want_BTV, rtol=1e-5, atol=1e-5)
    cache = init_cache(cfg, 2)
    assert cache[0]["k"].shape == (2, n_kv_head, 4, cfg.block_size)  # N / K times smaller than MHA's
    prefill_BTV, cache = GPT(cfg).apply({"params": params}, tokens_BT[:, :5], cache=cache)
    step_B1V, _ = GPT(cfg).apply({"params": params}, tokens_BT[:, 5:6], cache=cache)
    np.testing.assert_allclose(prefill_BTV, want_BTV[:, :5], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(step_B1V[:, 0], want_BTV[:, 5], rtol=1e-5, atol=1e-5)


def test_key_value_heads_must_divide_the_heads():
    with pytest.raises(ValueError, match="n_kv_head=3 must divide n_head=4"):
        GPTConfig(vocab_size=10, n_embd=16, n_head=4, n_kv_head=3)


# ----- Position encodings. -----


def closed_form_pe(pos: int, col: int, d: int) -> float:
    """Vaswani et al. 2017, 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    i = col // 2
    angle = pos / 10000 ** (2 * i / d)
    return math.sin(angle) if col % 2 == 0 else math.cos(angle)


@pytest.mark.parametrize("d", [8, 7])
def test_sinusoidal_table_matches_closed_form(d):
    max_len = 50
    table = sinusoidal_table(max_len, d)
    assert table.shape == (max_len, d)
    assert table.dtype == np.float32
    for pos in (0, 1, 2, 17, 49):
        for col in range(d):
            assert table[pos, col] == pytest.approx(closed_form_pe(pos, col, d), abs=1e-6), (
                pos,
                col,
            )


def test_sinusoidal_model_adds_the_table_and_has_no_wpe(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, position="sinusoidal")
    params = init_params(cfg)
    assert "wpe" not in params
    assert "wpe" in abstract_params(dataclasses.replace(cfg, position="learned"))
    tokens_BT = random_tokens(cfg, (2, cfg.block_size))
    seen = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name in ("wte", "h_0"):
            seen[context.module.name] = out if context.module.name == "wte" else args[0]
        return out

    with nn.intercept_methods(record):
        GPT(cfg).apply({"params": params}, tokens_BT)
    # The first block's input is wte(tokens) + PE (no dropout at rate 0).
    pe_BTD = np.asarray(seen["h_0"]) - np.asarray(seen["wte"])
    T, D = cfg.block_size, cfg.n_embd
    expected_TD = np.array([[closed_form_pe(p, c, D) for c in range(D)] for p in range(T)])
    for b in range(2):
        np.testing.assert_allclose(pe_BTD[b], expected_TD, atol=1e-6)


def test_rope_turns_channel_pairs_by_position_times_frequency():
    """layers.rope against the rotation written with complex numbers: channels (i, i + H/2) of a head are
    z = x_i + j x_{i+H/2}, multiplied by exp(j * position * theta^(-2i/H))."""
    B, T, N, H, theta = 2, 5, 3, 8, 10000.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, N, H)).astype(np.float32)
    positions = rng.integers(0, 100, size=(B, T))
    z = x[..., : H // 2] + 1j * x[..., H // 2 :]
    angles = positions[:, :, None, None] * theta ** (-np.arange(0, H, 2) / H)
    turned = z * np.exp(1j * angles)
    want = np.concatenate([turned.real, turned.imag], axis=-1)
    got = rope(jnp.asarray(x), jnp.asarray(positions), theta)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_rope_model_sees_relative_positions_only(tiny_cfg):
    """Shifting every position by 3 leaves a rope model's logits as they are (only the differences of
    positions enter the attention logits), and changes a learned-position model's."""
    tokens_BT = random_tokens(tiny_cfg, (2, 4))
    for position, same in (("rope", True), ("learned", False)):
        cfg = dataclasses.replace(tiny_cfg, position=position)
        apply = functools.partial(GPT(cfg).apply, {"params": init_params(cfg)}, tokens_BT)
        at_0, _ = apply(positions_BT=jnp.broadcast_to(jnp.arange(4), (2, 4)))
        at_3, _ = apply(positions_BT=jnp.broadcast_to(jnp.arange(4) + 3, (2, 4)))
        assert np.allclose(at_0, at_3, rtol=0, atol=1e-5) == same, position
    assert "wpe" not in init_params(dataclasses.replace(tiny_cfg, position="rope"))


def test_rope_needs_an_even_head_dim():
    with pytest.raises(ValueError, match="head dim n_embd / n_head = 5 is odd"):
        GPTConfig(vocab_size=10, n_embd=10, n_head=2, position="rope")


# ----- The LM head. -----


@pytest.mark.parametrize("tie", [True, False])
def test_lm_head_tied_or_separate(tiny_cfg, tie):
    # vocab 24 != width 16, so no other matrix has the head's shape.
    cfg = dataclasses.replace(tiny_cfg, tie_embeddings=tie, vocab_size=24)
    V, D = cfg.vocab_size, cfg.n_embd
    params = init_params(cfg)
    vd_shaped = sorted(k for k, p in param_paths(params).items() if p.shape == (V, D))
    if tie:
        assert "lm_head" not in params
        assert vd_shaped == ["wte/embedding"]
        head_VD = params["wte"]["embedding"]
    else:
        assert params["lm_head"].shape == (V, D)
        assert vd_shaped == ["lm_head", "wte/embedding"]
        head_VD = params["lm_head"]
    tokens_BT = random_tokens(cfg, (2, cfg.block_size))
    store = {}
    with capture_output("ln_f", store):
        logits_BTV, _ = GPT(cfg).apply({"params": params}, tokens_BT)
    h_BTD = np.asarray(store["ln_f"], np.float64)
    expected_BTV = h_BTD @ np.asarray(head_VD, np.float64).T
    np.testing.assert_allclose(logits_BTV, expected_BTV, rtol=1e-5, atol=1e-6)


# ----- Initialisation. -----


def test_gpt2_init_statistics():
    # 128 wide: the smallest matrix (D x D) has 16k entries, so the std is known to ~0.6%.
    L = 2
    cfg = GPTConfig(vocab_size=256, block_size=128, n_layer=L, n_head=4, n_embd=128, bias=True)
    tokens_BT = jnp.zeros((1, 8), jnp.int32)
    params = param_paths(jax.jit(GPT(cfg).init)(jax.random.PRNGKey(3), tokens_BT)["params"])
    residual_std = 0.02 / math.sqrt(2 * L)  # GPT-2 paper, 2.3: scale residual layers by 1/sqrt(N)
    # nanoGPT's _init_weights: every nn.Embedding (wte and wpe) from N(0, 0.02).
    expected_std = {"wte/embedding": 0.02, "wpe/embedding": 0.02}
    for i in range(L):
        expected_std[f"h_{i}/attn/c_attn/kernel"] = 0.02
        expected_std[f"h_{i}/mlp/fc/kernel"] = 0.02
        expected_std[f"h_{i}/attn/c_proj/kernel"] = residual_std
        expected_std[f"h_{i}/mlp/proj/kernel"] = residual_std
    for name, std in expected_std.items():
        w = np.asarray(params[name], np.float64)
        assert w.std() == pytest.approx(std, rel=0.05), name
        assert abs(w.mean()) < 0.05 * std, name
    other = set(params) - set(expected_std)
    assert other, "expected biases and LayerNorm parameters"
    for name in other:
        leaf = name.rsplit("/", 1)[-1]
        assert leaf in ("bias", "scale"), name
        np.testing.assert_array_equal(params[name], 0.0 if leaf == "bias" else 1.0, err_msg=name)


@pytest.mark.parametrize("bias", [True, False])
def test_bias_flag(tiny_cfg, bias):
    cfg = dataclasses.replace(tiny_cfg, bias=bias)
    names = param_paths(abstract_params(cfg))
    has_bias = sorted(k for k in names if k.endswith("/bias"))
    if bias:
        # Every Dense (4 per block) and LayerNorm (2 per block + ln_f) has one.
        assert len(has_bias) == 6 * cfg.n_layer + 1
    else:
        assert has_bias == []
    assert sum(k.endswith("/scale") for k in names) == 2 * cfg.n_layer + 1


# ----- Dropout. -----


def dropout_calls(cfg: GPTConfig, deterministic: bool) -> set[tuple[str, tuple[int, ...]]]:
    """(module path, input shape) of every nn.Dropout that is active (rate > 0, not deterministic) in
    one forward pass of `cfg` on a [2, block_size] batch."""
    active = set()

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.Dropout) and context.method_name == "__call__":
            off = nn.merge_param("deterministic", module.deterministic, kwargs.get("deterministic"))
            if module.rate > 0 and not off:
                active.add(("/".join(module.path), args[0].shape))
        return next_fun(*args, **kwargs)

    tokens_BT = random_tokens(cfg, (2, cfg.block_size))
    variables = {"params": init_params(cfg)}
    with nn.intercept_methods(interceptor):
        GPT(cfg).apply(variables, tokens_BT, deterministic=deterministic, rngs={"dropout": jax.random.key(1)})
    return active


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_dropout_site_is_active_in_training_only(tiny_cfg, scan_layers):
    """Dropout (nanoGPT's sites) on the embeddings, and in every block on the attention probabilities and
    on both residual branches. Only attention="einsum" has these: the others refuse dropout in training
    (test_model_variants)."""
    cfg = dataclasses.replace(tiny_cfg, dropout=0.1, scan_layers=scan_layers)
    B, T, N, D = 2, cfg.block_size, cfg.n_head, cfg.n_embd
    blocks = ["h"] if scan_layers else [f"h_{i}" for i in range(cfg.n_layer)]
    want = {("Dropout_0", (B, T, D))}  # the embeddings: wte + wpe
    for h in blocks:
        want |= {
            (f"{h}/attn/Dropout_0", (B, N, T, T)),  # attention probabilities
            (f"{h}/attn/Dropout_1", (B, T, D)),  # attention's residual branch (after c_proj)
            (f"{h}/mlp/Dropout_0", (B, T, D)),  # the MLP's residual branch
        }
    assert dropout_calls(cfg, deterministic=False) == want
    assert dropout_calls(cfg, deterministic=True) == set()


# ----- KV cache. -----


# ImageGPT's options (gptjax.convert imports its weights): RMS norms, quick GELU, an untied head that never
# predicts the last id (its start token).
IMAGEGPT = dict(norm="rms", gelu="quick", tie_embeddings=False, output_vocab=-1)


@pytest.mark.parametrize(
    "options", [dict(position="learned"), dict(position="sinusoidal"), dict(position="rope"), IMAGEGPT, QWEN3]
)
def test_prefill_then_decode_equals_full_forward(tiny_cfg, options):
    if options.get("output_vocab") == -1:
        options = {**options, "output_vocab": tiny_cfg.vocab_size - 1}
    cfg = dataclasses.replace(tiny_cfg, **options)
    params = init_params(cfg)
    B, T, prefix = 2, cfg.block_size, 3
    tokens_BT = random_tokens(cfg, (B, T))
    full_BTV, _ = GPT(cfg).apply({"params": params}, tokens_BT)

    apply = jax.jit(GPT(cfg).apply)  # compiles once for the prefill, once for decoding
    cache = init_cache(cfg, B)
    logits_BPV, cache = apply({"params": params}, tokens_BT[:, :prefix], cache=cache)
    np.testing.assert_allclose(logits_BPV, full_BTV[:, :prefix], rtol=0, atol=1e-5)
    for t in range(prefix, T):
        logits_B1V, cache = apply({"params": params}, tokens_BT[:, t : t + 1], cache=cache)
        np.testing.assert_allclose(logits_B1V[:, 0], full_BTV[:, t], rtol=0, atol=1e-5, err_msg=t)
    assert [int(c["end"]) for c in cache] == [T] * cfg.n_layer


def test_out_in_kernels_compute_the_same_model(tiny_cfg):
    """kernel_layout="out_in" (batch-1 decoding) = the same model with every Dense kernel transposed; its
    own initialisation draws the same weights as nn.Dense does."""
    from gptjax.decode import for_matvec

    cfg = dataclasses.replace(tiny_cfg, bias=True)
    params = init_params(cfg)
    flipped, flipped_cfg = for_matvec(params, cfg)
    assert flipped_cfg.kernel_layout == "out_in"
    assert param_paths(flipped)["h_0/mlp/fc/kernel"].shape == (4 * cfg.n_embd, cfg.n_embd)
    tokens_BT = random_tokens(cfg, (1, cfg.block_size))
    want_BTV, _ = GPT(cfg).apply({"params": params}, tokens_BT)
    got_BTV, _ = GPT(flipped_cfg).apply({"params": flipped}, tokens_BT)
    np.testing.assert_allclose(got_BTV, want_BTV, rtol=0, atol=1e-5)
    fresh = GPT(flipped_cfg).init(jax.random.PRNGKey(0), tokens_BT)["params"]
    for name, leaf in param_paths(fresh).items():
        np.testing.assert_array_equal(leaf, param_paths(flipped)[name], err_msg=name)
    with pytest.raises(ValueError, match="kernel_layout='in_out_typo' is unknown"):
        dataclasses.replace(cfg, kernel_layout="in_out_typo")


@pytest.mark.parametrize("bias", [False, True])
def test_dense_equals_flax_dense_in_value_and_gradient(bias):
    """layers.Dense flattens the leading axes into one row axis (a 2-D product, for XLA's CPU backward):
    the same function and gradients as flax's nn.Dense on [B, T, D] inputs, from the same init."""
    from gptjax.layers import Dense

    init = nn.initializers.normal(0.02)
    ours = Dense(48, bias, init, jnp.float32, jnp.float32)
    flax_dense = nn.Dense(48, use_bias=bias, kernel_init=init)
    x_BTD = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 16)), jnp.float32)
    params = ours.init(jax.random.PRNGKey(0), x_BTD)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, flax_dense.init(jax.random.PRNGKey(0), x_BTD)
    )
    if bias:  # zero-initialised: make it matter
        params = {"params": {**params["params"], "bias": jnp.arange(48, dtype=jnp.float32) / 48}}
    loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))  # noqa: E731
    want = jax.value_and_grad(loss(flax_dense), argnums=(0, 1))(params, x_BTD)
    got = jax.value_and_grad(loss(ours), argnums=(0, 1))(params, x_BTD)
    np.testing.assert_allclose(
        ours.apply(params, x_BTD), flax_dense.apply(params, x_BTD), rtol=1e-6, atol=1e-6
    )
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
def test_inputs_longer_than_the_block_are_refused(tiny_cfg, position):
    # Positions past the table would be NaN (learned: jnp.take fills) or silently clamped (sinusoidal).
    cfg = dataclasses.replace(tiny_cfg, position=position)
    params = init_params(cfg)
    with pytest.raises(ValueError, match=f"{cfg.block_size + 1} tokens exceed block_size={cfg.block_size}"):
        GPT(cfg).apply({"params": params}, random_tokens(cfg, (1, cfg.block_size + 1)))
    cache = init_cache(cfg, 1, cfg.block_size + 1)
    with pytest.raises(ValueError, match="KV cache of"):
        GPT(cfg).apply({"params": params}, random_tokens(cfg, (1, 1)), cache=cache)


# ----- GPTConfig validation. -----


def test_config_rejects_indivisible_heads():
    with pytest.raises(ValueError) as err:
        GPTConfig(vocab_size=10, n_embd=50, n_head=3)
    assert "50" in str(err.value) and "3" in str(err.value)


def test_from_mapping_rejects_unknown_key_and_variant():
    with pytest.raises(ValueError, match="n_layers"):
        GPTConfig.from_mapping({"n_layers": 2}, vocab_size=10)
    with pytest.raises(ValueError, match="gpt5"):
        GPTConfig.from_mapping({"variant": "gpt5"}, vocab_size=10)
    with pytest.raises(ValueError, match="position"):
        GPTConfig(vocab_size=10, position="rotary")


def test_from_mapping_variant_and_overrides():
    cfg = GPTConfig.from_mapping({"variant": "baby", "n_layer": 2}, vocab_size=65)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size) == (2, 6, 384, 65)


# ----- The configs in configs/. -----


def expected_param_count(cfg: GPTConfig) -> int:
    """A pre-LN GPT's parameter count, from its shapes (nanoGPT model.py)."""
    V, C, L, D = cfg.padded_vocab, cfg.block_size, cfg.n_layer, cfg.n_embd
    dense = lambda d_in, d_out, bias=cfg.bias: d_in * d_out + (d_out if bias else 0)  # noqa: E731
    layer_norm = D * (2 if cfg.bias and cfg.norm == "layer" else 1)  # scale (+ bias; RMS norms have none)
    NH = cfg.n_head * cfg.head_dim  # D, unless n_head_dim sets H apart
    QKV = NH + 2 * cfg.kv_heads * cfg.head_dim  # q, then k and v for each key/value head
    F = cfg.mlp_width
    shapes = {"c_attn": (D, QKV), "c_proj": (NH, D), "fc": (D, F), "proj": (F, D)}
    if cfg.mlp == "swiglu":
        shapes["gate"] = (D, F)
    experts = 0
    if cfg.n_experts:  # in place of the MLP: a D x E router and E experts' fc, gate and proj, no biases
        shapes = {k: v for k, v in shapes.items() if k.startswith("c_")}
        experts = cfg.n_experts * (D + 3 * D * F)
    block = 2 * layer_norm + sum(dense(*shape) for shape in shapes.values()) + experts
    block += QKV if cfg.qkv_bias and not cfg.bias else 0  # c_attn's bias alone (Qwen2)
    block += 2 * cfg.head_dim if cfg.qk_norm else 0  # q_norm and k_norm's scales (Qwen3)
    block += sum(
        cfg.lora_rank * (d_in + d_out) for name, (d_in, d_out) in shapes.items() if name in cfg.lora_targets
    )
    return (
        V * D  # wte
        + (C * D if cfg.position == "learned" else 0)  # wpe
        + L * block
        + layer_norm  # ln_f
        + (D if cfg.score_head else 0 if cfg.tie_embeddings else V * D)  # a reward model's score, lm_head
    )


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
@pytest.mark.parametrize("tie", [True, False])
def test_param_count_formula(tiny_cfg, bias, position, tie):
    cfg = dataclasses.replace(tiny_cfg, bias=bias, position=position, tie_embeddings=tie)
    assert count_params(abstract_params(cfg)) == expected_param_count(cfg)


@pytest.mark.parametrize(
    "options",
    [
        dict(n_head=4, n_kv_head=1),
        dict(n_head=4, n_kv_head=2, lora_rank=2),
        dict(mlp="swiglu", lora_rank=2),
        dict(mlp="swiglu", n_inner=24),
        dict(n_inner=24, bias=True),
        dict(n_head=4, n_kv_head=2, mlp="swiglu", norm="rms", bias=False, qkv_bias=True, lora_rank=2),
        dict(qkv_bias=True, bias=True),
        dict(**QWEN3, lora_rank=2),
        dict(n_head=4, n_head_dim=12, bias=True),
    ],
)
def test_param_count_formula_with_kv_heads_and_mlps(tiny_cfg, options):
    cfg = dataclasses.replace(tiny_cfg, **options)
    assert count_params(abstract_params(cfg)) == expected_param_count(cfg)
    assert GPTConfig(vocab_size=8, n_embd=96, n_head=4, mlp="swiglu").mlp_width == 256  # 8/3 * 96


@pytest.mark.parametrize("layout", [dict(), dict(scan_layers=True), dict(kernel_layout="out_in")])
def test_qkv_bias_adds_c_attns_bias_alone(tiny_cfg, layout):
    """qkv_bias=True with bias=False (Qwen2): c_attn gets a bias of its width (q | k | v) and no other
    layer one; it adds to q, k and v as the kernel's columns do; bias=True has that bias anyway."""
    cfg = dataclasses.replace(tiny_cfg, n_head=4, n_kv_head=2, bias=False, **layout)
    QKV = cfg.n_embd + 2 * cfg.kv_heads * cfg.head_dim
    without = param_paths(abstract_params(cfg))
    with_bias = param_paths(abstract_params(dataclasses.replace(cfg, qkv_bias=True)))
    added = {name: leaf.shape for name, leaf in with_bias.items() if name not in without}
    assert set(without) <= set(with_bias)
    L = (cfg.n_layer,) if cfg.scan_layers else ()
    layers = ["h"] if cfg.scan_layers else [f"h_{i}" for i in range(cfg.n_layer)]
    assert added == {f"{h}/attn/c_attn/bias": (*L, QKV) for h in layers}
    assert count_params(with_bias) - count_params(without) == cfg.n_layer * QKV
    biased = dataclasses.replace(cfg, bias=True)
    assert count_params(abstract_params(dataclasses.replace(biased, qkv_bias=True))) == count_params(
        abstract_params(biased)
    )


def test_a_qkv_bias_in_the_v_columns_shifts_every_value(tiny_cfg):
    """qkv_bias without bias: a c_attn bias in the v columns alone adds its value to every attention output
    (softmax weights sum to 1) whatever the keys, then c_proj (bias-free) maps it."""
    from gptjax.attention import CausalSelfAttention

    cfg = dataclasses.replace(tiny_cfg, n_head=4, n_kv_head=2, bias=False, qkv_bias=True)
    D, KH = cfg.n_embd, cfg.kv_heads * cfg.head_dim
    attn = CausalSelfAttention(
        n_head=cfg.n_head,
        n_kv_head=cfg.kv_heads,
        n_embd=D,
        n_layer=cfg.n_layer,
        use_bias=cfg.bias,
        qkv_bias=cfg.qkv_bias,
        dropout=0.0,
        dtype="float32",
        param_dtype="float32",
    )
    x_BTD = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, D)), jnp.float32)
    params = attn.init(jax.random.PRNGKey(0), x_BTD, deterministic=True)["params"]
    assert set(params["c_attn"]) == {"kernel", "bias"} and set(params["c_proj"]) == {"kernel"}
    v_bias = np.random.default_rng(1).normal(size=KH).astype(np.float32)
    shifted = {**params, "c_attn": {**params["c_attn"], "bias": np.r_[np.zeros(D + KH, np.float32), v_bias]}}
    base, _ = attn.apply({"params": params}, x_BTD, deterministic=True)
    got, _ = attn.apply({"params": shifted}, x_BTD, deterministic=True)
    v_bias_N = np.repeat(v_bias.reshape(2, -1), 2, axis=0).reshape(-1)  # query head n reads kv head n // 2
    want = np.asarray(base) + v_bias_N @ np.asarray(params["c_proj"]["kernel"])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_swiglu_mlp_is_llamas_gated_mlp_written_out(tiny_cfg):
    """mlp="swiglu": (SiLU(x W_gate + b_gate) * (x W_fc + b_fc)) W_proj + b_proj, F = n_inner wide."""
    cfg = dataclasses.replace(tiny_cfg, mlp="swiglu", n_inner=24, bias=True)
    params = init_params(cfg)
    mlp = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in params["h_0"]["mlp"].items()}
    assert mlp["gate"]["kernel"].shape == mlp["fc"]["kernel"].shape == (16, 24)
    x = np.random.default_rng(0).normal(size=(2, 3, 16))
    gate, up = (x @ mlp[n]["kernel"] + mlp[n]["bias"] for n in ("gate", "fc"))
    want = (gate / (1 + np.exp(-gate)) * up) @ mlp["proj"]["kernel"] + mlp["proj"]["bias"]
    got = MLP(16, cfg.n_layer, True, 0.0, cfg.gelu, "float32", "float32", kind="swiglu", width=24).apply(
        {"params": params["h_0"]["mlp"]}, jnp.asarray(x, jnp.float32), deterministic=True
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mlp='geglu' is unknown"):
        GPTConfig(vocab_size=8, mlp="geglu")


# Every file in configs/ (found, not listed), with the variants a file needs or has.
CONFIG_VARIANTS = {
    "shakespeare_char": ["", "cpu"],
    "llama_char": ["", "cpu"],
    "moe_char": ["", "cpu"],
    "finetune_shakespeare": ["gpt2", "gpt2-medium", "gpt2-xl-lora"],
    "digits": [None, "uncond"],
    "cifar10": [None, "cond", "imagegpt"],
    "sft": [None, "tiny"],
    "reward": [None, "tiny"],
}
CONFIGS = [
    (path.stem, arg)
    for path in sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.py"))
    if path.stem != "__init__"
    for arg in CONFIG_VARIANTS.get(path.stem, [None])
]


def test_every_config_file_is_built():
    assert {m for m, _ in CONFIGS} >= {
        "shakespeare_char",
        "tiny",
        "gpt2",
        "names",
        "finetune_shakespeare",
        "digits",
    }


@pytest.mark.parametrize("module, arg", CONFIGS)
def test_configs_build(module, arg):
    config = importlib.import_module(f"configs.{module}").get_config(arg)
    if config.init_from in VARIANTS:  # fine-tuning configs leave the shape to the source: the Hub GPT-2's
        config = fill_model(config, dataclasses.asdict(GPTConfig(50257, **VARIANTS[config.init_from])), "")
    cfg = model_config(config, vocab_size=513 if module == "cifar10" else 65)  # 512 colours + SOS
    _, abstract = abstract_state(cfg, config.opt, config.seed)
    n = count_params(abstract.params)
    assert n > 0
    assert n == expected_param_count(cfg)
    # The optimizer state was built too (AdamW moments have the params' shapes; LoRA: the adapters' only).
    trained = n - count_params(drop_lora(abstract.params)) if cfg.lora_rank else n
    assert 2 * trained <= count_params(abstract.opt_state) < 2 * trained + 100
    if (module, arg) == ("shakespeare_char", ""):
        # nanoGPT prints "number of parameters: 10.65M" for this model (it excludes wpe).
        wpe = cfg.block_size * cfg.n_embd
        assert round((n - wpe) / 1e6, 2) == 10.65
    if module in ("digits", "cifar10"):  # the context is one image; conditional as the variant says
        assert cfg.block_size == config.data.image_size**2
        assert config.data.class_conditional == (
            arg in (None, "cond") if module == "digits" else arg == "cond"
        )
    if module == "cifar10":  # iGPT-S: ~76M parameters, ImageGPT's untied head 0.26M more
        assert round(n / 1e6) == (77 if arg == "imagegpt" else 76)
    if module == "gpt2":
        # OpenAI's GPT-2 small with biases and its 50257-token vocab: HF counts 124,439,808 parameters.
        gpt2 = model_config(config, vocab_size=50257, bias=True, vocab_multiple=1)
        assert count_params(abstract_state(gpt2, config.opt, 0)[1].params) == 124_439_808


def test_gelu_exact_value_and_gradient():
    """layers.gelu_exact (torch's formula, own gradient, for speed) is the exact GELU and its derivative
    to float32 resolution (1 + erf(x) loses ~1e-7 absolute for negative x, as torch's does)."""
    from gptjax.layers import gelu_exact

    x = np.linspace(-9.0, 9.0, 2001)
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])  # float64 Phi(x)
    want, want_grad = x * phi, phi + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    x32 = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(gelu_exact(x32), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu_exact))(x32), want_grad, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gelu_exact(x32), jax.nn.gelu(x32, approximate=False), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("out_in", [False, True])
@pytest.mark.parametrize("lora", [False, True])
def test_dense_splits_are_the_column_blocks(out_in, lora):
    """Dense(splits=3) (q, k, v for cuDNN attention) returns the three column blocks of the one product,
    bias and LoRA adapters included, in either kernel layout, from the same params; splits=(16, 4, 4)
    blocks of those widths (q, k, v with fewer key/value heads)."""
    from gptjax.layers import Dense, LoRA, normal_init

    adapters = LoRA(2, 16.0, ("c_attn",)) if lora else None
    dense = lambda splits: Dense(  # noqa: E731
        24, True, normal_init(), jnp.float32, jnp.float32, out_in, adapters, splits, name="c_attn"
    )
    x = jax.random.normal(jax.random.key(1), (2, 5, 8))
    params = dense(1).init(jax.random.key(0), x)
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(3), a.shape), params)
    whole = dense(1).apply(params, x)
    for splits, widths in ((3, [8, 8, 8]), ((16, 4, 4), [16, 4, 4])):  # equal, or as n_kv_head makes them
        blocks = dense(splits).apply(params, x)
        assert [b.shape for b in blocks] == [(2, 5, w) for w in widths]
        np.testing.assert_allclose(jnp.concatenate(blocks, axis=-1), whole, rtol=1e-6, atol=1e-6)


def test_imagegpt_norm_gelu_and_head():
    """norm="rms" is x / sqrt(mean(x^2) + eps) * scale with no bias; gelu="quick" is x sigmoid(1.702 x);
    output_vocab leaves the ids past it no probability."""
    from gptjax.layers import gelu, norm

    x_BD = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32) + 0.5
    rms = norm("ln", "rms", use_bias=True, dtype="float32", param_dtype="float32")
    variables = rms.init(jax.random.PRNGKey(0), x_BD)
    assert jax.tree_util.tree_map(np.shape, variables["params"]) == {"scale": (8,)}
    scale = np.linspace(0.5, 2.0, 8, dtype=np.float32)
    want = x_BD / np.sqrt((x_BD**2).mean(-1, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(rms.apply({"params": {"scale": scale}}, x_BD), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gelu(x_BD, "quick"), x_BD / (1 + np.exp(-1.702 * x_BD)), rtol=1e-6)

    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, output_vocab=9)
    logits_BTV, _ = GPT(cfg).apply({"params": init_params(cfg)}, random_tokens(cfg, (2, 8)))
    probs_BTV = np.asarray(jax.nn.softmax(logits_BTV))
    assert np.all(probs_BTV[..., 9:] == 0) and np.allclose(probs_BTV[..., :9].sum(-1), 1, atol=1e-6)
