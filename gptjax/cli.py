"""Shared by the scripts: quiet library logs, and bad input ends the program with one clear line."""

import contextlib
import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from gptjax.data import DataError

# Errors that describe the user's input (config, data, paths) or a diverged run (FloatingPointError: its
# message says which settings to change); anything else is a bug and keeps its traceback. GPTJAX_DEBUG=1
# shows the traceback for these too.
USER_ERRORS = (DataError, ValueError, FileNotFoundError, KeyError, AttributeError, FloatingPointError)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().strip("'\"")
    return text.splitlines()[0] if text else type(e).__name__


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
            return flags.FLAGS(argv)
        except flags.Error as e:
            sys.exit(f"error: {_one_line(e)}")


def run(main: Callable[[list[str]], None]) -> None:
    """absl's app.run with one-line errors for bad flags, configs and data."""

    def wrapped(argv):
        if logging.get_verbosity() == logging.INFO:  # orbax logs every file it renames at INFO
            logging.set_verbosity(logging.ERROR)
        with one_line_errors():
            main(argv)

    app.run(wrapped, flags_parser=_parse_flags)
