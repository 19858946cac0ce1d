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


def test_xla_attention_hides_padded_keys_without_a_cache(params):
    """A left-padded batch in one pass (kv_mask_BS, no cache): the xla backend hides the pads as the
    einsum reference does, and a padded row's real tokens get the logits they get alone."""
    x_BT = tokens(T=8)
    kv_mask_BS = jnp.ones((2, 8), bool).at[0, :3].set(False)  # row 0: three pads on the left
    positions_BT = jnp.maximum(jnp.cumsum(kv_mask_BS, axis=1) - 1, 0).astype(jnp.int32)
    out = {}
    for impl in ("einsum", "xla"):
        model = GPT(dataclasses.replace(BASE, attention=impl))
        logits, _ = model.apply({"params": params}, x_BT, positions_BT=positions_BT, kv_mask_BS=kv_mask_BS)
        out[impl] = (logits[0, 3:], logits[1])
    alone, _ = GPT(BASE).apply({"params": params}, x_BT[:1, 3:])
    assert_close(out["einsum"], out["xla"], atol=1e-5)
    assert_close(out["xla"][0], alone[0], atol=1e-5)


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


def test_chunked_loss_backward_scales_by_the_incoming_cotangent(params):
    """loss_chunk's custom backward multiplies both of its gradients (hidden states and the LM head) by
    the cotangent it receives: grad(c * loss) is c times grad(loss), as for the full logits, e.g. under
    the 1/grad_accum of gradient accumulation. A ragged last chunk and a padded vocabulary included."""
    x_BT = tokens(T=16)
    padded = dataclasses.replace(BASE, vocab_multiple=64)
    p = dict(params)
    p["wte"] = {"embedding": jnp.pad(params["wte"]["embedding"], ((0, 24), (0, 0)))}

    def scaled(cfg):
        def loss(q):
            loss, _ = GPT(cfg).apply({"params": q}, x_BT[:, :-1], targets_BT=x_BT[:, 1:])
            return 0.25 * loss

        return jax.jit(jax.value_and_grad(loss))(p)

    loss, grads = scaled(padded)
    loss_c, grads_c = scaled(dataclasses.replace(padded, loss_chunk=4))  # 15 positions: 4 chunks
    np.testing.assert_allclose(loss_c, loss, rtol=1e-6)
    assert_close(grads_c, grads, atol=1e-7)


def _residual_bytes(cfg, p, x_BT):
    """Bytes of what the backward pass keeps from the forward pass (model inputs and params aside)."""
    import contextlib
    import io
    import re

    import jax.ad_checkpoint

    def loss(q):
        logits_BTV, _ = GPT(cfg).apply({"params": q}, x_BT[:, :-1])
        return cross_entropy(logits_BTV, x_BT[:, 1:])

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(loss, p)
    total = 0
    for line in out.getvalue().splitlines():
        m = re.match(r"[a-z]+(\d+)\[([\d,]*)\]", line)  # e.g. f32[2,15,32]
        if m and "from the argument" not in line:
            dims = [int(d) for d in m.group(2).split(",") if d]
            total += int(np.prod(dims)) * int(m.group(1)) // 8
    return total


@pytest.mark.parametrize("scan", [False, True])
def test_remat_policies_keep_less_of_the_forward_pass(params, scan):
    """Rematerialisation trades memory for compute: "full" keeps least (block inputs), "dots_no_batch"
    the weights' matmuls, "dots" every matmul, "none" everything."""
    p = stack_layers(params, BASE.n_layer) if scan else params
    kept = {
        policy: _residual_bytes(dataclasses.replace(BASE, remat=policy, scan_layers=scan), p, tokens())
        for policy in ("full", "dots_no_batch", "dots", "none")
    }
    assert kept["full"] < kept["dots_no_batch"] < kept["dots"] < kept["none"], kept


def test_scanned_layers_draw_their_own_dropout_masks(params):
    """nn.scan splits the dropout key over the layers, as the loop's layers draw their own masks: with
    zero kernels each block adds dropout(bias) to the residual stream whatever its input, so the
    gradients of the stacked c_proj biases differ between layers only through their dropout masks."""
    cfg = dataclasses.replace(BASE, dropout=0.5, scan_layers=True)
    zero = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if path[-1].key == "kernel" else x, params
    )

    def loss(p):
        logits_BTV, _ = GPT(cfg).apply(
            {"params": p}, tokens(), deterministic=False, rngs={"dropout": jax.random.key(2)}
        )
        return jnp.sum(logits_BTV[..., 0])

    grads = jax.jit(jax.grad(loss))(stack_layers(zero, BASE.n_layer))
    bias_LD = np.asarray(grads["h"]["attn"]["c_proj"]["bias"])
    assert np.count_nonzero(bias_LD) > bias_LD.size // 4  # the gradient reaches the biases
    for i in range(1, BASE.n_layer):
        assert not np.allclose(bias_LD[0], bias_LD[i]), i


def _dots(jaxpr):
    """Every dot_general of a jaxpr, nested calls (jit, custom_vjp, scan) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    yield from _dots(inner)


@pytest.mark.parametrize("loss_chunk", [0, 4])
def test_bf16_lm_head_gradients_are_bf16_matmuls(params, loss_chunk):
    """The LM head's backward multiplies in the compute dtype, as its forward does: with float32 logits
    the float32 cotangent made autodiff upcast the head for two float32 (TF32) matmuls of B x T x V."""
    cfg = dataclasses.replace(BASE, dtype="bfloat16", vocab_multiple=64, loss_chunk=loss_chunk)
    p = dict(params)
    p["wte"] = {"embedding": jnp.pad(params["wte"]["embedding"], ((0, 24), (0, 0)))}
    x_BT = tokens()

    def loss(q):
        return GPT(cfg).apply({"params": q}, x_BT[:, :-1], targets_BT=x_BT[:, 1:])[0]

    head_dots = [
        eqn
        for eqn in _dots(jax.make_jaxpr(jax.grad(loss))(p).jaxpr)
        if any(64 in v.aval.shape for v in eqn.invars)  # the padded vocabulary: the head's matmuls
    ]
    assert len(head_dots) == 3  # logits, d hidden states, d head
    for eqn in head_dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16, jnp.bfloat16], eqn


# ----- Heads of their own width (n_head_dim: N*H != D) and per-head q/k RMS norms (qk_norm): Qwen3's. -----

# D 32, 4 query heads of 16 (N*H = 64), 2 key/value heads.
QWEN3 = dataclasses.replace(
    BASE,
    n_head=4,
    n_kv_head=2,
    n_head_dim=16,
    qk_norm=True,
    position="rope",
    mlp="swiglu",
    norm="rms",
    bias=False,
)


def map_attn(params, fn):
    """`params` with each layer's attention params replaced by fn(attention params)."""
    return {k: {**v, "attn": fn(v["attn"])} if k.startswith("h_") else v for k, v in params.items()}


@pytest.fixture(scope="module")
def qwen3_params():
    return GPT(QWEN3).init(jax.random.key(0), tokens())["params"]


def test_head_dim_apart_sizes_c_attn_c_proj_the_cache_and_the_norms(qwen3_params):
    """c_attn is D x (N + 2K)H and c_proj NH x D; q_norm and k_norm hold a [H] scale of ones; the cache
    holds K heads of H."""
    attn = qwen3_params["h_0"]["attn"]
    shapes = {name: tuple(p["kernel" if "c_" in name else "scale"].shape) for name, p in attn.items()}
    assert shapes == {"c_attn": (32, (4 + 2 * 2) * 16), "c_proj": (64, 32), "q_norm": (16,), "k_norm": (16,)}
    assert np.all(np.asarray(attn["q_norm"]["scale"]) == 1) and np.all(
        np.asarray(attn["k_norm"]["scale"]) == 1
    )
    assert init_cache(QWEN3, 2)[0]["k"].shape == (2, 2, 16, QWEN3.block_size)
    bf16 = dataclasses.replace(QWEN3, param_dtype="bfloat16")
    shapes = jax.eval_shape(lambda: GPT(bf16).init(jax.random.key(0), tokens())["params"])
    assert shapes["h_0"]["attn"]["k_norm"]["scale"].dtype == jnp.bfloat16


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k(qwen3_params, qk_norm):
    """RMS-normed per head, queries and keys 5x larger give the same logits; without the norms the
    attention logits grow 25x and the model's logits change."""
    cfg = dataclasses.replace(QWEN3, qk_norm=qk_norm, norm_eps=1e-12)
    unnormed = lambda attn: {n: w for n, w in attn.items() if not n.endswith("_norm")}  # noqa: E731
    p = qwen3_params if qk_norm else map_attn(qwen3_params, unnormed)
    qk_columns = (QWEN3.n_head + QWEN3.kv_heads) * QWEN3.head_dim  # q | k, not v
    scaled = map_attn(
        p, lambda a: {**a, "c_attn": {"kernel": a["c_attn"]["kernel"].at[:, :qk_columns].mul(5)}}
    )
    logits, _ = GPT(cfg).apply({"params": p}, tokens())
    logits_scaled, _ = GPT(cfg).apply({"params": scaled}, tokens())
    if qk_norm:
        np.testing.assert_allclose(logits_scaled, logits, atol=1e-5, rtol=0)
    else:
        assert np.abs(np.asarray(logits_scaled - logits)).max() > 1e-3


def test_qwen3_scan_remat_and_out_in_equal_the_loop(qwen3_params):
    """nn.scan (with remat) over Qwen3-shaped blocks gives the loop's loss and gradients; [out, in] kernels
    (gptjax.decode.for_matvec, c_proj NH x D transposed) the same logits."""
    from gptjax.decode import for_matvec

    loss, grads = loss_and_grads(QWEN3, qwen3_params, tokens())
    for change in (dict(scan_layers=True), dict(scan_layers=True, remat="full")):
        cfg = dataclasses.replace(QWEN3, **change)
        loss_s, grads_s = loss_and_grads(cfg, stack_layers(qwen3_params, QWEN3.n_layer), tokens())
        np.testing.assert_allclose(loss, loss_s, rtol=1e-6)
        assert_close(grads, unstack_layers(grads_s), atol=1e-6)
    flipped, out_in = for_matvec(qwen3_params, QWEN3)
    assert flipped["h_0"]["attn"]["c_proj"]["kernel"].shape == (32, 64)
    assert_close(
        GPT(out_in).apply({"params": flipped}, tokens()),
        GPT(QWEN3).apply({"params": qwen3_params}, tokens()),
        1e-6,
    )


def test_qwen3_attention_backends_agree_in_training_and_with_a_cache(qwen3_params):
    """xla == einsum for Qwen3-shaped attention: loss and gradients, and a left-padded prefill then a decoded
    token, both equal to the full forward (the cache keeps keys normed and rotated)."""
    xla = dataclasses.replace(QWEN3, attention="xla")
    loss, grads = loss_and_grads(QWEN3, qwen3_params, tokens())
    loss_x, grads_x = loss_and_grads(xla, qwen3_params, tokens())
    np.testing.assert_allclose(loss, loss_x, rtol=1e-5)
    assert_close(grads, grads_x, atol=1e-5)
    full, _ = GPT(QWEN3).apply({"params": qwen3_params}, tokens(T=9))
    x_BT = jnp.pad(tokens(T=9)[:, :8], ((0, 0), (2, 0)))  # two pads on the left of every row
    kv_mask_BS = jnp.ones((2, 12), bool).at[:, :2].set(False)
    positions_BT = jnp.maximum(jnp.arange(10) - 2, 0)[None].repeat(2, 0).astype(jnp.int32)
    for cfg in (QWEN3, xla):
        prefill, cache = GPT(cfg).apply(
            {"params": qwen3_params},
            x_BT,
            positions_BT=positions_BT,
            cache=init_cache(cfg, 2, 12),
            kv_mask_BS=kv_mask_BS,
        )
        step, _ = GPT(cfg).apply(
            {"params": qwen3_params},
            tokens(T=9)[:, 8:],
            positions_BT=positions_BT[:, -1:] + 1,
            cache=cache,
            kv_mask_BS=kv_mask_BS,
        )
        np.testing.assert_allclose(prefill[:, 2:], full[:, :8], atol=1e-5, rtol=0, err_msg=cfg.attention)
        np.testing.assert_allclose(step[:, 0], full[:, 8], atol=1e-5, rtol=0, err_msg=cfg.attention)


def test_qwen3_lora_adapts_c_attn_and_c_proj_and_merges(qwen3_params):
    """LoRA on c_attn (D -> (N + 2K)H) and c_proj (NH -> D): adapters of those shapes, and merge_lora
    computes what the adapted model computes."""
    from gptjax.model import merge_lora

    cfg = dataclasses.replace(QWEN3, lora_rank=2, lora_targets=("c_attn", "c_proj"))
    p = GPT(cfg).init(jax.random.key(0), tokens())["params"]
    attn = p["h_0"]["attn"]
    assert (attn["c_attn"]["lora_a"].shape, attn["c_attn"]["lora_b"].shape) == ((32, 2), (2, 128))
    assert (attn["c_proj"]["lora_a"].shape, attn["c_proj"]["lora_b"].shape) == ((64, 2), (2, 32))
    p = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.1 if path[-1].key == "lora_b" else x, p
    )  # adapters that do something
    adapted, _ = GPT(cfg).apply({"params": p}, tokens())
    merged, merged_cfg = merge_lora(p, cfg)
    plain, _ = GPT(QWEN3).apply({"params": qwen3_params}, tokens())
    np.testing.assert_allclose(
        GPT(merged_cfg).apply({"params": merged}, tokens())[0], adapted, atol=1e-5, rtol=0
    )
    assert np.abs(np.asarray(adapted - plain)).max() > 1e-3


def test_qwen3_training_steps_lower_the_loss(qwen3_params):
    """Five gradient steps on one batch lower its loss, and move the q/k norm scales off their ones."""
    x_BT = tokens()
    step = jax.jit(lambda p: loss_and_grads(QWEN3, p, x_BT))
    p = qwen3_params
    first, _ = step(p)
    for _ in range(5):
        loss, grads = step(p)
        p = jax.tree_util.tree_map(lambda w, g: w - 0.5 * g, p, grads)
    assert float(step(p)[0]) < float(first) - 0.1, (first, step(p)[0])
    assert np.abs(np.asarray(p["h_0"]["attn"]["q_norm"]["scale"]) - 1).max() > 0


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(n_head_dim=-1), r"n_head_dim=-1 must be >= 0 \(0: n_embd / n_head\)"),
        (dict(n_embd=50, n_head=3), "n_embd=50 is not divisible by n_head=3; .* or set n_head_dim"),
        (dict(n_head_dim=5, position="rope"), "the head dim n_head_dim = 5 is odd; pick n_head_dim"),
        (dict(n_embd=20, position="rope"), "the head dim n_embd / n_head = 5 is odd; pick n_head "),
    ],
    ids=["negative", "indivisible", "odd_n_head_dim", "odd_n_embd_over_n_head"],
)
def test_head_dim_fields_are_checked_in_one_line(fields, message):
    with pytest.raises(ValueError, match=message) as e:
        GPTConfig(**{**dict(vocab_size=8, n_embd=32, n_head=4), **fields})
    assert "\n" not in str(e.value)
    assert GPTConfig(vocab_size=8, n_embd=50, n_head=3, n_head_dim=16).head_dim == 16  # no division needed
    # n_embd / n_head written out is the same config as its 0 (so an exported Qwen3 reads back equal).
    assert GPTConfig(vocab_size=8, n_embd=32, n_head=4, n_head_dim=8) == GPTConfig(
        vocab_size=8, n_embd=32, n_head=4
    )


# ----- Sliding-window attention (Mistral's sliding_window). -----

MISTRAL = dataclasses.replace(
    BASE, position="rope", n_kv_head=2, mlp="swiglu", norm="rms", bias=False, sliding_window=4
)


@pytest.mark.parametrize("n_layer", [1, 2])
def test_a_sliding_window_limits_what_each_position_sees_by_gradient(n_layer):
    """d logits[t] / d embedding[s] is nonzero exactly for t - L (W - 1) <= s <= t: one layer's queries see
    the last W positions (themselves included), each further layer reaches W - 1 further back."""
    from tests.test_model import logits_with_embedding_delta

    cfg = dataclasses.replace(MISTRAL, n_layer=n_layer)
    params = GPT(cfg).init(jax.random.key(0), tokens())["params"]
    T, D, W = cfg.block_size, cfg.n_embd, cfg.sliding_window
    r_V = jax.random.normal(jax.random.key(2), (cfg.vocab_size,))

    def projected_logits_T(delta_1TD):
        logits_1TV = logits_with_embedding_delta(cfg, params, tokens(B=1), delta_1TD)
        return jnp.einsum("BTV,V->T", logits_1TV, r_V)

    jac_TS = np.abs(np.asarray(jax.jit(jax.jacrev(projected_logits_T))(jnp.zeros((1, T, D)))[:, 0])).sum(-1)
    t_T1, s_1S = np.arange(T)[:, None], np.arange(T)[None, :]
    seen = (s_1S <= t_T1) & (s_1S >= t_T1 - n_layer * (W - 1))
    assert np.all(jac_TS[~seen] == 0.0) and np.all(jac_TS[seen] > 0.0), jac_TS


@pytest.mark.parametrize("attention", ["einsum", "xla"])
def test_a_sliding_window_decodes_with_a_cache_as_the_full_forward(attention):
    """Both backends (xla's plain causal path takes the window as local_window_size) give the einsum
    reference's logits and gradients; a prefill then one token at a time past the window equals the full
    forward, also with left padding (the window counts cache slots, and padded ones are masked)."""
    cfg = dataclasses.replace(MISTRAL, attention=attention)
    params = GPT(cfg).init(jax.random.key(0), tokens())["params"]
    want, _ = GPT(MISTRAL).apply({"params": params}, tokens())
    if attention != "einsum":
        loss, grads = jax.jit(loss_and_grads, static_argnums=0)(MISTRAL, params, tokens())
        loss_x, grads_x = jax.jit(loss_and_grads, static_argnums=0)(cfg, params, tokens())
        np.testing.assert_allclose(loss, loss_x, rtol=1e-5)
        assert_close(grads, grads_x, atol=1e-5)
    pad = 2
    x_BT = jnp.pad(tokens(), ((0, 0), (pad, 0)))
    kv_mask_BS = jnp.ones((2, 16 + pad), bool).at[:, :pad].set(False)
    positions_BT = jnp.maximum(jnp.arange(16 + pad) - pad, 0)[None].repeat(2, 0).astype(jnp.int32)
    apply = jax.jit(GPT(dataclasses.replace(cfg, block_size=16 + pad)).apply)
    prefix = 3 + pad
    logits, cache = apply(
        {"params": params},
        x_BT[:, :prefix],
        positions_BT=positions_BT[:, :prefix],
        cache=init_cache(cfg, 2, 16 + pad),
        kv_mask_BS=kv_mask_BS,
    )
    np.testing.assert_allclose(logits[:, pad:], want[:, : prefix - pad], atol=1e-5, rtol=0)
    for t in range(prefix, 16 + pad):
        step, cache = apply(
            {"params": params},
            x_BT[:, t : t + 1],
            positions_BT=positions_BT[:, t : t + 1],
            cache=cache,
            kv_mask_BS=kv_mask_BS,
        )
        np.testing.assert_allclose(step[:, 0], want[:, t - pad], atol=1e-5, rtol=0, err_msg=t)


def test_a_window_as_wide_as_the_context_changes_nothing_and_a_negative_one_is_refused():
    params = GPT(MISTRAL).init(jax.random.key(0), tokens())["params"]
    wide, _ = GPT(dataclasses.replace(MISTRAL, sliding_window=16)).apply({"params": params}, tokens())
    none, _ = GPT(dataclasses.replace(MISTRAL, sliding_window=0)).apply({"params": params}, tokens())
    narrow, _ = GPT(MISTRAL).apply({"params": params}, tokens())
    np.testing.assert_allclose(wide, none, atol=1e-6, rtol=0)
    assert np.abs(narrow[:, 4:] - none[:, 4:]).max() > 1e-3  # the window matters past W positions
    with pytest.raises(ValueError, match=r"sliding_window=-1 must be >= 0 \(0: no window\)"):
        dataclasses.replace(MISTRAL, sliding_window=-1)
