"""Shared by the scripts: quiet library logs, and bad input ends the program with one clear line."""

import ast
import contextlib
import os
import sys
import warnings
from collections.abc import Callable

from absl import app, flags, logging

try:  # what config_flags holds for a config file that failed to load (private: absent, nothing is checked)
    from ml_collections.config_flags.config_flags import _ErrorConfig
except ImportError:
    _ErrorConfig = ()

from gptjax.data import DataError

# Errors that describe the user's input (config, data, paths) or a diverged run (FloatingPointError: its
# message says which settings to change); anything else is a bug and keeps its traceback. GPTJAX_DEBUG=1
# shows the traceback for these too. The OSErrors listed name the path (or the busy workdir).
USER_ERRORS = (
    DataError,
    ValueError,
    KeyError,
    AttributeError,
    FloatingPointError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    BlockingIOError,  # gptjax.train.WorkdirInUse: another run holds the workdir
)


def _one_line(e: BaseException) -> str:
    """The message's first line; after a header line ending in ':' (a wrapped traceback), its last one."""
    text = str(e).strip()
    # str(KeyError) is the repr of its key: drop a quote pair around the whole text, never one that ends it.
    if len(text) > 1 and text[0] == text[-1] in "'\"" and text[0] not in text[1:-1]:
        text = text[1:-1]
    # A KeyError's repr of a message of several lines (ml_collections' unknown keys, with "Did you mean"):
    # the message itself, its lines joined.
    unwrapped = False
    while len(text) > 1 and text[0] == text[-1] in "'\"":
        try:
            inner = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            break
        if not isinstance(inner, str) or "\n" not in inner.strip():
            break
        text, unwrapped = inner.strip(), True
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if unwrapped:
        return "; ".join(lines)
    if not lines:
        return type(e).__name__
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[-1]}"
    return lines[0]


@contextlib.contextmanager
def one_line_errors(context: str = ""):
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("GPTJAX_DEBUG"):
            raise
        sys.exit(f"error: {context}{type(e).__name__}: {_one_line(e)}")


def _parse_flags(argv: list[str]) -> list[str]:
    # config_flags applies --config.KEY=VALUE while parsing, before main runs: an unknown key or a
    # value of the wrong type surfaces here.
    with one_line_errors("bad --config (every --config.KEY must name a key of the config file): "):
        try:
            argv = flags.FLAGS(argv)
            for name in flags.FLAGS:  # a config file that failed to load is reported only when read
                if isinstance(flags.FLAGS[name].value, _ErrorConfig):
                    flags.FLAGS[name].value.lock()  # raises the OSError below
            return argv
        except flags.Error as e:
            sys.exit(f"error: {_one_line(e)}")
        except OSError as e:  # a config file that did not load: its error's last line names the path
            reason = (str(e.__cause__ or e).strip().splitlines() or [type(e).__name__])[-1].strip()
            sys.exit(f"error: cannot load --config: {reason}; give an existing file, e.g. configs/tiny.py")


def unescape(text: str) -> str:
    """A flag's backslash escapes (\\n, \\t, \\u00e9) decoded; every other character, ASCII or not, kept."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:  # a lone backslash at the end, a short \\x or \\u escape
        raise ValueError(
            f"{text!r} has an incomplete backslash escape ({e.reason}); write \\\\ for a backslash"
        ) from None


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings in one line, without the source file and line a script's user has no use for."""
    print(f"warning: {message}", file=file or sys.stderr, flush=True)


def run(main: Callable[[list[str]], None]) -> None:
    """absl's app.run with one-line errors for bad flags, configs and data."""

    def wrapped(argv):
        warnings.showwarning = _warning_line
        if logging.get_verbosity() == logging.INFO:  # orbax logs every file it renames at INFO
            logging.set_verbosity(logging.ERROR)
        with one_line_errors():
            main(argv)

    app.run(wrapped, flags_parser=_parse_flags)
