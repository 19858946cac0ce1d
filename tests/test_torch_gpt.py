"""gptjax.torch_gpt, the PyTorch baseline: the same function as gptjax's model from the same parameters,
and nanoGPT's initialisation."""

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from gptjax.model import GPT


@pytest.fixture(scope="module")
def torch():
    import torch  # the torch extra, which make test installs: missing fails, never skips

    return torch


LLAMA = dict(position="rope", n_kv_head=1, mlp="swiglu", norm="rms", bias=False, norm_eps=1e-6)
LLAMA3 = dict(rope_scaling="llama3", rope_factor=4.0, rope_original_context=4)  # some frequencies scaled


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"bias": False},
        {"gelu": "exact"},
        {"tie_embeddings": False},
        {"vocab_multiple": 8, "bias": False},
        {"position": "sinusoidal"},
        {"norm": "rms", "norm_eps": 1e-6},
        LLAMA,
        {**LLAMA, **LLAMA3, "tie_embeddings": False, "rope_theta": 500.0},
        {**LLAMA, "scan_layers": True, "n_inner": 40},
        {**LLAMA, "qkv_bias": True},
        {**LLAMA, "n_head": 4, "n_kv_head": 2, "n_head_dim": 8, "qk_norm": True},  # N*H = 32, D = 16
        {**LLAMA, "qk_norm": True, "scan_layers": True},
        {"n_head": 4, "n_head_dim": 12},  # GPT-2's shape with heads of their own width
        {**LLAMA, "sliding_window": 3},  # Mistral's
    ],
    ids=[
        "gpt2",
        "no_bias",
        "exact_gelu",
        "untied",
        "padded_vocab",
        "sinusoidal",
        "rms",
        "llama",
        "llama3",
        "scan",
        "qwen2",
        "qwen3",
        "qk_norm_scan",
        "gpt2_head_dim",
        "mistral",
    ],
)
def test_logits_and_loss_equal_gptjax(torch, tiny_cfg, change):
    from gptjax import torch_gpt

    cfg = dataclasses.replace(tiny_cfg, vocab_size=13, **change)
    tokens_BT = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, cfg.block_size + 1))
    x_BT, y_BT = tokens_BT[:, :-1], tokens_BT[:, 1:]
    params = GPT(cfg).init(jax.random.PRNGKey(0), x_BT)["params"]
    # Non-zero biases and LayerNorm weights, so every mapped tensor matters.
    params = jax.tree.map(lambda p: p + 0.1 * np.cos(np.arange(p.size).reshape(p.shape)), params)
    want_BTV, _ = GPT(cfg).apply({"params": params}, x_BT)
    want_loss, _ = GPT(cfg).apply({"params": params}, x_BT, targets_BT=y_BT)
    model = torch_gpt.from_gptjax(params, cfg).eval()
    with torch.no_grad():
        got_BTV = model(torch.as_tensor(x_BT)).numpy()
        got_loss = float(model(torch.as_tensor(x_BT), torch.as_tensor(y_BT)))
    np.testing.assert_allclose(got_BTV, np.asarray(want_BTV)[..., : cfg.vocab_size], rtol=0, atol=1e-5)
    assert got_loss == pytest.approx(float(want_loss), rel=1e-5)


def test_nanogpt_initialisation(torch):
    from gptjax import torch_gpt
    from gptjax.model import GPTConfig

    cfg = GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=True)
    torch.manual_seed(0)
    model = torch_gpt.GPT(cfg).init_weights()
    params = {name: p.detach() for name, p in model.named_parameters()}
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    assert float(params["transformer.h.0.mlp.c_fc.weight"].std()) == pytest.approx(0.02, rel=0.05)
    residual = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name in ("transformer.h.3.attn.c_proj.weight", "transformer.h.1.mlp.c_proj.weight"):
        assert float(params[name].std()) == pytest.approx(residual, rel=0.05), name
    assert float(params["transformer.h.2.attn.c_attn.bias"].abs().max()) == 0.0
    for change in (dict(gelu="quick"), dict(output_vocab=cfg.vocab_size - 1), dict(lora_rank=2)):
        with pytest.raises(ValueError, match="the PyTorch GPT is nanoGPT's"):
            torch_gpt.GPT(dataclasses.replace(cfg, **change))


def test_torch_reference_script_trains(torch, data_dir):
    """scripts/torch_reference.py (nanoGPT's loop on torch_gpt) runs and its loss falls, a few steps."""
    script = pathlib.Path(__file__).parents[1] / "scripts" / "torch_reference.py"
    env = {**os.environ, "GPTJAX_DATA_DIR": str(data_dir)}
    out = subprocess.run(
        [sys.executable, str(script), "--steps=30", "--precise_batches=10"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line.get("step") for line in lines[:-1]] == [0, 30]
    assert lines[1]["train"] < lines[0]["train"] - 0.5  # 4.17 -> ~3.2 after 30 steps of warmup
    assert lines[-1]["best_val_loss"] == lines[1]["val"]
