"""GPT-2 and ImageGPT weights between Hugging Face directories (config.json + model.safetensors) and gptjax;
Llama-family models (Llama, Mistral, Qwen2, Qwen3, Mixtral) go both ways through gptjax.llama; reward
models (GPTConfig.score_head: HF's *ForSequenceClassification with num_labels=1) too, via gptjax.hf_reward.

One table, `weight_map`, names every weight on both sides with its shape; import and export both read
it, so export -> import is exact. HF's Conv1D stores weights [in, out] like a flax Dense kernel, and
`c_attn` is [D, 3D] with columns q | k | v as gptjax's, so no tensor is transposed or split. A model
with a padded vocabulary (`vocab_multiple`) has extra embedding rows that HF has not: import pads them
with zeros, export drops them.

ImageGPT (OpenAI's iGPT, HF `ImageGPTForCausalImageModeling`, e.g. `openai/imagegpt-small`) is GPT-2 with
layer norms that neither subtract the mean nor add a bias (GPTConfig.norm="rms"), quick GELU, an untied
head without a row for its start token (output_vocab = vocab_size - 1) and a colour palette in its
preprocessor_config.json ("clusters" in [-1, 1]), which becomes a PaletteTokenizer (encoding to the
clusters as they are, drawing them rounded to 8 bits): gptjax.image draws with it and fine-tunes it on
images like any image model.

Export also writes the tokenizer's HF files when it has an HF equivalent (GPT-2's BPE, a trained
`tokenizers` BPE, an ImageGPT palette; gptjax.hf_tokenizer), so `transformers.AutoTokenizer.from_pretrained`
encodes as gptjax does.

Only numpy is needed to read and write safetensors; torch is imported only to read a legacy
pytorch_model.bin (`torch.load(weights_only=True)`), and huggingface_hub only to find a model by name.
"""

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import shakespeare_char
from gptjax import hf_reward
from gptjax.checkpoint import Checkpointer
from gptjax.data.tokens import write_atomically
from gptjax.hf_hub import resolve_hf_dir
from gptjax.hf_tokenizer import pick_tokenizer, save_hf_tokenizer
from gptjax.layers import default_mlp_width
from gptjax.llama import (
    LLAMA_TYPES,
    config_from_llama,
    is_llama,
    llama_config,
    params_from_llama,
    params_to_llama,
)
from gptjax.model import GPTConfig, stack_layers, unstack_layers
from gptjax.train import abstract_state, load_params

# HF activation_function -> GPTConfig.gelu (transformers/activations.py: gelu_new and gelu_pytorch_tanh are
# the tanh approximation, gelu is torch's exact erf form).
HF_GELUS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact", "quick_gelu": "quick"}
# The architectures gptjax reads and writes: model_type -> HF class.
HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "imagegpt": "ImageGPTForCausalImageModeling"}
LAYER_NORM_EPS = 1e-5  # GPT-2's layer_norm_epsilon when a config.json leaves it out
# Non-persistent attention-mask buffers that old checkpoints saved; they hold no weights.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# Params with one row per token: HF has vocab_size rows (ImageGPT's head one fewer), gptjax padded_vocab
# (model.GPT masks the logits of rows past predicted_vocab, and no token id looks up a pad row, so what
# they hold never matters: import writes zeros).
VOCAB_ROWS = (("wte", "embedding"), ("lm_head",))
# GPTConfig fields a model imported into a given config must share with the HF model: they fix the
# function it computes (vocab_size is checked with the weights' shapes). Padding, dropout, dtypes, the
# attention kernel, remat and scan_layers are free, and so are rope_theta, the rope_scaling fields and
# sliding_window: fine-tuning with a larger base, a scaling or a window is how a rope model's context is
# extended.
SAME_MODEL_FIELDS = (
    "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "n_head_dim", "qk_norm", "bias", "qkv_bias",
    "position", "tie_embeddings", "gelu", "mlp", "n_inner", "norm", "norm_eps", "output_vocab",
    "kernel_layout", "n_experts", "n_experts_per_token", "moe_norm_topk",
)  # fmt: skip

WeightMap = list[tuple[str, tuple[str, ...], tuple[int, ...]]]


def weight_map(cfg: GPTConfig) -> WeightMap:
    """(HF name, gptjax param path, HF shape) of every weight of a GPT-2 with biases (an ImageGPT: norm="rms"
    has no norm biases)."""
    D, V = cfg.n_embd, cfg.vocab_size
    rows = [
        ("transformer.wte.weight", ("wte", "embedding"), (V, D)),
        ("transformer.wpe.weight", ("wpe", "embedding"), (cfg.block_size, D)),
    ]
    norm = lambda hf, ours: [  # noqa: E731
        (f"{hf}.weight", (*ours, "scale"), (D,)),
        *([(f"{hf}.bias", (*ours, "bias"), (D,))] if cfg.norm == "layer" else []),
    ]
    dense = lambda hf, ours, d_in, d_out: [  # noqa: E731
        (f"{hf}.weight", (*ours, "kernel"), (d_in, d_out)),
        (f"{hf}.bias", (*ours, "bias"), (d_out,)),
    ]
    for i in range(cfg.n_layer):
        hf, ours = f"transformer.h.{i}", f"h_{i}"
        rows += norm(f"{hf}.ln_1", (ours, "ln_1"))
        rows += dense(f"{hf}.attn.c_attn", (ours, "attn", "c_attn"), D, 3 * D)
        rows += dense(f"{hf}.attn.c_proj", (ours, "attn", "c_proj"), D, D)
        rows += norm(f"{hf}.ln_2", (ours, "ln_2"))
        rows += dense(f"{hf}.mlp.c_fc", (ours, "mlp", "fc"), D, cfg.mlp_width)
        rows += dense(f"{hf}.mlp.c_proj", (ours, "mlp", "proj"), cfg.mlp_width, D)
    rows += norm("transformer.ln_f", ("ln_f",))
    if not cfg.tie_embeddings and not cfg.score_head:  # a reward model's score: hf_reward.score_from_hf
        rows.append(("lm_head.weight", ("lm_head",), (cfg.predicted_vocab, D)))
    return rows


# ----- Configs. -----


def config_from_hf(hf: dict[str, Any]) -> GPTConfig:
    """The GPTConfig of an HF GPT-2 or ImageGPT config.json; one-line ValueError for what gptjax cannot
    represent."""
    model_type = hf.get("model_type", "gpt2")
    if model_type in LLAMA_TYPES:  # gptjax.llama
        return config_from_llama(hf)
    if model_type not in HF_CLASSES:
        known = ", ".join([*HF_CLASSES, *LLAMA_TYPES])
        raise ValueError(f"model_type={model_type!r} is not supported; gptjax converts {known} checkpoints")
    image = model_type == "imagegpt"
    act = hf.get("activation_function", "quick_gelu" if image else "gelu_new")
    if act not in HF_GELUS:
        raise ValueError(f"activation_function={act!r} is not supported; gptjax has {sorted(HF_GELUS)}")
    n_embd = hf["n_embd"]
    tie = hf.get("tie_word_embeddings", not image)
    unsupported = {
        "scale_attn_weights": (True, hf.get("scale_attn_weights", True)),
        "scale_attn_by_inverse_layer_idx": (False, hf.get("scale_attn_by_inverse_layer_idx", False)),
        "add_cross_attention": (False, hf.get("add_cross_attention", False)),
    }
    if image:  # ImageGPT's head has one row fewer than its embedding: the two cannot be one table
        unsupported["tie_word_embeddings"] = (False, tie)
    for name, (want, got) in unsupported.items():
        if got != want:
            raise ValueError(f"{name}={got} is not supported; gptjax needs {want}")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=n_embd,
        n_inner=0 if hf.get("n_inner") in (None, 4 * n_embd) else hf["n_inner"],  # 0: 4 * n_embd, GPT-2's
        dropout=0.0,  # fine-tuning sets its own; nanoGPT's from_pretrained also defaults to 0
        bias=True,
        position="learned",
        tie_embeddings=tie,
        gelu=HF_GELUS[act],
        norm="rms" if image else "layer",
        norm_eps=float(hf.get("layer_norm_epsilon", LAYER_NORM_EPS)),
        output_vocab=hf["vocab_size"] - 1 if image else 0,  # ImageGPT never predicts its start token
        score_head=hf_reward.is_reward_model(hf),  # a GPT2ForSequenceClassification with one label
    )


def hf_config(cfg: GPTConfig, tokenizer: Any = None) -> dict[str, Any]:
    """config.json of an HF model equal to `cfg`: a GPT2LMHeadModel, for norm="rms" an
    ImageGPTForCausalImageModeling (bias=False exports as zero biases), or a LlamaForCausalLM for a
    Llama's shape (gptjax.llama.is_llama; with qkv_bias a Qwen2ForCausalLM, with qk_norm a Qwen3's)."""
    if is_llama(cfg):
        return llama_config(cfg, tokenizer)
    if cfg.qk_norm or cfg.head_dim * cfg.n_head != cfg.n_embd:
        raise ValueError(
            f"qk_norm={cfg.qk_norm}, n_head_dim={cfg.n_head_dim} cannot be exported as HF GPT-2 (no q/k "
            "norms, head dim n_embd / n_head); a Qwen3 needs position='rope', mlp='swiglu', norm='rms', "
            "bias=False"
        )
    if cfg.position != "learned":
        raise ValueError(
            f"position={cfg.position!r} cannot be exported: HF GPT-2 has learned positions only, and a "
            "Llama needs position='rope', mlp='swiglu', norm='rms' and bias=False together"
        )
    if cfg.kv_heads != cfg.n_head:
        raise ValueError(
            f"n_kv_head={cfg.n_kv_head} cannot be exported: HF GPT-2 has a key/value head per query head"
        )
    if cfg.mlp != "gelu":
        raise ValueError(f"mlp={cfg.mlp!r} cannot be exported: HF GPT-2's MLP is a GELU MLP")
    image = cfg.norm == "rms"
    if image and (cfg.tie_embeddings or cfg.predicted_vocab != cfg.vocab_size - 1):
        raise ValueError(
            "norm='rms' exports as HF ImageGPT, whose head is untied and never predicts the last id: "
            f"this model has tie_embeddings={cfg.tie_embeddings}, output_vocab={cfg.output_vocab} "
            f"(ImageGPT: False, {cfg.vocab_size - 1})"
        )
    if not image and cfg.predicted_vocab != cfg.vocab_size:
        raise ValueError(
            f"output_vocab={cfg.output_vocab} cannot be exported as GPT-2, whose head predicts every id"
        )
    gelu = {v: k for k, v in reversed(HF_GELUS.items())}[cfg.gelu]  # the first HF name of each form
    model_type = "imagegpt" if image else "gpt2"
    config = {
        "architectures": [HF_CLASSES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.n_inner or None,
        "activation_function": gelu,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": getattr(tokenizer, "bos_id", None),
        "eos_token_id": getattr(tokenizer, "eos_id", None),
        "dtype": "float32",
    }
    return hf_reward.reward_config(config, cfg, tokenizer)  # a reward model's: GPT2ForSequenceClassification


def check_same_model(
    hf_cfg: GPTConfig, cfg: GPTConfig, source: Any = "the HF model", label: str = "HF"
) -> None:
    """One-line ValueError naming every SAME_MODEL_FIELDS value of `cfg` that differs from `hf_cfg`'s
    (or a saved gptjax model's: `label` names it in the message)."""
    # n_kv_head = n_head and n_inner = the MLP's default width are their 0s (a difference of n_head or n_embd
    # alone is then one difference, not two); GPTConfig itself stores n_head_dim = n_embd / n_head as 0.
    value = lambda c, f: {  # noqa: E731
        "n_kv_head": 0 if c.kv_heads == c.n_head else c.n_kv_head,
        "n_inner": 0 if c.mlp_width == default_mlp_width(c.n_embd, c.mlp) else c.n_inner,
    }.get(f, getattr(c, f))
    diffs = {f: (value(cfg, f), value(hf_cfg, f)) for f in SAME_MODEL_FIELDS}
    diffs = {f: (ours, theirs) for f, (ours, theirs) in diffs.items() if ours != theirs}
    if diffs:
        got = ", ".join(f"{f}={ours} ({label}: {theirs})" for f, (ours, theirs) in diffs.items())
        fix = " ".join(f"--config.model.{f}={theirs}" for f, (_, theirs) in diffs.items())
        raise ValueError(f"config.model does not match {source}: {got}; set {fix}")


def base_config(cfg: GPTConfig) -> ml_collections.ConfigDict:
    """A full experiment config (configs/shakespeare_char.py's) whose model is `cfg`, for a checkpoint: every
    GPTConfig field but vocab_size (the tokenizer's), those that config lacks too (rope_scaling ...)."""
    config = shakespeare_char.get_config()
    fields = [f.name for f in dataclasses.fields(cfg) if f.name != "vocab_size"]
    config.model.update({k: getattr(cfg, k) for k in fields})
    return config


# ----- Weights. -----


def read_hf_weights(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
    """name -> array of model.safetensors (or its shards), else pytorch_model.bin through torch."""
    directory = pathlib.Path(directory)
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    files = files or (["model.safetensors"] if (directory / "model.safetensors").is_file() else [])
    if files:
        from safetensors.numpy import load_file  # here: the core package does not need safetensors

        return {k: v for f in files for k, v in load_file(directory / f).items()}
    if (directory / "pytorch_model.bin").is_file():
        import torch  # here: only legacy checkpoints need torch

        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise FileNotFoundError(
        f"{directory} has no model.safetensors or pytorch_model.bin; is it an HF model dir?"
    )


def params_from_hf(weights: dict[str, np.ndarray], cfg: GPTConfig) -> dict[str, Any]:
    """gptjax params (nested dicts of float32 arrays) of `cfg` from HF weights; checks every name and shape.

    Token rows are padded with zeros to cfg.padded_vocab; layers are stacked when cfg.scan_layers.
    """
    roots = ("transformer.", "lm_head.", "score.")  # GPT2Model's names have no "transformer."
    weights = {
        (k if k.startswith(roots) else f"transformer.{k}"): v
        for k, v in weights.items()
        if not k.endswith(_BUFFER_SUFFIXES)
    }
    if cfg.tie_embeddings:
        weights.pop("lm_head.weight", None)  # a saved copy of wte (HF ties them on load)
    params: dict[str, Any] = {}
    for hf, path, shape in weight_map(cfg):
        if hf not in weights:
            raise ValueError(f"HF weights have no {hf!r} (expected shape {shape} for {cfg})")
        w = weights.pop(hf)
        if tuple(w.shape) != shape:
            raise ValueError(f"HF weight {hf} has shape {tuple(w.shape)}, expected {shape} for {cfg}")
        w = np.asarray(w, np.float32)
        if path in VOCAB_ROWS:
            w = np.pad(w, ((0, cfg.padded_vocab - len(w)), (0, 0)))
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = w
    params.update(hf_reward.score_from_hf(weights, cfg))  # a reward model's score (score.weight)
    if weights:
        raise ValueError(
            f"HF weights {sorted(weights)[:5]} ({len(weights)} in all) have no gptjax counterpart"
        )
    return stack_layers(params, cfg.n_layer) if cfg.scan_layers else params


def params_to_hf(params: Any, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """HF weights (name -> float32 array) of gptjax params; a bias=False model gets zero biases and a
    padded vocabulary loses its pad rows."""
    if cfg.lora_rank:  # the adapters would be left out
        raise ValueError("the params have LoRA adapters: merge them first (gptjax.model.merge_lora)")
    if cfg.kernel_layout != "in_out":  # square kernels would pass the shape checks transposed
        raise ValueError(f"kernel_layout={cfg.kernel_layout!r}: export the [in, out] params (in_out)")
    hf_config(cfg)  # a one-line error for a shape no HF class holds (q/k norms in a GPT-2 ...)
    if cfg.scan_layers:
        params = unstack_layers(params)
    if is_llama(cfg):
        return params_to_llama(params, cfg)
    out = {}
    for hf, path, shape in weight_map(cfg):
        ours = (cfg.padded_vocab, *shape[1:]) if path in VOCAB_ROWS else shape
        node = params
        for key in path:
            node = node.get(key) if node is not None else None
        if node is None and not cfg.bias and path[-1] == "bias":
            node = np.zeros(shape, np.float32)  # x + 0 == x: exactly the bias-free model
        if node is None or tuple(np.shape(node)) != ours:
            got = None if node is None else tuple(np.shape(node))
            raise ValueError(f"param {'/'.join(path)} has shape {got}, expected {ours} for {cfg}")
        out[hf] = np.ascontiguousarray(np.asarray(node, np.float32)[: shape[0]])  # pad rows dropped
    return {**out, **hf_reward.score_to_hf(params, cfg)}


def _config_json(directory: str | pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no config.json; pass an HF GPT-2 model directory")
    return json.loads(path.read_text())


def read_hf_config(directory: str | pathlib.Path) -> GPTConfig:
    """The GPTConfig of an HF GPT-2 (ImageGPT, Llama) directory's config.json."""
    return config_from_hf(_config_json(directory))


def load_hf(directory: str | pathlib.Path, into: GPTConfig | None = None) -> tuple[dict[str, Any], GPTConfig]:
    """(params, GPTConfig) of an HF GPT-2 (ImageGPT, Llama) directory, in `into` when given (e.g. with a
    padded vocabulary, scanned layers or another dtype), which must describe the same model
    (`check_same_model`)."""
    hf = _config_json(directory)
    cfg = config_from_hf(hf)
    if into is not None:
        check_same_model(cfg, into, source=f"the HF model in {directory}")
        cfg = into
    from_hf = params_from_llama if hf.get("model_type") in LLAMA_TYPES else params_from_hf
    return from_hf(read_hf_weights(directory), cfg), cfg


# Every file save_hf may write: a directory holding only these is an earlier export it may replace.
EXPORT_FILES = (
    "config.json",
    "model.safetensors",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
)


def refuse_other_files(directory: pathlib.Path, ours: Sequence[str], export: str) -> pathlib.Path:
    """`directory`, unless it is a file or holds files other than `ours` (an earlier export of this kind
    may be replaced whole; anything else is the user's): then a one-line error."""
    if directory.exists():
        if not directory.is_dir():
            raise NotADirectoryError(f"{directory} is a file; pass a directory for {export}")
        other = sorted(p.name for p in directory.iterdir() if p.name not in ours)
        if other:
            raise FileExistsError(
                f"{directory} holds files {export} does not write ({', '.join(other[:3])}"
                f"{', ...' if len(other) > 3 else ''}); pass a new or empty directory"
            )
    return directory


def save_hf(directory: str | pathlib.Path, params: Any, cfg: GPTConfig, tokenizer: Any = None) -> None:
    """Writes config.json and model.safetensors that transformers.GPT2LMHeadModel.from_pretrained loads
    (or hf_config's class: a Llama's, a reward model's *ForSequenceClassification), and the tokenizer's
    files when it has an HF equivalent (`save_hf_tokenizer`).

    The directory is written whole and swapped in at once (`write_atomically`): a killed export leaves
    an earlier one as it was, and no file of an earlier export (another tokenizer's) outlives it. A
    directory holding other files is refused rather than replaced."""
    from safetensors.numpy import save_file  # here: the core package does not need safetensors

    directory = refuse_other_files(pathlib.Path(directory), EXPORT_FILES, "an HF export")
    weights = params_to_hf(jax.device_get(params), cfg)
    with write_atomically(directory) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, tokenizer), indent=2))
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        if tokenizer is not None:
            save_hf_tokenizer(tmp, tokenizer, model_max_length=cfg.block_size)


def image_config(cfg: GPTConfig, tokenizer: Any) -> ml_collections.ConfigDict:
    """base_config with config.data describing the images of a palette tokenizer (as configs/digits.py)."""
    config = base_config(cfg)
    config.data.update(
        source="",  # no images yet: fine-tuning names its own
        tokenizer="palette",
        image_size=tokenizer.height,
        channels=tokenizer.channels,
        colors=tokenizer.num_colors,
        class_conditional=bool(tokenizer.classes),
    )
    return config


# ----- gptjax checkpoints. -----


def save_checkpoint(
    workdir: str | pathlib.Path, params: Any, cfg: GPTConfig, tokenizer: Any, config=None
) -> None:
    """Writes `params` as step 0 of a gptjax workdir: load_params, sampling and init_from=workdir read it."""
    ckpt = Checkpointer(workdir)
    try:
        if ckpt.latest_step() is not None:
            raise ValueError(f"{workdir} already has checkpoints; convert into a fresh --workdir")
        config = config or base_config(cfg)
        init, abstract = abstract_state(cfg, config.opt, config.seed)
        want = jax.tree_util.tree_map(lambda a: a.shape, abstract.params)
        got = jax.tree_util.tree_map(np.shape, params)
        if want != got:
            raise ValueError(f"params do not fit {cfg}: got shapes {got}, expected {want}")
        state = jax.jit(init)().replace(params=jax.tree_util.tree_map(jnp.asarray, params))
        n_params = int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))
        meta = {"best_val_loss": float("inf"), "n_params": n_params}
        ckpt.save(0, state, config=config.to_dict(), tokenizer=tokenizer.to_json(), meta=meta)
    finally:
        ckpt.close()


def load_hf_model(name: str | pathlib.Path, tokenizer: Any = "auto") -> tuple[Any, GPTConfig, Any]:
    """(params, GPTConfig, tokenizer) of an HF directory or Hub id (resolve_hf_dir), as a workdir's
    checkpoint gives them: gptjax.sample.load reads an HF directory so, without converting it."""
    hf_dir = resolve_hf_dir(str(name))
    params, cfg = load_hf(hf_dir)
    return params, cfg, pick_tokenizer(tokenizer, cfg.vocab_size, hf_dir)


def hf_sample_defaults(directory: str | pathlib.Path) -> dict[str, Any]:
    """The sampling options HF generate() uses for the model in `directory` (its generation_config.json,
    HF's defaults where it is silent), as config.sample holds a workdir's: greedy (temperature 0) unless
    do_sample, else its temperature, top_k (HF's default 50), top_p and the others it sets; and every id
    of its eos_token_id (Llama 3 Instruct ends a turn with one of several)."""
    path = pathlib.Path(directory) / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    defaults: dict[str, Any] = {"temperature": 0.0}
    if config.get("do_sample"):
        defaults = {"temperature": config.get("temperature", 1.0), "top_k": config.get("top_k", 50)}
        defaults.update({k: config[k] for k in ("top_p", "min_p", "typical_p") if config.get(k) is not None})
    if config.get("repetition_penalty") not in (None, 1.0):
        defaults["repetition_penalty"] = config["repetition_penalty"]
    eos = config.get("eos_token_id")
    if eos is not None:
        defaults["eos_token_id"] = [eos] if isinstance(eos, int) else list(eos)
    return defaults


def hf_to_workdir(
    hf_dir: str | pathlib.Path, workdir: str | pathlib.Path, tokenizer: Any = "auto", adapt=None
) -> GPTConfig:
    """Converts an HF model directory (or Hub id) into a gptjax checkpoint in `workdir`, a text model with
    the sampling defaults HF generate() takes from its generation_config.json (hf_sample_defaults);
    `adapt(params, cfg)` changes the params first (gptjax.hf_lora merges a PEFT adapter so)."""
    hf_dir = resolve_hf_dir(str(hf_dir))
    params, cfg, tokenizer = load_hf_model(hf_dir, tokenizer)
    if adapt is not None:
        params = adapt(params, cfg)
    if tokenizer.kind == "palette":
        config = image_config(cfg, tokenizer)
    else:
        config = base_config(cfg)
        config.sample.update(hf_sample_defaults(hf_dir))
    save_checkpoint(workdir, params, cfg, tokenizer, config)
    return cfg


def workdir_to_hf(
    workdir: str | pathlib.Path, hf_dir: str | pathlib.Path, step: int | None = None
) -> GPTConfig:
    """Exports a gptjax checkpoint's params as an HF directory (save_hf): a GPT-2, for norm="rms" an
    ImageGPT, for a Llama's shape a Llama, for a reward model its *ForSequenceClassification."""
    params, cfg, tokenizer, _ = load_params(workdir, step)
    save_hf(hf_dir, params, cfg, tokenizer)
    return cfg
