"""LoRA fine-tuning: an adapted model starts as the model it adapts, trains its adapters only (no optimizer
state for the rest), merges into the same function, and fine-tunes a workdir end to end."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from gptjax.model import GPT, drop_lora, merge_lora, with_lora
from gptjax.optim import LORA_PARAMS
from gptjax.train import abstract_state, load_params, train_and_evaluate
from gptjax.train_step import create_train_state, train_step


def adapted(cfg, rank=4, **kw):
    return dataclasses.replace(cfg, lora_rank=rank, **kw)


def init(cfg, seed=0):
    return GPT(cfg).init(jax.random.key(seed), jnp.zeros((1, cfg.block_size), jnp.int32))["params"]


def logits(cfg, params, x_BT):
    return np.asarray(GPT(cfg).apply({"params": params}, x_BT)[0])


def lora_leaves(params):
    return {
        jax.tree_util.keystr(path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if path[-1].key in LORA_PARAMS
    }


def tokens(cfg, B=2, seed=1):
    return jnp.asarray(
        np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, cfg.block_size)), jnp.int32
    )


@pytest.mark.parametrize("targets", [("c_attn", "c_proj", "fc", "proj"), ("c_attn",)])
def test_an_adapted_model_starts_as_its_base_and_merges_into_one(tiny_cfg, tiny_params, targets):
    cfg = adapted(tiny_cfg, lora_targets=targets)
    params = with_lora(tiny_params, init(cfg))
    leaves = lora_leaves(params)
    assert len(leaves) == 2 * len(targets) * cfg.n_layer  # A and B of each adapted Dense of each block
    np.testing.assert_array_equal(
        logits(cfg, params, tokens(cfg)), logits(tiny_cfg, tiny_params, tokens(cfg))
    )
    # Non-zero B (as after training): merging the adapters into the kernels is the same function.
    rng = np.random.default_rng(0)
    trained = jax.tree_util.tree_map_with_path(
        lambda path, p: p + 0.1 * rng.standard_normal(p.shape) if path[-1].key == "lora_b" else p, params
    )
    merged, merged_cfg = merge_lora(trained, cfg)
    assert merged_cfg.lora_rank == 0 and not lora_leaves(merged)
    want = logits(cfg, trained, tokens(cfg))
    assert not np.allclose(want, logits(tiny_cfg, tiny_params, tokens(cfg)), atol=1e-3)  # B moved it
    np.testing.assert_allclose(logits(merged_cfg, merged, tokens(cfg)), want, atol=2e-5)
    # The [out, in] kernel layout (one-row decoding) and stacked layers merge the same way.
    flip = lambda path, p: p.T if path[-1].key == "kernel" else p  # noqa: E731
    out_in, out_in_cfg = merge_lora(
        jax.tree_util.tree_map_with_path(flip, trained), dataclasses.replace(cfg, kernel_layout="out_in")
    )
    np.testing.assert_allclose(logits(out_in_cfg, out_in, tokens(cfg)), want, atol=2e-5)
    assert drop_lora(trained).keys() == tiny_params.keys() and not lora_leaves(drop_lora(trained))


def test_training_moves_the_adapters_only_and_keeps_no_state_for_the_rest(tiny_cfg, tiny_params, tiny_opt):
    cfg = adapted(tiny_cfg)
    from gptjax.optim import make_optimizer

    state = create_train_state(cfg, make_optimizer(tiny_opt, lora=True), seed=0)
    state = state.replace(params=with_lora(tiny_params, state.params))
    n_lora = sum(x.size for x in lora_leaves(state.params).values())
    n_state = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state))
    assert n_state <= 2 * n_lora + 8  # Adam's two moments of the adapters (+ counts): none for the base
    step = jax.jit(train_step)
    x_BT = tokens(cfg, B=4)
    batch = (x_BT, jnp.roll(x_BT, -1, axis=1))
    losses = []
    for _ in range(10):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 0.05, losses
    base = drop_lora(jax.device_get(state.params))
    jax.tree_util.tree_map(np.testing.assert_array_equal, base, tiny_params)  # frozen, bit for bit
    assert all(np.any(np.asarray(b) != 0) for k, b in lora_leaves(state.params).items() if "lora_b" in k)


def test_lora_fine_tunes_a_workdir_and_refuses_what_it_cannot_do(tmp_path, data_dir, tmp_cache):
    """A tiny model trained 20 steps, then LoRA on it (mesh mode over the test's 8 devices): the base
    stays the source's, the val loss falls, load_params gives the merged model; resuming with another
    rank and LoRA from scratch are one-line errors."""

    def config(**model):
        c = tiny.get_config()
        c.model.update(block_size=16, n_layer=1, n_head=2, n_embd=32, **model)
        c.update(batch_size=16, max_iters=20, eval_interval=20, eval_iters=2, checkpoint_interval=20)
        return c

    train_and_evaluate(config(), tmp_path / "base")
    base_params, base_cfg, _, _ = load_params(tmp_path / "base")
    ft = config(lora_rank=4)
    ft.update(init_from=str(tmp_path / "base"), max_iters=30)
    ft.opt.update(lr=1e-2, warmup_iters=0)
    summary = train_and_evaluate(ft, tmp_path / "ft")
    state_abstract = abstract_state(dataclasses.replace(base_cfg, lora_rank=4), ft.opt, ft.seed)[1]
    assert lora_leaves(state_abstract.params)  # the run's state had adapters; load_params merged them:
    params, cfg, _, _ = load_params(tmp_path / "ft")
    assert cfg.lora_rank == 0 and not lora_leaves(params)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(base_params)
    changed = [
        jax.tree_util.keystr(path)
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(base_params), strict=True
        )
        if not np.array_equal(np.asarray(a), np.asarray(b))
    ]
    assert changed and all(k.endswith("['kernel']") for k in changed), changed  # only adapted kernels

    # PEFT's adapter files of the run, on its base exported to HF, are the fine-tuned model in PyTorch.
    import peft
    import torch
    import transformers

    from gptjax import convert, hf_lora

    convert.workdir_to_hf(tmp_path / "base", tmp_path / "hf_base")
    assert hf_lora.workdir_to_peft(tmp_path / "ft", tmp_path / "peft") == (str(tmp_path / "base"), True)
    adapter = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] is None  # a gptjax workdir: its --to_hf export is the base
    assert adapter["target_modules"] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    base = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf_base")
    torch_model = peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    x_BT = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, cfg.block_size))
    with torch.no_grad():
        want = torch_model(torch.as_tensor(x_BT)).logits.numpy()
    np.testing.assert_allclose(logits(cfg, params, jnp.asarray(x_BT))[..., : cfg.vocab_size], want, atol=1e-4)
    with pytest.raises(ValueError, match=r"has no LoRA adapters \(model.lora_rank=0\); export it whole"):
        hf_lora.workdir_to_peft(tmp_path / "base", tmp_path / "peft_of_base")
    from gptjax.metric_writer import read_metrics

    val = [r["val_loss"] for r in read_metrics(tmp_path / "ft") if "val_loss" in r]
    assert summary["best_val_loss"] < val[0], val

    resume = config(lora_rank=8)
    resume.update(init_from=ft.init_from, max_iters=40)
    with pytest.raises(ValueError, match=r"trained with model.lora_rank=4; resume with") as e:
        train_and_evaluate(resume, tmp_path / "ft")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"lora_rank=4 adapts a trained model: set --config.init_from"):
        train_and_evaluate(config(lora_rank=4), tmp_path / "scratch")


def test_lora_dropout_masks_the_adapters_input_in_training_only(tiny_cfg):
    """lora_dropout (PEFT's) drops the adapters' input in training: the output then differs from the
    model's without it by the adapters' terms only (zero adapters: no change) and not at all in evaluation."""
    cfg, plain = adapted(tiny_cfg, lora_dropout=0.5), adapted(tiny_cfg)
    lora_b = lambda f: lambda path, x: f(x) if path[-1].key == "lora_b" else x  # noqa: E731
    params = jax.tree_util.tree_map_with_path(lora_b(lambda x: x + 0.1), init(cfg))  # adapters that act
    silent = jax.tree_util.tree_map_with_path(lora_b(jnp.zeros_like), params)
    x_BT = tokens(cfg)

    def out(c, p, deterministic):
        rngs = {"dropout": jax.random.key(1)}
        return np.asarray(GPT(c).apply({"params": p}, x_BT, deterministic=deterministic, rngs=rngs)[0])

    np.testing.assert_array_equal(out(cfg, params, True), out(plain, params, True))
    assert np.abs(out(cfg, params, False) - out(plain, params, False)).max() > 1e-3
    np.testing.assert_allclose(out(cfg, silent, False), out(plain, silent, False), rtol=0, atol=1e-6)


def test_config_errors_are_one_line(tiny_cfg):
    with pytest.raises(ValueError, match=r"lora_targets=\['qkv'\] must name layers of"):
        adapted(tiny_cfg, lora_targets=("qkv",))
    with pytest.raises(ValueError, match="lora_rank=-1 must be >= 0"):
        adapted(tiny_cfg, rank=-1)
    with pytest.raises(ValueError, match=r"lora_dropout=1.0 must be in \[0, 1\); set model.lora_dropout"):
        adapted(tiny_cfg, lora_dropout=1.0)
    for flag in ("c_attn, fc", ("c_attn,fc",), ["c_attn", "fc"]):  # a flag's string, a list from JSON
        assert adapted(tiny_cfg, lora_targets=flag).lora_targets == ("c_attn", "fc")
