"""config.data -> the run's tokenizer and Dataset: a text corpus or a set of images (host side only)."""

import copy
import pathlib
from typing import Any

import ml_collections

from gptjax.data.bpe import ByteTokenizer, GPT2Tokenizer
from gptjax.data.images import load_image_dataset
from gptjax.data.preference import load_preference_dataset
from gptjax.data.sft import load_sft_dataset, source_files
from gptjax.data.tokens import Dataset, load_dataset

# config.data.format: a corpus, SFT examples, or preference pairs (DPO) (JSON lines or Parquet)
FORMATS = ("text", "prompt_completion", "preference", "prompt")  # prompt: GRPO's (gptjax.data.prompts)


def make_tokenizer(data: Any):
    """config.data.tokenizer: "char" or "palette" (None here: built from the corpus or the images), "auto"
    (None here: the init_from model's own, gptjax.init_from.init_source), "byte" or "gpt2" (BPE)."""
    kind = data.get("tokenizer", "char")
    if kind in ("char", "palette", "auto"):
        return None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "gpt2":
        return GPT2Tokenizer(data.get("tokenizer_path"))
    raise ValueError(f"data.tokenizer={kind!r} is unknown; use char, byte, gpt2, palette or auto")


def check_format(data: Any) -> str:
    """config.data.format, checked (a prompt/completion or preference source must name files) before a run
    loads anything."""
    kind = data.get("format", "text")
    if kind not in FORMATS:
        raise ValueError(f"data.format={kind!r} is unknown; use one of {list(FORMATS)}")
    if kind in ("prompt_completion", "preference", "prompt"):
        source_files(data.get("source"))
    if data.get("packing") and kind != "prompt_completion":
        raise ValueError(f"data.packing packs prompt/completion examples, not data.format={kind!r}; drop it")
    return kind


def load_data(data: Any, tokenizer: Any, *, block_size: int | None = None) -> Dataset:
    """config.data's train/val tokens: a text stream, one row per image for data.tokenizer="palette"
    (gptjax.data.images), or rows of block_size + 1 for data.format="prompt_completion" (gptjax.data.sft:
    one example each, or several with data.packing). `tokenizer`: the checkpoint's, or make_tokenizer's."""
    kind = check_format(data)
    images = data.get("tokenizer") == "palette"
    if tokenizer is not None and images != (tokenizer.kind == "palette"):
        raise ValueError(
            f"the checkpoint's model reads {tokenizer.kind!r} tokens, and config.data.tokenizer is "
            f"{data.get('tokenizer', 'char')!r}: one is an image model, the other a text model; use the "
            "config the model was trained with, or a fresh --workdir"
        )
    if kind == "prompt":
        raise ValueError(
            "data.format='prompt' holds prompts for GRPO, which samples their completions: train it with "
            "configs/grpo.py (its grpo section), or give prompt/completion data"
        )
    if kind in ("prompt_completion", "preference") and block_size is None:
        raise ValueError(f"load_data needs block_size (the model's) for data.format={kind!r}")
    if data.get("chat_template"):
        tokenizer = with_chat_template(tokenizer, data.chat_template)
    if kind == "preference":
        return load_preference_dataset(
            data.source, block_size=block_size, val_fraction=data.val_fraction, tokenizer=tokenizer
        )
    if kind == "prompt_completion":
        return load_sft_dataset(
            data.source,
            block_size=block_size,
            val_fraction=data.val_fraction,
            tokenizer=tokenizer,
            packing=data.get("packing", False),
        )
    if images:
        return load_image_dataset(
            data.source,
            image_size=data.image_size,
            colors=data.colors,
            channels=data.channels,
            class_conditional=data.class_conditional,
            val_fraction=data.val_fraction,
            tokenizer=tokenizer,
        )
    return load_dataset(data.source, path=data.path, val_fraction=data.val_fraction, tokenizer=tokenizer)


def with_chat_template(tokenizer: Any, path: str) -> Any:
    """A copy of an HF model's `tokenizer` whose chat template is the Jinja file `path` (config.data.
    chat_template, TRL's chat_template_path), e.g. one with {% generation %} blocks for a template that
    rewrites earlier turns; the checkpoint keeps it, so sampling and export use it too."""
    if getattr(tokenizer, "kind", "char") != "hf":
        kind = getattr(tokenizer, "kind", "char")
        raise ValueError(
            f"data.chat_template={path!r} replaces an HF model's chat template; this {kind!r} tokenizer "
            "writes conversations in ChatML: unset data.chat_template"
        )
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"data.chat_template={path!r} is not a file; give a Jinja template file")
    tokenizer = copy.copy(tokenizer)
    tokenizer.chat_template = pathlib.Path(path).read_text(encoding="utf-8")
    return tokenizer


def image_source(data: Any, source: str | None, workdir: Any) -> Any:
    """A saved model's config.data with its images from `source` (a script's --source) when given; a
    model converted from HF has none of its own, and one line says to pass them."""
    data = ml_collections.ConfigDict(dict(data))
    if source:
        data.source = source
    if not data.get("source"):
        raise ValueError(
            f"{workdir} names no training images (a model converted from HF); pass --source=<images>"
        )
    return data


def check_same_images(saved: dict, data: Any, workdir: pathlib.Path) -> None:
    """An image run resumes with the images it started with: its palette and start tokens are saved."""
    if saved.get("tokenizer") != "palette" or data.get("tokenizer") != "palette":
        return  # a text run, or a kind mismatch (load_data names it)
    keys = ("image_size", "channels", "colors", "class_conditional")
    changed = [
        f"{k}={data.get(k)!r} (the checkpoint's: {saved.get(k)!r})"
        for k in keys
        if saved.get(k) != data.get(k)
    ]
    if changed:
        raise ValueError(
            f"the checkpoint in {workdir} was trained with other images: data.{', data.'.join(changed)}; "
            "resume with the checkpoint's settings, or fine-tune from it in a fresh --workdir"
        )
