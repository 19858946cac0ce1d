"""POST /v1/completions and /v1/chat/completions of gptjax.serve: OpenAI's (legacy) completions API on a
gptjax text model, its options checked and mapped onto gptjax.sample's, logprobs, and streaming as
server-sent events; the chat API on top of it, conversations written in ChatML (gptjax.data.chat)."""

import dataclasses
import functools
import time
import uuid
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import sample
from gptjax.data import DataError, chat
from gptjax.model import GPT
from gptjax.serve import BadRequest, Served, request_seed

# OpenAI's names for options that gptjax calls otherwise; the rest keep GenerateOptions' names.
OPENAI_NAMES = {"max_tokens": "max_new_tokens", "n": "num_return_sequences"}
# OpenAI fields gptjax does not implement: refused unless they ask for nothing (their value here).
UNSUPPORTED = {"presence_penalty": 0, "frequency_penalty": 0, "suffix": None, "logit_bias": None}
MAX_LOGPROBS = 5  # OpenAI's limit on the completions API's top logprobs
LIMITS = {"max_tokens": 65_536, "n": 128}  # per request


def _options(body: dict) -> tuple[list[str], dict, bool, bool, int | None]:
    """(prompts, GenerateOptions fields, stream, echo, logprobs) of a completions request."""
    body = dict(body)
    prompt = body.pop("prompt", None)
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("prompt must be a string or a non-empty list of strings")
    stream, echo = body.pop("stream", False), body.pop("echo", False)
    for name, value in (("stream", stream), ("echo", echo)):
        if not isinstance(value, bool):
            raise BadRequest(f"{name}={value!r} must be true or false")
    logprobs = body.pop("logprobs", None)
    if logprobs is not None and (
        not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= MAX_LOGPROBS
    ):
        raise BadRequest(
            f"logprobs={logprobs!r} must be an integer in [0, {MAX_LOGPROBS}] (top tokens per position)"
        )
    if logprobs is not None and stream:
        raise BadRequest("logprobs is not streamed; drop stream or logprobs")
    for openai, ours in OPENAI_NAMES.items():
        value = body.get(openai)
        if value is not None and ours in body:
            raise BadRequest(f"{openai} and {ours} are the same option; give one")
        least = 0 if (openai, echo) == ("max_tokens", True) else 1  # echo with 0 new tokens scores the prompt
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            hint = " (0 with echo)" if openai == "max_tokens" and least else ""
            raise BadRequest(f"{openai}={value!r} must be an integer >= {least}{hint}")
        if value is not None and value > LIMITS[openai]:  # the server has no authentication: bound the work
            raise BadRequest(f"{openai}={value} is more than this server's limit of {LIMITS[openai]}")
    for name in ("model", "user", "best_of", "stream_options"):
        if name == "best_of" and body.get(name) not in (None, body.get("n", 1)):
            raise BadRequest("best_of must equal n: gptjax returns every sequence it draws")
        body.pop(name, None)
    for name, nothing in UNSUPPORTED.items():
        if body.pop(name, nothing) not in (nothing, None):
            hint = "; use repetition_penalty" if name.endswith("penalty") else ""
            raise BadRequest(f"{name} is not supported by gptjax{hint}")
    options = {OPENAI_NAMES.get(k, k): v for k, v in body.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(sample.GenerateOptions)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise BadRequest(
            f"unknown fields {unknown}; see /v1/completions in gptjax/serve.py for the known ones"
        )
    return prompts, options, stream, echo, logprobs


def _finish_reason(c: sample.Completion, tokenizer: Any) -> str:
    """OpenAI's: "stop" when an EOS token or a stop string ended the text, else "length"."""
    eos = set(c.options.eos_token_id or ())
    if len(c.token_ids) and int(c.token_ids[-1]) in eos:
        return "stop"
    if c.options.stop and len(tokenizer.decode(c.token_ids)) > len(c.text):
        return "stop"
    return "length"


@functools.partial(jax.jit, static_argnames=("cfg", "k"))
def _scores(params: Any, cfg: Any, x_1T: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For every position t of one row: the log-probability of token t + 1 (T,; the last is of token 0,
    unused), and the k likeliest next tokens (values, ids (T, k)). Only these leave the device, not the
    (T, V) log-softmax (200 MB for GPT-2's context and vocabulary). Rows are padded to block_size (one
    compilation): the model is causal, so pads change nothing before them."""
    logp_TV = jax.nn.log_softmax(GPT(cfg).apply({"params": params}, x_1T)[0][0].astype(jnp.float32))
    next_T = jnp.roll(x_1T[0], -1)
    top_TK, ids_TK = jax.lax.top_k(logp_TV, k)
    return jnp.take_along_axis(logp_TV, next_T[:, None], axis=1)[:, 0], top_TK, ids_TK


def _logprobs(served: Served, prompt_ids: list[int], c: sample.Completion, k: int, echo: bool) -> dict:
    """OpenAI's logprobs object: for each token of the completion (echo: of the prompt too; its first token
    has none, null as in OpenAI's), its log-probability under the model and, for k > 0, the k likeliest
    tokens there. One forward pass over prompt + completion scores them, when they fit the context;
    otherwise (no echo, k = 0) the log-probabilities decoding kept are used."""
    params, cfg, tok = served.model[:3]
    ids = [*prompt_ids, *map(int, c.token_ids)]
    # Echoed, the prompt's own tokens: after a BOS that the tokenizer adds or an empty prompt starts with.
    first = len(prompt_ids) - len(tok.encode(c.prompt)) if echo else len(prompt_ids)
    tokens = [tok.decode([t]) for t in ids[first:]]
    offsets = list(np.cumsum([0, *map(len, tokens[:-1])]) + (0 if echo else len(c.prompt))) if tokens else []
    out = {
        "tokens": tokens,
        "token_logprobs": None,
        "top_logprobs": None,
        "text_offset": [int(o) for o in offsets],
    }
    if len(ids) > cfg.block_size:
        if echo or k:
            raise BadRequest(
                f"scoring the prompt (echo) or top logprobs takes one pass over prompt + completion: "
                f"{len(ids)} tokens exceed the model's context of {cfg.block_size}; ask for fewer tokens or "
                "a shorter prompt"
            )
        out["token_logprobs"] = [float(x) for x in c.logprobs]
        return out
    x_1T = np.zeros((1, cfg.block_size), np.int32)
    x_1T[0, : len(ids)] = ids
    next_logp_T, top_TK, ids_TK = (np.asarray(a) for a in _scores(params, cfg, x_1T, max(k, 1)))
    positions = range(first, len(ids))
    out["token_logprobs"] = [None if i == 0 else float(next_logp_T[i - 1]) for i in positions]
    if k:
        out["top_logprobs"] = [
            None
            if i == 0
            else {
                tok.decode([int(j)]): float(v)
                for j, v in zip(ids_TK[i - 1, :k], top_TK[i - 1, :k], strict=True)
            }
            for i in positions
        ]
    return out


def _assisted(served: Served, ids: list[list[int]], opts: sample.GenerateOptions, stream: bool) -> dict:
    """The served assistant's arguments for a request it can decode: greedy or sampling (no beams), each
    prompt and its new tokens within both models' context (assisted generation does not slide the
    window), one row if streamed (it decodes rows one after another). Others decode without it."""
    rows = len(ids) * opts.num_return_sequences
    if served.assistant is None or opts.mode in sample.BEAM_MODES or (stream and rows > 1):
        return {}
    _, n_new = sample._checked(served.model[1], ids, opts)
    if max(map(len, ids)) + n_new > min(served.model[1].block_size, served.assistant[1].block_size):
        return {}
    return {"assistant": served.assistant, "num_assistant_tokens": served.num_assistant_tokens}


def _stream_choices(served: Served, prompts: list[str], options: dict, echo: bool, piece) -> None:
    """Streams every choice a token at a time: `piece(index, text)` for each new piece of its text, then
    `piece(index, "", finish_reason)`. Prompt p's j-th sample is choice p * n + j, as unstreamed.

    gptjax.sample.complete streams one prompt and one sequence only (its callback gets text, not a row),
    so this decodes with sample.generate_ids, whose on_chunk sees every row's tokens, and cuts each row as
    complete does: before its first EOS token and its first stop string. While a row can still change,
    its last len(longest stop) - 1 characters wait (a stop string may be starting there), and so do the
    first bytes of a character split across tokens: the pieces of a choice join to its unstreamed text."""
    params, cfg, tok, saved = served.model
    opts = sample.merged_options(saved, tok, **options)
    if opts.mode in sample.BEAM_MODES:
        raise BadRequest("beam search is not streamed; drop stream or num_beams")
    if opts.prompt_lookup_num_tokens and len(prompts) * opts.num_return_sequences > 1:
        raise BadRequest("prompt_lookup_num_tokens decodes one row at a time: stream one choice, or drop it")
    eos = set(opts.eos_token_id or ())

    def text_of(row: np.ndarray) -> tuple[str, str, bool]:  # what may be shown of it, as complete cuts it
        return sample.text_so_far(tok, row, eos, opts.stop)

    n = opts.num_return_sequences
    if echo:
        for i in range(len(prompts) * n):
            piece(i, prompts[i // n])
    shown = [0] * (len(prompts) * n)  # characters of each choice written so far

    def write_new(i: int, text: str) -> None:
        if len(text) > shown[i]:
            piece(i, text[shown[i] :])
            shown[i] = len(text)

    finished = [False] * len(shown)

    def finish(i: int, text: str, reason: str) -> None:
        write_new(i, text)
        piece(i, "", reason)  # as _finish_reason says of the unstreamed
        finished[i] = True

    def on_chunk(new_BN: np.ndarray) -> bool:
        for i, row in enumerate(new_BN):
            if not finished[i]:
                text, final, stopped = text_of(row)
                write_new(i, final)
                if stopped:  # an EOS or a stop string: the choice ends now, while others go on
                    finish(i, text, "stop")
        return all(finished)

    ids = [sample.prompt_ids(tok, p) for p in prompts]
    with served.lock:
        assisted = _assisted(served, ids, opts, stream=True)
        generated = sample.generate_ids(params, cfg, ids, opts, on_chunk=on_chunk, chunk=1, **assisted)
    for i, row in enumerate(row for rows in generated for row in rows):
        if not finished[i]:
            text, _, stopped = text_of(row)
            finish(i, text, "stop" if stopped else "length")


def completions(served: Served, body: dict, write_event=None) -> dict | None:
    """The response to a completions request; with stream=True, `write_event(dict)` gets OpenAI's chunks
    (each choice's last one carries its finish_reason) and None is returned."""
    prompts, options, stream, echo, logprobs = _options(body)
    tok = served.tokenizer
    if served.is_image:
        raise BadRequest("this model draws images; POST /v1/images")
    if "" in prompts and tok.bos_id is None and tok.eos_id is None:
        raise BadRequest("a prompt is empty, and this model's tokenizer has no start token: give some text")
    if stream and options.get("max_new_tokens") == 0:
        raise BadRequest("max_tokens=0 scores the prompt, which is not streamed; drop stream")
    options["seed"] = request_seed(served, options)
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time())}
    head.update(model=served.name, seed=options["seed"])
    if stream:  # one chunk per piece of a choice's text, as OpenAI's

        def piece(index: int, text: str, reason: str | None = None) -> None:
            choice = {"text": text, "index": index, "logprobs": None, "finish_reason": reason}
            write_event({**head, "choices": [choice]})

        _stream_choices(served, prompts, options, echo, piece)
        return None
    with served.lock:
        if options.get("max_new_tokens") == 0:  # echo only: the prompt, to be scored
            n = options.get("num_return_sequences", 1)
            empty = sample.Completion("", "", np.zeros(0, np.int32), np.zeros(0, np.float32), None)
            done = [dataclasses.replace(empty, prompt=p) for p in prompts for _ in range(n)]
        else:
            assisted = {}
            if served.assistant is not None:
                opts = sample.merged_options(served.model[3], tok, **options)
                assisted = _assisted(served, [sample.prompt_ids(tok, p) for p in prompts], opts, stream=False)
            done = sample.complete(served.model, prompts, **options, **assisted)
        choices = []
        for i, c in enumerate(done):
            choice = {"text": (c.prompt if echo else "") + c.text, "index": i, "logprobs": None}
            if logprobs is not None:
                choice["logprobs"] = _logprobs(served, sample.prompt_ids(tok, c.prompt), c, logprobs, echo)
            reason = "length" if c.options is None else _finish_reason(c, tok)
            choices.append({**choice, "finish_reason": reason})
    prompt_tokens = sum(len(sample.prompt_ids(tok, p)) for p in prompts)
    completion_tokens = sum(len(c.token_ids) for c in done)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return {**head, "choices": choices, "usage": {**usage, "total_tokens": prompt_tokens + completion_tokens}}


def chat_completions(served: Served, body: dict, write_event=None) -> dict | None:
    """The response to a chat completions request: its messages in ChatML (or the model's own chat
    template), completed as /v1/completions completes chat.generation_prompt(messages) with <|im_end|>
    (the model's end tokens) added to the stop strings (the model learns to write it after each answer
    when fine-tuned on conversations: gptjax.data.sft), each choice the assistant's message. Streamed,
    OpenAI's chat chunks: a choice's first delta carries its role."""
    body = dict(body)
    try:
        messages = chat.check_messages(body.pop("messages", None))
    except DataError as e:
        raise BadRequest(str(e)) from None
    for name in ("prompt", "echo", "suffix"):
        if name in body:
            raise BadRequest(f"{name} is a /v1/completions field, not a chat one; drop it")
    if body.pop("logprobs", None) or body.pop("top_logprobs", None) is not None:
        raise BadRequest(
            "chat completions give no logprobs here; POST /v1/completions with logprobs and the prompt "
            "gptjax.data.chat.generation_prompt(messages) gives"
        )
    if body.get("max_completion_tokens") is not None:  # OpenAI's newer name for max_tokens
        if body.get("max_tokens") is not None:
            raise BadRequest("max_completion_tokens and max_tokens are the same option; give one")
        body["max_tokens"] = body.pop("max_completion_tokens")
    body.pop("max_completion_tokens", None)
    stop, tokenizer = body.get("stop"), served.tokenizer
    if stop is None or isinstance(stop, str | list):  # anything else is refused with completions' line
        body["stop"] = [*([stop] if isinstance(stop, str) else stop or []), *chat.stops(tokenizer)]
    try:
        body["prompt"] = chat.generation_prompt(messages, tokenizer)
    except DataError as e:  # the model's own template refused them
        raise BadRequest(str(e)) from None
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}"}
    if write_event is not None:
        started = set()

        def chunk(event: dict) -> None:
            (choice,) = event["choices"]
            delta = {"content": choice["text"]} if choice["text"] else {}
            if choice["index"] not in started:  # a choice's first chunk says whose message it is
                started.add(choice["index"])
                delta = {"role": "assistant", **delta}
            reason = choice["finish_reason"]
            out = {"index": choice["index"], "delta": delta, "logprobs": None, "finish_reason": reason}
            write_event({**event, **head, "object": "chat.completion.chunk", "choices": [out]})

        completions(served, body, chunk)
        return None
    out = completions(served, body)
    choices = [
        {
            "index": c["index"],
            "message": {"role": "assistant", "content": c["text"]},
            "logprobs": None,
            "finish_reason": c["finish_reason"],
        }
        for c in out["choices"]
    ]
    return {**out, **head, "object": "chat.completion", "choices": choices}
