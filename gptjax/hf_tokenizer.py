"""A tokenizer's Hugging Face files, both ways: GPT-2's BPE as vocab.json + merges.txt, a trained BPE as
tokenizer.json, an image palette as ImageGPT's preprocessor_config.json; and the tokenizer a converted HF
model gets (`pick_tokenizer`). gptjax.convert writes and reads them beside the weights."""

import json
import pathlib
from typing import Any

import numpy as np

from gptjax import data as data_lib
from gptjax.data import bpe


def save_hf_tokenizer(directory: str | pathlib.Path, tokenizer: Any, model_max_length: int) -> list[str]:
    """Writes the HF files of `tokenizer` that transformers.AutoTokenizer.from_pretrained(directory) loads
    to encode as `tokenizer` does; returns their names. GPT-2's BPE: vocab.json + merges.txt (from its
    tiktoken ranks); a trained `tokenizers` BPE: its tokenizer.json; a palette without classes: ImageGPT's
    preprocessor_config.json. char, byte and class-conditional palettes: none (one line says so).
    """
    eot = bpe.GPT2_EOT
    if tokenizer.kind == "palette" and not tokenizer.classes:
        return save_image_processor(directory, tokenizer)
    if tokenizer.kind == "gpt2":
        vocab, merges = bpe.hf_vocab_and_merges(tokenizer.token_bytes())
        files = {
            "vocab.json": json.dumps({**vocab, eot: bpe.GPT2_EOT_ID}, ensure_ascii=False),
            "merges.txt": "\n".join(["#version: 0.2", *merges]) + "\n",
        }
        special = {"bos_token": eot, "eos_token": eot, "unk_token": eot}  # HF's gpt2 repository's
        hf_class = "GPT2Tokenizer"
    elif tokenizer.kind == "hf":
        files = {"tokenizer.json": tokenizer.to_json()["tokenizer"]}
        eos, bos = tokenizer.eos_token, tokenizer.bos_token
        special = {"bos_token": bos, "eos_token": eos} if eos is not None else {}
        if tokenizer.chat_template is not None:  # AutoTokenizer's apply_chat_template reads it there
            special["chat_template"] = tokenizer.chat_template
        hf_class = "PreTrainedTokenizerFast"
    else:
        what = "class-conditional palette" if tokenizer.kind == "palette" else tokenizer.kind
        print(f"the {what} tokenizer has no Hugging Face equivalent: no tokenizer files written")
        return []
    files["special_tokens_map.json"] = json.dumps(special, indent=2)
    files["tokenizer_config.json"] = json.dumps(
        {
            "tokenizer_class": hf_class,
            "model_max_length": model_max_length,
            "add_prefix_space": False,  # GPT-2's: the first word has no space before it
            "clean_up_tokenization_spaces": False,  # decode gives back the text exactly, as gptjax's
            **special,
        },
        indent=2,
    )
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return sorted(files)


def save_image_processor(directory: str | pathlib.Path, tokenizer: Any) -> list[str]:
    """ImageGPT's preprocessor_config.json of a palette: its colours as RGB "clusters" in [-1, 1] (grey
    levels as grey RGB), the image size, and the normalisation that maps pixels into that range."""
    clusters = np.broadcast_to(tokenizer.centers_KC.astype(np.float64), (tokenizer.num_colors, 3)) / 127.5 - 1
    config = {
        "image_processor_type": "ImageGPTImageProcessor",
        "clusters": clusters.tolist(),
        "do_color_quantize": True,
        "do_normalize": True,
        "do_resize": True,
        "size": {"height": tokenizer.height, "width": tokenizer.width},
        "resample": 2,  # bilinear, as openai/imagegpt-*'s
    }
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2))
    return ["preprocessor_config.json"]


def read_hf_specials(directory: str | pathlib.Path) -> dict[str, Any]:
    """HFTokenizer's eos, bos, end_tokens and chat_template for an HF model directory: the tokens its
    tokenizer_config.json names (else the ids config.json gives, as token texts), every id of
    generation_config.json's and config.json's eos_token_id (Llama 3 Instruct ends a turn with one of
    several), and its chat template (tokenizer_config.json's, or chat_template.jinja); GPT-2's
    <|endoftext|> for a directory that names none (a BPE trained and exported here)."""
    directory = pathlib.Path(directory)

    def read(name: str) -> dict:
        path = directory / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    from tokenizers import Tokenizer  # here: the tokenizers extra, as HFTokenizer's

    config, tok_config = read("config.json"), read("tokenizer_config.json")
    generation = read("generation_config.json")
    token = Tokenizer.from_file(str(directory / "tokenizer.json")).id_to_token  # None for an unknown id

    def text(value: Any) -> str | None:  # a token as tokenizer_config.json writes it: str or {"content"}
        return value.get("content") if isinstance(value, dict) else value

    def ids(value: Any) -> list[int]:
        return [value] if isinstance(value, int) else list(value or [])

    eos_ids = [*ids(config.get("eos_token_id")), *ids(generation.get("eos_token_id"))]
    eos = text(tok_config.get("eos_token")) or (token(eos_ids[0]) if eos_ids else None) or bpe.GPT2_EOT
    bos_ids = ids(config.get("bos_token_id"))
    bos = text(tok_config.get("bos_token")) or (token(bos_ids[0]) if bos_ids else None)
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is None and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    end_tokens = tuple(dict.fromkeys(t for t in map(token, eos_ids) if t is not None))
    return {"eos": eos, "bos": bos, "chat_template": template, "end_tokens": end_tokens}


def read_image_processor(directory: str | pathlib.Path, vocab_size: int) -> Any:
    """The PaletteTokenizer of an HF ImageGPT directory's preprocessor_config.json, or None when it has
    none or its clusters do not fit `vocab_size` (colours + a start token)."""
    path = pathlib.Path(directory) / "preprocessor_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    clusters = np.asarray(config.get("clusters") or [], np.float64)
    if clusters.ndim != 2 or len(clusters) + 1 != vocab_size:
        return None
    size = config.get("size", {})
    height, width = (size, size) if isinstance(size, int) else (size.get("height"), size.get("width"))
    if not height or not width:
        raise ValueError(f'{path} has clusters but no image size; add "size": {{"height": H, "width": W}}')
    palette = np.clip((clusters + 1) * 127.5, 0, 255)  # HF's nearest cluster is the nearest colour here
    return data_lib.PaletteTokenizer(palette, height, width)


def pick_tokenizer(tokenizer: Any, vocab_size: int, hf_dir: str | pathlib.Path | None = None) -> Any:
    """A tokenizer object for a model of `vocab_size`: given, "auto" (gpt2 for 50257, byte for 256, else
    the HF directory's tokenizer.json, as save_hf writes for a trained BPE, or its ImageGPT palette),
    "gpt2", "byte", or a tokenizer JSON file (gptjax.data.save_tokenizer's)."""
    if tokenizer == "auto":
        tokenizer = {data_lib.GPT2Tokenizer.vocab_size: "gpt2", 256: "byte"}.get(vocab_size)
        hf_json = pathlib.Path(hf_dir) / "tokenizer.json" if hf_dir is not None else None
        if tokenizer is None and hf_json is not None and hf_json.is_file():
            tokenizer = data_lib.HFTokenizer(hf_json.read_text(), **read_hf_specials(hf_dir))
        if tokenizer is None and hf_dir is not None:
            tokenizer = read_image_processor(hf_dir, vocab_size)
        if tokenizer is None:
            raise ValueError(
                f"no built-in tokenizer has the model's {vocab_size} ids and the model has no "
                "tokenizer.json nor ImageGPT clusters; pass a tokenizer JSON file"
            )
    if tokenizer == "gpt2":
        tokenizer = data_lib.GPT2Tokenizer()
    elif tokenizer == "byte":
        tokenizer = data_lib.ByteTokenizer()
    elif isinstance(tokenizer, str | pathlib.Path):
        tokenizer = data_lib.load_tokenizer(tokenizer)
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {vocab_size}"
        )
    return tokenizer
