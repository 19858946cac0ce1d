"""Streams text files of any size into token files: train.bin, val.bin and meta.json in one directory.

The layout is gptjax.data.tokens' cache format (a flat uint16 array per split, uint32 past 65,536 ids;
meta.json with the dtype, counts and tokenizer). Files are read in chunks that end at a line end, so
memory stays bounded; a token never spans two chunks (like encoding documents one by one), which can
split a run of blank lines differently from encoding the whole text at once.
"""

import json
import pathlib
from collections.abc import Iterator

import numpy as np

from gptjax.data.bpe import ByteTokenizer, GPT2Tokenizer
from gptjax.data.sources import DataError
from gptjax.data.tokenizers import CharTokenizer, load_tokenizer
from gptjax.data.tokens import _FORMAT_VERSION, _token_dtype

CHUNK_CHARS = 1 << 22  # ~4 MB of text per encode call


def _chunks(path: pathlib.Path, chunk_chars: int) -> Iterator[str]:
    """The file's text in pieces of about `chunk_chars` characters, each ending at a line end."""
    with open(path, encoding="utf-8", newline="") as f:
        rest = ""
        while piece := f.read(chunk_chars):
            piece = rest + piece
            cut = piece.rfind("\n") + 1
            if cut == 0:  # no line end yet: keep reading (one very long line)
                rest = piece
                continue
            rest = piece[cut:]
            yield piece[:cut]
        if rest:
            yield rest


def make_tokenizer(name: str, files: list[pathlib.Path]):
    """gpt2, byte, char (the sorted characters of all `files`), or a tokenizer JSON file."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        chars = set()
        for file in files:
            for chunk in _chunks(file, CHUNK_CHARS):
                chars.update(chunk)
        return CharTokenizer("".join(sorted(chars)))
    if pathlib.Path(name).is_file():
        return load_tokenizer(name)
    raise DataError(f"tokenizer {name!r} is not gpt2, byte, char or a tokenizer JSON file")


def prepare_files(
    files: list[pathlib.Path],
    out_dir: str | pathlib.Path,
    tokenizer,
    *,
    val_fraction: float = 0.1,
    eot: bool = False,
    chunk_chars: int = CHUNK_CHARS,
) -> dict:
    """Encodes `files` in order; val is the last `val_fraction` of their bytes, from the next line end.

    `eot` appends the tokenizer's eos_id after each file (documents, as nanoGPT's openwebtext).
    Returns meta.json's contents.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction} must be in (0, 1)")
    if eot and tokenizer.eos_id is None:
        raise DataError(f"eot=True needs a tokenizer with an end-of-text id; {tokenizer.kind} has none")
    total = sum(f.stat().st_size for f in files)
    if total == 0:
        raise DataError("the input files are empty; give them some text")
    val_from = int(total * (1 - val_fraction))  # the byte offset where val starts
    dtype = _token_dtype(tokenizer.vocab_size)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "val": 0}
    seen = 0  # bytes read so far
    split = "train"
    with open(out_dir / "train.bin", "wb") as train, open(out_dir / "val.bin", "wb") as val:
        outs = {"train": train, "val": val}

        def write(split: str, ids: list[int]) -> None:
            np.asarray(ids, dtype).tofile(outs[split])
            counts[split] += len(ids)

        for file in files:
            for chunk in _chunks(file, chunk_chars):
                data = chunk.encode("utf-8")
                if seen < val_from < seen + len(data):  # val starts in this chunk, at a line start
                    at = len(data[: val_from - seen].decode("utf-8", errors="ignore"))
                    at = chunk.find("\n", max(at - 1, 0)) + 1 or len(
                        chunk
                    )  # the first line start >= val_from
                    write("train", tokenizer.encode(chunk[:at]))
                    chunk = chunk[at:]
                split = "train" if seen + len(data) <= val_from else "val"
                seen += len(data)
                write(split, tokenizer.encode(chunk))
            if eot:
                write(split, [tokenizer.eos_id])  # with its document's last chunk
    if not counts["train"] or not counts["val"]:
        raise DataError(f"{counts} tokens: a split is empty; use more text or smaller chunks")
    meta = {
        "format": _FORMAT_VERSION,
        "tokenizer": tokenizer.to_json(),
        "val_fraction": val_fraction,
        "dtype": np.dtype(dtype).name,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def open_prepared(out_dir: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train, val, meta) of a prepared directory, the splits as read-only memmaps."""
    out_dir = pathlib.Path(out_dir)
    meta = json.loads((out_dir / "meta.json").read_text())
    splits = [
        np.memmap(out_dir / f"{s}.bin", dtype=meta["dtype"], mode="r", shape=(meta[f"{s}_tokens"],))
        for s in ("train", "val")
    ]
    return splits[0], splits[1], meta
