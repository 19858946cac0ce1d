"""Tokenizers: text <-> token ids, saved as JSON so a checkpoint can rebuild them."""

import json
import pathlib

import numpy as np

from gptjax.data.bpe import ByteTokenizer, GPT2Tokenizer, HFTokenizer
from gptjax.data.images import PaletteTokenizer
from gptjax.data.sources import DataError

_MAX_UNKNOWN_SHOWN = 10  # Enough to spot the problem without flooding the error line.


class CharTokenizer:
    """One token per character; id i is `chars[i]` (nanoGPT's shakespeare_char scheme)."""

    kind = "char"

    def __init__(self, chars: str):
        if not chars:
            raise DataError("CharTokenizer needs at least one character; pass a non-empty vocab")
        if len(set(chars)) != len(chars):
            raise DataError("CharTokenizer chars contain duplicates; each char needs one id")
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}
        self.bos_id = None  # No special tokens: the corpus is one long stream of characters.
        self.eos_id = None

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The sorted set of characters in `text` (65 for Tiny Shakespeare)."""
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; raises DataError naming any character outside the vocab."""
        try:
            return [self._stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - self._stoi.keys())
            shown = ", ".join(repr(c) for c in unknown[:_MAX_UNKNOWN_SHOWN])
            more = len(unknown) - _MAX_UNKNOWN_SHOWN
            if more > 0:
                shown += f" and {more} more"
            raise DataError(
                f"text has {len(unknown)} character(s) not in the tokenizer's vocab: {shown}; "
                "the prompt/text must use only the training corpus's characters"
            ) from None

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Text of `ids` (a list or 1-D array of ints)."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise DataError(f"decode takes a 1-D sequence of ids, got shape {ids.shape}")
        ids = ids.tolist()
        # Check explicitly: a negative id would otherwise index from the end and decode silently.
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"ids {bad[:10]} are outside the vocab [0, {self.vocab_size})")
        return "".join([self.chars[i] for i in ids])

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


def tokenizer_from_json(d: dict) -> CharTokenizer | ByteTokenizer | GPT2Tokenizer | HFTokenizer:
    """Rebuilds a tokenizer from its `to_json()` dict."""
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if kind == "gpt2":
        return GPT2Tokenizer.from_json(d)
    if kind == "hf":
        return HFTokenizer.from_json(d)
    if kind == "palette":
        return PaletteTokenizer.from_json(d)
    raise DataError(
        f"unknown tokenizer kind {kind!r}; expected one of ['char', 'byte', 'gpt2', 'hf', 'palette']"
    )


def save_tokenizer(tok: CharTokenizer, path: str | pathlib.Path) -> None:
    pathlib.Path(path).write_text(json.dumps(tok.to_json()), encoding="utf-8")


def load_tokenizer(path: str | pathlib.Path) -> CharTokenizer:
    try:
        d = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        reason = " ".join(str(e).split())[:200]
        raise DataError(
            f"{path} is not a tokenizer JSON file ({reason}); give one written by scripts/train_tokenizer.py "
            "or gptjax.data.save_tokenizer"
        ) from e
    return tokenizer_from_json(d)
