"""Llama-family weights from Hugging Face (LlamaForCausalLM: Llama 2 and 3.x, TinyLlama, SmolLM;
MistralForCausalLM; Qwen2ForCausalLM: Qwen2, Qwen2.5; Qwen3ForCausalLM; MixtralForCausalLM;
Qwen3MoeForCausalLM) into gptjax.

A Llama is a gptjax GPT with position="rope" (rope_theta, and Llama 3.1/3.2's "llama3" or the "linear"
rope scaling), n_kv_head (num_key_value_heads), mlp="swiglu" (intermediate_size), norm="rms"
(rms_norm_eps) and no biases. HF's nn.Linear weights are [out, in]: they are transposed into Dense
kernels, and q_proj | k_proj | v_proj become c_attn's columns (rotary embeddings in HF's rotate_half
layout, as gptjax.layers.rope's). A Mistral has the same weights and a sliding window
(GPTConfig.sliding_window: each query sees the last sliding_window keys). A Qwen2 is a Llama with biases
on q_proj, k_proj and v_proj (GPTConfig.qkv_bias: c_attn's bias, columns q | k | v as its kernel's); its
sliding window is off unless use_sliding_window, and read only when it is in every layer (or none). A
Qwen3 is a Llama with RMS norms over each head's queries and keys before rope (GPTConfig.qk_norm: q_norm
and k_norm, a [head_dim] weight each) and a head_dim of its own (GPTConfig.n_head_dim: Qwen3-0.6B's
q_proj is [16 x 128, 1024]); its sliding window is Qwen2's. Any Llama's head_dim may differ from
hidden_size / heads. A Mixtral (MixtralForCausalLM) is a Mistral whose MLPs are sparse mixtures of
SwiGLU experts (GPTConfig.n_experts, gptjax.moe): a router `gate` [E, D] and per expert w1 (gate), w3 (up)
and w2 (down), as save_pretrained writes them and the Hub has them (block_sparse_moe.experts.{j}.w1 ...);
transformers 5's fused in-memory names (mlp.gate, mlp.experts.gate_up_proj [E, 2F, D], down_proj
[E, D, F]: save_pretrained(save_original_format=False)) read too. A Qwen3-MoE (Qwen3MoeForCausalLM,
Qwen3-30B-A3B) is a Qwen3 with such experts in every layer (mlp.gate, mlp.experts.{j}.gate_proj/up_proj/
down_proj, moe_intermediate_size wide), whose router weights are renormalised only with norm_topk_prob
(GPTConfig.moe_norm_topk); dense layers among them (mlp_only_layers, decoder_sparse_step > 1) are
refused. gptjax.convert reads these directories through here, and exports a model of that shape
(`is_llama`) as a Llama (with a sliding window as a Mistral, with experts as a Mixtral), with qkv_bias as
a Qwen2, with qk_norm as a Qwen3 (with experts as a Qwen3-MoE); qk_norm with qkv_bias, or qkv_bias with
experts: no HF class, refused. Their reward models (GPTConfig.score_head: LlamaForSequenceClassification
and the others' with num_labels=1: `model.*` weights and score.weight) go both ways too (gptjax.hf_reward).
"""

from typing import Any

import numpy as np

from gptjax import hf_reward
from gptjax.layers import default_mlp_width
from gptjax.model import GPTConfig, stack_layers

# HF model_types read here: Mistral has Llama's weight names and shapes, Qwen2 (Qwen2, Qwen2.5) those plus
# q, k and v biases, Qwen3 those plus q_norm and k_norm, Mixtral Mistral's attention and experts.
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe")
# HF model_type -> its causal LM class, for export.
HF_CLASSES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
}
# Llama config fields gptjax does not implement: refused unless they ask for nothing (their value here).
UNSUPPORTED = {"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1, "partial_rotary_factor": 1.0}
# The experts' weights of each mixture-of-experts model_type as save_pretrained writes them (and the Hub
# holds them): the block holding the router (gate) and the experts, the names of each expert's gate, up and
# down projections.
EXPERT_NAMES = {
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
}
# HF rope_type -> GPTConfig.rope_scaling (gptjax.layers.RopeScaling computes them as HF does).
ROPE_TYPES = {"default": "none", "linear": "linear", "llama3": "llama3"}


def config_from_llama(hf: dict[str, Any]) -> GPTConfig:
    """The GPTConfig of an HF Llama (Mistral, Qwen2, Qwen3) config.json; a one-line error for what gptjax
    cannot compute."""
    model_type = hf.get("model_type")
    window = _sliding_window(hf)
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported; gptjax's SwiGLU uses silu")
    for name, nothing in UNSUPPORTED.items():
        if hf.get(name) not in (None, nothing):
            raise ValueError(f"{name}={hf[name]!r} is not supported; gptjax needs {nothing!r}")
    D, N = hf["hidden_size"], hf["num_attention_heads"]
    H = hf.get("head_dim") or D // N
    K = hf.get("num_key_value_heads") or N
    F = hf["intermediate_size"]
    # A Mixtral's experts. router_jitter_noise (HF: inputs scaled by U(1 - noise, 1 + noise) in training
    # only) is not read: inference does without it, and fine-tuning here trains without it.
    experts = {}
    if model_type == "mixtral":
        experts = dict(
            n_experts=hf["num_local_experts"],
            n_experts_per_token=hf["num_experts_per_tok"],
            router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),  # MixtralConfig's default
        )
    elif model_type == "qwen3_moe":
        if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
            raise ValueError(
                f"mlp_only_layers={hf.get('mlp_only_layers')}, decoder_sparse_step="
                f"{hf.get('decoder_sparse_step')}: dense layers among the experts are not supported (gptjax "
                "puts experts in every layer)"
            )
        F = hf["moe_intermediate_size"]  # each expert's; intermediate_size is the dense layers' (none here)
        experts = dict(
            n_experts=hf.get("num_experts") or hf["num_local_experts"],  # the Hub's name, transformers 5's
            n_experts_per_token=hf["num_experts_per_tok"],
            moe_norm_topk=bool(hf.get("norm_topk_prob", False)),  # Qwen3MoeConfig's default
            router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
        )
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        sliding_window=window if window < hf["max_position_embeddings"] else 0,  # a wider one limits nothing
        n_layer=hf["num_hidden_layers"],
        n_head=N,
        n_kv_head=0 if K == N else K,
        n_embd=D,
        n_head_dim=H,  # stored as 0 when it is D / N
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        dropout=0.0,
        bias=False,
        qkv_bias=model_type == "qwen2",
        position="rope",
        **rope_from_llama(hf),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        mlp="swiglu",
        n_inner=0 if F == default_mlp_width(D, "swiglu") else F,
        norm="rms",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        score_head=hf_reward.is_reward_model(hf),  # a *ForSequenceClassification with one label
        **experts,
    )


def _sliding_window(hf: dict[str, Any]) -> int:
    """The window of every layer (0: none): a Mistral's sliding_window; a Qwen's when use_sliding_window
    puts it in every layer (layer_types, else from max_window_layers on), ignored (by HF too) when off,
    and a one-line error when some layers have it and others not (gptjax attends alike in every layer)."""
    window = hf.get("sliding_window") or 0
    if hf.get("model_type") not in ("qwen2", "qwen3", "qwen3_moe"):
        return window
    if not (hf.get("use_sliding_window") and window):
        return 0
    L = hf["num_hidden_layers"]
    kinds = hf.get("layer_types") or [
        "sliding_attention" if i >= hf.get("max_window_layers", L) else "full_attention" for i in range(L)
    ]
    if len(set(kinds)) > 1:
        raise ValueError(
            f"use_sliding_window=True with a window in {kinds.count('sliding_attention')} of {L} layers is "
            "not supported: gptjax attends alike in every layer (a window in all of them or none)"
        )
    return window if kinds[0] == "sliding_attention" else 0


def rope_from_llama(hf: dict[str, Any]) -> dict[str, Any]:
    """GPTConfig's rope_* fields of an HF Llama config: transformers 5 writes rope_parameters {"rope_type",
    "rope_theta", ...}; older configs rope_theta and rope_scaling {"rope_type" or "type", ...}."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"rope_type={kind!r} is not supported; gptjax computes the rope types {list(ROPE_TYPES)}"
        )
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(
            f"partial_rotary_factor={rope['partial_rotary_factor']} is not supported; gptjax needs 1.0"
        )
    fields = {"rope_theta": float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0)}
    if kind == "default":
        return fields
    fields.update(rope_scaling=ROPE_TYPES[kind], rope_factor=float(_rope_value(rope, kind, "factor")))
    if kind == "llama3":
        # As transformers: a top-level original_max_position_embeddings first, max_position_embeddings last.
        original = hf.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
        fields.update(
            rope_low_freq_factor=float(_rope_value(rope, kind, "low_freq_factor")),
            rope_high_freq_factor=float(_rope_value(rope, kind, "high_freq_factor")),
            rope_original_context=int(original or hf["max_position_embeddings"]),
        )
    return fields


def _rope_value(rope: dict[str, Any], kind: str, key: str) -> Any:
    if rope.get(key) is None:
        raise ValueError(f"rope_type={kind!r} needs {key!r} in the config's rope parameters {rope}")
    return rope[key]


def params_from_llama(weights: dict[str, np.ndarray], cfg: GPTConfig) -> dict[str, Any]:
    """gptjax params of `cfg` from an HF Llama's (Qwen2's: with qkv_bias; Qwen3's: with qk_norm) weights;
    checks every name and shape, and that none is left over. Token rows are padded with zeros to
    cfg.padded_vocab; layers stacked for scan_layers."""
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
        heads = (("q", N), ("k", K), ("v", K))
        q, k, v = (take(f"{hf}.self_attn.{n}_proj.weight", (m * H, D)) for n, m in heads)
        c_attn = {"kernel": np.concatenate([q.T, k.T, v.T], axis=1)}
        if cfg.qkv_bias:  # a Qwen2's
            c_attn["bias"] = np.concatenate(
                [take(f"{hf}.self_attn.{n}_proj.bias", (m * H,)) for n, m in heads]
            )
        attn = {"c_attn": c_attn, "c_proj": {"kernel": take(f"{hf}.self_attn.o_proj.weight", (D, N * H)).T}}
        if cfg.qk_norm:  # a Qwen3's
            attn.update({f"{n}_norm": {"scale": take(f"{hf}.self_attn.{n}_norm.weight", (H,))} for n in "qk"})
        params[f"h_{i}"] = {
            "ln_1": {"scale": take(f"{hf}.input_layernorm.weight", (D,))},
            "attn": attn,
            "ln_2": {"scale": take(f"{hf}.post_attention_layernorm.weight", (D,))},
        }
        if cfg.n_experts:
            fused = f"{hf}.mlp.experts.gate_up_proj" in weights
            params[f"h_{i}"]["moe"] = _experts_from_hf(take, hf, cfg, fused)
        else:
            params[f"h_{i}"]["mlp"] = {
                "fc": {"kernel": take(f"{hf}.mlp.up_proj.weight", (F, D)).T},
                "gate": {"kernel": take(f"{hf}.mlp.gate_proj.weight", (F, D)).T},
                "proj": {"kernel": take(f"{hf}.mlp.down_proj.weight", (D, F)).T},
            }
    params["ln_f"] = {"scale": take("model.norm.weight", (D,))}
    head = weights.pop("lm_head.weight", None)
    params.update(hf_reward.score_from_hf(weights, cfg))  # a reward model's score, in place of the head
    if not cfg.tie_embeddings and not cfg.score_head:
        if head is None:
            raise ValueError(f"HF weights have no 'lm_head.weight' (an untied head) for {cfg}")
        weights["lm_head.weight"] = head
        params["lm_head"] = rows(take("lm_head.weight", (cfg.vocab_size, D)))
    if weights:
        raise ValueError(
            f"HF weights {sorted(weights)[:5]} ({len(weights)} in all) have no gptjax counterpart"
        )
    return stack_layers(params, cfg.n_layer) if cfg.scan_layers else params


def _experts_from_hf(take, hf: str, cfg: GPTConfig, fused: bool) -> dict[str, Any]:
    """gptjax.moe.MoE params of a Mixtral or Qwen3-MoE layer `hf` ("model.layers.{i}"): its router and
    experts under the names save_pretrained writes (EXPERT_NAMES), or transformers 5's fused in-memory ones
    (`fused`: mlp.gate, mlp.experts.gate_up_proj with gate | up rows, down_proj)."""
    E, D, F = cfg.n_experts, cfg.n_embd, cfg.mlp_width
    kernel = lambda w: {"kernel": np.ascontiguousarray(w)}  # noqa: E731
    if fused:
        gate_up = take(f"{hf}.mlp.experts.gate_up_proj", (E, 2 * F, D)).transpose(0, 2, 1)  # [E, D, 2F]
        return {
            "router": kernel(take(f"{hf}.mlp.gate.weight", (E, D)).T),
            "expert_gate": kernel(gate_up[..., :F]),
            "expert_fc": kernel(gate_up[..., F:]),
            "expert_proj": kernel(take(f"{hf}.mlp.experts.down_proj", (E, D, F)).transpose(0, 2, 1)),
        }
    block, (gate, up, down) = EXPERT_NAMES[llama_type(cfg)]
    moe = f"{hf}.{block}"
    stacked = lambda w, shape: np.stack(  # noqa: E731
        [take(f"{moe}.experts.{j}.{w}.weight", shape).T for j in range(E)]
    )
    return {
        "router": kernel(take(f"{moe}.gate.weight", (E, D)).T),
        "expert_gate": kernel(stacked(gate, (F, D))),
        "expert_fc": kernel(stacked(up, (F, D))),
        "expert_proj": kernel(stacked(down, (D, F))),
    }


def is_llama(cfg: GPTConfig) -> bool:
    """Whether `cfg` is a Llama's shape (and so exports as LlamaForCausalLM; with qkv_bias as
    Qwen2ForCausalLM, with qk_norm as Qwen3ForCausalLM, with experts as MixtralForCausalLM: `llama_type`)."""
    return (cfg.position, cfg.mlp, cfg.norm, cfg.bias) == ("rope", "swiglu", "rms", False)


def llama_type(cfg: GPTConfig) -> str:
    """The HF model_type a Llama-shaped `cfg` exports as: with experts "qwen3_moe" (qk_norm) or "mixtral",
    else "qwen3" with qk_norm, "qwen2" with qkv_bias, "mistral" with a sliding window, else "llama"; a
    one-line error for what no HF class holds."""
    if cfg.n_experts and cfg.qkv_bias:
        raise ValueError(
            f"n_experts={cfg.n_experts} with qkv_bias=True cannot be exported: Mixtral and Qwen3-MoE have no "
            "q/k/v biases; set qkv_bias to False"
        )
    if cfg.n_experts and not cfg.qk_norm and not cfg.moe_norm_topk:
        raise ValueError(
            "moe_norm_topk=False cannot be exported without qk_norm: Mixtral always renormalises the top-k "
            "router weights (Qwen3-MoE, with qk_norm, has norm_topk_prob)"
        )
    if cfg.n_experts:
        return "qwen3_moe" if cfg.qk_norm else "mixtral"
    if cfg.qk_norm and cfg.qkv_bias:
        raise ValueError(
            "qk_norm=True with qkv_bias=True cannot be exported: Qwen3 has q/k norms and no q/k/v biases, "
            "Qwen2 the reverse; set one of them to False"
        )
    if cfg.qk_norm or cfg.qkv_bias:
        return "qwen3" if cfg.qk_norm else "qwen2"
    return "mistral" if cfg.sliding_window else "llama"


def llama_config(cfg: GPTConfig, tokenizer: Any = None) -> dict[str, Any]:
    """config.json of the HF LlamaForCausalLM equal to `cfg` (is_llama), with qkv_bias a Qwen2ForCausalLM's,
    with qk_norm a Qwen3ForCausalLM's (`llama_type`); the rope parameters both as transformers 5 reads them
    (rope_parameters) and as older versions do (rope_theta, rope_scaling)."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling != "none":
        rope.update(rope_type=cfg.rope_scaling, factor=cfg.rope_factor)
    if cfg.rope_scaling == "llama3":
        rope.update(
            low_freq_factor=cfg.rope_low_freq_factor,
            high_freq_factor=cfg.rope_high_freq_factor,
            original_max_position_embeddings=cfg.rope_original_context,
        )
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"} if cfg.rope_scaling != "none" else None
    model_type = llama_type(cfg)
    config = {
        "architectures": [HF_CLASSES[model_type]],
        "model_type": model_type,
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
        "rope_scaling": scaling,
        "rope_parameters": rope,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": getattr(tokenizer, "bos_id", None),
        "eos_token_id": getattr(tokenizer, "eos_id", None),
        "torch_dtype": "float32",
    }
    if model_type != "llama":  # no MLP biases to switch
        del config["mlp_bias"]
    if model_type == "mixtral":  # Mistral's window (None: none), and the experts
        config.update(
            sliding_window=cfg.sliding_window or None,
            num_local_experts=cfg.n_experts,
            num_experts_per_tok=cfg.n_experts_per_token,
            router_aux_loss_coef=cfg.router_aux_loss_coef,
            router_jitter_noise=0.0,
            output_router_logits=False,
        )
    elif model_type == "mistral":
        config["sliding_window"] = cfg.sliding_window
    elif model_type != "llama":  # a Qwen's window, in every layer or none; a Qwen3-MoE's experts
        if model_type == "qwen3_moe":
            config.update(
                num_experts=cfg.n_experts,
                num_experts_per_tok=cfg.n_experts_per_token,
                moe_intermediate_size=cfg.mlp_width,
                norm_topk_prob=cfg.moe_norm_topk,
                decoder_sparse_step=1,
                mlp_only_layers=[],
                router_aux_loss_coef=cfg.router_aux_loss_coef,
                output_router_logits=False,
            )
        window = cfg.sliding_window or None
        kind = "sliding_attention" if window else "full_attention"
        config.update(use_sliding_window=bool(window), sliding_window=window, max_window_layers=0)
        config["layer_types"] = [kind] * cfg.n_layer
    if model_type == "qwen2":  # its biases are on q, k and v only, where attention_bias adds o_proj's
        del config["attention_bias"]
    return hf_reward.reward_config(config, cfg, tokenizer)  # a reward model's: *ForSequenceClassification


def params_to_llama(params: Any, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """HF Llama (Qwen2, Qwen3, Mixtral) weights (name -> float32 array) of per-layer gptjax params;
    params_from_llama's inverse."""
    llama_type(cfg)  # a one-line error for a model no HF class holds
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
            }
        )
        if cfg.n_experts:  # the names save_pretrained writes
            block, names = EXPERT_NAMES[llama_type(cfg)]
            moe, experts = f"{hf}.{block}", layer["moe"]
            out[f"{moe}.gate.weight"] = f32(np.asarray(experts["router"]["kernel"]).T)
            for ours, w in zip(("expert_gate", "expert_fc", "expert_proj"), names, strict=True):
                kernels = np.asarray(experts[ours]["kernel"])  # [E, in, out]
                out.update({f"{moe}.experts.{j}.{w}.weight": f32(k.T) for j, k in enumerate(kernels)})
        else:
            out.update(
                {
                    f"{hf}.mlp.up_proj.weight": f32(layer["mlp"]["fc"]["kernel"].T),
                    f"{hf}.mlp.gate_proj.weight": f32(layer["mlp"]["gate"]["kernel"].T),
                    f"{hf}.mlp.down_proj.weight": f32(layer["mlp"]["proj"]["kernel"].T),
                }
            )
        if cfg.qkv_bias:
            q, k, v = np.split(np.asarray(layer["attn"]["c_attn"]["bias"]), [N * H, (N + K) * H])
            out.update({f"{hf}.self_attn.{n}_proj.bias": f32(b) for n, b in (("q", q), ("k", k), ("v", v))})
        if cfg.qk_norm:
            out.update(
                {f"{hf}.self_attn.{n}_norm.weight": f32(layer["attn"][f"{n}_norm"]["scale"]) for n in "qk"}
            )
    out["model.norm.weight"] = f32(params["ln_f"]["scale"])
    if not cfg.tie_embeddings and not cfg.score_head:
        out["lm_head.weight"] = f32(params["lm_head"][:V])
    return {**out, **hf_reward.score_to_hf(params, cfg)}
