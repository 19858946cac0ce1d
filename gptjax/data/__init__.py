"""Host-side data pipeline (numpy only): text sources, tokenizers, token memmaps, batches."""

from gptjax.data.bpe import ByteTokenizer, GPT2Tokenizer, HFTokenizer
from gptjax.data.images import PaletteTokenizer, load_image_dataset, load_images
from gptjax.data.sources import (
    TINY_SHAKESPEARE_URL,
    DataError,
    cache_dir,
    load_text,
    resolve_tiny_shakespeare,
)
from gptjax.data.tokenizers import (
    CharTokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_json,
)
from gptjax.data.tokens import Dataset, get_batch, load_dataset, prepare_tokens

__all__ = [
    "TINY_SHAKESPEARE_URL",
    "ByteTokenizer",
    "CharTokenizer",
    "DataError",
    "Dataset",
    "GPT2Tokenizer",
    "HFTokenizer",
    "PaletteTokenizer",
    "cache_dir",
    "get_batch",
    "load_dataset",
    "load_image_dataset",
    "load_images",
    "load_text",
    "load_tokenizer",
    "prepare_tokens",
    "resolve_tiny_shakespeare",
    "save_tokenizer",
    "tokenizer_from_json",
]
