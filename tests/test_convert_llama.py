"""gptjax.llama: HF Llama checkpoints (rope, grouped-query attention, SwiGLU, RMS norms) import with the
logits PyTorch gives."""

import numpy as np
import pytest

from gptjax import convert
from gptjax.model import GPT, init_cache

TINY = dict(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
    rms_norm_eps=1e-6,
    rope_theta=500.0,
)


def make_llama(directory, **overrides):
    """A random tiny HF LlamaForCausalLM saved in `directory`, norm weights random too."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**TINY, **overrides})
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn_like(p))
    model.eval().save_pretrained(directory)
    return model


@pytest.mark.parametrize(
    "overrides", [dict(num_key_value_heads=2), dict(num_key_value_heads=4, tie_word_embeddings=True)]
)
def test_llama_logits_match_pytorch(tmp_path, overrides):
    import torch

    model = make_llama(tmp_path, **overrides)
    params, cfg = convert.load_hf(tmp_path)
    assert (cfg.position, cfg.mlp, cfg.norm, cfg.norm_eps, cfg.rope_theta) == (
        "rope",
        "swiglu",
        "rms",
        1e-6,
        500.0,
    )
    assert cfg.kv_heads == overrides["num_key_value_heads"] and cfg.n_inner == 48
    x_BT = np.random.default_rng(0).integers(0, 50, size=(2, 16), dtype=np.int32)
    with torch.no_grad():
        want = model(torch.as_tensor(x_BT, dtype=torch.long)).logits.numpy()
    got, _ = GPT(cfg).apply({"params": params}, x_BT)
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # Decoding with the KV cache continues the same logits.
    prefill, cache = GPT(cfg).apply({"params": params}, x_BT[:, :10], cache=init_cache(cfg, 2))
    step, _ = GPT(cfg).apply({"params": params}, x_BT[:, 10:11], cache=cache)
    np.testing.assert_allclose(step[:, 0], want[:, 10], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling=.* is not supported"),
        (
            dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5}),
            "rope_parameters=.* not supported",
        ),
        (dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
        (dict(attention_bias=True), "attention_bias=True is not supported"),
    ],
)
def test_llama_configs_gptjax_cannot_compute_are_one_line(overrides, message):
    with pytest.raises(ValueError, match=message) as e:
        convert.config_from_hf({"model_type": "llama", **TINY, **overrides})
    assert "\n" not in str(e.value)


def test_a_llama_directory_becomes_a_workdir_that_samples(tmp_path):
    """scripts/convert.py's path: hf_to_workdir with the directory's tokenizer.json (a byte-level BPE as
    Llama 3's and SmolLM's), then sampling from the workdir continues as the HF model does (greedy)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from gptjax import sample

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(["hello world, the quick brown fox"] * 10, trainers.BpeTrainer(vocab_size=50))
    model = make_llama(tmp_path / "hf", num_key_value_heads=2, vocab_size=tok.get_vocab_size())
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    cfg = convert.hf_to_workdir(str(tmp_path / "hf"), tmp_path / "w")
    assert cfg.position == "rope" and cfg.kv_heads == 2
    (got,) = sample.complete(str(tmp_path / "w"), "hello", max_new_tokens=5, do_sample=False)
    ids = tok.encode("hello").ids
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)[0, len(ids) :]
    assert list(got.token_ids) == want.tolist()


def test_a_llama_exports_exactly_and_transformers_loads_it(tmp_path):
    """load_hf -> save_hf of a Llama writes the same weights LlamaForCausalLM loads, and the same config
    back; a Llama-shaped gptjax model trained here (scanned layers) exports with its own logits."""
    import dataclasses

    import torch
    import transformers

    model = make_llama(tmp_path / "hf", num_key_value_heads=2)
    params, cfg = convert.load_hf(tmp_path / "hf")
    convert.save_hf(tmp_path / "out", params, cfg)
    assert convert.read_hf_config(tmp_path / "out") == cfg
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key].numpy(), value.numpy(), err_msg=key)
    # From gptjax's side: scanned layers and a padded vocabulary export too.
    ours = dataclasses.replace(cfg, scan_layers=True, vocab_multiple=64)
    params, _ = convert.load_hf(tmp_path / "hf", into=ours)
    convert.save_hf(tmp_path / "ours", params, ours)
    x_BT = np.random.default_rng(1).integers(0, 50, size=(1, 16), dtype=np.int32)
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        want = again(torch.as_tensor(x_BT, dtype=torch.long)).logits.numpy()
    got, _ = GPT(ours).apply({"params": params}, x_BT)
    np.testing.assert_allclose(got[..., :50], want, atol=1e-4, rtol=0)


def test_a_llama_lora_run_is_not_exported_as_gpt2_adapters():
    from gptjax.hf_lora import adapters_to_peft
    from gptjax.model import GPTConfig

    cfg = GPTConfig(
        vocab_size=8, n_embd=16, n_head=2, position="rope", mlp="swiglu", norm="rms", bias=False, lora_rank=2
    )
    with pytest.raises(
        ValueError, match="PEFT export names GPT-2's layers, not a Llama's; export the merged"
    ):
        adapters_to_peft({}, cfg)
