"""Token memmaps on disk, encoded once per (text, tokenizer, split), and deterministic batches."""

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np

from gptjax.data.sources import DataError, cache_dir, load_text
from gptjax.data.tokenizers import CharTokenizer

_FORMAT_VERSION = 1  # Bump when the on-disk layout changes so stale caches get a new key.
_SPLIT_CODES = {"train": 0, "val": 1}


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: comparing memmaps elementwise is moot.
class Dataset:
    """Train and val token streams (1-D memmaps; images: one row each) and the tokenizer that made them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: CharTokenizer
    train_labels: np.ndarray | None = None  # images with classes: each row's class index
    val_labels: np.ndarray | None = None
    # Preference pairs (DPO): each pair's reference log-probabilities [N, 2] (gptjax.dpo.reference_logps)
    train_reference: np.ndarray | None = None
    val_reference: np.ndarray | None = None
    # Preference pairs with a "margin" field (TRL's, for reward models): each pair's [N]
    train_margins: np.ndarray | None = None
    val_margins: np.ndarray | None = None


def _token_dtype(vocab_size: int) -> np.dtype:
    # uint16 halves disk and page-cache use for every vocab up to GPT-2's 50,257.
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


def _cache_key(text: str, tokenizer, val_fraction: float) -> str:
    h = hashlib.sha256()
    parts = [str(_FORMAT_VERSION), json.dumps(tokenizer.to_json(), sort_keys=True)]
    parts += [repr(float(val_fraction)), text]
    for part in parts:  # Length-prefixed, so different parts can never hash the same bytes.
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Swaps two existing paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE). False
    where the C library, kernel or filesystem lacks it: the caller falls back to two renames."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # not glibc >= 2.28 (macOS, musl)
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def write_atomically(final: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yields a new temp dir beside `final` to write into; when the block succeeds, renames it to
    `final`, replacing an older one. A failed or killed run leaves `final` as it was, never half-written
    or mixed, and removes the temp dir."""
    if final.exists() and not final.is_dir():  # the rename below would hide the file as "-old"
        raise DataError(f"{final} is a file, not a directory; pass a directory path")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0o700 would hide the data from other users
    old = tmp.with_name(tmp.name + "-old")  # unique as `tmp` is
    try:
        yield tmp
        if not final.exists():
            os.rename(tmp, final)
        elif not _exchange(tmp, final):  # `tmp` now holds the old data, removed below
            os.rename(final, old)  # a rename cannot replace a non-empty directory; a kill between
            os.rename(tmp, final)  # these two leaves the old data under `old` and no `final`
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _open(directory: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    meta = json.loads((directory / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(directory / "train.bin", dtype=dtype, mode="r", shape=(meta["train_tokens"],))
    val = np.memmap(directory / "val.bin", dtype=dtype, mode="r", shape=(meta["val_tokens"],))
    return train, val


def prepare_tokens(
    text: str,
    tokenizer,
    *,
    val_fraction: float = 0.1,
    cache_root: pathlib.Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Splits `text` into train/val, encodes both once into a cache, returns read-only memmaps.

    The split is by characters, first (1 - val_fraction) as train, as nanoGPT's
    shakespeare_char/prepare.py does (Tiny Shakespeare: 1,003,854 / 111,540).
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction} must be in (0, 1); nanoGPT uses 0.1")
    root = pathlib.Path(cache_root) if cache_root is not None else cache_dir() / "tokens"
    final = root / _cache_key(text, tokenizer, val_fraction)
    if (final / "meta.json").is_file():
        return _open(final)

    n = int(len(text) * (1 - val_fraction))
    train_text, val_text = text[:n], text[n:]
    if not train_text or not val_text:
        raise DataError(
            f"text of {len(text)} characters leaves an empty split at val_fraction={val_fraction}; "
            "use a longer text"
        )
    dtype = _token_dtype(tokenizer.vocab_size)
    train = np.array(tokenizer.encode(train_text), dtype=dtype)
    val = np.array(tokenizer.encode(val_text), dtype=dtype)

    try:
        with write_atomically(final) as tmp:
            train.tofile(tmp / "train.bin")
            val.tofile(tmp / "val.bin")
            meta = {
                "format": _FORMAT_VERSION,
                "tokenizer": tokenizer.to_json(),
                "val_fraction": val_fraction,
                "dtype": dtype.name,
                "train_tokens": len(train),
                "val_tokens": len(val),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    except OSError:
        if not (final / "meta.json").is_file():  # else another process wrote the same cache: identical
            raise
    return _open(final)


def _identity(tokenizer) -> str:
    """The tokenizer's JSON without where GPT-2's ranks file lies (its sha256 is checked on loading)."""
    d = {k: v for k, v in tokenizer.to_json().items() if k != "ranks"}
    return json.dumps(d, sort_keys=True)


def _describe(tokenizer) -> str:
    digest = hashlib.sha256(_identity(tokenizer).encode("utf-8")).hexdigest()[:8]
    return f"{tokenizer.kind!r} ({tokenizer.vocab_size} ids, sha256 {digest})"


def load_dataset(
    source: str,
    *,
    path: str | None = None,
    val_fraction: float = 0.1,
    tokenizer=None,
) -> Dataset:
    """Text of `source` (see `load_text`) -> cached train/val tokens; or a directory prepared by
    scripts/prepare_data.py (train.bin, val.bin, meta.json), read as it is with its own tokenizer.

    The tokenizer defaults to the characters of the whole text, as nanoGPT's shakespeare_char.
    """
    prepared = pathlib.Path(source).expanduser()
    if (prepared / "meta.json").is_file():  # token files written by scripts/prepare_data.py
        from gptjax.data.prepare import open_prepared  # prepare imports this module
        from gptjax.data.tokenizers import tokenizer_from_json

        train, val, meta = open_prepared(prepared)
        saved = tokenizer_from_json(meta["tokenizer"])
        if tokenizer is not None and _identity(tokenizer) != _identity(saved):
            raise DataError(
                f"{prepared} was prepared with tokenizer {_describe(saved)}, not the checkpoint's "
                f"{_describe(tokenizer)}; prepare the data with the checkpoint's tokenizer"
            )
        return Dataset(train=train, val=val, tokenizer=tokenizer or saved)
    text = load_text(source, path)
    if tokenizer is None:
        tokenizer = CharTokenizer.from_text(text)
    train, val = prepare_tokens(text, tokenizer, val_fraction=val_fraction)
    return Dataset(train=train, val=val, tokenizer=tokenizer)


def get_batch(
    tokens: np.ndarray,
    *,
    batch_size: int,
    block_size: int,
    seed: int,
    step: int,
    split: str = "train",
) -> tuple[np.ndarray, ...]:
    """Random windows of `tokens` as int32 (x_BT, y_BT), y the next token of each x. `tokens` is one
    stream (1-D: text) or one row per example (2-D, rows of block_size + 1: images, or prompt/completion
    rows whose masked tokens become IGNORE targets: gptjax.data.sft.decode_rows), drawn whole; packed
    prompt/completion rows (3-D: values and segment ids) give (x_BT, y_BT, segments_BT).

    The offsets depend only on (seed, step, split), so a resumed run sees exactly the
    batches an uninterrupted run would.
    """
    if split not in _SPLIT_CODES:
        raise DataError(f"split={split!r} is not one of {list(_SPLIT_CODES)}")
    if tokens.ndim >= 2:
        from gptjax.data.sft import decode_rows  # sft imports this module

        length = tokens.shape[-1]
        if length != block_size + 1:
            if np.issubdtype(tokens.dtype, np.signedinteger):  # prompt/completion rows; images are unsigned
                raise DataError(
                    f"{split} prompt/completion rows are {length} tokens, built for block_size="
                    f"{length - 1}, not {block_size}; build them with the model's block_size"
                )
            raise DataError(
                f"{split} examples are {tokens.shape[1]} tokens (a start token and {tokens.shape[1] - 1} "
                f"pixels), which needs block_size={tokens.shape[1] - 1}, not {block_size}; set "
                f"--config.model.block_size={tokens.shape[1] - 1}"
            )
        rng = np.random.default_rng([seed, step, _SPLIT_CODES[split]])
        return decode_rows(tokens[rng.integers(0, len(tokens), size=batch_size)])
    if len(tokens) < block_size + 1:
        raise DataError(
            f"{split} split has {len(tokens)} tokens, fewer than block_size+1={block_size + 1}; "
            "lower config.model.block_size or use a larger corpus"
        )
    rng = np.random.default_rng([seed, step, _SPLIT_CODES[split]])
    # Offsets uniform in [0, len - block_size - 1], so every window has its shifted target.
    offsets_B = rng.integers(0, len(tokens) - block_size, size=batch_size)
    window_BT = np.asarray(tokens[offsets_B[:, None] + np.arange(block_size + 1)], dtype=np.int32)
    return window_BT[:, :-1], window_BT[:, 1:]
