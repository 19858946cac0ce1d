"""Conversations as text: TRL's conversational format in ChatML or the model's own chat template, trained
on the assistant's turns only.

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
(`generation_prompt`) and stopped at <|im_end|> (`stops`).

A model imported from Hugging Face with a chat template (a Llama 3 or SmolLM instruct model: its
tokenizer_config.json's, kept by gptjax.data.HFTokenizer) is written with that template instead, rendered
with Jinja as transformers' apply_chat_template renders it. The answers' tokens are what the template's
{% generation %} blocks write, when it has them (transformers' return_assistant_tokens_mask, TRL's
assistant_only_loss); else they are found by rendering the conversation up to each assistant turn with and
without the turn (the template must then write a conversation as a prefix of its continuation, as most do;
Qwen3's, which drops the thinking of earlier turns, does not). A reply stops at any of the model's end
tokens.
"""

import datetime
import functools
import json
import re
from collections.abc import Sequence
from typing import Any

from gptjax.data.sources import DataError

ROLES = ("system", "user", "assistant")
START, END = "<|im_start|>", "<|im_end|>"
STOP = END  # the stop string that ends a generated assistant turn
# What a template's {% generation %} block writes is wrapped in these (Unicode private-use characters) when
# rendered here, so the trained text is found in one rendering; apply_template removes them.
GEN_OPEN, GEN_CLOSE = "\ue000", "\ue001"
_GENERATION = re.compile(f"{GEN_OPEN}(.*?){GEN_CLOSE}", re.S)
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


def render(messages: Sequence[dict], tokenizer: Any = None, trained_from: int = 0) -> list[tuple[str, bool]]:
    """The conversation as (text, trained) pieces, untrained ones merged: the content of each assistant
    turn from message `trained_from` on and its end marker are trained; the markers, roles and other turns
    are not. In ChatML, or the tokenizer's chat template when it has one."""
    pieces: list[tuple[str, bool]] = []

    def add(text: str, trained: bool) -> None:
        if pieces and pieces[-1][1] == trained:
            pieces[-1] = (pieces[-1][0] + text, trained)
        elif text:
            pieces.append((text, trained))

    if _template(tokenizer) is not None:
        marked = _render(tokenizer, messages, False)
        if GEN_OPEN in marked:  # the template marks the answers: its k-th block is the k-th answer
            answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
            spans = list(_GENERATION.finditer(marked))
            if len(spans) != len(answers) or GEN_OPEN in _GENERATION.sub("", marked):
                raise DataError(
                    f"the model's chat template writes {len(spans)} {{% generation %}} blocks for "
                    f"{len(answers)} assistant messages; give it one block around each answer"
                )
            at = 0
            for i, span in zip(answers, spans, strict=True):
                add(marked[at : span.start()], False)
                add(span[1], i >= trained_from)
                at = span.end()
            add(marked[at:], False)
            return pieces
        done = ""  # the text of the conversation so far, as the pieces hold it
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or i < trained_from:
                continue  # read: it comes with the next answer's prompt, or at the end
            head = _prefix(done, apply_template(tokenizer, messages[:i], True), i)
            whole = _prefix(head, apply_template(tokenizer, messages[: i + 1], False), i)
            add(head[len(done) :], False)
            add(whole[len(head) :], True)
            done = whole
        add(_prefix(done, marked, len(messages))[len(done) :], False)  # marked: no blocks, as rendered
        return pieces
    for i, m in enumerate(messages):
        add(f"{START}{m['role']}\n", False)
        if m["role"] == "assistant" and i >= trained_from:
            add(m["content"] + END, True)
            add("\n", False)
        else:
            add(f"{m['content']}{END}\n", False)
    return pieces


def generation_prompt(messages: Sequence[dict], tokenizer: Any = None) -> str:
    """The text a model continues to write the next assistant turn: the conversation, then
    "<|im_start|>assistant\\n" (HF's add_generation_prompt=True); with the tokenizer's chat template, what
    it writes for add_generation_prompt=True."""
    if _template(tokenizer) is not None:
        return apply_template(tokenizer, messages, True)
    return "".join(text for text, _ in render(messages)) + f"{START}assistant\n"


def stops(tokenizer: Any = None) -> list[str]:
    """The stop strings that end a generated assistant turn: <|im_end|>, or the model's end tokens."""
    if _template(tokenizer) is not None:
        return list(tokenizer.end_tokens)
    return [STOP]


def _template(tokenizer: Any) -> str | None:
    return getattr(tokenizer, "chat_template", None)


def _prefix(before: str, text: str, i: int) -> str:
    """`text`, which must start with `before` (the conversation rendered up to message i)."""
    if not text.startswith(before):
        raise DataError(
            f"the model's chat template writes the conversation up to message {i} differently once more "
            "follows, so the answers' tokens cannot be found; put {% generation %} ... {% endgeneration %} "
            "around the answers in the template (as TRL's assistant_only_loss needs), or fine-tune on ChatML "
            "(a tokenizer without chat_template)"
        )
    return text


def apply_template(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    """The tokenizer's chat template rendered as transformers' apply_chat_template renders it (Jinja in a
    sandbox, trim_blocks and lstrip_blocks, loop controls; messages, add_generation_prompt, bos_token,
    eos_token; raise_exception, tojson, strftime_now)."""
    return _render(tokenizer, messages, add_generation_prompt).replace(GEN_OPEN, "").replace(GEN_CLOSE, "")


def _render(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    """apply_template's text with what {% generation %} blocks write between GEN_OPEN and GEN_CLOSE."""
    try:
        return _compiled(tokenizer.chat_template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=tokenizer.bos_token or "",
            eos_token=tokenizer.eos_token or "",
        )
    except DataError:
        raise
    except Exception as e:  # a template bug or a message it refuses: one line naming it
        raise DataError(f"the model's chat template failed: {type(e).__name__}: {e}") from None


@functools.cache
def _compiled(template: str) -> Any:
    try:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise DataError("the model's chat template needs Jinja: pip install jinja2") from None

    def raise_exception(message: str):
        raise DataError(f"the model's chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _generation_extension()]
    )
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **_: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals.update(
        raise_exception=raise_exception, strftime_now=lambda f: datetime.datetime.now().strftime(f)
    )
    return env.from_string(template)


def _generation_extension() -> Any:
    """A Jinja extension for HF's {% generation %} ... {% endgeneration %} tag: the block's text, wrapped
    in GEN_OPEN and GEN_CLOSE."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_marked"), [], [], body).set_lineno(lineno)

        def _marked(self, caller):
            return GEN_OPEN + caller() + GEN_CLOSE

    return Generation
