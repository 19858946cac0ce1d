"""Llama-family weights from Hugging Face (LlamaForCausalLM: Llama 2 and 3, TinyLlama, SmolLM) into gptjax.

A Llama is a gptjax GPT with position="rope" (rope_theta), n_kv_head (num_key_value_heads), mlp="swiglu"
(intermediate_size), norm="rms" (rms_norm_eps) and no biases. HF's nn.Linear weights are [out, in]: they
are transposed into Dense kernels, and q_proj | k_proj | v_proj become c_attn's columns (rotary
embeddings in HF's rotate_half layout, as gptjax.layers.rope's). gptjax.convert reads a Llama directory
through here, and exports a model of that shape (`is_llama`) as one.
"""

from typing import Any

import numpy as np

from gptjax.layers import default_mlp_width
from gptjax.model import GPTConfig, stack_layers

# Llama config fields gptjax does not implement: refused unless they ask for nothing (their value here).
UNSUPPORTED = {"rope_scaling": None, "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}


def config_from_llama(hf: dict[str, Any]) -> GPTConfig:
    """The GPTConfig of an HF Llama config.json; a one-line error for what gptjax cannot compute."""
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported; gptjax's SwiGLU uses silu")
    for name, nothing in UNSUPPORTED.items():
        if hf.get(name) not in (None, nothing):
            raise ValueError(f"{name}={hf[name]!r} is not supported; gptjax needs {nothing!r}")
    # transformers 5 writes rope_parameters {"rope_theta", "rope_type"}; older configs rope_theta and
    # rope_scaling.
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"rope_parameters={rope} is not supported; gptjax's rotary embedding is the default type"
        )
    theta = rope.get("rope_theta") or hf.get("rope_theta") or 10000.0
    D, N = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, D // N):
        raise ValueError(
            f"head_dim={hf['head_dim']} is not supported; gptjax's is hidden_size / heads = {D // N}"
        )
    K = hf.get("num_key_value_heads") or N
    F = hf["intermediate_size"]
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"],
        n_head=N,
        n_kv_head=0 if K == N else K,
        n_embd=D,
        dropout=0.0,
        bias=False,
        position="rope",
        rope_theta=float(theta),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        mlp="swiglu",
        n_inner=0 if F == default_mlp_width(D, "swiglu") else F,
        norm="rms",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    )


def params_from_llama(weights: dict[str, np.ndarray], cfg: GPTConfig) -> dict[str, Any]:
    """gptjax params of `cfg` from an HF Llama's weights; checks every name and shape, and that none is
    left over. Token rows are padded with zeros to cfg.padded_vocab; layers stacked for scan_layers."""
    weights = {k: v for k, v in weights.items() if not k.endswith("rotary_emb.inv_freq")}  # a buffer
    D, N, K, H, F = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.mlp_width

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in weights:
            raise ValueError(f"HF weights have no {name!r} (expected shape {shape} for {cfg})")
        w = np.asarray(weights.pop(name), np.float32)
        if w.shape != shape:
            raise ValueError(f"HF weight {name} has shape {w.shape}, expected {shape} for {cfg}")
        return w

    rows = lambda w: np.pad(w, ((0, cfg.padded_vocab - len(w)), (0, 0)))  # noqa: E731
    params: dict[str, Any] = {
        "wte": {"embedding": rows(take("model.embed_tokens.weight", (cfg.vocab_size, D)))}
    }
    for i in range(cfg.n_layer):
        hf = f"model.layers.{i}"
        q, k, v = (
            take(f"{hf}.self_attn.{n}_proj.weight", (m * H, D)) for n, m in (("q", N), ("k", K), ("v", K))
        )
        params[f"h_{i}"] = {
            "ln_1": {"scale": take(f"{hf}.input_layernorm.weight", (D,))},
            "attn": {
                "c_attn": {"kernel": np.concatenate([q.T, k.T, v.T], axis=1)},
                "c_proj": {"kernel": take(f"{hf}.self_attn.o_proj.weight", (D, N * H)).T},
            },
            "ln_2": {"scale": take(f"{hf}.post_attention_layernorm.weight", (D,))},
            "mlp": {
                "fc": {"kernel": take(f"{hf}.mlp.up_proj.weight", (F, D)).T},
                "gate": {"kernel": take(f"{hf}.mlp.gate_proj.weight", (F, D)).T},
                "proj": {"kernel": take(f"{hf}.mlp.down_proj.weight", (D, F)).T},
            },
        }
    params["ln_f"] = {"scale": take("model.norm.weight", (D,))}
    head = weights.pop("lm_head.weight", None)
    if not cfg.tie_embeddings:
        if head is None:
            raise ValueError(f"HF weights have no 'lm_head.weight' (an untied head) for {cfg}")
        weights["lm_head.weight"] = head
        params["lm_head"] = rows(take("lm_head.weight", (cfg.vocab_size, D)))
    if weights:
        raise ValueError(
            f"HF weights {sorted(weights)[:5]} ({len(weights)} in all) have no gptjax counterpart"
        )
    return stack_layers(params, cfg.n_layer) if cfg.scan_layers else params


def is_llama(cfg: GPTConfig) -> bool:
    """Whether `cfg` is a Llama's shape (and so exports as LlamaForCausalLM)."""
    return (cfg.position, cfg.mlp, cfg.norm, cfg.bias) == ("rope", "swiglu", "rms", False)


def llama_config(cfg: GPTConfig, tokenizer: Any = None) -> dict[str, Any]:
    """config.json of the HF LlamaForCausalLM equal to `cfg` (is_llama)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.block_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_width,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": getattr(tokenizer, "bos_id", None),
        "eos_token_id": getattr(tokenizer, "eos_id", None),
        "torch_dtype": "float32",
    }


def params_to_llama(params: Any, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """HF Llama weights (name -> float32 array) of per-layer gptjax params; params_from_llama's inverse."""
    N, K, H, V = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.vocab_size
    f32 = lambda a: np.ascontiguousarray(np.asarray(a, np.float32))  # noqa: E731
    out = {"model.embed_tokens.weight": f32(params["wte"]["embedding"][:V])}
    for i in range(cfg.n_layer):
        hf, layer = f"model.layers.{i}", params[f"h_{i}"]
        q, k, v = np.split(np.asarray(layer["attn"]["c_attn"]["kernel"]), [N * H, (N + K) * H], axis=1)
        out.update(
            {
                f"{hf}.input_layernorm.weight": f32(layer["ln_1"]["scale"]),
                f"{hf}.self_attn.q_proj.weight": f32(q.T),
                f"{hf}.self_attn.k_proj.weight": f32(k.T),
                f"{hf}.self_attn.v_proj.weight": f32(v.T),
                f"{hf}.self_attn.o_proj.weight": f32(layer["attn"]["c_proj"]["kernel"].T),
                f"{hf}.post_attention_layernorm.weight": f32(layer["ln_2"]["scale"]),
                f"{hf}.mlp.up_proj.weight": f32(layer["mlp"]["fc"]["kernel"].T),
                f"{hf}.mlp.gate_proj.weight": f32(layer["mlp"]["gate"]["kernel"].T),
                f"{hf}.mlp.down_proj.weight": f32(layer["mlp"]["proj"]["kernel"].T),
            }
        )
    out["model.norm.weight"] = f32(params["ln_f"]["scale"])
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = f32(params["lm_head"][:V])
    return out
