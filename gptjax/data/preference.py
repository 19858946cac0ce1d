"""Preference pairs for DPO (gptjax.dpo): a prompt, the answer preferred and the answer rejected.

The data is JSON lines, one pair per non-empty line: {"prompt": "...", "chosen": "...", "rejected":
"..."} (TRL's preference format with an explicit prompt; an optional "margin" number, how much better
the chosen answer is, goes to a reward model's loss: Dataset.train_margins), or the conversational form:
"prompt" a list of messages and "chosen" and "rejected" each a list of assistant messages, written in ChatML
(gptjax.data.chat; the prompt's own assistant turns are read, not trained). A conversational pair without
"prompt" (TRL's implicit prompt, as trl-lib/ultrafeedback_binarized has it) takes the messages that chosen
and rejected begin with alike as its prompt. It may also be Parquet files whose rows hold the same fields,
other columns ignored (a Hugging Face dataset's shards: gptjax.data.sft.source_files). Each answer becomes
one row as a prompt/completion example does (gptjax.data.sft: the prompt masked, the answer and its EOS, or
<|im_end|>, trained, an example too long cut the same way), so a pair is two rows: the split is
[N, 2, block_size + 1] int32, chosen then rejected. The val split is the last val_fraction of the pairs.

Unpaired preference data (TRL's KTO format: {"prompt": "...", "completion": "...", "label": true}, label
true for a desirable completion, false for an undesirable one; conversational as above with "completion"
the assistant messages) gives pairs too, for dpo.loss_type="kto": each example's row, then the row of its
prompt with the completion of the next example of its split (the last: the first's), the mismatched pair
KTO estimates its KL term with; Dataset.train_labels / val_labels hold each example's label (1, 0).

`get_pairs` draws pairs as get_batch draws rows, from (seed, step, split) only: (x_BT, y_BT, ref_BT) with
B = 2 x pairs, each pair's two rows adjacent (chosen first), and ref_BT the reference model's
log-probability of each row's answer at its position 0 (with labels, a KTO example's label at the first
row's position 1), zeros elsewhere: every array is [B, T], so a pair
batch splits over devices and micro-batches as a token batch does (pairs stay whole when each part has
an even number of rows: gptjax.train checks it).
"""

import pathlib
import warnings

import numpy as np

from gptjax.data import chat
from gptjax.data.sft import (
    _encode,
    _example,
    decode_rows,
    files_name,
    pad,
    records,
    source_files,
    train_count,
    with_bos,
)
from gptjax.data.sources import DataError
from gptjax.data.tokenizers import CharTokenizer
from gptjax.data.tokens import _SPLIT_CODES, Dataset

ANSWERS = ("chosen", "rejected")
UNPAIRED = ("prompt", "completion", "label")  # TRL's unpaired preference (KTO) fields
_EXAMPLE = '{"prompt": "...", "chosen": "...", "rejected": "..."}'
_UNPAIRED_EXAMPLE = '{"prompt": "...", "completion": "...", "label": true}'


def _implicit_prompt(obj: dict) -> dict:
    """A conversational pair without "prompt": the messages chosen and rejected begin with alike are the
    prompt, the rest the answers (TRL's extract_prompt)."""
    chosen, rejected = obj["chosen"], obj["rejected"]
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return {**obj, "prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


def _answer(where: str, prompt, answer, tokenizer, name: str = "completion") -> tuple[list, bool]:
    """((text, trained) pieces, whether EOS ends the answer) of a prompt and one answer (field `name`):
    strings, or messages, the prompt read only and the answer's assistant turns trained (chat.render:
    ChatML, or the tokenizer's chat template)."""
    if isinstance(prompt, str) and isinstance(answer, str):
        return [(prompt, False), (answer, True)], True
    if not (isinstance(prompt, list) and isinstance(answer, list)):
        raise DataError(f"{where}: prompt and {name} must be both strings or both lists of messages")
    prompt = chat.check_messages(prompt, f"{where}: prompt")
    answer = chat.check_messages(answer, f"{where}: {name}")
    if any(m["role"] != "assistant" for m in answer):
        raise DataError(f"{where}: {name} must hold assistant messages only (the reply to the prompt)")
    return chat.render(prompt + answer, tokenizer, trained_from=len(prompt)), False


def read_unpaired(files: list[pathlib.Path], val_fraction: float, tokenizer=None):
    """(pairs as read_pairs gives them, labels [N] int32, train count) of unpaired examples (see the module
    doc): each example with the next one's completion in its split."""
    examples = []
    for where, obj in records(files, _UNPAIRED_EXAMPLE, UNPAIRED):
        if not isinstance(obj, dict) or any(k not in obj for k in UNPAIRED):
            raise DataError(f"{where}: every line needs {_UNPAIRED_EXAMPLE} (or lists of messages)")
        if not isinstance(obj["label"], bool):
            raise DataError(
                f"{where}: label is {obj['label']!r}; write true (desirable) or false (undesirable)"
            )
        examples.append((where, obj["prompt"], obj["completion"], obj["label"]))
    n_train = train_count(files_name(files), len(examples), val_fraction, "example")
    pairs = []
    for split in (examples[:n_train], examples[n_train:]):
        for i, (where, prompt, completion, _) in enumerate(split):
            answer, eos = _answer(where, prompt, completion, tokenizer)
            mismatched, _ = _answer(where, prompt, split[(i + 1) % len(split)][2], tokenizer)
            pairs.append((where, [answer, mismatched], eos))
    return pairs, np.array([e[3] for e in examples], np.int32), n_train


def read_pairs(
    files: list[pathlib.Path], tokenizer=None
) -> tuple[list[tuple[str, list[list[tuple[str, bool]]], bool]], np.ndarray | None]:
    """((where, [chosen pieces, rejected pieces], whether EOS ends each answer) of every pair in `files`,
    their "margin" fields [N] float32 (0 where a pair has none; None when no pair has one))."""
    pairs, margins = [], []
    for where, prompt, *answers, margin in pair_records(files, margins=True):
        answers = [_answer(where, prompt, a, tokenizer, k) for k, a in zip(ANSWERS, answers, strict=True)]
        pairs.append((where, [pieces for pieces, _ in answers], answers[0][1]))
        margins.append(margin)
    if all(m is None for m in margins):
        return pairs, None
    return pairs, np.array([m or 0.0 for m in margins], np.float32)


def pair_records(files: list[pathlib.Path], margins: bool = False) -> list[tuple]:
    """(where, prompt, chosen, rejected) of every pair in `files`, checked (strings, or lists of messages
    with the implicit prompt taken out), and with `margins` its "margin" (a number, or None without one);
    a one-line DataError for a bad one or none."""
    pairs = []
    for where, obj in records(files, _EXAMPLE, ("prompt", *ANSWERS, "margin")):
        if (
            isinstance(obj, dict)
            and "prompt" not in obj
            and all(isinstance(obj.get(k), list) for k in ANSWERS)
        ):
            obj = _implicit_prompt(obj)
        if not isinstance(obj, dict) or any(k not in obj for k in ("prompt", *ANSWERS)):
            missing = [k for k in ("prompt", *ANSWERS) if k not in obj] if isinstance(obj, dict) else []
            raise DataError(
                f"{where}: {'no ' + ', '.join(missing) if missing else 'not an object'}; every line needs "
                f'{_EXAMPLE} (or lists of messages: "prompt" the conversation, "chosen" and "rejected" '
                "assistant replies)"
            )
        if not any(all(isinstance(obj[k], t) for k in ("prompt", *ANSWERS)) for t in (str, list)):
            kinds = ", ".join(f"{k}: {type(obj[k]).__name__}" for k in ("prompt", *ANSWERS))
            raise DataError(
                f"{where}: prompt, chosen and rejected must be all strings or all lists ({kinds})"
            )
        margin = obj.get("margin")
        if margin is not None and not (
            isinstance(margin, int | float) and not isinstance(margin, bool) and np.isfinite(margin)
        ):
            raise DataError(
                f"{where}: margin is {margin!r}; give a number (how much better chosen is) or none"
            )
        pairs.append((where, obj["prompt"], *(obj[k] for k in ANSWERS), *((margin,) if margins else ())))
    if not pairs:
        raise DataError(f"{files_name(files)} holds no pairs; give it one JSON object per line, {_EXAMPLE}")
    return pairs


def answer_row(where: str, pieces, ends_with_eos: bool, tokenizer, length: int) -> tuple[np.ndarray, int]:
    """(row values, how it was cut: sft._example's) of one answer's (text, trained) pieces: BOS where the
    tokenizer adds one, the answer's EOS when `ends_with_eos`, at most `length` values. gptjax.scoring
    reads a text with a reward model through here, so its rows are training's."""
    ids = [(_encode(where, tokenizer, text), trained) for text, trained in pieces]
    ids[0] = (with_bos(tokenizer, ids[0][0]), ids[0][1])
    if ends_with_eos and tokenizer.eos_id is not None:
        ids[-1] = (ids[-1][0] + [tokenizer.eos_id], True)
    return _example(ids, length)


def _rows(name: str, pairs, tokenizer, length: int) -> np.ndarray:
    """[N, 2, length] rows of the pairs; warns once with how many answers' rows were cut."""
    values, cut = [], 0
    for where, answers, ends_with_eos in pairs:
        for pieces in answers:
            row, how = answer_row(where, pieces, ends_with_eos, tokenizer, length)
            if not (row[1:] >= 0).any():  # a row's first value is only read, never a target
                raise DataError(
                    f"{where}: an answer gives no token to train on after its prompt; give every answer "
                    "text (and a prompt, or a tokenizer with an EOS) or drop the line"
                )
            values.append(row)
            cut += how > 0
    if cut:
        warnings.warn(
            f"{name}: {cut} of {len(values)} answers (with their prompts) are longer than block_size + 1 = "
            f"{length} tokens and were cut as prompt/completion examples are; raise model.block_size to keep "
            "them whole",
            stacklevel=3,
        )
    return pad(values, length).reshape(len(pairs), 2, length)


def load_preference_dataset(
    source: str | None, *, block_size: int, val_fraction: float, tokenizer=None
) -> Dataset:
    """The preference data `source` (source_files) as train/val pairs of rows [N, 2, block_size + 1] (see
    module doc). `tokenizer` None: the characters of every prompt and answer."""
    files = source_files(source)
    reading = records(files, _EXAMPLE, (*ANSWERS, *UNPAIRED))
    first = next(reading, (None, {}))[1]
    reading.close()
    labels = margins = None
    if isinstance(first, dict) and "completion" in first and "label" in first:  # KTO's unpaired examples
        pairs, labels, n_train = read_unpaired(files, val_fraction, tokenizer)
    else:
        pairs, margins = read_pairs(files, tokenizer)
        n_train = train_count(files_name(files), len(pairs), val_fraction, "pair")
    if tokenizer is None:
        text = "".join(t for _, answers, _ in pairs for pieces in answers for t, _ in pieces)
        tokenizer = CharTokenizer.from_text(text)
    rows = _rows(files_name(files), pairs, tokenizer, block_size + 1)
    if labels is None:
        margin = (
            {} if margins is None else dict(train_margins=margins[:n_train], val_margins=margins[n_train:])
        )
        return Dataset(train=rows[:n_train], val=rows[n_train:], tokenizer=tokenizer, **margin)
    return Dataset(rows[:n_train], rows[n_train:], tokenizer, labels[:n_train], labels[n_train:])


def get_pairs(
    rows_N2R: np.ndarray,
    ref_N2: np.ndarray,
    *,
    batch_size: int,
    block_size: int,
    seed: int,
    step: int,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`batch_size` random pairs as (x_BT, y_BT, ref_BT), B = 2 * batch_size (see module doc); `ref_N2`
    the reference log-probabilities of the rows' answers (gptjax.dpo.reference_logps), and for KTO a
    third column, the labels (gptjax.dpo.with_reference)."""
    if rows_N2R.shape[-1] != block_size + 1:
        raise DataError(
            f"{split} preference rows are {rows_N2R.shape[-1]} tokens, built for block_size="
            f"{rows_N2R.shape[-1] - 1}, not {block_size}; build them with the model's block_size"
        )
    rng = np.random.default_rng([seed, step, _SPLIT_CODES[split]])
    pick_B = rng.integers(0, len(rows_N2R), size=batch_size)
    x_BT, y_BT = decode_rows(rows_N2R[pick_B].reshape(2 * batch_size, block_size + 1))
    ref_BT = np.zeros(x_BT.shape, np.float32)
    ref = np.asarray(ref_N2, np.float32)[pick_B]
    ref_BT[:, 0] = ref[:, :2].reshape(-1)
    if ref.shape[1] == 3:
        ref_BT[0::2, 1] = ref[:, 2]
    return x_BT, y_BT, ref_BT
