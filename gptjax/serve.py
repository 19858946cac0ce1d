"""A local server for a trained model: OpenAI's completions and chat APIs and the studio, a page to write
with it.

  python scripts/serve.py --workdir=W            # then open http://127.0.0.1:8000

  GET  /                the studio: prompt, options, text streamed as it comes (image models: draw, complete)
  GET  /v1/models       the model served, in OpenAI's list format (plus a "gptjax" entry: sizes, classes)
  POST /v1/completions  OpenAI's (legacy) completions API: prompt (a string or a list), max_tokens, n,
                        temperature, top_p, stop, seed, echo, logprobs (top k <= 5; with echo and
                        max_tokens 0 it scores the prompt), stream (server-sent events), and
                        any gptjax.sample.GenerateOptions field by its own name (top_k, min_p,
                        repetition_penalty, num_beams ...). Fields left out take the workdir's
                        config.sample values, as scripts/sample.py does (gptjax.serve_completions).
  POST /v1/chat/completions  OpenAI's chat API: messages (system, user, assistant) written in ChatML
                        (gptjax.data.chat, as fine-tuning on {"messages"} lines writes them), completed
                        as above, stopping at <|im_end|>; the same fields but prompt, echo and logprobs
                        (max_completion_tokens is max_tokens); streamed as chat.completion.chunk deltas.
  POST /v1/images       an image model: a PNG grid of images drawn, or of completions of a given image
                        (gptjax.serve_images)

Generation runs one request at a time (a lock): the model and its compiled decoder are shared. A request
without a seed gets a fresh one (the response's "seed" says which), unless config.sample sets one.
Streaming sends each choice's text a token at a time, any prompts and n (chunks name their choice by
index), without logprobs or beam search. Errors are OpenAI's {"error": {"message", "type"}}
with status 400 for a bad request.
"""

import dataclasses
import http.server
import importlib.resources
import json
import pathlib
import secrets
import threading
import traceback
from typing import Any

from gptjax import sample
from gptjax.data import DataError
from gptjax.model import count_params

MAX_BODY_BYTES = 1 << 20
MAX_IMAGE_BODY_BYTES = 16 << 20  # /v1/images: a photo to complete, base64-encoded
IMAGE_OPTIONS = ("temperature", "top_k", "top_p", "min_p", "seed")  # /v1/images' sampling options
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
    """The model a server holds: (params, GPTConfig, tokenizer, saved sample options) and its name; an
    assistant (a draft model, loaded the same way) decodes the requests it can (gptjax.assisted)."""

    model: tuple
    name: str
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    assistant: tuple | None = None
    num_assistant_tokens: int = 5

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
        if self.assistant is not None:
            draft = {
                "parameters": count_params(self.assistant[0]),
                "block_size": self.assistant[1].block_size,
            }
            extra["assistant"] = {**draft, "num_assistant_tokens": self.num_assistant_tokens}
        if self.is_image:  # only the options /v1/images takes
            extra.update(sample_defaults={k: v for k, v in saved.items() if k in IMAGE_OPTIONS}, prompt=None)
            extra.update(classes=tok.classes, height=tok.height, width=tok.width)
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "gptjax", "gptjax": extra}


def request_seed(served: Served, options: dict) -> int:
    """The request's seed, else the workdir's config.sample.seed, else a fresh one: as OpenAI's API, a
    request without a seed draws new text each time (the response says which seed it used)."""
    seed = options.get("seed", served.model[3].get("seed"))
    return secrets.randbelow(2**31) if seed is None else seed


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
        elif self.path in ("/v1/completions", "/v1/chat/completions", "/v1/images"):
            self._error(405, f"{self.path} takes POST with a JSON body", "method_not_allowed")
        else:
            self._error(404, f"no page {self.path}; try / or /v1/models", "not_found")

    def do_POST(self):  # noqa: N802
        from gptjax.serve_completions import chat_completions, completions  # here: they import this module
        from gptjax.serve_images import images

        routes = {
            "/v1/completions": completions,
            "/v1/chat/completions": chat_completions,
            "/v1/images": images,
        }
        if self.path not in routes:
            return self._error(
                404,
                f"no endpoint {self.path}; POST /v1/completions, /v1/chat/completions or /v1/images",
                "not_found",
            )
        try:
            raw = self._read_body()
            try:
                body = json.loads(raw or b"{}")
            except ValueError as e:
                raise BadRequest(f"the body is not valid JSON ({e})") from None
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            if self.path != "/v1/images" and body.get("stream"):
                return self._stream(routes[self.path], body)
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

    def _stream(self, respond, body: dict) -> None:
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
            respond(self.served, body, write_event)
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


def make_server(
    model: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    assistant: Any = None,
    num_assistant_tokens: int = 5,
):
    """A ThreadingHTTPServer for `model` (a workdir or a (params, GPTConfig, tokenizer[, config]) tuple);
    port 0 picks a free one (server.server_address). Call serve_forever() on it. The port is taken before
    the model loads, so that one in use is said at once, not after a slow load. `assistant`, loaded as
    `model` is, with the same tokenizer: a draft model for assisted generation (gptjax.assisted)."""
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
        served = Served(sample.load(model), name)
        if assistant is not None:
            from gptjax import assisted  # here: it imports gptjax.sample, as this module does

            draft = sample.load(assistant)
            assisted.load_assistant(draft, served.tokenizer)  # one line if the tokenizers differ
            options = sample.GenerateOptions()
            assisted.check(served.model[1], draft[1], options, num_assistant_tokens)
            served = dataclasses.replace(served, assistant=draft, num_assistant_tokens=num_assistant_tokens)
        handler.served = served
    except BaseException:
        server.server_close()  # a failed load gives the port back
        raise
    return server
