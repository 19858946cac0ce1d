"""Where training text comes from: the built-in corpora (Tiny Shakespeare, names), local files and globs."""

import dataclasses
import glob
import hashlib
import os
import pathlib
import tempfile
import urllib.request

import numpy as np

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
# Checked after download so a proxy's error page or a truncated transfer never lands in the cache
# (value from shared/data/README.md; 1,115,394 bytes).
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
# 32,033 names, one per line (no newline after the last), 228 KB
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
_DOWNLOAD_TIMEOUT_S = 20


@dataclasses.dataclass(frozen=True)
class Builtin:
    """A corpus known by name: where it lies under $GPTJAX_DATA_DIR and the cache, and where it comes from."""

    title: str
    rel: pathlib.Path  # under $GPTJAX_DATA_DIR and the cache
    url: str
    sha256: str
    shuffle_lines: bool = False  # the lines in a fixed random order, so that the last 10% (val) is a sample


BUILTINS = {
    "tiny_shakespeare": Builtin(
        "Tiny Shakespeare",
        pathlib.Path("tinyshakespeare", "input.txt"),
        TINY_SHAKESPEARE_URL,
        TINY_SHAKESPEARE_SHA256,
    ),
    # makemore's names, most popular first: shuffled, or the validation split would hold only rare names.
    "names": Builtin("the names list", pathlib.Path("names", "names.txt"), NAMES_URL, NAMES_SHA256, True),
}
_TINY_SHAKESPEARE_REL = BUILTINS["tiny_shakespeare"].rel


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


def resolve_builtin(name: str, path: str | None = None) -> pathlib.Path:
    """Finds the built-in corpus `name`: `path`, then $GPTJAX_DATA_DIR, then the cache, then downloads it."""
    corpus = BUILTINS[name]
    if path is not None:
        explicit = pathlib.Path(path).expanduser()
        if not explicit.is_file():
            raise DataError(f"{corpus.title} file {explicit} does not exist; fix the path")
        return explicit
    data_dir = os.environ.get("GPTJAX_DATA_DIR")
    if data_dir and (pathlib.Path(data_dir) / corpus.rel).is_file():
        return pathlib.Path(data_dir) / corpus.rel
    cached = cache_dir() / corpus.rel
    if cached.is_file():
        return cached
    try:
        _download(corpus.url, cached, sha256=corpus.sha256)
    except OSError as e:  # URLError, timeouts and refused connections are all OSErrors.
        reason = " ".join(str(e).split())  # Keep the message on one line.
        raise DataError(
            f"could not download {corpus.title} ({reason}); put {corpus.rel.name} from "
            f"{corpus.url} at $GPTJAX_DATA_DIR/{corpus.rel} or at {cached}"
        ) from e
    return cached


def resolve_tiny_shakespeare(path: str | None = None) -> pathlib.Path:
    """Finds Tiny Shakespeare: `path`, then $GPTJAX_DATA_DIR, then the cache, then downloads it."""
    return resolve_builtin("tiny_shakespeare", path)


def shuffled_lines(text: str, seed: int = 0) -> str:
    """The lines of `text` (each ending with a newline) in a fixed random order."""
    lines = text.splitlines()
    order = np.random.default_rng(seed).permutation(len(lines))
    return "".join(lines[i] + "\n" for i in order)


def not_utf8(file: pathlib.Path, e: UnicodeDecodeError, offset: int = 0) -> DataError:
    """The one-line error for `file`, whose bytes from `offset` on failed to decode with `e`."""
    return DataError(
        f"{file} is not valid UTF-8 ({e.reason} at byte {offset + e.start}); "
        "convert it to UTF-8 or leave it out"
    )


def is_glob(source: str) -> bool:
    """Whether a data source is a glob pattern rather than a path."""
    return any(c in source for c in "*?[")


def glob_files(pattern: str) -> list[pathlib.Path]:
    """The files `pattern` matches (~ expanded), sorted; a one-line DataError when there are none."""
    files = [pathlib.Path(m) for m in sorted(glob.glob(os.path.expanduser(pattern))) if os.path.isfile(m)]
    if not files:
        raise DataError(f"glob {pattern!r} matches no files; check the pattern")
    return files


def open_parquet(path: pathlib.Path):
    """pyarrow's ParquetFile of `path` (imported here: pyarrow is the optional `parquet` extra), or a
    one-line DataError when pyarrow is missing or cannot read the file."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"reading {path} needs pyarrow; pip install pyarrow") from e
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        reason = " ".join(str(e).split())[:200]
        raise DataError(f"{path} is not a Parquet file ({reason}); give .parquet files only") from e


def _read_utf8(file: pathlib.Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(file, e) from e


def load_text(source: str, path: str | None = None) -> str:
    """Returns the training text of `source`: a built-in corpus ("tiny_shakespeare", "names"), a file path
    or a glob.

    A glob's files are read in sorted order and concatenated. `path` overrides where a built-in corpus
    is read from and is only valid with one. The names come one per line in a fixed random order.
    """
    if source in BUILTINS:
        file = resolve_builtin(source, path)
        text = _read_utf8(file)
        if not text:
            raise DataError(f"{file} is empty; give it the text of {BUILTINS[source].title}")
        return shuffled_lines(text) if BUILTINS[source].shuffle_lines else text
    elif path is not None:
        raise DataError(f"path={path!r} is only used with a built-in source {sorted(BUILTINS)}; drop it")
    elif is_glob(source):
        files = glob_files(source)
    else:
        file = pathlib.Path(source).expanduser()
        if file.is_dir():
            raise DataError(
                f"{file} is a directory without meta.json; pass a file, a glob like '{file}/*.txt' or a "
                "directory written by scripts/prepare_data.py"
            )
        if not file.is_file():
            raise DataError(
                f"data source {source!r} is neither a built-in corpus {sorted(BUILTINS)} nor an existing "
                "file or directory; for token files run scripts/prepare_data.py --out_dir=DIR and pass "
                "--config.data.source=DIR"
            )
        files = [file]
    text = "".join(_read_utf8(f) for f in files)
    if not text:
        raise DataError(f"data source {source!r} is empty; give it some text to train on")
    return text
