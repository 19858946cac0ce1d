"""HF GPT-2 <-> gptjax: logits equal PyTorch's, export -> import is exact (padded vocabularies too),
fine-tuning from a Hub id, checkpoints, one-line errors. Tokenizer files: test_convert_tokenizer.py."""

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from gptjax import convert, hf_tokenizer
from gptjax.data import ByteTokenizer, CharTokenizer, GPT2Tokenizer
from gptjax.model import GPT, GPTConfig
from gptjax.train import load_params, train_and_evaluate

# Several small GPT-2s: odd widths, head counts and vocab sizes, each GELU form, tied and untied heads, an
# MLP narrower than 4 * n_embd (n_inner).
SHAPES = {
    "odd": dict(n_layer=2, n_head=3, n_embd=36, vocab_size=97, n_positions=16),
    "n_inner": dict(n_layer=1, n_head=2, n_embd=16, vocab_size=40, n_positions=8, n_inner=24),
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
    import torch  # the torch extra, which make test installs: missing fails, never skips

    return torch


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


@pytest.mark.parametrize("name", ["odd", "untied-exact", "n_inner"])
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


@pytest.mark.parametrize("name, multiple, scan", [("odd", 64, False), ("untied-exact", 100, True)])
def test_hf_into_a_padded_vocab_and_back_is_exact(torch, tmp_path, name, multiple, scan):
    """HF -> gptjax with padded token rows (and scanned layers) -> HF gives back every weight exactly;
    the padded model's logits are HF's over the real ids, and the pads get no probability."""
    import transformers

    model = make_hf(torch, tmp_path / "hf", **SHAPES[name])
    hf_cfg = convert.read_hf_config(tmp_path / "hf")
    cfg = dataclasses.replace(hf_cfg, vocab_multiple=multiple, scan_layers=scan)
    params, cfg2 = convert.load_hf(tmp_path / "hf", into=cfg)
    V, padded = cfg.vocab_size, cfg.padded_vocab
    assert cfg2 == cfg and padded > V
    head = params["wte"]["embedding"] if cfg.tie_embeddings else params["lm_head"]
    assert head.shape == (padded, cfg.n_embd) and not head[V:].any()  # zero pad rows
    x_BT = tokens(cfg, cfg.block_size)
    logits = jax_logits(params, cfg, x_BT)
    assert logits.shape[-1] == padded
    np.testing.assert_allclose(logits[..., :V], torch_logits(torch, model, x_BT), atol=1e-4, rtol=0)
    assert not np.asarray(jax.nn.softmax(logits)[..., V:]).any()
    convert.save_hf(tmp_path / "out", params, cfg)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.vocab_size == V
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key].numpy(), value.numpy(), err_msg=key)


@pytest.mark.parametrize("tie", [True, False])
def test_padded_gptjax_model_exports_with_the_same_logits(torch, tmp_path, tie):
    """A gptjax model trained with vocab_multiple (random pad rows) loads in transformers without them."""
    import transformers

    cfg = GPTConfig(
        vocab_size=65, vocab_multiple=64, block_size=16, n_layer=2, n_head=2, n_embd=24, tie_embeddings=tie
    )
    params = GPT(cfg).init(jax.random.PRNGKey(0), tokens(cfg, 8))["params"]
    assert params["wte"]["embedding"].shape == (128, 24)
    convert.save_hf(tmp_path, params, cfg)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert model.config.vocab_size == 65
    x_BT = tokens(cfg, 16)
    want = torch_logits(torch, model, x_BT)
    assert want.shape[-1] == 65
    np.testing.assert_allclose(jax_logits(params, cfg, x_BT)[..., :65], want, atol=1e-4, rtol=0)


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
        (dict(model_type="falcon"), "model_type"),
        (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    ]
    for overrides, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            convert.config_from_hf(tiny_hf_config(**overrides))
        assert "\n" not in str(info.value)


def test_block_size_is_n_positions():
    """The context is n_positions, wpe's rows (old configs' n_ctx is another field, not the context)."""
    assert convert.config_from_hf(tiny_hf_config(n_ctx=1024)).block_size == 4
    assert convert.hf_config(GPTConfig(vocab_size=11, block_size=4))["n_positions"] == 4


def test_config_fields_both_ways_and_zero_pad_rows():
    """HF's dropouts are not imported (fine-tuning sets its own) and an explicit n_inner of 4 * n_embd is
    GPT-2's width; export writes the tokenizer's BOS and EOS ids and imports back to the same config; a
    padded vocabulary's extra rows import as zeros."""
    cfg = convert.config_from_hf(tiny_hf_config(n_inner=32, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1))
    assert (cfg.tie_embeddings, cfg.gelu, cfg.dropout) == (True, "tanh", 0.0)
    untied = dataclasses.replace(cfg, tie_embeddings=False, gelu="exact", norm_eps=1e-6)
    hf = convert.hf_config(untied, type("Tok", (), {"bos_id": 3, "eos_id": 5})())
    assert (hf["bos_token_id"], hf["eos_token_id"], hf["activation_function"]) == (3, 5, "gelu")
    assert hf["layer_norm_epsilon"] == 1e-6
    assert convert.config_from_hf(hf) == untied
    ones = {hf: np.ones(shape, np.float32) for hf, _, shape in convert.weight_map(untied)}
    params = convert.params_from_hf(ones, dataclasses.replace(untied, vocab_multiple=8))
    for rows in (params["wte"]["embedding"], params["lm_head"]):
        assert rows.shape == (16, 8) and np.all(rows[:11] == 1) and np.all(rows[11:] == 0)


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
        hf_tokenizer.pick_tokenizer("byte", 11)
    with pytest.raises(ValueError, match="sinusoidal"):
        convert.hf_config(GPTConfig(vocab_size=11, position="sinusoidal"))


def test_importing_gptjax_does_not_import_torch():
    code = "import sys, gptjax.convert, gptjax.train; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_check_same_model_names_each_field_and_the_fix():
    cfg = convert.config_from_hf(tiny_hf_config())
    free = dataclasses.replace(cfg, vocab_multiple=64, scan_layers=True, dropout=0.1, param_dtype="bfloat16")
    convert.check_same_model(cfg, free)  # padding, layout, dropout and dtypes are the config's to choose
    with pytest.raises(ValueError) as info:
        convert.check_same_model(cfg, dataclasses.replace(cfg, n_layer=3, gelu="exact"))
    assert str(info.value) == (
        "config.model does not match the HF model: n_layer=3 (HF: 1), gelu=exact (HF: tanh); "
        "set --config.model.n_layer=1 --config.model.gelu=tanh"
    )


# (n_layer, n_head, n_embd) in config.json of HF's gpt2, gpt2-medium, gpt2-large and gpt2-xl; all have
# n_positions 1024, vocab_size 50257, gelu_new and tied embeddings.
HF_GPT2_SHAPES = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}


@pytest.mark.parametrize("source", list(HF_GPT2_SHAPES))
def test_finetune_config_takes_the_hub_models_shape(source):
    """The config names the Hub model and leaves its shape unset: filled from that model (as a run does,
    tests/test_finetune_source.py), it describes the model exactly, with 1024-token rows."""
    from configs import finetune_shakespeare
    from gptjax.init_from import fill_model
    from gptjax.train import model_config

    n_layer, n_head, n_embd = HF_GPT2_SHAPES[source]
    hf = convert.config_from_hf(
        dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=50257, n_positions=1024)
    )
    config = finetune_shakespeare.get_config(source)
    assert config.init_from == source and config.model.n_layer is None
    cfg = model_config(fill_model(config, dataclasses.asdict(hf), source), vocab_size=50257)
    convert.check_same_model(hf, cfg)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (n_layer, n_head, n_embd, 1024)


def test_padded_and_scanned_params_round_trip_as_numpy():
    cfg = dataclasses.replace(convert.config_from_hf(tiny_hf_config(n_layer=2)), tie_embeddings=False)
    rng = np.random.default_rng(0)
    good = {hf: rng.normal(size=shape).astype(np.float32) for hf, _, shape in convert.weight_map(cfg)}
    for into in (dataclasses.replace(cfg, vocab_multiple=8), dataclasses.replace(cfg, scan_layers=True)):
        params = convert.params_from_hf(good, into)
        assert params["lm_head"].shape == (into.padded_vocab, 8)
        assert_trees_equal(convert.params_to_hf(params, into), good)
    assert params["h"]["ln_1"]["scale"].shape == (2, 8)  # scanned: layers stacked on axis 0
    with pytest.raises(ValueError, match=r"param wte/embedding has shape \(11, 8\), expected \(16, 8\)"):
        convert.params_to_hf(convert.params_from_hf(good, cfg), dataclasses.replace(cfg, vocab_multiple=8))


# ----- init_from = a Hugging Face model: the HF hub cache, offline. -----

HUB_ID = "gptjax-test/tiny-gpt2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# GPT-2's vocabulary (so "auto" picks its BPE) in a model small enough to train on 2 cores.
HUB_SHAPE = dict(n_layer=1, n_head=2, n_embd=16, vocab_size=50257, n_positions=32)


@pytest.fixture
def hub(torch, tmp_path, monkeypatch):
    """An offline HF hub cache holding HUB_ID as huggingface_hub lays it out: models--org--name/refs/main
    names a commit whose snapshot has config.json and model.safetensors. Returns the HF model."""
    repo = tmp_path / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    model = make_hf(torch, repo / "snapshots" / COMMIT, **HUB_SHAPE)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return model


def hub_config(tmp_path, data_dir, **overrides):
    """configs/tiny.py with HUB_SHAPE's model on 20 kB of Shakespeare (mesh mode over the 8 test devices);
    max_iters=0: the run loads its starting point, evaluates and saves it as step 0."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    config = tiny.get_config()
    config.model.update(block_size=32, n_layer=1, n_head=2, n_embd=16, bias=True, gelu="tanh")
    config.data.source = str(corpus)
    config.update({"init_from": HUB_ID, "batch_size": 8, "max_iters": 0, "eval_iters": 1, **overrides})
    return config


def test_init_from_a_hub_id_starts_from_its_exact_weights(hub, tmp_path, data_dir, tmp_cache):
    """init_from=<Hub id> finds the model in the HF cache offline, pads it into config.model's 64-row
    multiple, picks GPT-2's BPE, and step 0 holds exactly the HF weights; export gives its tokenizer."""
    import transformers

    config = hub_config(tmp_path, data_dir)
    config.model.vocab_multiple = 64  # 50257 -> 50304 rows, as configs/gpt2.py trains
    train_and_evaluate(config, tmp_path / "ft")
    params, cfg, tok, _ = load_params(tmp_path / "ft")
    assert isinstance(tok, GPT2Tokenizer) and cfg.padded_vocab == 50304
    assert not np.asarray(params["wte"]["embedding"][50257:]).any()
    weights = convert.params_to_hf(params, cfg)
    hf_state = hub.state_dict()
    assert len(weights) == len(convert.weight_map(cfg))
    for name, value in weights.items():
        np.testing.assert_array_equal(value, hf_state[name].numpy(), err_msg=name)

    convert.workdir_to_hf(tmp_path / "ft", tmp_path / "out")  # and back out, with GPT-2's tokenizer files
    assert (tmp_path / "out" / "vocab.json").is_file() and (tmp_path / "out" / "merges.txt").is_file()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf_tok.encode("Hello world") == [15496, 995] and hf_tok.eos_token_id == 50256


def test_init_from_a_shorter_context_keeps_the_first_positions(
    hub, torch, tmp_path, data_dir, tmp_cache, capsys
):
    """config.model.block_size below the source's crops the context (nanoGPT's crop_block_size): the
    model keeps the first positions and, on sequences that fit, computes what the source computes; from
    an HF model or a workdir. A longer context than the source's is refused."""
    config = hub_config(tmp_path, data_dir)
    config.model.block_size = 16  # the Hub model's: 32
    train_and_evaluate(config, tmp_path / "ft16")
    assert "context cropped from 32 to 16 positions" in capsys.readouterr().out
    params, cfg, _, _ = load_params(tmp_path / "ft16")
    assert cfg.block_size == 16
    np.testing.assert_array_equal(
        params["wpe"]["embedding"], hub.state_dict()["transformer.wpe.weight"][:16].numpy()
    )
    x_BT = tokens(cfg, 16)
    np.testing.assert_allclose(jax_logits(params, cfg, x_BT), torch_logits(torch, hub, x_BT), atol=1e-4)

    config.update(init_from=str(tmp_path / "ft16"))
    config.model.block_size = 8
    train_and_evaluate(config, tmp_path / "ft8")
    params8, cfg8, _, _ = load_params(tmp_path / "ft8")
    np.testing.assert_array_equal(params8["wpe"]["embedding"], params["wpe"]["embedding"][:8])
    np.testing.assert_allclose(
        jax_logits(params8, cfg8, x_BT[:, :8]), jax_logits(params, cfg, x_BT[:, :8]), atol=1e-5
    )

    config = hub_config(tmp_path, data_dir)
    config.model.block_size = 64
    with pytest.raises(ValueError, match=r"block_size=64 \(HF: 32\); set --config.model.block_size=32$"):
        train_and_evaluate(config, tmp_path / "ft64")


def test_init_from_errors_are_one_line(hub, tmp_path, data_dir, tmp_cache):
    (tmp_path / "empty").mkdir()
    cases = [
        ("gptjax-test/missing", "nor in the HF hub cache .* HF_HUB_OFFLINE is set; pass a local HF model"),
        (str(tmp_path / "empty"), "neither gptjax checkpoints nor an HF config.json"),
    ]
    for init_from, match in cases:
        with pytest.raises(FileNotFoundError, match=match) as info:
            train_and_evaluate(hub_config(tmp_path, data_dir, init_from=init_from), tmp_path / "ft")
        assert "\n" not in str(info.value)
    config = hub_config(tmp_path, data_dir)
    config.model.n_embd = 32
    with pytest.raises(ValueError, match=r"n_embd=32 \(HF: 16\); set --config.model.n_embd=16$") as info:
        train_and_evaluate(config, tmp_path / "ft")
    assert "\n" not in str(info.value)


def test_hub_ids_come_from_the_cache_first_then_a_download(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def snapshot_download(name, *, cache_dir, local_files_only=False, allow_patterns=None):
        """The Hub: "gpt2" has safetensors, "old" only pytorch_model.bin; fetches what the patterns ask."""
        calls.append((name, cache_dir, local_files_only))
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        downloaded = tmp_path / "downloaded" / name
        downloaded.mkdir(parents=True, exist_ok=True)
        weights = "model.safetensors" if name == "gpt2" else "pytorch_model.bin"
        for file in ("config.json", weights):
            if file in allow_patterns:
                (downloaded / file).write_text("{}")
        return str(downloaded)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)  # "gpt2" is no local directory here
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert convert.resolve_hf_dir("gpt2") == tmp_path / "downloaded" / "gpt2"
    cache = str(tmp_path / "hf_home" / "hub")
    assert calls == [("gpt2", cache, True), ("gpt2", cache, False)]
    calls.clear()
    old = convert.resolve_hf_dir("old")  # no safetensors: a second download fetches pytorch_model.bin
    assert (old / "pytorch_model.bin").is_file() and len(calls) == 3
    calls.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        convert.resolve_hf_dir("gpt2")
    assert calls == [("gpt2", cache, True)]  # offline: never a download


def test_a_missing_path_is_never_tried_as_a_hub_id_and_long_reasons_are_cut_at_a_word(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def snapshot_download(name, **kwargs):
        calls.append(name)
        raise huggingface_hub.errors.LocalEntryNotFoundError("word " * 100)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for path in (str(tmp_path / "typo"), "./runs/typo", "~/typo", "runs/a/typo"):
        with pytest.raises(FileNotFoundError, match=f"^{path} is not a directory; pass a local HF model"):
            convert.resolve_hf_dir(path)
    assert calls == []
    with pytest.raises(FileNotFoundError) as info:
        convert.resolve_hf_dir("owner/name")  # a Hub id: tried, and its long error cut between words
    assert calls == ["owner/name", "owner/name"]
    assert "word word ...); pass a local HF model directory" in str(info.value)


@pytest.mark.parametrize("rslora", [False, True])
def test_a_peft_lora_adapter_merges_into_its_base(torch, tmp_path, rslora):
    """--from_peft: a PEFT LoRA adapter (random, on c_attn and both c_proj, rsLoRA's scale too) merged into
    its HF base (named by the adapter) gives the logits of peft.PeftModel; what gptjax cannot merge is a
    one-line error."""
    import json

    import peft
    import transformers

    from gptjax import hf_lora

    make_hf(torch, tmp_path / "base", n_layer=2, n_head=2, n_embd=16, vocab_size=256, n_positions=12)
    base = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base")
    targets = ["c_attn", "c_proj"]
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=True, use_rslora=rslora)
    model = peft.get_peft_model(base, lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn_like(p))
    model.eval().save_pretrained(tmp_path / "adapter")
    cfg, source = hf_lora.peft_to_workdir(tmp_path / "adapter", tmp_path / "w", tokenizer="byte")
    assert source == str(tmp_path / "base")  # the adapter's base_model_name_or_path
    params, cfg, _, _ = load_params(tmp_path / "w")
    x_BT = tokens(cfg, 12)
    np.testing.assert_allclose(jax_logits(params, cfg, x_BT), torch_logits(torch, model, x_BT), atol=1e-4)

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    for change, message in [
        ({"use_dora": True}, r"sets use_dora=True, which gptjax cannot merge"),
        ({"peft_type": "IA3"}, r"is 'IA3', not LoRA"),
        (
            {"base_model_name_or_path": None},
            r"names no base_model_name_or_path; pass the base with --from_hf",
        ),
    ]:
        (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            hf_lora.peft_to_workdir(tmp_path / "adapter", tmp_path / "w2", tokenizer="byte")


def test_sampling_reads_an_hf_directory_as_it_is(torch, tmp_path, data_dir):
    """sample.load takes an HF model directory without converting it (so do scripts/sample.py and
    scripts/serve.py): GPT-2's BPE for its 50257 ids, and greedy text as HF generate() gives."""
    from gptjax import sample

    hf = make_hf(torch, tmp_path / "hf", n_layer=1, n_head=2, n_embd=16, vocab_size=50257, n_positions=32)
    params, cfg, tok, saved = sample.load(str(tmp_path / "hf"))
    assert isinstance(tok, GPT2Tokenizer) and cfg.block_size == 32
    assert saved == {"temperature": 0.0}  # no generation_config.json sampling: HF generate() is greedy
    (got,) = sample.complete(str(tmp_path / "hf"), "Hello, I am", max_new_tokens=5)
    ids = tok.encode("Hello, I am")
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)[0, len(ids) :]
    assert list(got.token_ids) == want.tolist()

    # Converted into a workdir, the model keeps those defaults: greedy, as HF generate() and the directory.
    convert.hf_to_workdir(tmp_path / "hf", tmp_path / "w")
    (from_workdir,) = sample.complete(str(tmp_path / "w"), "Hello, I am", max_new_tokens=5)
    assert list(from_workdir.token_ids) == want.tolist()
    (tmp_path / "hf" / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [5, 7]})
    )
    convert.hf_to_workdir(tmp_path / "hf", tmp_path / "w2")
    saved = sample.load(str(tmp_path / "w2"))[3]
    assert {k: saved[k] for k in ("temperature", "top_k", "top_p", "eos_token_id")} == {
        "temperature": 0.6,
        "top_k": 50,
        "top_p": 0.9,
        "eos_token_id": [5, 7],
    }


def test_an_hf_directorys_generation_config_gives_the_sampling_defaults(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [5, 7]})
    )
    want = {"temperature": 0.6, "top_k": 50, "top_p": 0.9, "eos_token_id": [5, 7]}  # HF's top_k default
    assert convert.hf_sample_defaults(tmp_path) == want
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"repetition_penalty": 1.3, "eos_token_id": 2})
    )
    assert convert.hf_sample_defaults(tmp_path) == {
        "temperature": 0.0,
        "repetition_penalty": 1.3,
        "eos_token_id": [2],
    }
