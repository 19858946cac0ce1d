"""Prompts for online learning (GRPO: gptjax.grpo), and a prompt's token ids as generation reads them.

The data is TRL's prompt-only format: JSON lines {"prompt": "..."}, or {"prompt": [messages]} for a
conversation whose next assistant turn the model writes (chat.generation_prompt: ChatML, or the tokenizer's
chat template), or Parquet files with a "prompt" column. Every other field of a record (an answer to check,
a test to run) goes to the reward functions beside each completion, as TRL passes a dataset's other columns
to them. The val split is the last val_fraction of the records. A prompt longer than `max_tokens` (what the
context leaves the completion) loses its start, as generation crops a prompt, with one warning.
"""

import dataclasses
import warnings
from typing import Any

from gptjax.data import chat
from gptjax.data.sft import files_name, records, source_files, train_count, with_bos
from gptjax.data.sources import DataError

_EXAMPLE = '{"prompt": "..."}'


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """A prompt's token ids as HF's tokenizer(prompt) gives them: BOS first for a tokenizer that adds it
    (a Llama's: HFTokenizer.with_bos); an empty prompt starts from the BOS (else EOS) token."""
    ids = with_bos(tokenizer, tokenizer.encode(prompt))
    if not ids:
        start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if start is None:
            raise ValueError("the prompt is empty and the tokenizer has no BOS/EOS token to start from")
        ids = [start]
    return ids


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt: the ids generation starts from, the prompt as the record gives it (a string or
    messages: what reward functions receive) and the record's other fields."""

    ids: tuple[int, ...]
    prompt: Any
    columns: dict


@dataclasses.dataclass(frozen=True)
class PromptDataset:
    train: list[Prompt]
    val: list[Prompt]
    tokenizer: Any
    train_labels: None = None  # no labels, no reference: the fields training reads from a Dataset
    val_labels: None = None


def load_prompts(source: Any, *, val_fraction: float, tokenizer: Any, max_tokens: int) -> PromptDataset:
    """The prompts of `source` (gptjax.data.sft.source_files), split train/val, encoded by `tokenizer`
    (the model's); one-line DataErrors for a record without a prompt, of the wrong kind, or none."""
    if tokenizer is None:
        raise ValueError("prompts are encoded by the model's tokenizer: set --config.init_from to a model")
    files = source_files(source)
    prompts, cropped = [], 0
    for where, obj in records(files, _EXAMPLE, ()):
        if not isinstance(obj, dict) or "prompt" not in obj:
            raise DataError(f'{where}: no "prompt"; every line needs {_EXAMPLE} (or a list of messages)')
        prompt = obj["prompt"]
        if isinstance(prompt, list):
            text = chat.generation_prompt(chat.check_messages(prompt, f"{where}: prompt"), tokenizer)
        elif isinstance(prompt, str):
            text = prompt
        else:
            raise DataError(
                f"{where}: prompt is a {type(prompt).__name__}; give a string or a list of messages"
            )
        try:
            ids = prompt_ids(tokenizer, text)
        except DataError as e:  # characters the tokenizer lacks: name the line
            raise DataError(f"{where}: {e}") from None
        cropped += len(ids) > max_tokens
        columns = {k: v for k, v in obj.items() if k != "prompt"}
        prompts.append(Prompt(tuple(ids[-max_tokens:]), prompt, columns))
    if not prompts:
        raise DataError(f"{files_name(files)} holds no prompts; give it one JSON object per line, {_EXAMPLE}")
    if cropped:
        warnings.warn(
            f"{files_name(files)}: {cropped} of {len(prompts)} prompts are longer than the {max_tokens} "
            "tokens block_size leaves after max_new_tokens and lost their start; raise model.block_size or "
            "lower max_new_tokens to keep them whole",
            stacklevel=2,
        )
    n_train = train_count(files_name(files), len(prompts), val_fraction, "prompt")
    return PromptDataset(prompts[:n_train], prompts[n_train:], tokenizer)
