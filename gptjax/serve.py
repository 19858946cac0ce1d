"""A local server for a trained model: OpenAI's completions API and the studio, a page to write with it.

  python scripts/serve.py --workdir=W            # then open http://127.0.0.1:8000

  GET  /                the studio: prompt, options, text streamed as it comes (image models: draw, complete)
  GET  /v1/models       the model served, in OpenAI's list format (plus a "gptjax" entry: sizes, classes)
  POST /v1/completions  OpenAI's (legacy) completions API: prompt (a string or a list), max_tokens, n,
                        temperature, top_p, stop, seed, echo, logprobs (top k <= 5; with echo and
                        max_tokens 0 it scores the prompt), stream (server-sent events), and
                        any gptjax.sample.GenerateOptions field by its own name (top_k, min_p,
                        repetition_penalty, num_beams ...). Fields left out take the workdir's
                        config.sample values, as scripts/sample.py does.
  POST /v1/images       an image model: a PNG grid of images drawn, or of completions of a given image
                        (gptjax.serve_images)

Generation runs one request at a time (a lock): the model and its compiled decoder are shared. A request
without a seed gets a fresh one (the response's "seed" says which), unless config.sample sets one.
Streaming sends each choice's text a token at a time, any prompts and n (chunks name their choice by
index), without logprobs or beam search. Errors are OpenAI's {"error": {"message", "type"}}
with status 400 for a bad request.
"""

import dataclasses
import functools
import http.server
import importlib.resources
import json
import pathlib
import secrets
import threading
import time
import traceback
import uuid
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import sample
from gptjax.data import DataError
from gptjax.model import GPT, count_params

# OpenAI's names for options that gptjax calls otherwise; the rest keep GenerateOptions' names.
OPENAI_NAMES = {"max_tokens": "max_new_tokens", "n": "num_return_sequences"}
# OpenAI fields gptjax does not implement: refused unless they ask for nothing (their value here).
UNSUPPORTED = {"presence_penalty": 0, "frequency_penalty": 0, "suffix": None, "logit_bias": None}
MAX_LOGPROBS = 5  # OpenAI's limit on the completions API's top logprobs
MAX_BODY_BYTES = 1 << 20
MAX_IMAGE_BODY_BYTES = 16 << 20  # /v1/images: a photo to complete, base64-encoded
IMAGE_OPTIONS = ("temperature", "top_k", "top_p", "min_p", "seed")  # /v1/images' sampling options
LIMITS = {"max_tokens": 65_536, "n": 128}  # per request
# A body over its limit gets a 413, then is read and dropped (Handler._drop_body): a client still sending
DRAIN_BYTES, DRAIN_TIMEOUT_S = 64 << 20, 2.0  # sees the answer rather than a connection reset


class BadRequest(ValueError):
    """A request the API refuses (400), with a one-line message."""


class TooLarge(BadRequest):
    """A body over the endpoint's limit (413); `unread`: its bytes still to come (None: unknown)."""

    def __init__(self, message: str, unread: int | None):
        super().__init__(message)
        self.unread = unread


@dataclasses.dataclass
class Served:
    """The model a server holds: (params, GPTConfig, tokenizer, saved sample options) and its name."""

    model: tuple
    name: str
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def tokenizer(self) -> Any:
        return self.model[2]

    @property
    def is_image(self) -> bool:
        return getattr(self.tokenizer, "kind", None) == "palette"

    def info(self) -> dict:
        params, cfg, tok, saved = self.model
        extra = {
            "kind": "image" if self.is_image else "text",
            "parameters": count_params(params),
            "block_size": cfg.block_size,
            "vocab_size": tok.vocab_size,
            "tokenizer": tok.kind,
            "sample_defaults": {k: v for k, v in saved.items() if k != "prompt"},
            "prompt": saved.get("prompt", ""),
        }
        if self.is_image:  # only the options /v1/images takes
            extra.update(sample_defaults={k: v for k, v in saved.items() if k in IMAGE_OPTIONS}, prompt=None)
            extra.update(classes=tok.classes, height=tok.height, width=tok.width)
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "gptjax", "gptjax": extra}


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
    first = (0 if c.prompt else 1) if echo else len(prompt_ids)  # an empty prompt starts from a BOS token
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


def request_seed(served: Served, options: dict) -> int:
    """The request's seed, else the workdir's config.sample.seed, else a fresh one: as OpenAI's API, a
    request without a seed draws new text each time (the response says which seed it used)."""
    seed = options.get("seed", served.model[3].get("seed"))
    return secrets.randbelow(2**31) if seed is None else seed


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

    ids = [tok.encode(p) or [tok.bos_id if tok.bos_id is not None else tok.eos_id] for p in prompts]
    with served.lock:
        generated = sample.generate_ids(params, cfg, ids, opts, on_chunk=on_chunk, chunk=1)
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
            done = sample.complete(served.model, prompts, **options)
        choices = []
        for i, c in enumerate(done):
            choice = {"text": (c.prompt if echo else "") + c.text, "index": i, "logprobs": None}
            if logprobs is not None:
                prompt_ids = tok.encode(c.prompt) or [tok.bos_id if tok.bos_id is not None else tok.eos_id]
                choice["logprobs"] = _logprobs(served, prompt_ids, c, logprobs, echo)
            reason = "length" if c.options is None else _finish_reason(c, tok)
            choices.append({**choice, "finish_reason": reason})
    prompt_tokens = sum(len(tok.encode(p)) for p in prompts)
    completion_tokens = sum(len(c.token_ids) for c in done)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return {**head, "choices": choices, "usage": {**usage, "total_tokens": prompt_tokens + completion_tokens}}


class Handler(http.server.BaseHTTPRequestHandler):
    served: Served  # set on the subclass make_server builds
    server_version = "gptjax"

    def log_message(self, format, *args):  # noqa: A002  (one quiet line per request, not two)
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

    def do_GET(self):  # noqa: N802  (http.server's name)
        if self.path in ("/", "/index.html"):
            page = importlib.resources.files("gptjax").joinpath("studio.html").read_bytes()
            self._send(200, page, "text/html; charset=utf-8")
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [self.served.info()]})
        elif self.path == f"/v1/models/{self.served.name}":  # OpenAI's models.retrieve
            self._json(200, self.served.info())
        elif self.path in ("/v1/completions", "/v1/images"):
            self._error(405, f"{self.path} takes POST with a JSON body", "method_not_allowed")
        else:
            self._error(404, f"no page {self.path}; try / or /v1/models", "not_found")

    def do_POST(self):  # noqa: N802
        from gptjax.serve_images import images  # here: it imports this module

        routes = {"/v1/completions": completions, "/v1/images": images}
        if self.path not in routes:
            return self._error(
                404, f"no endpoint {self.path}; POST /v1/completions or /v1/images", "not_found"
            )
        try:
            raw = self._read_body()
            try:
                body = json.loads(raw or b"{}")
            except ValueError as e:
                raise BadRequest(f"the body is not valid JSON ({e})") from None
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            if self.path == "/v1/completions" and body.get("stream"):
                return self._stream(body)
            self._json(200, routes[self.path](self.served, body))
        except TooLarge as e:
            self._error(413, str(e))
            self._drop_body(e.unread)
        except (
            BadRequest,
            DataError,
            ValueError,
            TypeError,
        ) as e:  # bad input: one line, the server lives on
            self._error(400, " ".join(str(e).split()) or type(e).__name__)
        except (BrokenPipeError, ConnectionResetError):  # the client went away: nobody to answer
            return
        except Exception as e:  # a bug: the client gets a 500 and its line, the terminal the traceback
            traceback.print_exc()
            self._error(500, f"{type(e).__name__}: {' '.join(str(e).split())}", "server_error")

    def _read_body(self) -> bytes:
        """The request's body, of Content-Length bytes or in chunks (Transfer-Encoding: chunked, which
        http.server leaves to the handler), at most MAX_BODY_BYTES (MAX_IMAGE_BODY_BYTES for /v1/images)
        either way."""
        limit = MAX_IMAGE_BODY_BYTES if self.path == "/v1/images" else MAX_BODY_BYTES
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise BadRequest("the Content-Length header is not an integer") from None
            if length < 0:
                raise BadRequest(f"Content-Length={length} must be >= 0")
            if length > limit:
                raise TooLarge(f"the request has {length} bytes, more than this endpoint's {limit}", length)
            return self.rfile.read(length)
        if encoding.strip().lower() != "chunked":
            raise BadRequest(
                f"Transfer-Encoding={encoding!r} is not supported; send the body with Content-Length"
            )
        body = bytearray()
        while True:  # chunks: a hex size line, that many bytes, CRLF; a size of 0 ends them
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0], 16)  # a chunk extension after ';' is ignored
            except ValueError:
                size = -1
            if size < 0:
                raise BadRequest(
                    f"the chunked body has a bad chunk size line {bytes(line)!r}; send Content-Length"
                )
            if len(body) + size > limit:
                raise TooLarge(f"the chunked request has more than this endpoint's {limit} bytes", None)
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BadRequest(
                    "a chunk of the body is shorter or longer than its size line says; send Content-Length"
                )
            body += chunk
        for _ in range(100):  # trailer lines, up to a blank one
            if self.rfile.readline(1024) in (b"\r\n", b"\n", b""):
                break
        return bytes(body)

    def _drop_body(self, unread: int | None) -> None:
        """Reads and drops what is left of a refused body (at most DRAIN_BYTES, until the client pauses
        DRAIN_TIMEOUT_S), then closes the connection."""
        self.close_connection = True
        left = DRAIN_BYTES if unread is None else min(unread, DRAIN_BYTES)
        self.connection.settimeout(DRAIN_TIMEOUT_S)
        try:
            while left > 0:
                piece = self.rfile.read1(min(left, 1 << 20))
                if not piece:
                    break
                left -= len(piece)
        except OSError:  # the pause (a timeout) or the client going away
            pass

    def _stream(self, body: dict) -> None:
        """Server-sent events: `data: {chunk}` per piece of text, then `data: [DONE]`."""
        started = False

        def write_event(obj) -> None:
            nonlocal started
            if not started:  # headers only once the request has been checked and generation runs
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                started = True
            self.wfile.write(b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n")
            self.wfile.flush()

        try:
            completions(self.served, body, write_event)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (the studio's Stop)
            return
        except Exception as e:
            bad_input = isinstance(e, BadRequest | DataError | ValueError | TypeError)
            message, kind = " ".join(str(e).split()) or type(e).__name__, "invalid_request_error"
            if not bad_input:
                traceback.print_exc()
                message, kind = f"{type(e).__name__}: {message}", "server_error"
            if not started:
                return self._error(400 if bad_input else 500, message, kind)
            write_event({"error": {"message": message, "type": kind}})  # too late for a status code
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(model: Any, host: str = "127.0.0.1", port: int = 8000, name: str | None = None):
    """A ThreadingHTTPServer for `model` (a workdir or a (params, GPTConfig, tokenizer[, config]) tuple);
    port 0 picks a free one (server.server_address). Call serve_forever() on it. The port is taken before
    the model loads, so that one in use is said at once, not after a slow load."""
    if name is None:
        name = pathlib.Path(model).name if isinstance(model, str | pathlib.Path) else "gptjax"
    handler = type("BoundHandler", (Handler,), {})  # its model comes once the port is ours
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:  # in use, not this machine's address, an unknown host name
        raise OSError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port (0: any free one) "
            "or --host"
        ) from None
    try:  # no request is answered before serve_forever: connections wait in the listen queue
        handler.served = Served(sample.load(model), name)
    except BaseException:
        server.server_close()  # a failed load gives the port back
        raise
    return server
