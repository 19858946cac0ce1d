"""LoRA adapters as Hugging Face PEFT files (adapter_config.json + adapter_model.safetensors), which
`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), DIR)` applies to the base model:
the model a LoRA run fine-tuned (config.init_from), in HF format. And back: a PEFT LoRA adapter merged
into its HF base as a gptjax workdir. Both for a GPT-2 and for a Llama-family model (Llama, Mistral,
Qwen2, Qwen3; Mixtral and Qwen3-MoE with adapters on their attention only).

  python scripts/convert.py --workdir=W --to_peft=DIR
  python scripts/convert.py --from_peft=DIR [--from_hf=BASE] --workdir=W

Ours and PEFT's are the same function: PEFT adds x A^T B^T (alpha / r) to a layer, its lora_A.weight
[r, in] and lora_B.weight [out, r] our lora_a [in, r] and lora_b [r, out] transposed. On a GPT-2 the
layers are Conv1D (x W + b, fan_in_fan_out), one per adapted Dense. On a Llama they are nn.Linear
(fan_in_fan_out False): our c_attn is q_proj | k_proj | v_proj side by side, so its adapter is three of
PEFT's, sharing A, each with its block of B's columns (q: N * H, k and v: K * H); c_proj is o_proj, and
the MLP's gate, fc and proj are gate_proj, up_proj and down_proj. A reward model's LoRA run also trains
its score head, which a causal LM adapter does not hold: export it merged with --to_hf.
"""

import json
import math
import pathlib
from typing import Any

import jax
import numpy as np

from gptjax.convert import hf_config, hf_to_workdir, refuse_other_files, weight_map
from gptjax.data.tokens import write_atomically
from gptjax.llama import is_llama
from gptjax.model import GPTConfig, stack_layers, unstack_layers
from gptjax.train import load_params

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
PREFIX = "base_model.model."  # PEFT's name of the wrapped model in its adapter files
# A Llama MLP's nn.Linear modules and the Dense layers they are here.
LLAMA_MLP = (("gate_proj", "gate"), ("up_proj", "fc"), ("down_proj", "proj"))


def _modules(cfg: GPTConfig) -> list[tuple[str, tuple[str, ...], slice]]:
    """(HF module name, our Dense layer's param path, its kernel's columns) of every layer PEFT can adapt:
    a GPT-2's Conv1D layers, each a whole kernel; a Llama's nn.Linear ones, q_proj, k_proj and v_proj
    each a block of c_attn's columns (a mixture of experts model's attention only: its experts are no
    Dense layers)."""
    whole = slice(None)
    if not is_llama(cfg):
        kernels = [(hf, path) for hf, path, _ in weight_map(cfg) if path[-1] == "kernel"]
        return [(hf.removesuffix(".weight"), path[:-1], whole) for hf, path in kernels]
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    qkv = (("q_proj", slice(0, q)), ("k_proj", slice(q, q + kv)), ("v_proj", slice(q + kv, q + 2 * kv)))
    out = []
    for i in range(cfg.n_layer):
        hf, ours = f"model.layers.{i}", f"h_{i}"
        out += [(f"{hf}.self_attn.{name}", (ours, "attn", "c_attn"), cols) for name, cols in qkv]
        out.append((f"{hf}.self_attn.o_proj", (ours, "attn", "c_proj"), whole))
        if not cfg.n_experts:
            out += [(f"{hf}.mlp.{name}", (ours, "mlp", dense), whole) for name, dense in LLAMA_MLP]
    return out


def _adapted(cfg: GPTConfig) -> list[tuple[str, tuple[str, ...], slice]]:
    """_modules of the layers with adapters (cfg.lora_targets)."""
    return [(hf, path, cols) for hf, path, cols in _modules(cfg) if path[-1] in cfg.lora_targets]


def _layer(params: Any, path: tuple[str, ...]) -> dict:
    node = params
    for key in path:
        node = node[key]
    return node


def adapters_to_peft(params: Any, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """PEFT's adapter weights (name -> float32 array) of params trained with LoRA (unmerged)."""
    if not cfg.lora_rank:
        raise ValueError("the model has no LoRA adapters (model.lora_rank=0); export it whole with --to_hf")
    if cfg.kernel_layout != "in_out":
        raise ValueError(f"kernel_layout={cfg.kernel_layout!r}: export the [in, out] params (in_out)")
    if cfg.score_head:
        raise ValueError(
            "a reward model's LoRA run trains its score head too, which PEFT's adapter files do not hold; "
            "export the merged model with --to_hf"
        )
    hf_config(cfg)  # a one-line error for a shape no HF class holds
    params = unstack_layers(params) if cfg.scan_layers else params
    f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))  # noqa: E731
    out = {}
    for module, path, cols in _adapted(cfg):
        layer = _layer(params, path)
        out[f"{PREFIX}{module}.lora_A.weight"] = f32(np.asarray(layer["lora_a"]).T)
        out[f"{PREFIX}{module}.lora_B.weight"] = f32(np.asarray(layer["lora_b"])[:, cols].T)
    return out


def peft_config(cfg: GPTConfig, base_model: str | None = None) -> dict[str, Any]:
    """adapter_config.json: LoRA of rank r and alpha on the adapted layers of a causal LM. A GPT-2's targets
    name their block ("attn.c_proj", not "c_proj", which would also match the MLP's c_proj); a Llama's are
    its modules' own names (q_proj ... down_proj)."""
    llama = is_llama(cfg)
    name = lambda module: module.rsplit(".", 1)[-1] if llama else module.split(".", 3)[-1]  # noqa: E731
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": sorted({name(module) for module, _, _ in _adapted(cfg)}),
        "fan_in_fan_out": not llama,  # GPT-2's Conv1D keeps its weight [in, out], nn.Linear [out, in]
        "bias": "none",
        "inference_mode": True,
    }


def save_peft(
    directory: str | pathlib.Path, params: Any, cfg: GPTConfig, base_model: str | None = None
) -> None:
    """Writes the adapters and their config to `directory`, whole or not at all (as convert.save_hf)."""
    from safetensors.numpy import save_file  # here: the core package does not need safetensors

    directory = refuse_other_files(pathlib.Path(directory), PEFT_FILES, "a PEFT export")
    weights = adapters_to_peft(jax.device_get(params), cfg)
    with write_atomically(directory) as tmp:
        (tmp / "adapter_config.json").write_text(json.dumps(peft_config(cfg, base_model), indent=2))
        save_file(weights, tmp / "adapter_model.safetensors", metadata={"format": "pt"})


def workdir_to_peft(
    workdir: str | pathlib.Path, directory: str | pathlib.Path, step: int | None = None
) -> tuple[str, bool]:
    """Exports a LoRA run's adapters; returns (the base model they apply to, config.init_from, whether it
    is a gptjax workdir, which PEFT needs exported with `--to_hf` first)."""
    params, cfg, _, config = load_params(workdir, step, merge=False)
    base = config.get("init_from") or ""
    is_workdir = (pathlib.Path(base).expanduser() / "checkpoints").is_dir()
    save_peft(directory, params, cfg, None if is_workdir else base)
    return base, is_workdir


# ----- PEFT -> gptjax ---------------------------------------------------------------------------------------

# adapter_config.json fields whose non-default values gptjax cannot merge
_UNSUPPORTED = {
    "use_dora": False,
    "bias": "none",
    "modules_to_save": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "lora_bias": False,
}


def merge_peft(params: Any, cfg: GPTConfig, adapter: dict, weights: dict[str, np.ndarray]) -> Any:
    """`params` with a PEFT LoRA adapter (its adapter_config.json and weights) merged into the kernels:
    W + A^T B^T alpha / r (alpha / sqrt(r) with use_rslora), as PEFT's merge_and_unload."""
    if adapter.get("peft_type") != "LORA":
        raise ValueError(f"the adapter is {adapter.get('peft_type')!r}, not LoRA; gptjax merges LoRA only")
    for field, default in _UNSUPPORTED.items():
        if adapter.get(field, default) not in (default, None, {}):
            raise ValueError(f"the adapter sets {field}={adapter[field]!r}, which gptjax cannot merge")
    r = adapter["r"]
    scale = adapter["lora_alpha"] / (math.sqrt(r) if adapter.get("use_rslora") else r)
    weights = dict(weights)
    params = unstack_layers(params) if cfg.scan_layers else params
    for module, path, cols in _modules(cfg):
        a = weights.pop(f"{PREFIX}{module}.lora_A.weight", None)
        b = weights.pop(f"{PREFIX}{module}.lora_B.weight", None)
        if a is None and b is None:
            continue
        if a is None or b is None:
            raise ValueError(f"the adapter's weights of {module} are not a lora_A and lora_B pair")
        layer = _layer(params, path)
        kernel = np.array(layer["kernel"], np.float32)  # float32, writable (q, k and v add to it in turn)
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        out_in = kernel[:, cols].shape[::-1]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != out_in:
            raise ValueError(
                f"the adapter of {module} has lora_A {a.shape} and lora_B {b.shape}: not [r, in] and "
                f"[out, r] of its weight [out, in] {out_in}"
            )
        delta = a.T @ b.T * scale  # [in, out]
        kernel[:, cols] += delta
        layer["kernel"] = kernel
    if weights:
        raise ValueError(
            f"adapter weights {sorted(weights)[:3]} ({len(weights)} in all) fit no kernel of {cfg}"
        )
    return stack_layers(params, cfg.n_layer) if cfg.scan_layers else params


def peft_to_workdir(
    directory: str | pathlib.Path,
    workdir: str | pathlib.Path,
    base: str | None = None,
    tokenizer: Any = "auto",
) -> tuple[GPTConfig, str]:
    """Writes `workdir` (step 0) as the HF model `base` (default: the adapter's base_model_name_or_path)
    with the PEFT LoRA adapter in `directory` merged; returns (its config, the base)."""
    from safetensors.numpy import load_file  # here: the core package does not need safetensors

    directory = pathlib.Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{directory} has no adapter_config.json; pass a PEFT adapter directory")
    adapter = json.loads((directory / "adapter_config.json").read_text())
    base = base or adapter.get("base_model_name_or_path")
    if not base:
        raise ValueError("adapter_config.json names no base_model_name_or_path; pass the base with --from_hf")
    weights = load_file(directory / "adapter_model.safetensors")
    cfg = hf_to_workdir(base, workdir, tokenizer, adapt=lambda p, c: merge_peft(p, c, adapter, weights))
    return cfg, base
