"""gptjax.llama: HF Llama checkpoints (rope, grouped-query attention, SwiGLU, RMS norms) import with the
logits PyTorch gives; so do Llama 3.1's scaled rope ("llama3", and "linear"), Mistral's, Qwen2's (a
Llama with q, k and v biases) and Qwen3's (per-head q/k norms, a head_dim of its own), which also export
as themselves."""

import dataclasses
import json

import numpy as np
import pytest

from gptjax import convert
from gptjax.layers import rope_inv_freq
from gptjax.model import GPT, GPTConfig, init_cache

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


def make_llama(directory, family="Llama", **overrides):
    """A random tiny HF LlamaForCausalLM (`family`="Mistral": MistralForCausalLM, "Qwen2":
    Qwen2ForCausalLM, "Qwen3": Qwen3ForCausalLM) saved in `directory`, norm weights and biases random too."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(**{**TINY, **overrides})
    model = getattr(transformers, f"{family}ForCausalLM")(config)
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
        (
            dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}),
            r"rope_type='yarn' is not supported; gptjax computes the rope types \['default', 'linear'",
        ),
        (
            dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0}),
            "rope_type='dynamic' is not supported",
        ),
        (dict(rope_scaling={"type": "longrope"}), "rope_type='longrope' is not supported"),
        (
            dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
            "rope_type='llama3' needs 'low_freq_factor' in the config's rope parameters",
        ),
        (
            dict(rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5}),
            "partial_rotary_factor=0.5 is not supported",
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


def test_a_tokenizer_that_starts_texts_with_bos_prompts_and_trains_as_hf_does(tmp_path):
    """A Llama 2-style tokenizer.json whose post-processor puts <s> before every text: the workdir's
    prompts get it as HF's tokenizer(prompt) does (greedy text as HF generate() gives from those ids), an
    empty prompt is <s> alone, and a fine-tuning example starts with it, read only."""
    import json

    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from gptjax import sample
    from gptjax.data.sft import load_sft_dataset

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=60, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["hello world, the quick brown fox"] * 10, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    model = make_llama(
        tmp_path / "hf",
        vocab_size=tok.get_vocab_size(),
        bos_token_id=0,
        eos_token_id=1,
        max_position_embeddings=32,
    )
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    convert.hf_to_workdir(str(tmp_path / "hf"), tmp_path / "w")
    mine = sample.load(str(tmp_path / "w"))[2]
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    assert mine.adds_bos and mine.decode([mine.bos_id]) == "<s>" and mine.decode([mine.eos_id]) == "</s>"
    ids = hf_tok("hello world").input_ids
    assert sample.prompt_ids(mine, "hello world") == ids and ids[0] == 0
    assert sample.prompt_ids(mine, "") == [0]
    (got,) = sample.complete(str(tmp_path / "w"), "hello world", max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids) :]
    want = want.tolist()[: want.tolist().index(1)] if 1 in want.tolist() else want.tolist()  # up to </s>
    assert list(got.token_ids) == want

    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(json.dumps({"prompt": "hello", "completion": " world"}) for _ in range(2)))
    row = load_sft_dataset(str(source), block_size=15, val_fraction=0.5, tokenizer=mine).train[0]
    first_trained = int((row >= 0).argmax())
    assert row[0] == -1 and mine.decode(-row[1:first_trained] - 1) == "hello"  # <s> (id 0) read, masked


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


def test_a_llama_reward_models_lora_run_is_not_exported_as_peft_adapters():
    """Its score head trains beside the adapters, and a causal LM adapter does not hold it
    (Llama adapters export and import: tests/test_peft_llama.py)."""
    from gptjax.hf_lora import adapters_to_peft
    from gptjax.model import GPTConfig

    cfg = GPTConfig(
        vocab_size=8,
        n_embd=16,
        n_head=2,
        position="rope",
        mlp="swiglu",
        norm="rms",
        bias=False,
        lora_rank=2,
        score_head=True,
    )
    with pytest.raises(
        ValueError, match="trains its score head too, .* export the merged model with --to_hf"
    ):
        adapters_to_peft({}, cfg)


# ----- Scaled rope (Llama 3.1/3.2's "llama3", "linear") and Mistral. -----

# Head dim 16: 8 rope frequencies 500^(-i/8), wavelengths 6.3 ... 1436 positions. With a pretraining
# context of 32, llama3's bands (wavelength < 32/4 kept, > 32/1 divided, blended between) all hold some.
LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 500.0,
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
SCALED = dict(hidden_size=64, num_key_value_heads=2, max_position_embeddings=128)


@pytest.mark.parametrize(
    "rope", [LLAMA3, {"rope_type": "linear", "rope_theta": 500.0, "factor": 4.0}], ids=["llama3", "linear"]
)
def test_scaled_rope_llama_logits_match_pytorch(tmp_path, rope):
    """Over 128 positions, 4x the 32 a llama3 model was 'pretrained' with: HF's frequencies, HF's logits,
    and decoding with the KV cache continues them. Without the scaling the logits are far off."""
    import torch

    model = make_llama(tmp_path, **SCALED, rope_parameters=rope)
    params, cfg = convert.load_hf(tmp_path)
    assert (cfg.rope_scaling, cfg.rope_factor, cfg.block_size) == (rope["rope_type"], 4.0, 128)
    if rope["rope_type"] == "llama3":
        assert (cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_context) == (1, 4, 32)

    inv_freq_h = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.scaled_rope)
    np.testing.assert_allclose(inv_freq_h, model.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
    slowdown_h = rope_inv_freq(cfg.head_dim, cfg.rope_theta) / inv_freq_h
    kept, divided = np.isclose(slowdown_h, 1), np.isclose(slowdown_h, 4)
    if rope["rope_type"] == "llama3":  # every band of the formula is exercised
        assert kept.sum() == 1 and divided.sum() == 5 and (~kept & ~divided).sum() == 2, slowdown_h
    else:
        assert divided.all(), slowdown_h

    x_BT = np.random.default_rng(0).integers(0, 50, size=(2, 128), dtype=np.int32)
    with torch.no_grad():
        want = model(torch.as_tensor(x_BT, dtype=torch.long)).logits.numpy()
    got, _ = GPT(cfg).apply({"params": params}, x_BT)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    unscaled = dataclasses.replace(cfg, rope_scaling="none", rope_factor=1.0)
    assert np.abs(GPT(unscaled).apply({"params": params}, x_BT)[0] - want).max() > 0.1
    # Decoding past the pretraining context with the KV cache continues the same logits.
    prefill, cache = GPT(cfg).apply({"params": params}, x_BT[:, :100], cache=init_cache(cfg, 2))
    step, _ = GPT(cfg).apply({"params": params}, x_BT[:, 100:101], cache=cache)
    np.testing.assert_allclose(prefill, want[:, :100], atol=1e-4, rtol=0)
    np.testing.assert_allclose(step[:, 0], want[:, 100], atol=1e-4, rtol=0)


def test_llama31_style_config_json_reads_its_rope_scaling():
    """Configs written before transformers 5 (Llama 3.1's config.json) keep the scaling in rope_scaling
    beside a top-level rope_theta; "type" is the oldest spelling of rope_type."""
    llama31 = {
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    }
    cfg = convert.config_from_hf({"model_type": "llama", **TINY, **llama31})
    rope = (cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor, cfg.rope_low_freq_factor)
    assert rope + (cfg.rope_high_freq_factor, cfg.rope_original_context) == (5e5, "llama3", 8, 1, 4, 8192)
    linear = {"rope_theta": 100.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    cfg = convert.config_from_hf({"model_type": "llama", **TINY, **linear})
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor) == (100.0, "linear", 2.0)


@pytest.mark.parametrize("scaling", ["llama3", "linear"])
def test_a_scaled_llama_exports_and_transformers_loads_it(tmp_path, scaling):
    """A gptjax model given a rope scaling (a free field, as when fine-tuning for a longer context) exports
    as a LlamaForCausalLM with that scaling: the same logits, and the same config read back."""
    import json

    import torch
    import transformers

    make_llama(tmp_path / "hf", **SCALED)
    params, cfg = convert.load_hf(tmp_path / "hf")
    original = dict(rope_original_context=32) if scaling == "llama3" else {}  # llama3's field only
    ours = dataclasses.replace(cfg, rope_scaling=scaling, rope_factor=4.0, **original)
    convert.save_hf(tmp_path / "out", params, ours)
    assert convert.read_hf_config(tmp_path / "out") == ours
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["rope_scaling"]["rope_type"] == written["rope_parameters"]["rope_type"] == scaling
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    x_BT = np.random.default_rng(1).integers(0, 50, size=(1, 128), dtype=np.int32)
    with torch.no_grad():
        want = loaded(torch.as_tensor(x_BT, dtype=torch.long)).logits.numpy()
    got, _ = GPT(ours).apply({"params": params}, x_BT)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(GPT(cfg).apply({"params": params}, x_BT)[0] - want).max() > 0.1  # the scaling counts


def test_a_scaled_llama_workdir_keeps_its_rope_scaling(tmp_path):
    """hf_to_workdir saves every rope field in the checkpoint's config: sampling rebuilds the same model."""
    from gptjax.train import load_params

    make_llama(tmp_path / "hf", **SCALED, vocab_size=256, rope_parameters=LLAMA3)
    cfg = convert.hf_to_workdir(str(tmp_path / "hf"), tmp_path / "w")
    assert cfg.rope_scaling == "llama3"
    _, saved, _, _ = load_params(tmp_path / "w")
    assert saved == cfg


def test_mistral_logits_match_pytorch(tmp_path, capsys):
    """A MistralForCausalLM without a sliding window is a Llama: the same logits."""
    import torch

    model = make_llama(tmp_path, "Mistral", num_key_value_heads=2, sliding_window=None)
    params, cfg = convert.load_hf(tmp_path)
    assert (cfg.block_size, cfg.kv_heads, cfg.rope_theta) == (16, 2, 500.0)
    assert "context limited" not in capsys.readouterr().out
    x_BT = np.random.default_rng(0).integers(0, 50, size=(2, 16), dtype=np.int32)
    with torch.no_grad():
        want = model(torch.as_tensor(x_BT, dtype=torch.long)).logits.numpy()
    got, _ = GPT(cfg).apply({"params": params}, x_BT)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_a_mistral_sliding_window_imports_and_exports_as_it_is(tmp_path):
    """sliding_window=8 < max_position_embeddings=16: the import keeps the 16 positions and the window
    (GPTConfig.sliding_window), giving PyTorch's logits past the window too (where a query no longer sees
    the first keys), with the KV cache as well; export writes a MistralForCausalLM with that window and the
    same weights, all of them."""
    import transformers

    model = make_llama(tmp_path / "hf", "Mistral", num_key_value_heads=2, sliding_window=8)
    params, cfg = convert.load_hf(tmp_path / "hf")
    assert (cfg.block_size, cfg.sliding_window) == (16, 8)
    x_BT = np.random.default_rng(0).integers(0, 50, size=(2, 16), dtype=np.int32)
    want = hf_logits(model, x_BT)
    got, _ = GPT(cfg).apply({"params": params}, x_BT)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    unwindowed, _ = GPT(dataclasses.replace(cfg, sliding_window=0)).apply({"params": params}, x_BT)
    assert np.abs(unwindowed[:, 8:] - want[:, 8:]).max() > 0.1  # the window matters there
    prefill, cache = GPT(cfg).apply({"params": params}, x_BT[:, :10], cache=init_cache(cfg, 2))
    step, _ = GPT(cfg).apply({"params": params}, x_BT[:, 10:11], cache=cache)
    np.testing.assert_allclose(step[:, 0], want[:, 10], atol=1e-4, rtol=0)
    config = assert_exports_exactly(model, tmp_path, transformers.MistralForCausalLM)
    assert (config["model_type"], config["sliding_window"]) == ("mistral", 8)


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            dict(rope_scaling="yarn"),
            r"rope_scaling='yarn' is unknown; use one of \('none', 'linear', 'llama3'\)",
        ),
        (
            dict(position="learned", rope_scaling="linear"),
            "scales rotary positions; set model.position='rope'",
        ),
        (dict(rope_factor=4.0), "rope_factor=4.0 with rope_scaling='none': the factor must be >= 1, and 1"),
        (dict(rope_scaling="linear", rope_factor=0.5), "rope_factor=0.5 with rope_scaling='linear'"),
        (
            dict(rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=4.0),
            "rope_scaling='llama3' needs 0 < rope_low_freq_factor < rope_high_freq_factor",
        ),
    ],
)
def test_rope_scaling_fields_are_checked_in_one_line(fields, message):
    with pytest.raises(ValueError, match=message) as e:
        GPTConfig(**{**dict(vocab_size=8, n_embd=16, n_head=2, position="rope"), **fields})
    assert "\n" not in str(e.value)


# ----- Qwen2 (Qwen2, Qwen2.5): a Llama with biases on q, k and v. -----


def make_qwen2(directory, **overrides):
    """A random tiny HF Qwen2ForCausalLM (2 key/value heads; biases random) saved in `directory`."""
    return make_llama(directory, "Qwen2", **{"num_key_value_heads": 2, **overrides})


def hf_logits(model, x_BT):
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(x_BT, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_qwen2_logits_match_pytorch(tmp_path, capsys, tie):
    """A Qwen2ForCausalLM imports with qkv_bias (its q, k and v biases in c_attn's bias) and PyTorch's
    logits, and decoding with the KV cache continues them. Older config.json files keep a sliding_window
    beside use_sliding_window=false: it limits nothing, in HF (reloaded, the same logits) or here."""
    import jax
    import transformers

    model = make_qwen2(tmp_path, tie_word_embeddings=tie)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("layer_types")  # transformers 4's files have none: HF derives them from the fields below
    config.update(sliding_window=8, max_window_layers=0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    params, cfg = convert.load_hf(tmp_path)
    assert cfg.qkv_bias and not cfg.bias and cfg.tie_embeddings == tie
    assert (cfg.block_size, cfg.kv_heads) == (16, 2)  # the whole context
    assert "context limited" not in capsys.readouterr().out
    x_BT = np.random.default_rng(0).integers(0, 50, size=(2, 16), dtype=np.int32)
    want = hf_logits(model, x_BT)
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    np.testing.assert_array_equal(hf_logits(reloaded, x_BT), want)
    got, _ = GPT(cfg).apply({"params": params}, x_BT)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    no_qkv_bias = jax.tree_util.tree_map_with_path(
        lambda path, p: 0 * p if jax.tree_util.keystr(path).endswith("['c_attn']['bias']") else p, params
    )
    unbiased, _ = GPT(cfg).apply({"params": no_qkv_bias}, x_BT)
    assert np.abs(unbiased - want).max() > 0.1  # the biases count
    prefill, cache = GPT(cfg).apply({"params": params}, x_BT[:, :10], cache=init_cache(cfg, 2))
    step, _ = GPT(cfg).apply({"params": params}, x_BT[:, 10:11], cache=cache)
    np.testing.assert_allclose(prefill, want[:, :10], atol=1e-4, rtol=0)
    np.testing.assert_allclose(step[:, 0], want[:, 10], atol=1e-4, rtol=0)


def test_a_qwen2_window_is_ignored_when_off_and_refused_when_on():
    """A Qwen2.5 config.json as transformers 4 wrote it (rope_theta 1e6 at the top, a sliding_window that
    use_sliding_window=false switches off) reads with the whole context, and no window; Mistral's window is
    kept; use_sliding_window=true (a window in the layers from max_window_layers on) reads when that is
    every layer or none, and is a one-line error otherwise."""
    import transformers

    qwen25 = dict(model_type="qwen2", rope_theta=1e6, rope_scaling=None, tie_word_embeddings=True)
    qwen25.update(use_sliding_window=False, sliding_window=8, max_window_layers=1)
    cfg = convert.config_from_hf({**TINY, **qwen25})
    assert (cfg.qkv_bias, cfg.rope_theta, cfg.block_size, cfg.tie_embeddings) == (True, 1e6, 16, True)
    mistral = convert.config_from_hf({**TINY, "model_type": "mistral", "sliding_window": 8})
    assert (mistral.qkv_bias, mistral.block_size, mistral.sliding_window) == (False, 16, 8)
    # use_sliding_window=true: the window in the layers from max_window_layers on (transformers'
    # layer_types), read when that is all of them or none.
    on = {**qwen25, "use_sliding_window": True}
    windowed = convert.config_from_hf({**TINY, **on, "max_window_layers": 0})
    assert windowed.sliding_window == 8
    exported = convert.hf_config(windowed)  # written back with the window in every layer
    assert convert.config_from_hf(exported) == windowed
    assert transformers.Qwen2Config(**exported).layer_types == ["sliding_attention"] * 2
    assert convert.config_from_hf({**TINY, **on, "max_window_layers": 2}).sliding_window == 0
    with pytest.raises(
        ValueError, match="use_sliding_window=True with a window in 1 of 2 layers is not"
    ) as e:
        convert.config_from_hf({**TINY, **on})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_a_qwen2_exports_exactly_and_transformers_loads_it(tmp_path, tie):
    """load_hf -> save_hf of a Qwen2 writes a Qwen2ForCausalLM (a Llama's config would drop the q, k and
    v biases) with the same weights, all of them, and the same config back."""
    import transformers

    model = make_qwen2(tmp_path / "hf", tie_word_embeddings=tie, rope_theta=1e6)
    written = assert_exports_exactly(model, tmp_path, transformers.Qwen2ForCausalLM)
    assert (written["architectures"], written["model_type"]) == (["Qwen2ForCausalLM"], "qwen2")
    assert written["use_sliding_window"] is False and "attention_bias" not in written
    assert written["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6}


def assert_exports_exactly(model, tmp_path, hf_class):
    """load_hf of tmp_path/hf (where `model` was saved) then save_hf to tmp_path/out gives the same config
    back and, loaded by `hf_class`, every weight of `model` and gptjax's logits; returns the written
    config.json."""
    params, cfg = convert.load_hf(tmp_path / "hf")
    convert.save_hf(tmp_path / "out", params, cfg)
    assert convert.read_hf_config(tmp_path / "out") == cfg
    loaded = hf_class.from_pretrained(tmp_path / "out").eval()
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key].numpy(), value.numpy(), err_msg=key)
    x_BT = np.random.default_rng(1).integers(0, 50, size=(1, 16), dtype=np.int32)
    got, _ = GPT(cfg).apply({"params": params}, x_BT)
    np.testing.assert_allclose(got, hf_logits(loaded, x_BT), atol=1e-4, rtol=0)
    return json.loads((tmp_path / "out" / "config.json").read_text())


def train_export_and_import(cfg, tiny_opt, out, hf_class):
    """(params, HF weights) of a gptjax model of `cfg` trained 3 steps here, which exports to `out` with
    its logits as `hf_class` loads it and imports back into `cfg` with the same weights."""
    import jax

    from gptjax.optim import make_optimizer
    from gptjax.train_step import create_train_state, jit_train_step

    state = create_train_state(cfg, make_optimizer(tiny_opt), seed=0)
    tokens = np.random.default_rng(0).integers(0, 50, size=(4, 17), dtype=np.int32)
    for _ in range(3):
        state, _ = jit_train_step(state, (tokens[:, :-1], tokens[:, 1:]))
    params = jax.device_get(state.params)
    convert.save_hf(out, params, cfg)
    loaded = hf_class.from_pretrained(out).eval()
    got, _ = GPT(cfg).apply({"params": params}, tokens[:, :16])
    np.testing.assert_allclose(got[..., :50], hf_logits(loaded, tokens[:, :16]), atol=1e-4, rtol=0)
    again, again_cfg = convert.load_hf(out, into=cfg)
    assert again_cfg == cfg
    want = convert.params_to_hf(params, cfg)  # pad rows aside, which the import fills with zeros
    for name, value in convert.params_to_hf(again, cfg).items():
        np.testing.assert_array_equal(value, want[name], err_msg=name)
    return params, want


def test_a_gptjax_model_with_qkv_bias_trains_and_exports_as_qwen2(tmp_path, tiny_opt):
    """A Llama-shaped gptjax model with qkv_bias (scanned layers, a padded vocabulary) trained here, its
    biases moved off their zero init, exports as a Qwen2ForCausalLM with its logits and imports back with
    the same weights; without qkv_bias the same shape exports as a Llama."""
    import transformers

    cfg = GPTConfig(
        vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, bias=False, qkv_bias=True,
        position="rope", mlp="swiglu", norm="rms", scan_layers=True, vocab_multiple=64,
    )  # fmt: skip
    params, want = train_export_and_import(cfg, tiny_opt, tmp_path / "out", transformers.Qwen2ForCausalLM)
    assert np.abs(params["h"]["attn"]["c_attn"]["bias"]).min() > 0  # every one trained (from zeros)
    assert sum(name.endswith("_proj.bias") for name in want) == 3 * cfg.n_layer
    assert convert.hf_config(dataclasses.replace(cfg, qkv_bias=False))["model_type"] == "llama"


# ----- Qwen3: a Llama with RMS norms over each head's q and k (before rope), and a head_dim of its own. -----

# hidden 64, 4 query heads of 32 and 2 key/value heads: q_proj [128, 64], o_proj [64, 128] (N*H != D).
QWEN3 = dict(hidden_size=64, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)


def make_qwen3(directory, **overrides):
    """A random tiny HF Qwen3ForCausalLM (q_norm, k_norm random too) saved in `directory`."""
    return make_llama(directory, "Qwen3", **{**QWEN3, **overrides})


@pytest.mark.parametrize("head_dim", [32, 16], ids=["apart", "D_over_N"])
def test_qwen3_logits_and_greedy_decoding_match_pytorch(tmp_path, head_dim):
    """A Qwen3ForCausalLM imports with qk_norm and its head_dim (n_head_dim; 0 where it is hidden / heads)
    and PyTorch's logits, which the q/k norms change; decoding with the KV cache continues them, and
    (heads apart) gptjax's greedy decoding of left-padded prompts gives HF generate()'s tokens."""
    import torch

    from gptjax import sample

    model = make_qwen3(tmp_path, head_dim=head_dim)
    params, cfg = convert.load_hf(tmp_path)
    assert cfg.qk_norm and not cfg.qkv_bias and cfg.tie_embeddings and cfg.kv_heads == 2
    assert (cfg.n_head_dim, cfg.head_dim) == ((32, 32) if head_dim == 32 else (0, 16))
    assert params["h_0"]["attn"]["q_norm"]["scale"].shape == (head_dim,)
    x_BT = np.random.default_rng(0).integers(0, 50, size=(2, 16), dtype=np.int32)
    want = hf_logits(model, x_BT)
    got, _ = GPT(cfg).apply({"params": params}, x_BT)
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    unnormed_params = {  # q_norm and k_norm left out
        k: {**v, "attn": {n: w for n, w in v["attn"].items() if not n.endswith("_norm")}} if "h_" in k else v
        for k, v in params.items()
    }
    unnormed, _ = GPT(dataclasses.replace(cfg, qk_norm=False)).apply({"params": unnormed_params}, x_BT)
    assert np.abs(unnormed - want).max() > 0.1  # the norms count
    prefill, cache = GPT(cfg).apply({"params": params}, x_BT[:, :10], cache=init_cache(cfg, 2))
    step, _ = GPT(cfg).apply({"params": params}, x_BT[:, 10:11], cache=cache)
    np.testing.assert_allclose(prefill, want[:, :10], atol=1e-4, rtol=0)
    np.testing.assert_allclose(step[:, 0], want[:, 10], atol=1e-4, rtol=0)
    if head_dim != 32:
        return  # generate() once: with heads apart from hidden / heads

    prompts = [[3, 1, 4, 1, 5], [9, 2]]  # the short one left-padded in a batch
    options = sample.GenerateOptions(max_new_tokens=8, do_sample=False)
    ours = [ids.tolist() for (ids,) in sample.generate_ids(params, cfg, prompts, options)]
    with torch.no_grad():
        theirs = [
            model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False)[0, len(p) :].tolist()
            for p in prompts
        ]
    assert ours == theirs


def test_a_qwen3_window_is_ignored_when_off_and_refused_when_on():
    """Qwen3's config.json fields: head_dim read whatever its value (0 when hidden / heads), qk_norm set;
    use_sliding_window=false leaves a sliding_window without effect, true in some layers only is a one-line
    error, and so is
    attention_bias=true (biases on o_proj too)."""
    qwen3 = {**TINY, "model_type": "qwen3", "head_dim": 8, "use_sliding_window": False, "sliding_window": 4}
    cfg = convert.config_from_hf(qwen3)
    assert (cfg.qk_norm, cfg.qkv_bias, cfg.n_head_dim, cfg.block_size) == (True, False, 0, 16)
    assert convert.config_from_hf({**qwen3, "head_dim": 24}).head_dim == 24
    llama = convert.config_from_hf(
        {**TINY, "model_type": "llama", "head_dim": 24}
    )  # a Llama's may differ too
    assert (llama.n_head_dim, llama.qk_norm) == (24, False)
    for change, message in [
        (dict(use_sliding_window=True, max_window_layers=1), "a window in 1 of 2 layers is not supported"),
        (dict(attention_bias=True), "attention_bias=True is not supported"),
    ]:
        with pytest.raises(ValueError, match=message) as e:
            convert.config_from_hf({**qwen3, **change})
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("head_dim", [32, 16], ids=["apart", "D_over_N"])
def test_a_qwen3_exports_exactly_and_transformers_loads_it(tmp_path, head_dim):
    """load_hf -> save_hf of a Qwen3 writes a Qwen3ForCausalLM with the same weights, all of them (q_norm
    and k_norm included), the same config back and the same logits."""
    import transformers

    model = make_qwen3(tmp_path / "hf", head_dim=head_dim, rope_theta=1e6)
    written = assert_exports_exactly(model, tmp_path, transformers.Qwen3ForCausalLM)
    assert (written["architectures"], written["model_type"]) == (["Qwen3ForCausalLM"], "qwen3")
    assert (written["head_dim"], written["use_sliding_window"], written["attention_bias"]) == (
        head_dim,
        False,
        False,
    )


def test_a_gptjax_model_with_qk_norm_trains_and_exports_as_qwen3(tmp_path, tiny_opt):
    """A Qwen3-shaped gptjax model (n_head_dim apart from n_embd / n_head, qk_norm; scanned layers, a padded
    vocabulary, untied) trained here, its q/k norm scales moved off their ones, exports as a
    Qwen3ForCausalLM with its logits and imports back with the same weights; with qkv_bias too it has no
    HF class: a one-line error."""
    import transformers

    cfg = GPTConfig(
        vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, n_head_dim=16,
        qk_norm=True, bias=False, position="rope", mlp="swiglu", norm="rms", scan_layers=True,
        vocab_multiple=64, tie_embeddings=False,
    )  # fmt: skip
    params, want = train_export_and_import(cfg, tiny_opt, tmp_path / "out", transformers.Qwen3ForCausalLM)
    assert params["h"]["attn"]["c_proj"]["kernel"].shape == (2, 64, 32)  # [L, N * H, D]
    for name in ("q_norm", "k_norm"):
        assert np.abs(params["h"]["attn"][name]["scale"] - 1).min() > 0  # every one trained (from ones)
    assert sum(name.endswith("_norm.weight") for name in want) == 2 * cfg.n_layer  # q_norm, k_norm
    both = dataclasses.replace(cfg, qkv_bias=True)
    with pytest.raises(ValueError, match="qk_norm=True with qkv_bias=True cannot be exported") as e:
        convert.hf_config(both)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="qk_norm=True with qkv_bias=True cannot be exported"):
        convert.params_to_hf(params, both)
    gpt2 = dataclasses.replace(
        cfg, position="learned", mlp="gelu", norm="layer", bias=True, scan_layers=False
    )
    with pytest.raises(ValueError, match="qk_norm=True, n_head_dim=16 cannot be exported as HF GPT-2"):
        convert.hf_config(gpt2)
