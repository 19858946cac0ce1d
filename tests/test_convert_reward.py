"""HF reward models (`*ForSequenceClassification` with num_labels=1) <-> gptjax score-head models
(gptjax.hf_reward): every position's score equals HF's base model + score, the reward at the last token
HF's logits; export -> import is exact and transformers loads it; a workdir keeps score_head; a classifier
of several labels is a one-line error."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from gptjax import convert
from gptjax.model import GPT, GPTConfig
from gptjax.train import load_params

GPT2 = dict(n_layer=2, n_head=3, n_embd=36, vocab_size=97, n_positions=16)
LLAMA = dict(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=16,
    rope_theta=500.0,
)
MOE = dict(num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24)
FAMILIES = {
    "GPT2": GPT2,
    "Llama": LLAMA,
    "Qwen2": LLAMA,
    "Qwen3": {**LLAMA, "head_dim": 16},
    "Mixtral": {**LLAMA, **MOE},
    "Qwen3Moe": {**LLAMA, **MOE, "norm_topk_prob": True},
}
PAD = 0  # the pad id the HF models are built with; test rows never hold it (HF reads their last token)


def make_reward(directory, family="Llama", num_labels=1, **overrides):
    """A random tiny HF `family`ForSequenceClassification with `num_labels` saved in `directory`; norm
    weights and biases random too, so each mapping shows in the scores."""
    import torch
    import transformers

    torch.manual_seed(0)
    fields = {**FAMILIES[family], "num_labels": num_labels, "pad_token_id": PAD, **overrides}
    if family == "GPT2":
        fields.update(bos_token_id=None, eos_token_id=None)
    config = getattr(transformers, f"{family}Config")(**fields)
    model = getattr(transformers, f"{family}ForSequenceClassification")(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if ("norm" in name or "ln" in name) else 0.0) + 0.1 * torch.randn_like(p))
    model.eval().save_pretrained(directory)
    return model


def rows(V, B=3, T=16, seed=0):
    """B unpadded rows of T ids, none of them PAD."""
    return np.random.default_rng(seed).integers(1, V, size=(B, T), dtype=np.int32)


def hf_scores(model, x_BT):
    """(every position's score [B, T], the pooled logits [B]) of an HF sequence classifier."""
    import torch

    x = torch.as_tensor(np.asarray(x_BT), dtype=torch.long)
    with torch.no_grad():
        hidden_BTD = model.base_model(x).last_hidden_state  # after the final norm, as GPT's ln_f
        return model.score(hidden_BTD)[..., 0].numpy(), model(x).logits[:, 0].numpy()


def jax_scores(params, cfg, x_BT):
    return np.asarray(GPT(cfg).apply({"params": params}, x_BT)[0])


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_weights_equal(got, want):
    """Equal HF weights (name -> array or torch tensor), rope's inv_freq buffers aside."""
    names = lambda w: sorted(k for k in w if not k.endswith("inv_freq"))  # noqa: E731
    assert names(got) == names(want)
    for key in names(want):
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reward_scores_match_pytorch(tmp_path, family):
    model = make_reward(tmp_path, family)
    params, cfg = convert.load_hf(tmp_path)
    assert cfg.score_head and params["score"].shape == (cfg.n_embd,) and "lm_head" not in params
    x_BT = rows(cfg.vocab_size)
    want_BT, want_B = hf_scores(model, x_BT)
    np.testing.assert_array_equal(want_B, want_BT[:, -1])  # unpadded rows: HF pools the last token
    got_BT = jax_scores(params, cfg, x_BT)
    assert got_BT.shape == x_BT.shape and got_BT.dtype == np.float32
    assert np.abs(want_BT).max() > 0.3  # not trivially close
    np.testing.assert_allclose(got_BT, want_BT, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_BT[:, -1], want_B, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["GPT2", "Llama", "Qwen3", "Mixtral"])
def test_a_reward_model_exports_exactly_and_transformers_loads_it(tmp_path, family):
    """Import -> export -> import gives the same params (also through a padded vocabulary and scanned
    layers), the same HF tensors, and AutoModelForSequenceClassification the same rewards."""
    import torch
    import transformers

    model = make_reward(tmp_path / "hf", family)
    params, cfg = convert.load_hf(tmp_path / "hf")
    convert.save_hf(tmp_path / "out", params, cfg)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [f"{family}ForSequenceClassification"]
    labels = {k: config[k] for k in ("num_labels", "id2label", "label2id")}
    assert labels == {"num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    params2, cfg2 = convert.load_hf(tmp_path / "out")
    assert cfg2 == cfg
    assert_trees_equal(params2, params)
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert type(loaded) is type(model)
    saved = convert.read_hf_weights(tmp_path / "hf")  # as written (a Mixtral's experts one by one)
    assert_weights_equal(convert.read_hf_weights(tmp_path / "out"), saved)
    assert_weights_equal(loaded.state_dict(), model.state_dict())
    with torch.no_grad():  # no tokenizer, so no pad id: HF reads one row at a time
        for x_1T in np.split(rows(cfg.vocab_size), 3):
            x = torch.as_tensor(x_1T, dtype=torch.long)
            np.testing.assert_array_equal(loaded(x).logits.numpy(), model(x).logits.numpy())
    # Into a padded vocabulary with scanned layers (score stays beside the stacked "h"), and back.
    into = dataclasses.replace(cfg, vocab_multiple=64, scan_layers=True)
    padded, _ = convert.load_hf(tmp_path / "hf", into=into)
    assert padded["score"].shape == (cfg.n_embd,) and "h" in padded
    x_BT = rows(cfg.vocab_size)
    np.testing.assert_allclose(jax_scores(padded, into, x_BT), jax_scores(params, cfg, x_BT), atol=1e-5)
    assert_weights_equal(convert.params_to_hf(padded, into), saved)


def test_a_reward_workdir_keeps_score_head_and_exports_without_a_pad_id(tmp_path):
    """hf_to_workdir -> load_params gives score_head=True and the same params; workdir_to_hf writes no
    pad_token_id (gptjax tokenizers have none, and EOS would move HF's read of a text that ends with it),
    and HF scores each text, EOS at its end included, as the original model."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=50, special_tokens=["<pad>", "</s>"])
    tok.train_from_iterator(["hello world, the quick brown fox"] * 10, trainer)
    V, eos = tok.get_vocab_size(), tok.token_to_id("</s>")
    model = make_reward(tmp_path / "hf", "Llama", vocab_size=V, eos_token_id=eos)
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    cfg = convert.hf_to_workdir(tmp_path / "hf", tmp_path / "w")
    params, cfg2, tokenizer, config = load_params(tmp_path / "w")
    assert cfg.score_head and cfg2 == cfg and config.model.score_head
    assert tokenizer.eos_id == eos
    assert_trees_equal(params, convert.load_hf(tmp_path / "hf")[0])
    convert.workdir_to_hf(tmp_path / "w", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text()).get("pad_token_id") is None
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    x_BT = np.where(rows(V) == PAD, 2, rows(V))
    x_BT[:, -1] = eos  # texts end with their EOS, as gptjax's reward data
    with torch.no_grad():
        for x_T in x_BT:
            x = torch.as_tensor(x_T[None], dtype=torch.long)
            np.testing.assert_array_equal(loaded(x).logits.numpy(), model(x).logits.numpy())
        got = loaded(x).logits.numpy()[0, 0]
    np.testing.assert_allclose(got, jax_scores(params, cfg, x_BT[-1:])[0, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_a_gptjax_reward_model_exports_with_its_scores(tmp_path, shape):
    """A reward model made here (no biases: GPT-2 gets zeros) scores in HF as in gptjax."""
    import torch
    import transformers

    common = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=24, score_head=True)
    llama = dict(position="rope", mlp="swiglu", norm="rms", tie_embeddings=False)
    cfg = GPTConfig(**common, bias=False, **(llama if shape == "llama" else {}))
    params = GPT(cfg).init(jax.random.PRNGKey(0), rows(40, 1))["params"]
    params = {**params, "score": jax.random.normal(jax.random.PRNGKey(1), (24,))}  # scores far from 0
    assert "lm_head" not in params
    convert.save_hf(tmp_path, params, cfg)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    x_1T = rows(40, 1)
    with torch.no_grad():
        want_1 = model(torch.as_tensor(x_1T, dtype=torch.long)).logits[:, 0].numpy()
    got_1 = jax_scores(params, cfg, x_1T)[:, -1]
    assert np.abs(want_1).max() > 0.1
    np.testing.assert_allclose(got_1, want_1, atol=1e-4, rtol=0)


def test_a_classifier_of_several_labels_is_one_line_error(tmp_path):
    make_reward(tmp_path, "GPT2", num_labels=2)
    with pytest.raises(
        ValueError, match="num_labels=2: .* supports only reward models \\(num_labels=1\\)"
    ) as e:
        convert.load_hf(tmp_path)
    assert "\n" not in str(e.value)
    llama = {"model_type": "llama", **LLAMA, "architectures": ["LlamaForSequenceClassification"]}
    for fields, n in [({}, 2), ({"id2label": {"0": "a", "1": "b", "2": "c"}}, 3), ({"num_labels": 5}, 5)]:
        with pytest.raises(ValueError, match=f"num_labels={n}: ") as e:
            convert.config_from_hf({**llama, **fields})
        assert "\n" not in str(e.value)
    assert convert.config_from_hf({**llama, "id2label": {"0": "LABEL_0"}}).score_head
    causal = {**llama, "architectures": ["LlamaForCausalLM"], "id2label": {"0": "a", "1": "b"}}
    assert not convert.config_from_hf(causal).score_head  # a causal LM's labels are never read
    with pytest.raises(ValueError, match="LlamaForTokenClassification.*is not supported") as e:
        convert.config_from_hf({**llama, "architectures": ["LlamaForTokenClassification"], "num_labels": 1})
    assert "\n" not in str(e.value)


def test_what_has_no_hf_reward_model_is_one_line_error(tmp_path):
    """ImageGPT (norm="rms" with learned positions) has no sequence classifier; a causal LM read as a
    reward model names the missing score."""
    image = GPTConfig(vocab_size=9, block_size=8, n_layer=1, n_head=2, n_embd=8, norm="rms")
    image = dataclasses.replace(image, tie_embeddings=False, output_vocab=8, score_head=True)
    with pytest.raises(ValueError, match="score_head=True cannot be exported as 'imagegpt'") as e:
        convert.hf_config(image)
    assert "\n" not in str(e.value)
    import torch
    import transformers

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).save_pretrained(tmp_path)
    cfg = convert.read_hf_config(tmp_path)
    assert not cfg.score_head
    with pytest.raises(ValueError, match="HF weights have no 'score.weight'") as e:
        convert.load_hf(tmp_path, into=dataclasses.replace(cfg, score_head=True))
    assert "\n" not in str(e.value)
