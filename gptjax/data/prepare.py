"""Streams text files of any size into token files: train.bin, val.bin and meta.json in one directory.

The layout is gptjax.data.tokens' cache format (a flat uint16 array per split, uint32 past 65,536 ids;
meta.json with the dtype, counts and tokenizer). Files are read in chunks of at most CHUNK_BYTES that
end at a line end where they can, so memory stays bounded; a token never spans two chunks (like encoding
documents one by one), which can split a run of blank lines, or a line longer than a chunk, differently
from encoding the whole text at once.
"""

import json
import pathlib
import re
from collections.abc import Iterator

import numpy as np

from gptjax.data.bpe import ByteTokenizer, GPT2Tokenizer
from gptjax.data.sources import DataError, not_utf8
from gptjax.data.tokenizers import CharTokenizer, load_tokenizer
from gptjax.data.tokens import _FORMAT_VERSION, _token_dtype, write_atomically

CHUNK_BYTES = 1 << 22  # 4 MiB of text per encode call
_FILES = {"train.bin", "val.bin", "meta.json"}
_LINE_END = re.compile(rb"\n")
_WHITESPACE = re.compile(rb"\s")
_CHAR_START = re.compile(rb"[^\x80-\xbf]")  # any byte but a UTF-8 continuation byte


def _cut(data: bytes) -> int:
    """Where a full chunk ends: after its last line end, else before its last whitespace (a long line),
    else before its last character (no whitespace either)."""
    cut = data.rfind(b"\n") + 1
    if cut == 0:
        cut = max((m.start() for m in _WHITESPACE.finditer(data)), default=0)
    if cut == 0:
        cut = max((m.start() for m in _CHAR_START.finditer(data, len(data) - 4)), default=0) or len(data)
    return cut


def _chunks(path: pathlib.Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The file's text in pieces of at most `chunk_bytes` UTF-8 bytes (see `_cut`); DataError names the
    file and byte where it is not UTF-8."""
    if chunk_bytes < 4:
        raise DataError(f"chunk_bytes={chunk_bytes} cannot hold a 4-byte UTF-8 character; use at least 4")
    offset = 0  # of `data` in the file
    with open(path, "rb") as f:
        data = f.read(chunk_bytes)
        while data:
            cut = _cut(data) if len(data) == chunk_bytes else len(data)  # shorter: the file's end
            try:
                text = data[:cut].decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(path, e, offset) from e
            yield text
            offset += cut
            data = data[cut:] + f.read(cut)


def _find(path: pathlib.Path, offset: int, pattern: re.Pattern) -> int:
    """The position of the first byte at or after `offset` in the file that matches `pattern`, else -1."""
    with open(path, "rb") as f:
        f.seek(offset)
        while block := f.read(CHUNK_BYTES):
            if m := pattern.search(block):
                return offset + m.start()
            offset += len(block)
    return -1


def _val_start(files: list[pathlib.Path], val_from: int) -> int:
    """The byte offset (in all files' bytes) where val starts: the first line start at or after
    `val_from` that leaves val some text (after a line end, or a file's start); without one (a last line
    longer than the val split), the first whitespace at or after `val_from`, else its first character."""
    start = 0  # of `file` in all files' bytes
    for file in files:
        size = file.stat().st_size
        if size and start >= val_from:
            return start
        if start < val_from < start + size:
            at = val_from - start  # in this file
            line_end = _find(file, at - 1, _LINE_END)
            if 0 <= line_end < size - 1:
                return start + line_end + 1
            last, last_start = file, start
        start += size
    for pattern in (_WHITESPACE, _CHAR_START):
        at = _find(last, val_from - last_start, pattern)
        if at >= 0:
            return last_start + at
    return start  # val_from is inside the text's last character: val is empty


def make_tokenizer(name: str, files: list[pathlib.Path]):
    """gpt2, byte, char (the sorted characters of all `files`), a GPT-2 ranks file (*.tiktoken) or a
    tokenizer JSON file."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        chars = set()
        for file in files:
            for chunk in _chunks(file):
                chars.update(chunk)
        return CharTokenizer("".join(sorted(chars)))
    if name.endswith(".tiktoken"):
        return GPT2Tokenizer(name)
    if pathlib.Path(name).is_file():
        return load_tokenizer(name)
    raise DataError(
        f"tokenizer {name!r} is not gpt2, byte, char, a GPT-2 ranks file (*.tiktoken) "
        "or a tokenizer JSON file; fix the name or the path"
    )


def prepare_files(
    files: list[pathlib.Path],
    out_dir: str | pathlib.Path,
    tokenizer,
    *,
    val_fraction: float = 0.1,
    eot: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict:
    """Encodes `files` in order; val is the last `val_fraction` of their bytes, from the next line start
    (see `_val_start`).

    `eot` appends the tokenizer's eos_id after each file (documents, as nanoGPT's openwebtext). The
    directory is written whole and then renamed into place, so a failed run leaves an older one as it
    was. Returns meta.json's contents.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction} must be in (0, 1)")
    if eot and tokenizer.eos_id is None:
        raise DataError(f"eot=True needs a tokenizer with an end-of-text id; {tokenizer.kind} has none")
    out_dir = pathlib.Path(out_dir)
    if out_dir.is_dir() and (others := sorted({p.name for p in out_dir.iterdir()} - _FILES)):
        raise DataError(f"{out_dir} holds files other than token files ({others[0]}); give a new out_dir")
    total = sum(f.stat().st_size for f in files)
    if total == 0:
        raise DataError("the input files are empty; give them some text")
    val_start = _val_start(files, int(total * (1 - val_fraction)))
    if not 0 < val_start < total:
        split = "train" if val_start == 0 else "val"
        raise DataError(
            f"val_fraction={val_fraction} of {total} bytes leaves the {split} split without text "
            f"(val would start at byte {val_start}); use more text or another val_fraction"
        )
    dtype = _token_dtype(tokenizer.vocab_size)
    counts = {"train": 0, "val": 0}
    seen = 0  # bytes read so far
    with write_atomically(out_dir) as tmp:
        with open(tmp / "train.bin", "wb") as train, open(tmp / "val.bin", "wb") as val:
            outs = {"train": train, "val": val}

            def write(split: str, ids: list[int]) -> None:
                np.asarray(ids, dtype).tofile(outs[split])
                counts[split] += len(ids)

            for file in files:
                for chunk in _chunks(file, chunk_bytes):
                    data = chunk.encode("utf-8")
                    if seen < val_start < seen + len(data):  # val starts in this chunk: cut its bytes
                        write("train", tokenizer.encode(data[: val_start - seen].decode("utf-8")))
                        chunk = data[val_start - seen :].decode("utf-8")
                    seen += len(data)
                    write("train" if seen <= val_start else "val", tokenizer.encode(chunk))
                if eot:
                    write("train" if seen <= val_start else "val", [tokenizer.eos_id])  # ends its document
        meta = {
            "format": _FORMAT_VERSION,
            "tokenizer": tokenizer.to_json(),
            "val_fraction": val_fraction,
            "dtype": np.dtype(dtype).name,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
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
