"""Conversations as text: TRL's conversational format in ChatML, trained on the assistant's turns only.

A conversation is a list of messages {"role": "system" | "user" | "assistant", "content": "..."}. GPT-2
has no chat template, so gptjax writes every conversation in ChatML (OpenAI's; what TRL's
setup_chat_format gives a model without a template):

  <|im_start|>user
  What is 2+2?<|im_end|>
  <|im_start|>assistant
  4<|im_end|>

The markers are plain text, tokenized like any other (the tokenizer gets no new tokens). A model learns
each assistant turn's content and the <|im_end|> after it (TRL's assistant_only_loss); everything else is
read only. To answer, a model is given the conversation so far and "<|im_start|>assistant\n"
(`generation_prompt`) and stopped at <|im_end|> (STOP).
"""

from collections.abc import Sequence
from typing import Any

from gptjax.data.sources import DataError

ROLES = ("system", "user", "assistant")
START, END = "<|im_start|>", "<|im_end|>"
STOP = END  # the stop string that ends a generated assistant turn
_EXAMPLE = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'


def check_messages(messages: Any, where: str = "messages") -> list[dict]:
    """`messages` as a list of {"role", "content"} dicts, or a one-line DataError naming what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}}; write {_EXAMPLE}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(
                f'{where}: message {i} is {str(m)[:60]}, not {{"role": one of {list(ROLES)}, "content": '
                "a string}; fix it or drop the line"
            )
    return messages


def render(messages: Sequence[dict]) -> list[tuple[str, bool]]:
    """The conversation in ChatML as (text, trained) pieces, untrained ones merged: an assistant turn's
    content and its <|im_end|> are trained, the markers, roles and other turns are not."""
    pieces: list[tuple[str, bool]] = []

    def add(text: str, trained: bool) -> None:
        if pieces and pieces[-1][1] == trained:
            pieces[-1] = (pieces[-1][0] + text, trained)
        elif text:
            pieces.append((text, trained))

    for m in messages:
        add(f"{START}{m['role']}\n", False)
        if m["role"] == "assistant":
            add(m["content"] + END, True)
            add("\n", False)
        else:
            add(f"{m['content']}{END}\n", False)
    return pieces


def generation_prompt(messages: Sequence[dict]) -> str:
    """The text a model continues to write the next assistant turn: the conversation, then
    "<|im_start|>assistant\\n" (HF's add_generation_prompt=True)."""
    return "".join(text for text, _ in render(messages)) + f"{START}assistant\n"
