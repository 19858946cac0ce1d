"""Where a fine-tuning run (config.init_from) starts: a gptjax workdir or a Hugging Face GPT-2, ImageGPT or
Llama (a directory or a Hub id), its tokenizer, the config.model fields it fills, and its params checked
against config.model."""

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

from gptjax import data as data_lib
from gptjax.checkpoint import Checkpointer
from gptjax.hf_hub import resolve_hf_dir
from gptjax.hf_tokenizer import pick_tokenizer
from gptjax.model import GPTConfig, drop_lora, stack_layers, unstack_layers


def init_source(init_from: str, tokenizer: Any) -> tuple[tuple[str, pathlib.Path], Any]:
    """((kind, path), tokenizer) of a run starting from `init_from`: ("workdir", W) with W's tokenizer, or
    ("hf", D) for an HF GPT-2 directory or Hub id (gptjax.hf_hub.resolve_hf_dir) with `tokenizer` (the
    config's byte or gpt2 one; it must fit the model's vocab), else the built-in one that fits (GPT-2's
    BPE for 50257 ids, bytes for 256)."""
    path = pathlib.Path(init_from).expanduser()
    if (path / "checkpoints").is_dir():
        saved = Checkpointer(path, read_only=True).restore_json()
        return ("workdir", path), data_lib.tokenizer_from_json(saved["tokenizer"])
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"init_from={init_from} has neither gptjax checkpoints nor an HF config.json; pass a trained "
            "workdir, an HF GPT-2 directory or a Hub id"
        )
    from gptjax import convert  # here: gptjax.convert imports this module

    hf_dir = resolve_hf_dir(init_from)
    vocab_size = convert.read_hf_config(hf_dir).vocab_size
    return ("hf", hf_dir), pick_tokenizer(tokenizer or "auto", vocab_size, hf_dir)


def source_model(kind: str, path: pathlib.Path) -> dict[str, Any]:
    """The model fields (GPTConfig's, as a dict) of `init_source`'s source, read from its config alone."""
    if kind == "hf":
        from gptjax import convert  # here: gptjax.convert imports this module

        return dataclasses.asdict(convert.read_hf_config(path))
    return saved_model(Checkpointer(path, read_only=True).restore_json())


def saved_model(saved: dict[str, Any]) -> dict[str, Any]:
    """Every GPTConfig field of a checkpoint's saved JSON (Checkpointer.restore_json), as a dict: a field
    added after the checkpoint was written takes its default."""
    vocab_size = data_lib.tokenizer_from_json(saved["tokenizer"]).vocab_size
    return dataclasses.asdict(GPTConfig.from_mapping(saved["config"]["model"], vocab_size=vocab_size))


def fill_model(config: Any, model: dict[str, Any], origin: str) -> Any:
    """`config` with each config.model field left None (configs/finetune_shakespeare.py's) set to `model`'s
    value: a fine-tuning run takes the shape of the model it starts from (HF's from_pretrained, nanoGPT's
    init_from), and a resumed run the values its checkpoint was trained with. A field set in config.model
    stays, and must still match the source (init_params checks)."""
    unset = [k for k, v in config.model.items() if v is None and model.get(k) is not None]
    if not unset:
        return config
    config = config.copy_and_resolve_references()  # the caller's config stays as it was
    for k in unset:
        config.model[k] = model[k]
    print(f"config.model from {origin}: " + ", ".join(f"{k}={model[k]}" for k in unset), flush=True)
    return config


def init_params(kind: str, path: pathlib.Path, cfg: GPTConfig, abstract_params: Any) -> Any:
    """The params a fine-tuning run starts from (`init_source`'s), checked against config.model (`cfg`);
    without LoRA adapters, which start fresh (model.with_lora), nor a reward model's score head when the
    source is a language model (its LM head dropped)."""
    cfg, abstract_params = dataclasses.replace(cfg, lora_rank=0), drop_lora(abstract_params)
    if kind == "hf":
        from gptjax import convert  # here: gptjax.convert imports this module

        src_cfg = convert.read_hf_config(path)
        into = dataclasses.replace(_cropping(src_cfg, cfg, path), score_head=src_cfg.score_head)
        params, src_cfg = convert.load_hf(path, into=into)  # raises naming each field that differs
    else:
        from gptjax.train import load_params  # here: gptjax.train imports this module

        params, src_cfg, _, _ = load_params(path)
        into = _cropping(src_cfg, cfg, path)
        check_same_architecture(src_cfg, into, f"init_from={path}")
        if src_cfg.scan_layers and not cfg.scan_layers:
            params = unstack_layers(params)
        elif cfg.scan_layers and not src_cfg.scan_layers:
            params = stack_layers(params, cfg.n_layer)
    if "score" in params and not cfg.score_head:
        raise ValueError(
            f"init_from={path} is a reward model (score_head=True), it has no LM head; fine-tune it as one "
            "with --config.model.score_head=True"
        )
    if cfg.score_head and "score" not in params:  # a language model becomes a reward model: a new head
        params = {k: v for k, v in params.items() if k != "lm_head"}
        abstract_params = {k: v for k, v in abstract_params.items() if k != "score"}
        print(f"init_from={path}: a language model; the reward model's score head starts fresh", flush=True)
    if into.block_size != cfg.block_size and "wpe" in params:  # learned positions: keep the first ones
        params = {**params, "wpe": {"embedding": params["wpe"]["embedding"][: cfg.block_size]}}
    if jax.tree_util.tree_map(np.shape, params) != jax.tree_util.tree_map(np.shape, abstract_params):
        raise ValueError(
            f"init_from={path}: its model {src_cfg} does not match config.model {cfg}; "
            "set config.model to the source model's shape"
        )
    # Host arrays: the restored ones sit on one device, which put_state cannot spread over other processes.
    to_host = lambda p, a: np.asarray(jax.device_get(p), a.dtype)  # noqa: E731
    return jax.tree_util.tree_map(to_host, params, abstract_params)


def _cropping(src_cfg: GPTConfig, cfg: GPTConfig, path: pathlib.Path) -> GPTConfig:
    """`cfg` with the source's context when config.model asks for a shorter one (nanoGPT's
    crop_block_size: the model keeps its first block_size positions), so the checks compare the rest."""
    if cfg.block_size >= src_cfg.block_size:
        return cfg  # the same, or longer: check_same_model names the difference
    print(
        f"init_from={path}: context cropped from {src_cfg.block_size} to {cfg.block_size} positions",
        flush=True,
    )
    return dataclasses.replace(cfg, block_size=src_cfg.block_size)


def check_same_architecture(saved: GPTConfig, cfg: GPTConfig, source: str) -> None:
    """One-line ValueError naming each field of config.model (`cfg`) that changes the function of the
    saved model, even with the same shapes (n_head, gelu, position ...): the fields an HF import checks
    too (gptjax.convert.SAME_MODEL_FIELDS). Dtypes, dropout, attention kernel and remat are free;
    scan_layers is free for fine-tuning (the params are restacked), not for resuming."""
    from gptjax.convert import check_same_model  # here: gptjax.convert imports this module

    check_same_model(saved, cfg, source=f"the model of {source}", label="saved")


def check_resumable(saved: GPTConfig, cfg: GPTConfig, workdir: pathlib.Path) -> None:
    """check_same_architecture, and the fields that fix the saved state's layout or scale (scan_layers,
    LoRA's): one-line ValueError when `cfg` cannot resume the checkpoint in `workdir` trained as `saved`."""
    check_same_architecture(saved, cfg, f"the checkpoint in {workdir}")
    for field in ("scan_layers", "lora_rank", "lora_targets", "lora_alpha", "score_head"):
        if getattr(saved, field) != getattr(cfg, field):
            value = getattr(saved, field)
            value = ",".join(value) if isinstance(value, tuple) else value
            raise ValueError(
                f"the checkpoint in {workdir} was trained with model.{field}={value}; resume with "
                f"--config.model.{field}={value} (or fine-tune from it: --config.init_from=<that "
                "workdir> in a fresh --workdir)"
            )
