"""A fine-tuning config that leaves the model's shape unset (configs/finetune_shakespeare.py, configs/sft.py)
takes it from its init_from model, GPT-2 or Llama alike, and a resumed run from its checkpoint
(gptjax.init_from.fill_model)."""

import dataclasses

import numpy as np
import pytest

from configs import finetune_shakespeare
from gptjax import convert, llama
from gptjax.data import GPT2Tokenizer, HFTokenizer
from gptjax.train import load_params, model_config, train_and_evaluate
from tests.test_convert import jax_logits, make_hf, tokens, torch_logits
from tests.test_convert_llama import make_llama


@pytest.fixture(scope="module")
def torch():
    import torch  # the torch extra, which make test installs: missing fails, never skips

    return torch


def finetune_config(tmp_path, data_dir, init_from, **overrides):
    """configs/finetune_shakespeare.py:gpt2 as written (its model fields unset), started from `init_from`,
    on 20 kB of Shakespeare with 16-token rows; max_iters=0: the run loads its starting point, evaluates
    and saves it as step 0."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    config = finetune_shakespeare.get_config("gpt2")
    config.data.source = str(corpus)
    config.model.block_size = 16  # both sources below have 32 positions: cropped
    config.update(init_from=str(init_from), batch_size=8, grad_accum=1, max_iters=0, eval_iters=1)
    config.update(eval_interval=2, checkpoint_interval=2, log_interval=1, steps_per_call=1, **overrides)
    return config


def test_the_finetune_config_takes_a_gpt2_sources_shape_and_resumes_with_it(
    torch, tmp_path, data_dir, tmp_cache, capsys
):
    """Nothing in the config names the source's size: the run takes n_layer, n_head, n_embd, bias, ...
    from the HF model (step 0 computes its logits) and GPT-2's BPE ("auto" for 50257 ids). Resuming with
    the same unset config fills the fields from the checkpoint."""
    hf = make_hf(torch, tmp_path / "hf", n_layer=2, n_head=2, n_embd=16, vocab_size=50257, n_positions=32)
    config = finetune_config(tmp_path, data_dir, tmp_path / "hf")
    assert config.model.n_layer is None and config.model.n_embd is None  # unset, as the file writes it
    train_and_evaluate(config, tmp_path / "ft")
    assert "config.model from init_from=" in capsys.readouterr().out
    params, cfg, tok, saved = load_params(tmp_path / "ft")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (2, 2, 16, 16)
    assert saved.model.n_layer == 2 and isinstance(tok, GPT2Tokenizer)  # the checkpoint holds the values
    x_BT = tokens(cfg, 16)
    np.testing.assert_allclose(jax_logits(params, cfg, x_BT), torch_logits(torch, hf, x_BT), atol=1e-4)

    train_and_evaluate(finetune_config(tmp_path, data_dir, tmp_path / "hf", max_iters=2), tmp_path / "ft")
    out = capsys.readouterr().out
    assert "resuming from" in out and "config.model from the checkpoint" in out
    trained, cfg2, _, _ = load_params(tmp_path / "ft")
    assert cfg2 == cfg and not np.array_equal(trained["wte"]["embedding"], params["wte"]["embedding"])


def test_the_same_config_fine_tunes_a_llama(torch, tmp_path, data_dir, tmp_cache):
    """The GPT-2 fine-tuning config, pointed at an HF Llama directory: the run becomes a Llama (rope with
    Llama 3's scaling, grouped-query attention, SwiGLU, RMS norms, untied head) with the directory's own
    tokenizer, and step 0 holds exactly the HF weights and computes PyTorch's logits."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    every_byte = pre_tokenizers.ByteLevel.alphabet()  # so any text encodes
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text()[:20_000]
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, initial_alphabet=every_byte))
    llama3 = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 4.0, "low_freq_factor": 1.0}
    llama3.update(high_freq_factor=4.0, original_max_position_embeddings=8)  # Llama 3.2's kind of rope
    hf = make_llama(
        tmp_path / "hf",
        num_key_value_heads=2,
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=32,
        rope_parameters=llama3,
    )
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))

    train_and_evaluate(finetune_config(tmp_path, data_dir, tmp_path / "hf"), tmp_path / "ft")
    params, cfg, got_tok, _ = load_params(tmp_path / "ft")
    assert llama.is_llama(cfg) and cfg.kv_heads == 2 and not cfg.tie_embeddings
    assert (cfg.rope_scaling, cfg.rope_factor, cfg.rope_original_context) == ("llama3", 4.0, 8)
    x_BT = tokens(cfg, 16)  # the scaled rope carried over: PyTorch's logits
    np.testing.assert_allclose(jax_logits(params, cfg, x_BT), torch_logits(torch, hf, x_BT), atol=1e-4)
    assert isinstance(got_tok, HFTokenizer) and got_tok.encode("ROMEO:") == tok.encode("ROMEO:").ids
    state = hf.state_dict()
    weights = llama.params_to_llama(params, cfg)
    assert weights.keys() == {k for k in state if not k.endswith("inv_freq")}
    for name, value in weights.items():
        np.testing.assert_array_equal(value, state[name].numpy(), err_msg=name)


def test_unset_fields_need_a_source_and_set_ones_must_match_it(torch, tmp_path, data_dir, tmp_cache):
    make_hf(torch, tmp_path / "hf", n_layer=1, n_head=2, n_embd=16, vocab_size=50257, n_positions=32)
    cases = [
        (
            {},
            r"data.tokenizer='auto' takes the tokenizer of config.init_from's model, but init_from='scratch'",
        ),
        (
            {"data.tokenizer": "char"},
            r"config.model.bias, gelu, mlp, .* unset \(None\): fine-tuning takes them from "
            r"config.init_from's model; otherwise set them, e.g. --config.model.bias=...$",
        ),
    ]
    for overrides, match in cases:
        config = finetune_config(tmp_path, data_dir, "scratch")
        for key, value in overrides.items():
            config.data[key.split(".")[1]] = value
        with pytest.raises(ValueError, match=match) as info:
            train_and_evaluate(config, tmp_path / "scratch")
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"config.model.bias, .* unset \(None\)"):
        model_config(finetune_shakespeare.get_config("gpt2"), vocab_size=50257)  # e.g. scripts/bench.py

    config = finetune_config(tmp_path, data_dir, tmp_path / "hf")
    config.model.n_embd = 32  # set: checked against the source, not overwritten
    with pytest.raises(ValueError, match=r"n_embd=32 \(HF: 16\); set --config.model.n_embd=16$"):
        train_and_evaluate(config, tmp_path / "ft")


def test_fill_model_leaves_set_fields_and_the_callers_config():
    from gptjax.init_from import fill_model

    config = finetune_shakespeare.get_config("gpt2")
    config.model.n_layer = 3
    hf = {"n_layer": 2, "n_head": 2, "n_embd": 16, "vocab_size": 50257, "n_positions": 32}
    source = dataclasses.asdict(convert.config_from_hf(hf))
    filled = fill_model(config, source, "a test")
    assert filled.model.n_layer == 3 and filled.model.n_embd == 16 and filled.model.gelu == "tanh"
    assert config.model.n_embd is None  # the caller's config is unchanged
    assert model_config(filled, vocab_size=50257).n_head == 2


def test_a_checkpoint_from_before_a_model_field_existed_fills_it_with_the_default():
    """A workdir saved before the rope_scaling fields were added has none of them: saved_model gives
    their defaults, so fine-tuning or resuming from it fills them instead of refusing."""
    from gptjax.data import CharTokenizer
    from gptjax.init_from import fill_model, saved_model

    old = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 8, "lora_targets": ["c_attn"]}
    model = saved_model({"config": {"model": old}, "tokenizer": CharTokenizer("abc").to_json()})
    assert model["rope_scaling"] == "none" and model["rope_factor"] == 1.0 and model["n_layer"] == 2
    filled = fill_model(finetune_shakespeare.get_config("gpt2"), model, "an old workdir")
    assert model_config(filled, vocab_size=3).rope_original_context == 8192
