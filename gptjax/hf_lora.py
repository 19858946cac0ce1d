"""LoRA adapters as Hugging Face PEFT files (adapter_config.json + adapter_model.safetensors), which
`peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(BASE), DIR)` applies to the base model:
the model a LoRA run fine-tuned (config.init_from), in HF format.

  python scripts/convert.py --workdir=W --to_peft=DIR

Ours and PEFT's are the same function: PEFT adds x A^T B^T (alpha / r) to a GPT-2 Conv1D layer (x W + b,
fan_in_fan_out), its lora_A.weight [r, in] and lora_B.weight [out, r] our lora_a [in, r] and lora_b [r, out]
transposed.
"""

import json
import pathlib
from typing import Any

import jax
import numpy as np

from gptjax.convert import refuse_other_files, weight_map
from gptjax.data.tokens import write_atomically
from gptjax.model import GPTConfig, unstack_layers
from gptjax.train import load_params

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
PREFIX = "base_model.model."  # PEFT's name of the wrapped model in its adapter files


def _adapted(cfg: GPTConfig) -> list[tuple[str, tuple[str, ...]]]:
    """(HF module name, our layer's param path) of each layer with adapters."""
    return [
        (hf.removesuffix(".weight"), path[:-1])
        for hf, path, _ in weight_map(cfg)
        if path[-1] == "kernel" and path[-2] in cfg.lora_targets
    ]


def adapters_to_peft(params: Any, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """PEFT's adapter weights (name -> float32 array) of params trained with LoRA (unmerged)."""
    if not cfg.lora_rank:
        raise ValueError("the model has no LoRA adapters (model.lora_rank=0); export it whole with --to_hf")
    if cfg.kernel_layout != "in_out":
        raise ValueError(f"kernel_layout={cfg.kernel_layout!r}: export the [in, out] params (in_out)")
    params = unstack_layers(params) if cfg.scan_layers else params
    out = {}
    for module, path in _adapted(cfg):
        layer = params
        for key in path:
            layer = layer[key]
        out[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(
            np.asarray(layer["lora_a"], np.float32).T
        )
        out[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(
            np.asarray(layer["lora_b"], np.float32).T
        )
    return out


def peft_config(cfg: GPTConfig, base_model: str | None = None) -> dict[str, Any]:
    """adapter_config.json: LoRA of rank r and alpha on the adapted layers of a causal LM. Each target
    names its block ("attn.c_proj", not "c_proj", which would also match the MLP's c_proj)."""
    targets = sorted({module.split(".", 3)[-1] for module, _ in _adapted(cfg)})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": targets,
        "fan_in_fan_out": True,  # GPT-2's Conv1D keeps its weight [in, out]
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
) -> str:
    """Exports a LoRA run's adapters; returns the base model they apply to: config.init_from, an HF
    model as given, or a gptjax workdir that `--to_hf` exports first."""
    params, cfg, _, config = load_params(workdir, step, merge=False)
    base = config.get("init_from") or ""
    hf_base = not (pathlib.Path(base).expanduser() / "checkpoints").is_dir()
    save_peft(directory, params, cfg, base if hf_base else None)
    return base
