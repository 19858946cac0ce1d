"""gptjax and PyTorch (nanoGPT's model) trained from the same weights on the same batches: the same losses."""

import pytest

from configs import tiny
from gptjax import compare_torch


@pytest.mark.parametrize("block", ["gpt2", "llama"])
def test_losses_agree_with_pytorch(tmp_path, data_dir, tmp_cache, block):
    """GPT-2's block (as shakespeare_char), and Llama's (as llama_char: rope, grouped-query attention,
    SwiGLU, RMS norms)."""
    import torch  # noqa: F401  (the torch extra, which make test installs: missing fails, never skips)

    config = tiny.get_config()
    config.model.update(block_size=16, n_layer=2, n_head=2, n_embd=32, bias=False)
    if block == "llama":
        config.model.update(position="rope", n_kv_head=1, mlp="swiglu", norm="rms", norm_eps=1e-6)
    config.opt.update(warmup_iters=3, lr_decay_iters=10)  # the schedule's warmup and cosine both matter
    config.batch_size = 4
    config.steps_per_call = 5
    result = compare_torch.compare(config, steps=10, torch_compile=False)
    losses = result["losses"]
    assert len(losses["gptjax"]) == len(losses["torch_eager"]) == 10
    assert losses["gptjax"][-1] < losses["gptjax"][0] - 0.1  # it trains: the comparison is not vacuous
    assert result["max_rel_loss_diff"] <= 1e-3, result["losses"]
    assert result["bias"] is False  # the config's own model: no biases added for the baseline
    assert result["tokens_per_sec"]["gptjax"] > 0 and result["tokens_per_sec"]["torch_eager"] > 0
    compare_torch.plot(result, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_a_muon_config_is_refused_in_one_line():
    config = tiny.get_config()
    config.opt.name = "muon"
    with pytest.raises(ValueError, match="the PyTorch baselines train with AdamW only; compare with") as e:
        compare_torch.comparable(config)
    assert "\n" not in str(e.value)
