"""Bad input ends a script with one clear line (gptjax/cli.py), and is refused before any work or output."""

import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from gptjax import cli, evaluate, sample
from gptjax.data import CharTokenizer, DataError, bpe
from gptjax.model import GPTConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "error, line",
    [
        (ValueError("a fine-tune; use init_from='scratch'"), "a fine-tune; use init_from='scratch'"),
        (
            FileNotFoundError(2, "No such file or directory", "/x/n"),
            "[Errno 2] No such file or directory: '/x/n'",
        ),
        (flags.Error("Unknown command line flag 'bogus'"), "Unknown command line flag 'bogus'"),
        (KeyError("no such key"), "no such key"),  # str() of a KeyError is its key's repr
        (ValueError("first line\nsecond line"), "first line"),
        (
            ValueError("Error whilst parsing:\n\nTraceback ...\nValueError: bad variant\n"),
            "Error whilst parsing: ValueError: bad variant",
        ),
        (ValueError(""), "ValueError"),
    ],
)
def test_one_line_keeps_the_message_whole(error, line):
    assert cli._one_line(error) == line


def test_path_errors_are_one_line_naming_the_path(tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("x")

    def denied():  # tests may run as root, which no permission stops
        raise PermissionError(13, "Permission denied", str(file))

    cases = [
        (lambda: open(tmp_path), "IsADirectoryError", tmp_path),
        (lambda: os.mkdir(file), "FileExistsError", file),
        (lambda: open(file / "x"), "NotADirectoryError", file / "x"),
        (denied, "PermissionError", file),
    ]
    for fn, name, path in cases:
        with pytest.raises(SystemExit) as info, cli.one_line_errors():
            fn()
        message = str(info.value)
        assert message.startswith(f"error: {name}: [Errno ") and message.endswith(f": '{path}'"), message


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["--config=configs/nonexist.py"],
            "No such file or directory: 'configs/nonexist.py'; give an existing",
        ),
        (
            ["--config=configs/nonexist.py", "--config.max_iters=3"],
            "No such file or directory: 'configs/nonexist.py'; give",
        ),
        (
            ["--config=configs/tiny.py:foo"],
            "config file: ValueError: configs/tiny.py takes no variant, got 'foo'",
        ),
        (["--config=configs/tiny.py", "--config.model.foo=1"], "AttributeError: 'foo'"),
        (
            ["--config=configs/tiny.py", "--config.model.n_layr=4"],
            """AttributeError: 'n_layr'; Did you mean "n_layer" instead of "n_layr"?""",
        ),
        (
            ["--config=configs/tiny.py", "--config.nmodel.n_layer=4"],
            """KeyError: 'nmodel'; Did you mean "model" instead of "nmodel"?""",
        ),
    ],
)
def test_config_file_errors_are_one_line(monkeypatch, argv, line):
    fv = flags.FlagValues()  # cli._parse_flags and config_flags read absl's global FLAGS
    monkeypatch.setattr(flags, "FLAGS", fv)
    argv = ["train.py", *argv]
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv, lock_config=True)
    with pytest.raises(SystemExit) as info:
        cli._parse_flags(argv)
    message = str(info.value)
    assert message.startswith("error: ") and line in message and "\n" not in message, message


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("n_head", 0, r"n_head=0 must be >= 1; set model.n_head"),  # was a ZeroDivisionError
        ("n_layer", 0, r"n_layer=0 must be >= 1"),
        ("n_embd", -8, r"n_embd=-8 must be >= 1"),
        ("block_size", 0, r"block_size=0 must be >= 1"),
        ("vocab_size", 0, r"vocab_size=0 must be >= 1"),
        ("dropout", 1.5, r"dropout=1.5 must be in \[0, 1\); set model.dropout"),  # trained, learning nothing
        ("dropout", 1.0, r"dropout=1.0 must be in \[0, 1\)"),
        ("dropout", -0.1, r"dropout=-0.1 must be in \[0, 1\)"),
    ],
)
def test_gpt_config_refuses_sizes_and_dropout_that_cannot_work(field, value, match):
    sizes = dict(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**sizes, field: value})


def test_evaluate_refuses_sizes_below_one(tiny_cfg, tiny_params):
    tokenizer = CharTokenizer("abcdefghijklmnop")
    for batch_size in (0, -2):  # a ZeroDivisionError, a "negative dimensions" error
        with pytest.raises(ValueError, match=f"batch_size={batch_size} must be >= 1"):
            evaluate.text_loss(tiny_params, tiny_cfg, tokenizer, "abcabcabc" * 4, batch_size)
    tokens = tokenizer.encode("abcdefghijklmnop" * 8)
    for name in ("group", "batch_size"):
        kwargs = {**dict(batch_size=2, batches=4, group=2), name: 0}
        with pytest.raises(ValueError, match=f"{name}=0 must be >= 1"):
            evaluate.random_batch_loss(tiny_params, tiny_cfg, tokens, **kwargs)


def test_sampling_checks_everything_before_it_streams(tiny_cfg, tiny_params):
    model = (tiny_params, tiny_cfg, CharTokenizer("abcdefghijklmnop"))
    pieces = []
    with pytest.raises(DataError, match="not in the tokenizer's vocab"):
        sample.complete(model, "zz", stream=pieces.append)
    with pytest.raises(ValueError, match="max_length=1 leaves no room"):
        sample.complete(model, "ab", max_length=1, stream=pieces.append)
    with pytest.raises(ValueError, match=r"eos_token_id=\[3, 16\] has ids past the model's vocab_size=16"):
        sample.complete(model, "ab", eos_token_id=[3, 16], stream=pieces.append)
    assert pieces == []  # scripts/sample.py prints the prompt with the first piece


def test_train_bpe_refuses_an_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"the corpus \(.*empty.txt\) is empty"):
        bpe.train_bpe([str(tmp_path / "empty.txt")], vocab_size=300)


@pytest.mark.slow
def test_scripts_refuse_before_printing(tmp_path, tiny_cfg, tiny_params):
    """A bad prompt or --out of scripts/sample.py prints nothing but the error line; eval.py's --group=0."""
    from gptjax.convert import save_checkpoint

    save_checkpoint(tmp_path / "w", tiny_params, tiny_cfg, CharTokenizer("abcdefghijklmnop"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = tmp_path / "missing" / "s.jsonl"
    cases = [
        (
            ["sample.py", "--prompt=abz"],
            "error: DataError: text has 1 character(s) not in the tokenizer's vocab",
        ),
        (
            ["sample.py", f"--out={out}"],
            f"error: FileNotFoundError: [Errno 2] No such file or directory: '{out}'",
        ),
        (
            ["eval.py", "--random_batches=4", "--split=val", "--group=0"],
            "error: flag --group=0: 0 is not a positive",
        ),
        (
            ["eval.py", f"--text={tmp_path / 'nothing.txt'}"],
            f"error: FileNotFoundError: --text={tmp_path / 'nothing.txt'} is neither a built-in corpus ",
        ),
        (
            ["eval.py", "--random_batches=4", "--split=val", "--step=7"],
            f"error: FileNotFoundError: no checkpoint at step 7 in {tmp_path / 'w' / 'checkpoints'}; pick",
        ),
    ]
    for (script, *args), start in cases:
        result = subprocess.run(
            [sys.executable, f"scripts/{script}", f"--workdir={tmp_path / 'w'}", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0 and result.stdout == "", result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), result.stderr


@pytest.mark.parametrize(
    "error, line",
    [
        (ValueError("'a' is not 'b'"), "'a' is not 'b'"),  # quotes inside the text: not a KeyError's repr
        (KeyError("'x'"), "'x'"),  # the key's own quotes stay
        (ValueError("'"), "'"),
    ],
)
def test_one_line_drops_only_a_quote_pair_around_the_whole_text(error, line):
    assert cli._one_line(error) == line


def test_one_line_errors_prefix_context_and_debug_shows_the_traceback(monkeypatch):
    monkeypatch.delenv("GPTJAX_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info, cli.one_line_errors("loading data: "):
        raise KeyError("no such split")
    assert str(info.value) == "error: loading data: KeyError: no such split"
    monkeypatch.setenv("GPTJAX_DEBUG", "1")
    with pytest.raises(KeyError, match="no such split"), cli.one_line_errors("loading data: "):
        raise KeyError("no such split")


def test_an_error_mid_training_starts_a_line_of_its_own(tmp_path, data_dir, tmp_cache):
    """A run that diverges mid-loop ends with its one error line on a line of its own, after the bar."""
    args = ["--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}", "--config.opt.lr=1e30"]
    args += ["--config.opt.grad_clip=0", "--config.max_iters=40", "--config.eval_interval=40"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    result = subprocess.run(
        [sys.executable, "scripts/train.py", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.split("\n") if "FloatingPointError" in line]
    assert len(errors) == 1 and errors[0].startswith("error: FloatingPointError: "), result.stderr[-500:]


def test_an_incomplete_flag_escape_is_one_clear_line():
    for text in ("ab\\", "\\x4", "\\u00"):
        with pytest.raises(
            ValueError, match="has an incomplete backslash escape .*; write .* for a backslash"
        ):
            cli.unescape(text)
    assert cli.unescape("a\\\\") == "a\\"


def test_scripts_print_warnings_in_one_line(tmp_path):
    """A script's warnings (a prompt cropped to the context, say) come as 'warning: message' alone,
    without Python's second line of source."""
    code = (
        "import warnings; from gptjax import cli\n"
        "def main(argv): warnings.warn('prompt of 9 tokens cropped on the left')\n"
        "cli.run(main)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "warning: prompt of 9 tokens cropped on the left\n"
