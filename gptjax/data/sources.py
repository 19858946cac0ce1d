"""Where training text comes from: the Tiny Shakespeare built-in, local files and globs."""

import glob
import hashlib
import os
import pathlib
import tempfile
import urllib.request

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
# Checked after download so a proxy's error page or a truncated transfer never lands in the cache
# (value from shared/data/README.md; 1,115,394 bytes).
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
_TINY_SHAKESPEARE_REL = pathlib.Path("tinyshakespeare", "input.txt")
_DOWNLOAD_TIMEOUT_S = 20


class DataError(ValueError):
    """Bad data input; the message is one line naming the problem and the fix."""


def cache_dir() -> pathlib.Path:
    """Root of gptjax's download and token caches: $GPTJAX_CACHE_DIR or ~/.cache/gptjax."""
    return pathlib.Path(os.environ.get("GPTJAX_CACHE_DIR") or "~/.cache/gptjax").expanduser()


def _download(url: str, dest: pathlib.Path, sha256: str | None = None) -> None:
    """Downloads `url` to `dest` atomically; OSError if offline, DataError on a sha256 mismatch."""
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        data = response.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(
            f"{url} returned {len(data)} bytes that do not match sha256 {sha256}; "
            f"download it by hand and put it at {dest}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Temp file in the same directory, then os.replace: readers never see a partial file.
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def resolve_tiny_shakespeare(path: str | None = None) -> pathlib.Path:
    """Finds Tiny Shakespeare: `path`, then $GPTJAX_DATA_DIR, then the cache, then downloads it."""
    if path is not None:
        explicit = pathlib.Path(path).expanduser()
        if not explicit.is_file():
            raise DataError(f"Tiny Shakespeare file {explicit} does not exist; fix the path")
        return explicit
    data_dir = os.environ.get("GPTJAX_DATA_DIR")
    if data_dir and (pathlib.Path(data_dir) / _TINY_SHAKESPEARE_REL).is_file():
        return pathlib.Path(data_dir) / _TINY_SHAKESPEARE_REL
    cached = cache_dir() / _TINY_SHAKESPEARE_REL
    if cached.is_file():
        return cached
    try:
        _download(TINY_SHAKESPEARE_URL, cached, sha256=TINY_SHAKESPEARE_SHA256)
    except OSError as e:  # URLError, timeouts and refused connections are all OSErrors.
        reason = " ".join(str(e).split())  # Keep the message on one line.
        raise DataError(
            f"could not download Tiny Shakespeare ({reason}); put input.txt from "
            f"{TINY_SHAKESPEARE_URL} at $GPTJAX_DATA_DIR/{_TINY_SHAKESPEARE_REL} or at {cached}"
        ) from e
    return cached


def not_utf8(file: pathlib.Path, e: UnicodeDecodeError, offset: int = 0) -> DataError:
    """The one-line error for `file`, whose bytes from `offset` on failed to decode with `e`."""
    return DataError(
        f"{file} is not valid UTF-8 ({e.reason} at byte {offset + e.start}); "
        "convert it to UTF-8 or leave it out"
    )


def _read_utf8(file: pathlib.Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(file, e) from e


def load_text(source: str, path: str | None = None) -> str:
    """Returns the training text of `source`: "tiny_shakespeare", a file path or a glob.

    A glob's files are read in sorted order and concatenated. `path` overrides where
    Tiny Shakespeare is read from and is only valid with that source.
    """
    if source == "tiny_shakespeare":
        files = [resolve_tiny_shakespeare(path)]
    elif path is not None:
        raise DataError(f"path={path!r} is only used with source='tiny_shakespeare'; drop it")
    elif any(c in source for c in "*?["):
        matches = sorted(glob.glob(os.path.expanduser(source)))
        files = [pathlib.Path(m) for m in matches if os.path.isfile(m)]
        if not files:
            raise DataError(f"glob {source!r} matches no files; check the pattern")
    else:
        file = pathlib.Path(source).expanduser()
        if file.is_dir():
            raise DataError(
                f"{file} is a directory without meta.json; pass a file, a glob like '{file}/*.txt' or a "
                "directory written by scripts/prepare_data.py"
            )
        if not file.is_file():
            raise DataError(
                f"data source {source!r} is neither 'tiny_shakespeare' nor an existing file or directory; "
                "for token files run scripts/prepare_data.py --out_dir=DIR and pass --config.data.source=DIR"
            )
        files = [file]
    text = "".join(_read_utf8(f) for f in files)
    if not text:
        raise DataError(f"data source {source!r} is empty; give it some text to train on")
    return text
