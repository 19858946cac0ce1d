"""Supervised fine-tuning data: prompt/completion pairs and conversations, trained on the answers only.

The data is JSON lines, one example per non-empty line: {"prompt": "...", "completion": "..."} (TRL's
"prompt-completion" format with completion-only loss; OpenAI's legacy fine-tuning format), {"text":
"..."} (TRL's "language modeling" format: an empty prompt, the whole text trained on), or {"messages":
[{"role": ..., "content": ...}, ...]} (TRL's conversational format, written in ChatML and trained on the
assistant's turns: gptjax.data.chat; used whenever there is no "completion", so ultrachat_200k's "prompt"
beside its "messages" is ignored); other fields are ignored. It may also be Parquet files whose rows hold
the same fields (a Hugging Face dataset's shards: `source_files`). Each example becomes one int32 row of
block_size + 1 values: the prompt's ids, the completion's ids, the tokenizer's EOS (when it has one; a
conversation ends with <|im_end|> instead), then padding. A value v >= 0 is token v, which the model
learns to predict where it is a target; v < 0 stands for token -v - 1 (`masked`), which the model reads
but is never trained to predict: the prompt (a conversation: all but the assistant's turns) and the
padding (token 0, after the real tokens, so causal attention never lets them see it). `decode_rows` turns
rows into (x_BT, y_BT) with y IGNORE where masked; gptjax.data.get_batch draws rows through it.

An example longer than the row loses the start of its prompt first (the completion follows the prompt's
end; a conversation: the start of what comes before the first assistant turn). If the rest is still too
long, the row keeps the prompt's last token (so the first completion token is still a target) and loses
its end, EOS included: a cut answer must not be taught to stop. One warning counts the examples cut.

Packing (`packing=True`, TRL's SFTConfig(packing=True) with its default best-fit decreasing strategy)
puts several examples in one row instead, so that short examples do not spend most of each row on
padding. Rows are then [2, block_size + 1]: the values as above, and each value's segment id (1, 2, ...
for the examples of the row, 0 for its padding). The model attends within a segment only and restarts
positions at each one (gptjax.model.GPT's segments_BT), so each example's loss and gradients are those
it has alone in a padded row: every example's first value is stored masked, as a padded row's first
value is never a target.
"""

import bisect
import json
import pathlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from gptjax.data import chat
from gptjax.data.sources import DataError, glob_files, is_glob, not_utf8, open_parquet
from gptjax.data.tokenizers import CharTokenizer
from gptjax.data.tokens import Dataset

IGNORE = -1  # a target left out of the loss (nanoGPT's ignore_index; gptjax.lm_head.IGNORE)
PAD_ID = 0  # the token that fills a row after its example; masked, so never a target
READ_ROWS = 1024  # Parquet rows read at a time (prepare.READ_ROWS)
_EXAMPLE = '{"prompt": "...", "completion": "..."}'


def masked(ids) -> np.ndarray:
    """Token ids encoded as read-only inputs: id t becomes -t - 1 (< 0), never a target."""
    return -np.asarray(ids, dtype=np.int32) - 1


def decode_rows(rows_BR: np.ndarray) -> tuple[np.ndarray, ...]:
    """Rows of block_size + 1 values -> int32 (x_BT, y_BT): x the tokens read (masked ones decoded),
    y the next token of each x, IGNORE where masked. Rows without negatives give x = rows[:, :-1],
    y = rows[:, 1:], as text windows and images are batched. Packed rows ([B, 2, block_size + 1]) give
    (x_BT, y_BT, segments_BT), the segment ids of x."""
    rows = np.asarray(rows_BR, dtype=np.int32)
    rows_BR, segments = (rows[:, 0], (rows[:, 1, :-1],)) if rows.ndim == 3 else (rows, ())
    x_BT, y_BT = rows_BR[:, :-1], rows_BR[:, 1:]
    return np.where(x_BT < 0, -x_BT - 1, x_BT), np.where(y_BT < 0, IGNORE, y_BT), *segments


def source_files(source: str | pathlib.Path | None) -> list[pathlib.Path]:
    """The files config.data.source names: one file, a directory's *.parquet (else its *.jsonl and
    *.json), or a glob's files, sorted, as a Hugging Face dataset's shards are downloaded; a one-line error
    when there are none (checked before a run fetches the model it fine-tunes)."""
    if not source:
        raise DataError("data.source is not set; pass --config.data.source=FILE.jsonl")
    path = pathlib.Path(source).expanduser()
    if not path.exists() and is_glob(str(source)):  # an existing path is itself, even with a "[" in it
        return glob_files(str(source))
    if path.is_dir():
        files = [f for f in sorted(path.glob("*.parquet")) if f.is_file()] or [
            f for f in sorted([*path.glob("*.jsonl"), *path.glob("*.json")]) if f.is_file()
        ]
        if not files:
            raise DataError(f"{path} holds no .parquet, .jsonl or .json files; fix --config.data.source")
        return files
    if not path.is_file():
        raise DataError(f"prompt/completion file {path} does not exist; fix --config.data.source")
    return [path]


def files_name(files: list[pathlib.Path]) -> str:
    """How messages about the whole data name it: its file, or its first file and how many more."""
    return str(files[0]) if len(files) == 1 else f"{files[0]} (and {len(files) - 1} more files)"


def records(files: list[pathlib.Path], example: str, columns: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    """("path:line" or "path:row N", record) of every record of `files` in order: each non-empty line of
    a JSON-lines file (json_lines), each row of a .parquet file as a dict of its `columns` (all of them
    if it has none: the record then lacks what its format needs, and says so), 1-based."""
    for path in files:
        if not path.name.lower().endswith(".parquet"):
            yield from json_lines(path, example)
            continue
        with open_parquet(path) as pf:
            names = [c for c in pf.schema_arrow.names if c in columns] or None
            row = 0
            for batch in pf.iter_batches(batch_size=READ_ROWS, columns=names):
                for record in batch.to_pylist():
                    row += 1
                    yield f"{path}:row {row}", record


def json_lines(path: pathlib.Path, example: str) -> Iterator[tuple[str, Any]]:
    """("path:line", parsed JSON) of each non-empty line of a UTF-8 file; a line that is not JSON is a
    one-line DataError that shows `example`."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from e
    # split("\n"), not splitlines(): JSON strings may hold a raw U+2028, which splitlines breaks at.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: not JSON ({e.msg} at column {e.colno}); write one object per line, {example}"
            ) from None
        yield where, obj


def _read(files: list[pathlib.Path], tokenizer=None) -> list[tuple[str, list[tuple[str, bool]], bool]]:
    """(where, (text, trained) pieces, whether EOS ends it) of every example in `files`: a pair is
    [(prompt, False), (completion, True)], a text [("", False), (text, True)], a conversation its ChatML
    pieces, or the tokenizer's chat template's (gptjax.data.chat.render: they end with the turn's end
    marker, not EOS)."""
    examples = []
    for where, obj in records(files, _EXAMPLE, ("prompt", "completion", "text", "messages")):
        if not isinstance(obj, dict):
            raise DataError(f"{where}: a JSON {type(obj).__name__}, not an object; write {_EXAMPLE}")
        if "completion" not in obj and "messages" in obj:
            messages = chat.check_messages(obj["messages"], where)
            if not any(m["role"] == "assistant" for m in messages):
                raise DataError(
                    f"{where}: nothing to train on: no assistant message; add one or drop the line"
                )
            examples.append((where, chat.render(messages, tokenizer), False))
            continue
        if "prompt" not in obj and "completion" not in obj and isinstance(obj.get("text"), str):
            examples.append((where, [("", False), (obj["text"], True)], True))
            continue
        for field in ("prompt", "completion"):
            if not isinstance(obj.get(field), str):
                got = "missing" if field not in obj else f"{type(obj[field]).__name__}, not a string"
                raise DataError(
                    f'{where}: "{field}" is {got}; every line needs {_EXAMPLE} (or {{"text": "..."}}, '
                    f'or {{"messages": [...]}})'
                )
        examples.append((where, [(obj["prompt"], False), (obj["completion"], True)], True))
    if not examples:
        raise DataError(
            f"{files_name(files)} holds no examples; give it one JSON object per line, {_EXAMPLE}"
        )
    return examples


def read_examples(path: str | pathlib.Path) -> list[list[tuple[str, bool]]]:
    """Each example of a source (source_files) as (text, trained) pieces, in file order (see _read)."""
    return [pieces for _, pieces, _ in _read(source_files(str(path)))]


def _example(pieces: list[tuple[list[int], bool]], length: int) -> tuple[np.ndarray, int]:
    """An example's values, at most `length`: its pieces' ids, masked where not trained; and how it was
    cut (the module docstring says how): 0 not, 1 the start of its first piece only, 2 its end."""
    values = [np.asarray(ids, np.int32) if trained else masked(ids) for ids, trained in pieces]
    over, cut = sum(map(len, values)) - length, 0
    if over > 0 and not pieces[0][1]:
        # First-piece tokens kept: all that fit beside the rest, and at least one if there are any.
        keep = min(len(values[0]), max(len(values[0]) - over, 1))
        cut = int(keep < len(values[0]))
        values[0] = values[0][len(values[0]) - keep :]
    values = np.concatenate(values)
    if len(values) > length:
        values, cut = values[:length], 2
    return values, cut


def pad(examples: list[np.ndarray], length: int) -> np.ndarray:
    """[len(examples), length] int32: one example per row, then masked padding."""
    rows = np.full((len(examples), length), masked(PAD_ID), dtype=np.int32)
    for row, values in zip(rows, examples, strict=True):
        row[: len(values)] = values
    return rows


def pack(examples: list[np.ndarray], length: int) -> np.ndarray:
    """[M, 2, length] int32: the examples packed into rows of `length` by best-fit decreasing (longest
    first, each into the row it fills most); plane 0 the values, each example's first one masked, then
    masked padding; plane 1 the segment ids: 1, 2, ... for a row's examples in file order, 0 for padding."""
    members: list[list[int]] = []  # the examples of each row
    free: list[tuple[int, int]] = []  # (space left, row) of the rows with space, sorted
    for i in sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i)):
        n = len(examples[i])
        j = bisect.bisect_left(free, (n, -1))  # the fullest row with room for it
        if j < len(free):
            space, r = free.pop(j)
            members[r].append(i)
        else:
            space, r = length, len(members)
            members.append([i])
        if space > n:
            bisect.insort(free, (space - n, r))
    rows = np.zeros((len(members), 2, length), dtype=np.int32)
    rows[:, 0] = masked(PAD_ID)
    for row, indices in zip(rows, members, strict=True):
        at = 0
        for segment, i in enumerate(sorted(indices), start=1):
            values = examples[i]
            row[0, at : at + len(values)] = values
            if values[0] >= 0:  # a completion's first token (no prompt): read, never a target
                row[0, at] = masked(values[0])
            row[1, at : at + len(values)] = segment
            at += len(values)
    return rows


def with_bos(tokenizer, ids: list[int]) -> list[int]:
    """An example's first ids with BOS before them where the tokenizer adds one (a Llama's:
    HFTokenizer.with_bos), as generation's prompts have it."""
    return tokenizer.with_bos(ids) if hasattr(tokenizer, "with_bos") else ids


def _encode(where: str, tokenizer, text: str) -> list[int]:
    try:
        return tokenizer.encode(text)
    except DataError as e:  # unknown characters: name the line they are on
        raise DataError(f"{where}: {e}") from None


def _examples(name: str, examples, tokenizer, length: int) -> list[np.ndarray]:
    """Each example's values (_example); warns once with how many examples were cut."""
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    values, cuts = [], [0, 0, 0]
    for where, pieces, ends_with_eos in examples:
        ids = [(_encode(where, tokenizer, text), trained) for text, trained in pieces]
        ids[0] = (with_bos(tokenizer, ids[0][0]), ids[0][1])
        if ends_with_eos:  # a pair or a text: the completion ends with EOS, so the model learns to stop
            (prompt_ids, _), (completion_ids, _) = ids
            ids[-1] = (completion_ids + eos, True)
            # Row position 0 is never a target: with no prompt, the first completion token is only read.
            if len(ids[-1][0]) < (1 if prompt_ids else 2):
                raise DataError(
                    f"{where}: nothing to train on: the completion gives {len(ids[-1][0])} token(s)"
                    f"{' (the tokenizer has no EOS)' if not eos else ''} after a prompt of "
                    f"{len(prompt_ids)}; give it a longer completion or drop the line"
                )
        example, cut = _example(ids, length)
        values.append(example)
        cuts[cut] += 1
    if cuts[1] or cuts[2]:
        warnings.warn(
            f"{name}: {cuts[1] + cuts[2]} of {len(examples)} examples are longer than "
            f"block_size + 1 = {length} tokens and were cut: {cuts[1]} lost the start of the prompt only, "
            f"{cuts[2]} the end of the completion (or conversation); raise model.block_size to keep them "
            "whole",
            stacklevel=3,
        )
    return values


def train_count(name: str, n: int, val_fraction: float, what: str) -> int:
    """How many of the data's `n` examples (pairs, ...: `what`) are the train split, the first ones in
    file order; the rest are val. A one-line error when either split would be empty."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction} must be in (0, 1); e.g. 0.1")
    n_train = int(n * (1 - val_fraction))
    if not 0 < n_train < n:
        raise DataError(
            f"{name} has {n} {what}(s), which leaves {n_train} for train and {n - n_train} for val at "
            f"val_fraction={val_fraction}; each split needs one: add {what}s or change "
            "--config.data.val_fraction"
        )
    return n_train


def load_sft_dataset(
    source: str | None,
    *,
    block_size: int,
    val_fraction: float,
    tokenizer=None,
    packing: bool = False,
) -> Dataset:
    """The prompt/completion data `source` (source_files) as train/val rows of block_size + 1 values, one
    example per row, or several with `packing` (see module doc).

    The val split is the last `val_fraction` of all files' examples in file order (split as prepare_tokens
    splits text: the first int(N * (1 - val_fraction)) train); each split is packed on its own.
    `tokenizer` None: the characters of every prompt and completion.
    """
    files = source_files(source)
    examples = _read(files, tokenizer)
    n_train = train_count(files_name(files), len(examples), val_fraction, "example")
    if tokenizer is None:
        text = "".join(text for _, pieces, _ in examples for text, _ in pieces)
        if not text:
            raise DataError(f"{files_name(files)}: every prompt and completion is empty; give them text")
        tokenizer = CharTokenizer.from_text(text)
    values = _examples(files_name(files), examples, tokenizer, block_size + 1)
    rows = pack if packing else pad
    return Dataset(
        train=rows(values[:n_train], block_size + 1),
        val=rows(values[n_train:], block_size + 1),
        tokenizer=tokenizer,
    )
