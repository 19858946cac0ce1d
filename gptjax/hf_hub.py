"""Hugging Face models by name: a local directory, else the HF hub cache, else a download into it (only
the config, weights and tokenizer files). gptjax.convert and config.init_from resolve names here."""

import os
import pathlib

# What a Hub download fetches: the config, the weights (safetensors, maybe sharded), the tokenizer's and
# generation's files.
HUB_FILES = [
    "config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
    "tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja",
    "preprocessor_config.json",
]  # fmt: skip
LEGACY_HUB_FILES = [*HUB_FILES, "pytorch_model.bin"]  # fetched only where no safetensors are


def _hub_cache() -> str:
    """huggingface_hub's cache folder as its environment variables say now (it reads them once, on import)."""
    xdg_cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    home = os.environ.get("HF_HOME") or os.path.join(xdg_cache, "huggingface")
    return os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"))


def _is_model_dir(path: pathlib.Path) -> bool:
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return (path / "config.json").is_file() and any((path / f).is_file() for f in weights)


def resolve_hf_dir(name: str) -> pathlib.Path:
    """A local HF model directory, or a Hub model id ("gpt2", "owner/name"): its copy in the HF hub cache
    ($HF_HUB_CACHE, else $HF_HOME/hub), else downloaded into it unless $HF_HUB_OFFLINE is set."""
    path = pathlib.Path(name).expanduser()
    if path.is_dir():
        return path
    local = "pass a local HF model directory (config.json + model.safetensors)"
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, never a Hub id (owner/name)
        raise FileNotFoundError(f"{name} is not a directory; {local}, a gptjax workdir or a Hub id")
    try:
        from huggingface_hub import snapshot_download  # here: only Hub ids need it
    except ImportError:
        raise FileNotFoundError(
            f"{name} is not a directory; {local} or pip install huggingface_hub"
        ) from None
    cache = _hub_cache()
    try:  # the cache first: no network
        found = pathlib.Path(snapshot_download(name, cache_dir=cache, local_files_only=True))
        if _is_model_dir(found):
            return found
    except Exception:  # not cached (or cached without weights, or not an id): download below
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):  # huggingface_hub's
        raise FileNotFoundError(
            f"{name} is not a local directory nor in the HF hub cache {cache}, and HF_HUB_OFFLINE is set; "
            f"{local}"
        )
    try:
        found = pathlib.Path(snapshot_download(name, cache_dir=cache, allow_patterns=HUB_FILES))
        if not _is_model_dir(found):  # an older repository (openai/imagegpt-*): pytorch_model.bin only
            found = pathlib.Path(snapshot_download(name, cache_dir=cache, allow_patterns=LEGACY_HUB_FILES))
        return found
    except Exception as e:  # offline, unknown id, not a valid id: all end the same way
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        if len(reason) > 200:  # HF's messages run long; cut at a word
            reason = reason[:200].rsplit(" ", 1)[0] + " ..."
        raise FileNotFoundError(
            f"{name} is not a local directory nor in the HF hub cache {cache}, and could not be "
            f"downloaded ({reason}); {local}"
        ) from e
