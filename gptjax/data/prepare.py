"""Streams text files, or the documents of JSON-lines and Parquet files, of any size into token files:
train.bin, val.bin and meta.json in one directory.

The layout is gptjax.data.tokens' cache format (a flat uint16 array per split, uint32 past 65,536 ids;
meta.json with the dtype, counts and tokenizer). Text files are read in chunks of at most CHUNK_BYTES that
end at a line end where they can, so memory stays bounded; a token never spans two chunks (like encoding
documents one by one), which can split a run of blank lines, or a line longer than a chunk, differently
from encoding the whole text at once. JSON-lines (.jsonl, .json, gzipped too) and Parquet files hold one
document per record (a line, a row) in a text field; each is encoded on its own and, by default, followed
by the end-of-text token, as nanoGPT's openwebtext/prepare.py does. Parquet files are read READ_ROWS rows
at a time (pyarrow reads a row group's column into memory; FineWeb's shards are ~2 GB). JSON lines are
parsed where they are encoded: in the worker processes when num_proc > 1.
"""

import collections
import concurrent.futures
import functools
import gzip
import json
import multiprocessing
import pathlib
import re
import zlib
from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

from gptjax.data.bpe import ByteTokenizer, GPT2Tokenizer
from gptjax.data.sources import DataError, not_utf8, open_parquet
from gptjax.data.tokenizers import CharTokenizer, load_tokenizer
from gptjax.data.tokens import _FORMAT_VERSION, _token_dtype, write_atomically

CHUNK_BYTES = 1 << 22  # 4 MiB of text per encode call; also about the text one batch of documents holds
READ_ROWS = 1024  # documents read from a file at a time (FineWeb's average ~3 KB each: a few MB)
_FILES = {"train.bin", "val.bin", "meta.json"}
_JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
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


def input_kind(path: pathlib.Path) -> str:
    """How a file is read, by its name: "jsonl" (JSON lines, gzipped too), "parquet", else "text"."""
    name = path.name.lower()
    if name.endswith(".zst"):
        raise DataError(f"{path} is zstd-compressed, which is not read; decompress it (zstd -d) first")
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    return "parquet" if name.endswith(".parquet") else "text"


def _inputs(files: list[pathlib.Path]) -> str:
    """The inputs' kind for meta.json ("text", "jsonl", "parquet", "jsonl+parquet"); never text and
    documents together, whose val splits differ (bytes, documents)."""
    kinds = {input_kind(f): f for f in files}
    if "text" in kinds and len(kinds) > 1:
        other = next(f for k, f in kinds.items() if k != "text")
        raise DataError(
            f"the inputs mix text files ({kinds['text'].name}) and document files ({other.name}); "
            "prepare each kind into its own out_dir"
        )
    return "+".join(sorted(kinds)) or "text"  # no files: "the input files are empty"


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _record_text(path: pathlib.Path, n: int, line: bytes, text_field: str) -> str:
    """The document of line `n` of a JSON-lines file; DataError names the file and line."""
    try:
        record = json.loads(line)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        reason = " ".join(str(e).split())[:200]
        raise DataError(f"{path} line {n} is not JSON ({reason}); give one JSON object per line") from e
    if not isinstance(record, dict):
        raise DataError(
            f"{path} line {n} is a JSON {_json_type(record)}, not an object; give one JSON object per line"
        )
    if text_field not in record:
        raise DataError(
            f"{path} line {n} has no field {text_field!r} (its fields: {', '.join(record)}); "
            "pass --text_field=NAME"
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(
            f"{path} line {n}: {text_field!r} is a JSON {_json_type(text)}, not a string; "
            "fix the line or leave it out"
        )
    return text


def _jsonl_lines(path: pathlib.Path) -> Iterator[tuple[int, bytes, int]]:
    """(line number, line, bytes of the file read so far) of a JSON-lines file's non-blank lines; a
    gzipped file's bytes read are the compressed ones (read ahead in blocks)."""
    try:
        with open(path, "rb") as raw, gzip.open(raw) if path.name.lower().endswith(".gz") else raw as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield n, line, raw.tell()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a whole gzip file ({e}); download it again") from e


def _parquet_file(path: pathlib.Path, text_field: str):
    """The open pyarrow ParquetFile, checked to have a string column `text_field`."""
    pf = open_parquet(path)
    import pyarrow as pa  # present: open_parquet imported it

    schema = pf.schema_arrow
    if text_field not in schema.names:
        pf.close()
        raise DataError(
            f"{path} has no column {text_field!r} (its columns: {', '.join(schema.names)}); "
            "pass --text_field=NAME"
        )
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        pf.close()
        raise DataError(
            f"{path} column {text_field!r} holds {kind}, not strings; pass --text_field of a text column"
        )
    return pf


def _count_documents(path: pathlib.Path, text_field: str, bar: tqdm) -> int:
    """A JSON-lines file's non-blank lines (the first one checked), or a Parquet file's rows (from its
    footer): a pass that only counts, so the val split can be known before encoding. `bar` advances by
    the file's bytes."""
    start = bar.n
    if input_kind(path) == "parquet":
        with _parquet_file(path, text_field) as pf:
            bar.update(path.stat().st_size)
            return pf.metadata.num_rows
    count = 0
    for n, line, read in _jsonl_lines(path):
        if count == 0:  # a wrong --text_field fails now, not hours later
            _record_text(path, n, line, text_field)
        count += 1
        bar.update(start + read - bar.n)
    bar.update(start + path.stat().st_size - bar.n)
    return count


def _documents(path: pathlib.Path, text_field: str, read_rows: int = READ_ROWS) -> Iterator[list[str]]:
    """The documents of a JSON-lines or Parquet file, at most `read_rows` at a time."""
    if input_kind(path) == "parquet":
        with _parquet_file(path, text_field) as pf:
            row = 0  # of the batch's first row in the file
            for batch in pf.iter_batches(batch_size=read_rows, columns=[text_field]):
                docs = batch.column(0).to_pylist()
                if batch.column(0).null_count:
                    raise DataError(
                        f"{path} row {row + docs.index(None)} (from 0): {text_field!r} is null, not a "
                        "string; fill it in or leave the row out"
                    )
                row += len(docs)
                yield docs
        return
    docs = []
    for n, line, _ in _jsonl_lines(path):
        docs.append(_record_text(path, n, line, text_field))
        if len(docs) == read_rows:
            yield docs
            docs = []
    if docs:
        yield docs


def make_tokenizer(name: str, files: list[pathlib.Path], text_field: str = "text"):
    """gpt2, byte, char (the sorted characters of all `files`' text or documents), a GPT-2 ranks file
    (*.tiktoken) or a tokenizer JSON file."""
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        chars = set()
        for file in files:
            if input_kind(file) == "text":
                texts = _chunks(file)
            else:
                texts = (doc for docs in _documents(file, text_field) for doc in docs)
            for text in texts:
                chars.update(text)
        return CharTokenizer("".join(sorted(chars)))
    if name.endswith(".tiktoken"):
        return GPT2Tokenizer(name)
    if pathlib.Path(name).is_file():
        return load_tokenizer(name)
    raise DataError(
        f"tokenizer {name!r} is not gpt2, byte, char, a GPT-2 ranks file (*.tiktoken) "
        "or a tokenizer JSON file; fix the name or the path"
    )


# A piece is (split, text, ends_document, done): the unit read from the inputs, encoded on its own; done
# is the input bytes read so far (all files'), for the progress bar.
def _text_pieces(files: list[pathlib.Path], val_start: int, chunk_bytes: int) -> Iterator[tuple]:
    """The text files' chunks, the one val starts in cut at `val_start`; then an empty piece that ends
    each file's document (its EOT goes to the split of the file's last byte)."""
    seen = 0  # bytes read so far
    for file in files:
        for chunk in _chunks(file, chunk_bytes):
            data = chunk.encode("utf-8")
            if seen < val_start < seen + len(data):  # val starts in this chunk: cut its bytes
                yield "train", data[: val_start - seen].decode("utf-8"), False, val_start
                chunk = data[val_start - seen :].decode("utf-8")
            seen += len(data)
            yield "train" if seen <= val_start else "val", chunk, False, seen
        yield "train" if seen <= val_start else "val", "", True, seen


def _document_pieces(
    files: list[pathlib.Path], counts: list[int], text_field: str, n_train: int, read_rows: int
) -> Iterator[tuple]:
    """Every document in file order (`counts` of them in each file): the first `n_train` are train's, the
    rest val's. A JSON line's text is (file, line number, line), parsed where it is encoded (`_encode`);
    a Parquet row's is its string, and each batch of rows counts as its share of the file's bytes read."""
    index, start = 0, 0  # start: of `file` in all files' bytes
    for file, count in zip(files, counts, strict=True):
        size = file.stat().st_size
        if input_kind(file) == "jsonl":
            for n, line, read in _jsonl_lines(file):
                yield "train" if index < n_train else "val", (file, n, line), True, start + read
                index += 1
        else:
            rows = 0  # read so far
            for docs in _documents(file, text_field, read_rows):
                rows += len(docs)
                for doc in docs:
                    yield "train" if index < n_train else "val", doc, True, start + size * rows // count
                    index += 1
        start += size


def _batches(pieces: Iterator[tuple], chars: int) -> Iterator[tuple[str, list[tuple], int]]:
    """(split, [(text, ends_document), ...], done): consecutive pieces of one split holding about `chars`
    characters (a JSON line: its bytes), the unit of work of one encode call (so one pool task is neither
    tiny nor huge), and the input bytes read through its last piece."""
    batch, split, size, done = [], None, 0, 0
    for piece_split, text, end, piece_done in pieces:
        if batch and (piece_split != split or size >= chars):
            yield split, batch, done
            batch, size = [], 0
        batch.append((text, end))
        split, done = piece_split, piece_done
        size += len(text) if isinstance(text, str) else len(text[2])
    if batch:
        yield split, batch, done


def _encode(tokenizer, eot: bool, dtype: np.dtype, text_field: str, batch: list[tuple]) -> np.ndarray:
    ids = []
    for text, end in batch:
        if not isinstance(text, str):  # a JSON line: (file, line number, line)
            text = _record_text(*text, text_field)
        ids.extend(tokenizer.encode(text))
        if end and eot:
            ids.append(tokenizer.eos_id)
    return np.asarray(ids, dtype)


_worker_args = None  # (tokenizer, eot, dtype, text_field) in a pool's worker process


def _init_worker(*args) -> None:
    global _worker_args
    _worker_args = args


def _encode_in_worker(batch: list[tuple]) -> np.ndarray:
    return _encode(*_worker_args, batch)


def _encoded(
    batches: Iterator, tokenizer, eot: bool, dtype: np.dtype, text_field: str, num_proc: int
) -> Iterator[tuple]:
    """(split, documents ended, ids, done) of each batch, in order whatever `num_proc`.

    num_proc > 1 parses JSON lines and encodes in spawned processes (forking a process whose JAX threads
    are running can hang it; spawned ones import only the numpy-only gptjax.data), at most 2 * num_proc
    batches in flight, so the inputs are read no faster than they are encoded. A DataError of a line is
    raised here when its batch's turn comes, so it is the first bad line's, as with one process. A worker
    that dies (killed for memory) raises BrokenProcessPool here rather than hanging, as
    multiprocessing.Pool would.
    """
    if num_proc == 1:
        for split, batch, done in batches:
            yield split, sum(end for _, end in batch), _encode(tokenizer, eot, dtype, text_field, batch), done
        return
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        num_proc, context, _init_worker, (tokenizer, eot, dtype, text_field)
    )
    try:
        pending = collections.deque()
        for split, batch, done in batches:
            pending.append((split, sum(end for _, end in batch), pool.submit(_encode_in_worker, batch), done))
            if len(pending) > 2 * num_proc:
                split, ended, result, done = pending.popleft()
                yield split, ended, result.result(), done
        for split, ended, result, done in pending:
            yield split, ended, result.result(), done
    finally:
        pool.shutdown(cancel_futures=True)


def prepare_files(
    files: list[pathlib.Path],
    out_dir: str | pathlib.Path,
    tokenizer,
    *,
    val_fraction: float = 0.1,
    eot: bool | None = None,
    text_field: str = "text",
    num_proc: int = 1,
    chunk_bytes: int = CHUNK_BYTES,
    read_rows: int = READ_ROWS,
    progress: bool = False,
) -> dict:
    """Encodes `files` in order: text files, or JSON-lines/Parquet files whose records' `text_field` is
    a document each (see `input_kind`).

    Text: val is the last `val_fraction` of the bytes, from the next line start (see `_val_start`), and
    `eot` (default False) appends the tokenizer's eos_id after each file. Documents: val is the last
    `val_fraction` of the documents in file order (no shuffle; nanoGPT shuffles before its split, so
    shuffle files whose order means something), and `eot` (default True) appends eos_id after each
    document; without it the documents run together with nothing between them. `num_proc` processes
    parse JSON lines and encode; the files written are the same for any number. `progress` shows a tqdm
    bar on stderr of the input bytes read (a gzipped file's compressed bytes; a Parquet file's in
    proportion to its rows), with the tokens written. The directory is written whole and then renamed
    into place, so a failed run leaves an older one as it was. Returns meta.json's contents.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction} must be in (0, 1)")
    if num_proc < 1:
        raise DataError(f"num_proc={num_proc} must be at least 1")
    inputs = _inputs(files)
    documents = inputs != "text"
    eot = documents if eot is None else eot
    if eot and tokenizer.eos_id is None:
        raise DataError(
            f"eot=True needs a tokenizer with an end-of-text id; {tokenizer.kind} has none; use another "
            "tokenizer, or eot=False (--noeot) to join the documents with nothing between them"
        )
    out_dir = pathlib.Path(out_dir)
    if out_dir.is_dir() and (others := sorted({p.name for p in out_dir.iterdir()} - _FILES)):
        raise DataError(f"{out_dir} holds files other than token files ({others[0]}); give a new out_dir")
    input_bytes = sum(f.stat().st_size for f in files)
    bytes_bar = functools.partial(  # the passes over the inputs, as they go
        tqdm, total=input_bytes, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress
    )
    if documents:
        with bytes_bar(desc="count") as bar:
            file_counts = [_count_documents(f, text_field, bar) for f in files]
        total = sum(file_counts)
        if total == 0:
            raise DataError(
                "the input files hold no documents (no rows, or only blank lines); give them some"
            )
        n_train = int(total * (1 - val_fraction))
        if not 0 < n_train < total:
            split = "train" if n_train == 0 else "val"
            raise DataError(
                f"val_fraction={val_fraction} of {total} documents leaves the {split} split without "
                "documents; use more documents or another val_fraction"
            )
        pieces = _document_pieces(files, file_counts, text_field, n_train, read_rows)
    else:
        total = input_bytes
        if total == 0:
            raise DataError("the input files are empty; give them some text")
        val_start = _val_start(files, int(total * (1 - val_fraction)))
        if not 0 < val_start < total:
            split = "train" if val_start == 0 else "val"
            raise DataError(
                f"val_fraction={val_fraction} of {total} bytes leaves the {split} split without text "
                f"(val would start at byte {val_start}); use more text or another val_fraction"
            )
        pieces = _text_pieces(files, val_start, chunk_bytes)
    dtype = _token_dtype(tokenizer.vocab_size)
    counts = {"train": 0, "val": 0}
    ended = {"train": 0, "val": 0}  # documents
    batches = _batches(pieces, chunk_bytes)
    with write_atomically(out_dir) as tmp:
        bar = bytes_bar(desc="prepare")
        try:  # an error closes the bar first, so that its one line starts a line of its own
            with open(tmp / "train.bin", "wb") as train, open(tmp / "val.bin", "wb") as val:
                outs = {"train": train, "val": val}
                for split, n, ids, done in _encoded(batches, tokenizer, eot, dtype, text_field, num_proc):
                    ids.tofile(outs[split])
                    counts[split] += len(ids)
                    ended[split] += n
                    bar.set_postfix(tokens=f"{counts['train'] + counts['val']:,}", refresh=False)
                    bar.update(done - bar.n)
            bar.update(input_bytes - bar.n)  # all read (a JSON-lines file's last bytes may be blank lines)
        finally:
            bar.close()
        if empty := [split for split, count in counts.items() if count == 0]:  # empty documents, no EOT
            raise DataError(
                f"the {empty[0]} split's documents ({ended[empty[0]]}) encode to no tokens; use more "
                "documents, another val_fraction, or eot=True"
            )
        meta = {
            "format": _FORMAT_VERSION,
            "tokenizer": tokenizer.to_json(),
            "val_fraction": val_fraction,
            "dtype": np.dtype(dtype).name,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "inputs": inputs,
            "eot": eot,
        }
        if documents:
            meta |= {
                "text_field": text_field,
                "train_documents": ended["train"],
                "val_documents": ended["val"],
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
