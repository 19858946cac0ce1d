"""HF GPT-2 <-> gptjax: logits equal PyTorch's, export -> import is exact, checkpoints, one-line errors."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from gptjax import convert
from gptjax.data import ByteTokenizer, CharTokenizer
from gptjax.model import GPT, GPTConfig
from gptjax.train import load_params, train_and_evaluate

# Several small GPT-2s: odd widths, head counts and vocab sizes, each GELU form, tied and untied heads.
SHAPES = {
    "odd": dict(n_layer=2, n_head=3, n_embd=36, vocab_size=97, n_positions=16),
    "untied-exact": dict(
        n_layer=1,
        n_head=2,
        n_embd=16,
        vocab_size=256,
        n_positions=8,
        activation_function="gelu",
        tie_word_embeddings=False,
    ),
    "one-head": dict(
        n_layer=3, n_head=1, n_embd=20, vocab_size=50, n_positions=12, activation_function="gelu_pytorch_tanh"
    ),
}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="pip install -e '.[torch]' to test the HF conversion")


def make_hf(torch, directory, seed=0, **shape):
    """A randomly initialised HF GPT2LMHeadModel saved in `directory`; every weight is random, biases and
    LayerNorm parameters too, so each one's mapping shows in the logits."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(bos_token_id=None, eos_token_id=None, **shape)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "ln" in name and name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    model.eval().save_pretrained(directory)
    return model


def torch_logits(torch, model, tokens_BT):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens_BT), dtype=torch.long)).logits.numpy()


def jax_logits(params, cfg, tokens_BT):
    return np.asarray(GPT(cfg).apply({"params": params}, tokens_BT)[0])


def tokens(cfg_or_vocab, T, B=2, seed=0):
    V = getattr(cfg_or_vocab, "vocab_size", cfg_or_vocab)
    return np.random.default_rng(seed).integers(0, V, size=(B, T), dtype=np.int32)


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", list(SHAPES))
def test_logits_match_pytorch(torch, tmp_path, name):
    model = make_hf(torch, tmp_path, **SHAPES[name])
    params, cfg = convert.load_hf(tmp_path)
    x_BT = tokens(cfg, cfg.block_size)  # the full context
    want, got = torch_logits(torch, model, x_BT), jax_logits(params, cfg, x_BT)
    assert np.abs(want).max() > 1.0  # not trivially close
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["odd", "untied-exact"])
def test_export_import_is_exact_and_transformers_loads_it(torch, tmp_path, name):
    import transformers

    model = make_hf(torch, tmp_path / "hf", **SHAPES[name])
    params, cfg = convert.load_hf(tmp_path / "hf")
    convert.save_hf(tmp_path / "out", params, cfg)
    params2, cfg2 = convert.load_hf(tmp_path / "out")
    assert cfg2 == cfg
    assert_trees_equal(params2, params)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key].numpy(), value.numpy(), err_msg=key)
    x_BT = tokens(cfg, cfg.block_size)
    np.testing.assert_array_equal(torch_logits(torch, loaded, x_BT), torch_logits(torch, model, x_BT))


def test_gptjax_model_without_biases_exports_exactly(torch, tmp_path):
    """A nanoGPT-style model (no biases, exact GELU) exports with zero biases: the same function."""
    import transformers

    cfg = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=24, bias=False, gelu="exact")
    params = GPT(cfg).init(jax.random.PRNGKey(0), tokens(cfg, 8))["params"]
    convert.save_hf(tmp_path, params, cfg)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x_BT = tokens(cfg, 16)
    np.testing.assert_allclose(jax_logits(params, cfg, x_BT), torch_logits(torch, model, x_BT), atol=1e-4)


def test_checkpoint_round_trip(torch, tmp_path):
    """HF -> gptjax workdir -> HF: load_params sees the same params, transformers the same model."""
    import transformers

    model = make_hf(torch, tmp_path / "hf", **SHAPES["odd"])
    tok = CharTokenizer("".join(chr(i) for i in range(32, 32 + 97)))  # a 97-id tokenizer for vocab 97
    cfg = convert.hf_to_workdir(tmp_path / "hf", tmp_path / "w", tokenizer=tok)
    params, cfg2, tok2, config = load_params(tmp_path / "w")
    assert cfg2 == cfg and tok2.to_json() == tok.to_json() and config.model.n_embd == 36
    assert_trees_equal(params, convert.load_hf(tmp_path / "hf")[0])
    convert.workdir_to_hf(tmp_path / "w", tmp_path / "out")
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    x_BT = tokens(cfg, 16)
    np.testing.assert_array_equal(torch_logits(torch, loaded, x_BT), torch_logits(torch, model, x_BT))
    with pytest.raises(ValueError, match="already has checkpoints"):
        convert.hf_to_workdir(tmp_path / "hf", tmp_path / "w", tokenizer=tok)


def test_pytorch_model_bin(torch, tmp_path):
    model = make_hf(torch, tmp_path / "hf", **SHAPES["one-head"])
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    # As old checkpoints were saved: GPT2Model names without "transformer.", plus the attention-mask buffers.
    state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 12, 12))
    torch.save(state, legacy / "pytorch_model.bin")
    assert_trees_equal(convert.load_hf(legacy)[0], convert.load_hf(tmp_path / "hf")[0])


def test_finetuning_a_converted_model_lowers_val_loss(torch, tmp_path, data_dir, tmp_cache):
    make_hf(torch, tmp_path / "hf", n_layer=2, n_head=2, n_embd=32, vocab_size=256, n_positions=32)
    convert.hf_to_workdir(tmp_path / "hf", tmp_path / "w")  # vocab 256: the byte tokenizer
    corpus = tmp_path / "corpus.txt"  # 50 kB of Shakespeare: encoding the whole 1 MB as bytes costs seconds
    corpus.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:50_000])
    config = load_params(tmp_path / "w")[3]
    config.data.source = str(corpus)
    config.update(init_from=str(tmp_path / "w"), batch_size=8, max_iters=10, eval_interval=10, eval_iters=2)
    config.update(checkpoint_interval=10, log_interval=10, steps_per_call=10)
    config.opt.update(lr=3e-3, decay_lr=False)
    config.parallel.mode = "single"
    train_and_evaluate(config, tmp_path / "ft")
    params, _, tok, _ = load_params(tmp_path / "ft")
    assert isinstance(tok, ByteTokenizer)
    from gptjax.metric_writer import read_metrics

    val = {r["step"]: r["val_loss"] for r in read_metrics(tmp_path / "ft") if "val_loss" in r}
    assert val[10] < val[0] - 0.5, val  # ~5.7 (random, ln 256 = 5.5) -> ~4.1


# ----- Without torch: configs and weights as numpy. -----


def tiny_hf_config(**overrides):
    return {"n_layer": 1, "n_head": 2, "n_embd": 8, "vocab_size": 11, "n_positions": 4, **overrides}


def test_config_errors_are_one_line():
    cases = [
        (dict(activation_function="relu"), "activation_function='relu'"),
        (dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
        (dict(n_inner=7), "n_inner=7"),
        (dict(model_type="llama"), "model_type"),
        (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    ]
    for overrides, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            convert.config_from_hf(tiny_hf_config(**overrides))
        assert "\n" not in str(info.value)


def test_weight_errors_name_the_weight_and_shapes():
    cfg = convert.config_from_hf(tiny_hf_config())
    rng = np.random.default_rng(0)
    good = {hf: rng.normal(size=shape).astype(np.float32) for hf, _, shape in convert.weight_map(cfg)}
    params = convert.params_from_hf(good, cfg)
    assert_trees_equal(convert.params_to_hf(params, cfg), good)
    bad_shape = {**good, "transformer.h.0.mlp.c_fc.weight": np.zeros((8, 31), np.float32)}
    missing = {k: v for k, v in good.items() if k != "transformer.ln_f.bias"}
    extra = {**good, "transformer.h.0.attn.rotary": np.zeros(3, np.float32)}
    cases = [
        (bad_shape, r"h.0.mlp.c_fc.weight has shape \(8, 31\), expected \(8, 32\)"),
        (missing, "no 'transformer.ln_f.bias'"),
        (extra, "no gptjax counterpart"),
    ]
    for weights, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            convert.params_from_hf(weights, cfg)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="tokenizer has 256 ids but the model's vocab_size is 11"):
        convert.pick_tokenizer("byte", 11)
    with pytest.raises(ValueError, match="sinusoidal"):
        convert.hf_config(GPTConfig(vocab_size=11, position="sinusoidal"))


def test_importing_gptjax_does_not_import_torch():
    code = "import sys, gptjax.convert, gptjax.train; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
