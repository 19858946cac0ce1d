"""gptjax.moe: Mixtral's sparse mixture of experts. The router and its load-balancing loss against HF's,
"ragged" (ragged_dot) = "dense" in value and gradient, causality, the KV cache, scan_layers, the train
step's loss (cross entropy + coef * router loss), the mesh, HF Mixtral and Qwen3-MoE import/export and
FLOPs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import tiny
from gptjax import benchmark, compare_torch, convert, llama, moe, parallel
from gptjax.model import GPT, count_params, init_cache, stack_layers, unstack_layers
from gptjax.optim import make_optimizer
from gptjax.train import abstract_state, model_config
from gptjax.train_step import create_train_state, eval_step, jit_train_step, train_steps
from tests.test_convert_llama import make_llama
from tests.test_model import abstract_params, init_params, logits_with_embedding_delta, random_tokens
from tests.test_parallel import close, run

# The tiny model with Mixtral's block: 8 experts of width 24, each token to 2 of them; 8 experts for
# 2 x 8 tokens leave some experts without any (ragged_dot's empty groups).
MOE = dict(
    position="rope", mlp="swiglu", norm="rms", bias=False, n_inner=24, n_experts=8, n_experts_per_token=2,
    moe_impl="ragged",  # "auto" would take "dense" on CPU
)  # fmt: skip


@pytest.fixture(scope="module")
def cfg(tiny_cfg):
    return dataclasses.replace(tiny_cfg, **MOE)


@functools.partial(jax.jit, static_argnums=0)
def apply_with_aux(cfg, params, tokens_BT, targets_BT=None):
    """(GPT's logits, or loss with targets_BT; the layers' mean router loss)."""
    (out, _), sown = GPT(cfg).apply(
        {"params": params}, tokens_BT, targets_BT=targets_BT, mutable=moe.AUX_LOSS
    )
    return out, moe.mean_aux_loss(sown)


def test_router_and_load_balancing_loss_are_hf_mixtrals():
    import torch
    from transformers import MixtralConfig
    from transformers.models.mixtral import modeling_mixtral

    X, D, E, K = 12, 16, 6, 2
    router = modeling_mixtral.MixtralTopKRouter(
        MixtralConfig(hidden_size=D, num_local_experts=E, num_experts_per_tok=K)
    )
    rng = np.random.default_rng(0)
    x_XD, w_ED = rng.normal(size=(X, D)).astype(np.float32), rng.normal(size=(E, D)).astype(np.float32)
    with torch.no_grad():
        router.weight.copy_(torch.as_tensor(w_ED))
        logits, scores, indices = router(torch.as_tensor(x_XD))
    probs_XE, weights_XK, experts_XK = moe.route(jnp.asarray(x_XD @ w_ED.T), K)
    np.testing.assert_array_equal(experts_XK, indices.numpy())
    np.testing.assert_allclose(weights_XK, scores.numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.sum(weights_XK, axis=-1), 1.0, rtol=1e-6)
    want = modeling_mixtral.load_balancing_loss_func((logits,), E, K).item()
    assert float(moe.load_balancing_loss(probs_XE, experts_XK)) == pytest.approx(want, rel=1e-6)
    # A uniform router that balances its choices exactly scores K.
    uniform_XE = jnp.full((E, E), 1 / E)
    balanced_XK = jnp.stack([jnp.arange(E), (jnp.arange(E) + 1) % E], axis=1)
    assert float(moe.load_balancing_loss(uniform_XE, balanced_XK)) == pytest.approx(K)


def test_ragged_equals_dense_in_value_and_gradient():
    """The layer alone: output, router loss and the gradients w.r.t. params and input agree (1e-5)."""
    B, T, D = 2, 8, 16
    x_BTD = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
    r_BTD = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
    layer = lambda impl: moe.MoE(D, 2, 8, 2, 24, 0.0, "float32", "float32", impl=impl)  # noqa: E731
    params = layer("dense").init(jax.random.PRNGKey(2), x_BTD, deterministic=True)["params"]

    def loss(impl):
        def f(params, x_BTD):
            y_BTD, sown = layer(impl).apply(
                {"params": params}, x_BTD, deterministic=True, mutable=moe.AUX_LOSS
            )
            return jnp.sum(y_BTD * r_BTD) + moe.mean_aux_loss(sown), y_BTD

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(params, x_BTD)

    (ragged, ragged_y), ragged_grads = loss("ragged")
    (dense, dense_y), dense_grads = loss("dense")
    np.testing.assert_allclose(ragged_y, dense_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ragged, dense, rtol=1e-5)
    close(ragged_grads, dense_grads)
    (auto, _), _ = loss("auto")
    assert float(auto) == float(dense)  # "auto" is "dense" on CPU
    assert float(jnp.abs(ragged_grads[0]["expert_proj"]["kernel"]).sum()) > 0  # the chosen experts learn


def test_causal_by_gradient(cfg):
    """d logits[t] / d embedding[s] is 0 for s > t and nonzero for s <= t (routing is per token). The
    Jacobian row by row (lax.map of grads): JAX cannot vmap ragged_dot over its input alone (jacrev)."""
    T, D = cfg.block_size, cfg.n_embd
    params, tokens_1T = init_params(cfg), random_tokens(cfg, (1, T))
    r_V = jax.random.normal(jax.random.PRNGKey(2), (cfg.vocab_size,))

    def projected_logit(delta_1TD, t):
        logits_1TV = logits_with_embedding_delta(cfg, params, tokens_1T, delta_1TD)
        return jnp.einsum("BTV,V->T", logits_1TV, r_V)[t]

    row = lambda t: jax.grad(projected_logit)(jnp.zeros((1, T, D)), t)[0]  # noqa: E731
    jac_TS = np.abs(np.asarray(jax.jit(lambda: jax.lax.map(row, jnp.arange(T)))())).sum(-1)
    future = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(jac_TS[future] == 0.0) and np.all(jac_TS[~future] > 0.0), jac_TS


def test_cached_decoding_equals_full_forward(cfg):
    """Prefill then one token at a time with the KV cache; and the transposed kernels of batch-1 decoding
    (decode.for_matvec, kernel_layout out_in) compute the same model."""
    from gptjax.decode import for_matvec

    params, tokens_BT = init_params(cfg), random_tokens(cfg, (2, cfg.block_size))
    full_BTV, _ = apply_with_aux(cfg, params, tokens_BT)
    apply, prefix = jax.jit(GPT(cfg).apply), 3
    logits_BPV, cache = apply({"params": params}, tokens_BT[:, :prefix], cache=init_cache(cfg, 2))
    np.testing.assert_allclose(logits_BPV, full_BTV[:, :prefix], rtol=0, atol=1e-5)
    for t in range(prefix, cfg.block_size):
        logits_B1V, cache = apply({"params": params}, tokens_BT[:, t : t + 1], cache=cache)
        np.testing.assert_allclose(logits_B1V[:, 0], full_BTV[:, t], rtol=0, atol=1e-5, err_msg=t)
    flipped, flipped_cfg = for_matvec(params, cfg)
    assert flipped["h_0"]["moe"]["expert_gate"]["kernel"].shape == (24, cfg.n_embd, 8)  # [F, D, E]
    np.testing.assert_allclose(apply_with_aux(flipped_cfg, flipped, tokens_BT)[0], full_BTV, atol=1e-5)


def test_scan_layers_and_remat_equal_the_loop_with_the_router_loss(cfg):
    params, tokens_BT = init_params(cfg), random_tokens(cfg, (2, cfg.block_size))
    scanned = dataclasses.replace(cfg, scan_layers=True, remat="full")

    def loss(cfg, params):
        ce, aux = apply_with_aux(cfg, params, tokens_BT, targets_BT=tokens_BT)
        return ce + aux, (ce, aux)

    grad = lambda cfg, params: jax.jit(jax.value_and_grad(loss, 1, has_aux=True), static_argnums=0)(
        cfg, params
    )  # noqa: E731
    (_, (ce, aux)), grads = grad(cfg, params)
    (_, (scan_ce, scan_aux)), scan_grads = grad(scanned, stack_layers(params, cfg.n_layer))
    np.testing.assert_allclose([scan_ce, scan_aux], [ce, aux], rtol=1e-6)
    assert 1.5 < float(aux) < 4  # K = 2 for a balanced router, at most E = 8
    close(unstack_layers(scan_grads), grads)


def test_train_step_adds_the_router_loss_and_evaluation_leaves_it_out(cfg, tiny_opt, tiny_batch):
    """loss = cross entropy + router_aux_loss_coef * router_aux_loss (a metric) exactly; eval_step's loss is
    the cross entropy; and a few steps on one batch lower both."""
    cfg = dataclasses.replace(cfg, router_aux_loss_coef=0.1)
    state = create_train_state(cfg, make_optimizer(tiny_opt), seed=0)
    assert state.objective.router_aux_coef == 0.1 and state.objective.metrics == ("router_aux_loss",)
    ce, aux = apply_with_aux(cfg, state.params, tiny_batch[0], targets_BT=tiny_batch[1])
    evaluated = jax.jit(eval_step)(state, tiny_batch)
    np.testing.assert_allclose([evaluated["loss"], evaluated["router_aux_loss"]], [ce, aux], rtol=1e-6)
    losses = []
    for _ in range(6):
        state, metrics = jit_train_step(state, tiny_batch)
        assert np.isfinite(float(metrics["router_aux_loss"]))
        losses.append(float(metrics["loss"]))
        if len(losses) == 1:
            np.testing.assert_allclose(metrics["loss"], ce + 0.1 * metrics["router_aux_loss"], rtol=1e-6)
            np.testing.assert_allclose(metrics["router_aux_loss"], aux, rtol=1e-6)
    assert losses[-1] < losses[0] - 0.3, losses


def test_mesh_step_equals_single_device():
    """2 train steps of a 1-layer MoE on a data x fsdp x tensor mesh equal one device's, the experts sharded
    as the MLP is; the rule ("expert", "data") would spread them over data."""
    config = tiny.get_config()
    config.model.update(n_embd=64, n_head=8, block_size=16, dropout=0.0, **{**MOE, "n_layer": 1})
    config.parallel.update(mode="mesh", mesh=dict(data=2, fsdp=2, tensor=2))
    cfg = model_config(config, vocab_size=64)
    init, abstract = abstract_state(cfg, config.opt, seed=0)
    tokens = np.random.default_rng(0).integers(0, 64, size=(2, 16, 17), dtype=np.int32)  # 2 steps of 16 rows
    batches = (tokens[..., :-1], tokens[..., 1:])
    single, single_metrics = jax.jit(train_steps)(jax.jit(init)(), batches)
    placement = parallel.make_placement(config.parallel, abstract, 16)
    state, metrics = run(placement, init, batches)
    close(state.params, single.params)
    np.testing.assert_allclose(metrics["router_aux_loss"], single_metrics["router_aux_loss"], rtol=1e-5)
    experts = state.params["h_0"]["moe"]
    assert experts["expert_fc"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")  # [E, D, F]
    assert experts["expert_proj"]["kernel"].sharding.spec == P(None, "tensor", "fsdp")  # [E, F, D]
    assert experts["router"]["kernel"].sharding.spec == P("fsdp", None)  # [D, E]
    rules = (*config.parallel.rules, ("expert", "data"))
    spread = parallel.state_shardings(abstract.params, placement.mesh, rules)["h_0"]["moe"]
    assert spread["expert_gate"]["kernel"].spec == P("data", "fsdp", "tensor")


def exports_back(tmp_path, params, cfg, hf_class, x_BT, logits):
    """save_hf writes tmp_path/"out" with exactly the tensors of tmp_path/"hf", and `hf_class` loads it
    with the same `logits`."""
    import torch
    from safetensors.numpy import load_file

    convert.save_hf(tmp_path / "out", params, cfg)
    want, written = (load_file(tmp_path / d / "model.safetensors") for d in ("hf", "out"))
    assert sorted(written) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(written[name], want[name], err_msg=name)
    with torch.no_grad():
        again = hf_class.from_pretrained(tmp_path / "out")(torch.as_tensor(x_BT, dtype=torch.long))
    np.testing.assert_array_equal(again.logits.numpy(), logits)


@pytest.mark.parametrize("window", [None, 8])
def test_hf_mixtral_imports_with_its_logits_and_exports_back(tmp_path, window):
    """A random tiny MixtralForCausalLM (2 layers, 4 experts, top 2, hidden 32, vocab 64): gptjax's logits
    and per-layer router losses are HF's; export writes its tensors back exactly, which from_pretrained
    loads; transformers 5's fused expert names read too."""
    import torch
    from safetensors.numpy import load_file
    from transformers import MixtralForCausalLM
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    experts = dict(vocab_size=64, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    model = make_llama(tmp_path / "hf", "Mixtral", sliding_window=window, **experts)
    params, cfg = convert.load_hf(tmp_path / "hf")
    assert (cfg.n_experts, cfg.n_experts_per_token, cfg.sliding_window) == (4, 2, window or 0)
    assert cfg.router_aux_loss_coef == 0.001  # HF's default, kept for fine-tuning
    x_BT = np.random.default_rng(0).integers(0, 64, size=(2, 16), dtype=np.int32)
    with torch.no_grad():
        out = model(torch.as_tensor(x_BT, dtype=torch.long), output_router_logits=True)
    got, aux = apply_with_aux(cfg, params, x_BT)
    assert np.abs(out.logits.numpy()).max() > 1.0
    np.testing.assert_allclose(got, out.logits.numpy(), atol=1e-4, rtol=0)
    hf_aux = np.mean([load_balancing_loss_func((r,), 4, 2).item() for r in out.router_logits])
    assert float(aux) == pytest.approx(hf_aux, rel=1e-5)

    exports_back(tmp_path, params, cfg, MixtralForCausalLM, x_BT, out.logits.numpy())
    if window:
        model.save_pretrained(tmp_path / "fused", save_original_format=False)
        assert "model.layers.0.mlp.experts.gate_up_proj" in load_file(
            tmp_path / "fused" / "model.safetensors"
        )
        close(convert.load_hf(tmp_path / "fused")[0], params, atol=0)


@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_hf_qwen3_moe_imports_with_its_logits_and_exports_back(tmp_path, norm_topk_prob):
    """A random tiny Qwen3MoeForCausalLM (q/k norms, a head_dim of its own, 4 experts of width 16, top 2):
    gptjax's logits are HF's with its router weights renormalised or not (norm_topk_prob: moe_norm_topk),
    export writes its tensors back exactly; dense layers among the experts are refused in one line."""
    import torch
    from transformers import Qwen3MoeForCausalLM

    experts = dict(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=norm_topk_prob
    )
    model = make_llama(tmp_path / "hf", "Qwen3Moe", num_key_value_heads=2, head_dim=16, **experts)
    params, cfg = convert.load_hf(tmp_path / "hf")
    assert (cfg.n_experts, cfg.n_experts_per_token, cfg.mlp_width) == (4, 2, 16) and cfg.qk_norm
    assert (cfg.moe_norm_topk, cfg.n_head_dim) == (norm_topk_prob, 16)
    x_BT = np.random.default_rng(0).integers(0, 50, size=(2, 16), dtype=np.int32)
    with torch.no_grad():
        want = model(torch.as_tensor(x_BT, dtype=torch.long)).logits.numpy()
    got, _ = apply_with_aux(cfg, params, x_BT)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    other, _ = apply_with_aux(dataclasses.replace(cfg, moe_norm_topk=not norm_topk_prob), params, x_BT)
    assert np.abs(np.asarray(other) - want).max() > 1e-2  # the flag matters

    exports_back(tmp_path, params, cfg, Qwen3MoeForCausalLM, x_BT, want)
    if not norm_topk_prob:
        with pytest.raises(ValueError, match="Mixtral always renormalises the top-k router weights"):
            convert.hf_config(dataclasses.replace(cfg, qk_norm=False))
        hf_cfg = convert._config_json(tmp_path / "hf")
        with pytest.raises(ValueError, match=r"mlp_only_layers=\[1\], .*dense layers among the experts"):
            llama.config_from_llama({**hf_cfg, "mlp_only_layers": [1]})


def test_flops_per_token_count_a_tokens_experts_and_the_router(cfg):
    """A MoE's FLOPs = a dense SwiGLU's K x F wide (a token's K experts) + the router's 6 D E per layer;
    the parameter count is every expert's."""
    K, E, L, D, F = cfg.n_experts_per_token, cfg.n_experts, cfg.n_layer, cfg.n_embd, cfg.mlp_width
    dense = dataclasses.replace(cfg, n_experts=0, n_inner=K * F)
    n, n_dense = count_params(abstract_params(cfg)), count_params(abstract_params(dense))
    assert n - n_dense == L * ((E - K) * 3 * D * F + D * E)
    want = benchmark.flops_per_token(dense, n_dense) + 6 * L * D * E
    assert benchmark.flops_per_token(cfg, n) == want


def test_what_a_mixture_of_experts_cannot_do_is_refused_in_one_line(cfg):
    for changes, match in [
        (dict(mlp="gelu"), r"n_experts=8 must be >= 0 \(0: the dense MLP\), and with experts mlp='swiglu'"),
        (dict(n_experts_per_token=9), r"n_experts_per_token=9 must be in \[1, n_experts=8\]"),
        (dict(router_aux_loss_coef=-1.0), "router_aux_loss_coef=-1.0 must be >= 0"),
        (dict(moe_impl="megablox"), "moe_impl='megablox' is unknown"),
        (dict(lora_rank=2), "a MoE model's experts take no LoRA adapters; adapt the attention alone"),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            dataclasses.replace(cfg, **changes)
        assert "\n" not in str(e.value)
    dataclasses.replace(cfg, lora_rank=2, lora_targets=("c_attn", "c_proj"))  # the attention alone: fine
    with pytest.raises(ValueError, match="Mixtral and Qwen3-MoE have no q/k/v biases"):
        convert.hf_config(dataclasses.replace(cfg, qkv_bias=True))
    config = tiny.get_config()
    config.model.update(MOE)
    with pytest.raises(ValueError, match="torch_gpt\\) has no mixture of experts; compare a dense model"):
        compare_torch.comparable(config)
