"""gptjax.hf_lora on Llama-family models: a PEFT LoRA adapter on q/k/v/o_proj and the MLP's gate/up/down_proj
merges into its base with peft.PeftModel's logits (k_proj's into c_attn's k columns alone, with LoRA's or
rsLoRA's scale); a gptjax LoRA run (c_attn's adapter split into q, k and v) exports as one PeftModel
applies with gptjax's logits, and merging it back gives the run's merged params. One tiny grouped-query
Llama throughout, and a one-layer Mixtral, whose attention alone takes adapters."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from gptjax import convert, hf_lora
from gptjax.gpt_config import LORA_TARGETS
from gptjax.model import GPT, merge_lora, with_lora
from gptjax.train import load_params
from tests.test_convert_llama import make_llama

HF_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
V = 256  # the byte tokenizer's ids, so a workdir needs no tokenizer file


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random tiny HF Llama (4 query heads, 2 key/value heads) saved in a directory."""
    directory = tmp_path_factory.mktemp("llama")
    make_llama(directory, num_key_value_heads=2, vocab_size=V)
    return directory


def tokens(B=2, T=16, seed=1):
    return np.random.default_rng(seed).integers(0, V, size=(B, T), dtype=np.int32)


def torch_logits(model, x_BT):
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(x_BT, dtype=torch.long)).logits.numpy()


def jax_logits(params, cfg, x_BT):
    return np.asarray(GPT(cfg).apply({"params": params}, x_BT)[0])[..., :V]


def test_a_peft_adapter_on_a_llama_merges_into_its_base(base, tmp_path):
    """--from_peft of a Llama's adapter (all seven modules, random A and B) gives peft.PeftModel's logits."""
    import peft
    import torch
    import transformers

    hf_base = transformers.LlamaForCausalLM.from_pretrained(base)
    model = peft.get_peft_model(hf_base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=HF_MODULES))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # PEFT starts B at zero: the adapter would change nothing
                p.copy_(0.1 * torch.randn_like(p))
    model.eval().save_pretrained(tmp_path / "adapter")
    cfg, source = hf_lora.peft_to_workdir(tmp_path / "adapter", tmp_path / "w", tokenizer="byte")
    assert source == str(base)  # the adapter's base_model_name_or_path
    params, cfg, _, _ = load_params(tmp_path / "w")
    x_BT = tokens()
    want = torch_logits(model, x_BT)
    np.testing.assert_allclose(jax_logits(params, cfg, x_BT), want, atol=1e-4, rtol=0)
    with model.disable_adapter():
        assert not np.allclose(torch_logits(model, x_BT), want, atol=1e-2)  # the adapter shows


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_a_k_proj_adapter_merges_into_cattns_k_columns_and_misfits_are_one_line_errors(base, rslora):
    """k_proj's A^T B^T scale (alpha / r, rsLoRA's alpha / sqrt(r)) lands in c_attn's k columns alone."""
    params, cfg = convert.load_hf(base)
    adapter = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_rslora": rslora}
    a = f"{hf_lora.PREFIX}model.layers.0.self_attn.k_proj.lora_A.weight"
    A_RI, B_OR = np.ones((2, 32), np.float32), np.ones((16, 2), np.float32)  # k_proj: [2 heads x 8, 32]
    merged = hf_lora.merge_peft(params, cfg, adapter, {a: A_RI, a.replace("lora_A", "lora_B"): B_OR})
    Q = cfg.n_head * cfg.head_dim
    delta = (
        merged["h_0"]["attn"]["c_attn"]["kernel"]
        - convert.load_hf(base)[0]["h_0"]["attn"]["c_attn"]["kernel"]
    )
    np.testing.assert_allclose(delta[:, Q : Q + 16], 2 * 4 / (np.sqrt(2) if rslora else 2), rtol=1e-6)
    assert not delta[:, :Q].any() and not delta[:, Q + 16 :].any()
    for weights, message in [
        ({a: A_RI}, r"weights of model.layers.0.self_attn.k_proj are not a lora_A and lora_B pair"),
        ({a.replace("layers.0", "layers.9"): A_RI}, r"fit no kernel"),
        (
            {a: A_RI, a.replace("lora_A", "lora_B"): B_OR[:8]},
            r"k_proj has lora_A \(2, 32\) and lora_B \(8, 2\)",
        ),
    ]:
        with pytest.raises(ValueError, match=message) as e:
            hf_lora.merge_peft(convert.load_hf(base)[0], cfg, adapter, weights)
        assert "\n" not in str(e.value)


def lora_run(hf_dir, cfg, seed):
    """Params of `cfg` (LoRA): the HF model in `hf_dir` with random adapters (B too, not PEFT's zeros)."""
    base_params, _ = convert.load_hf(hf_dir, into=dataclasses.replace(cfg, lora_rank=0))
    shapes = jax.eval_shape(GPT(cfg).init, jax.random.key(0), tokens(1, 4))["params"]
    rng = np.random.default_rng(seed)
    adapters = jax.tree_util.tree_map(lambda x: 0.1 * rng.standard_normal(x.shape, np.float32), shapes)
    return with_lora(base_params, adapters)


def test_a_llama_lora_run_exports_as_peft_adapters_and_imports_back(base, tmp_path):
    """A gptjax LoRA Llama (scanned layers, adapters on every Dense, random B) exports adapter files that
    PeftModel applies to the HF base with gptjax's logits; merging them back gives the merged model."""
    import peft
    import transformers
    from safetensors.numpy import load_file

    _, base_cfg = convert.load_hf(base)
    cfg = dataclasses.replace(
        base_cfg, scan_layers=True, lora_rank=4, lora_alpha=8.0, lora_targets=LORA_TARGETS
    )
    params = lora_run(base, cfg, seed=2)
    hf_lora.save_peft(tmp_path / "peft", params, cfg, base_model=str(base))
    adapter = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == sorted(HF_MODULES) and adapter["fan_in_fan_out"] is False
    model = peft.PeftModel.from_pretrained(
        transformers.LlamaForCausalLM.from_pretrained(base), tmp_path / "peft"
    )
    x_BT = tokens()
    got = torch_logits(model.eval(), x_BT)
    np.testing.assert_allclose(got, jax_logits(params, cfg, x_BT), atol=1e-4, rtol=0)
    with model.disable_adapter():
        assert not np.allclose(torch_logits(model, x_BT), got, atol=1e-2)  # the adapters show

    plain = dataclasses.replace(cfg, lora_rank=0)  # the base in the run's layout: scanned layers
    weights = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    imported = hf_lora.merge_peft(convert.load_hf(base, into=plain)[0], plain, adapter, weights)
    merged, _ = merge_lora(params, cfg)
    assert jax.tree_util.tree_structure(imported) == jax.tree_util.tree_structure(merged)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5, rtol=0), imported, merged)


def test_a_mixtral_lora_run_exports_its_attention_adapters(tmp_path):
    """A mixture of experts model adapts its attention only: its q/k/v/o_proj adapters export as PEFT's."""
    import peft
    import transformers

    make_llama(
        tmp_path / "hf",
        "Mixtral",
        num_key_value_heads=2,
        vocab_size=V,
        num_local_experts=2,
        num_hidden_layers=1,
    )
    _, base_cfg = convert.load_hf(tmp_path / "hf")
    cfg = dataclasses.replace(base_cfg, lora_rank=2, lora_targets=("c_attn", "c_proj"))
    params = lora_run(tmp_path / "hf", cfg, seed=3)
    hf_lora.save_peft(tmp_path / "peft", params, cfg)
    adapter = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    hf_base = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "hf")
    model = peft.PeftModel.from_pretrained(hf_base, tmp_path / "peft").eval()
    x_BT = tokens()
    np.testing.assert_allclose(torch_logits(model, x_BT), jax_logits(params, cfg, x_BT), atol=1e-4, rtol=0)
