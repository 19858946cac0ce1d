"""The local server (gptjax/serve.py): OpenAI's completions API gives what gptjax.sample gives, streamed
or not; images; one-line 400s that leave the server running; the studio page."""

import base64
import io
import json
import re
import shutil
import socket
import struct
import subprocess
import threading
import urllib.error
import urllib.request
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gptjax import image, sample, serve
from gptjax.data import ByteTokenizer, CharTokenizer, chat
from gptjax.data.images import PaletteTokenizer, load_images
from gptjax.model import GPT, GPTConfig

CHARS = "abcdefghijklmnop"  # the tiny model's 16 tokens


@pytest.fixture(scope="module")
def text_model(tiny_cfg, tiny_params):
    return (tiny_params, tiny_cfg, CharTokenizer(CHARS), {"temperature": 0.9, "top_k": 12})


def start(model):
    server = serve.make_server(model, port=0, name="tiny")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def url(text_model):
    server, url = start(text_model)
    yield url
    server.shutdown()
    server.server_close()


def post(url: str, path: str, body, raw: bool = False):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            payload = response.read()
            return response.status, response.headers, payload if raw else json.loads(payload)
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def test_completions_are_what_sample_complete_gives(url, text_model):
    # Within the context (8): past it a short row of a ragged batch slides early (gptjax.sample's docstring).
    body = {"prompt": ["abc", "ponm"], "max_tokens": 4, "n": 2, "seed": 5, "logprobs": 0, "model": "x"}
    status, headers, out = post(url, "/v1/completions", body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    expected = sample.complete(text_model, ["abc", "ponm"], max_new_tokens=4, num_return_sequences=2, seed=5)
    assert [c["text"] for c in out["choices"]] == [c.text for c in expected]
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    assert {c["finish_reason"] for c in out["choices"]} == {"length"}
    assert out["object"] == "text_completion" and out["model"] == "tiny" and out["id"].startswith("cmpl-")
    assert out["usage"] == {"prompt_tokens": 7, "completion_tokens": 16, "total_tokens": 23}
    lp = out["choices"][1]["logprobs"]  # offsets count the prompt's characters, as OpenAI's
    assert "".join(lp["tokens"]) == expected[1].text and lp["text_offset"] == [3, 4, 5, 6]
    np.testing.assert_allclose(lp["token_logprobs"], expected[1].logprobs, rtol=1e-5)  # a forward pass's
    assert lp["top_logprobs"] is None  # logprobs=0: none asked for
    # The saved defaults (temperature 0.9, top_k 12) apply to fields left out; echo puts the prompt first.
    _, _, again = post(url, "/v1/completions", {"prompt": "abc", "max_tokens": 4, "seed": 5, "echo": True})
    assert again["choices"][0]["text"] == "abc" + expected[0].text


def test_streamed_pieces_join_to_the_whole_text_and_end_with_the_reason(url):
    body = {"prompt": "abc", "max_tokens": 7, "seed": 2, "temperature": 0}
    _, _, whole = post(url, "/v1/completions", body)
    status, headers, raw = post(url, "/v1/completions", {**body, "stream": True}, raw=True)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    pieces = [c["choices"][0]["text"] for c in chunks]
    assert "".join(pieces) == whole["choices"][0]["text"] and len(pieces) >= 7
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    # Prompt lookup (a request's GenerateOptions field): greedy, the same text, streamed or not.
    looked = {**body, "prompt": "abab", "max_tokens": 4, "prompt_lookup_num_tokens": 2}  # no slide: <= 8
    want = post(url, "/v1/completions", {**looked, "prompt_lookup_num_tokens": None})[2]["choices"][0]["text"]
    assert post(url, "/v1/completions", looked)[2]["choices"][0]["text"] == want
    assert "".join(c["text"] for c in streamed(url, looked)) == want
    status, _, out = post(url, "/v1/completions", {**looked, "prompt": ["ab", "ba"], "stream": True})
    assert status == 400 and "prompt_lookup_num_tokens decodes one row at a time" in out["error"]["message"]


def streamed(url: str, body: dict, path: str = "/v1/completions") -> list[dict]:
    """The chunks of a streamed request, in order (each names one choice)."""
    status, headers, raw = post(url, path, {**body, "stream": True}, raw=True)
    assert status == 200 and headers["Content-Type"] == "text/event-stream", raw
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(len(c["choices"]) == 1 for c in chunks), chunks
    return [c["choices"][0] for c in chunks]


def test_several_prompts_and_samples_stream_each_choice_as_unstreamed(url):
    """Prompt p's j-th sample is choice p * n + j streamed as unstreamed: its pieces join to its text, its
    last chunk alone has a finish_reason, the same; the choices come a token at a time, interleaved."""
    body = {"prompt": ["abc", "pon"], "n": 2, "max_tokens": 5, "seed": 7, "temperature": 1.0, "top_k": 0}
    texts = [c["text"] for c in post(url, "/v1/completions", body)[2]["choices"]]
    stop = texts[1][1:3]  # choice 1 surely stops (the others may), the stream holds back a character
    for extra in ({}, {"stop": stop}, {"echo": True}):
        whole = post(url, "/v1/completions", {**body, **extra})[2]["choices"]
        chunks = streamed(url, {**body, **extra})
        indices = [c["index"] for c in chunks]
        assert set(indices) == {0, 1, 2, 3} and indices != sorted(indices)  # interleaved, not one by one
        for i, choice in enumerate(whole):
            mine = [c for c in chunks if c["index"] == i]
            assert "".join(c["text"] for c in mine) == choice["text"], (extra, i)
            reasons = [c["finish_reason"] for c in mine]
            assert reasons == [None] * (len(mine) - 1) + [choice["finish_reason"]], (extra, i)
        if not extra:  # a chunk per token (a character here), then one with the finish_reason
            assert [indices.count(i) for i in range(4)] == [6] * 4
            assert [c["finish_reason"] for c in whole] == ["length"] * 4
        if "stop" in extra:
            assert whole[1] == {**whole[1], "text": texts[1][: texts[1].find(stop)], "finish_reason": "stop"}
            # Choice 1 ends as it stops: its finish chunk comes before the text of choices still going.
            end_1 = next(k for k, c in enumerate(chunks) if c["index"] == 1 and c["finish_reason"])
            if any(c["finish_reason"] == "length" for c in whole):
                assert any(c["text"] for c in chunks[end_1 + 1 :]), chunks
        if "echo" in extra:
            assert [c["text"] for c in whole] == [body["prompt"][i // 2] + t for i, t in enumerate(texts)]


def test_finish_reason_is_stop_at_a_stop_string_or_an_eos(url):
    body = {"prompt": "abc", "max_tokens": 8, "temperature": 0}
    text = post(url, "/v1/completions", body)[2]["choices"][0]["text"]
    stop, eos = text[3:5], text[2]
    _, _, cut = post(url, "/v1/completions", {**body, "stop": stop})
    expected = {"text": text[: text.find(stop)], "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert cut["choices"][0] == expected
    _, _, ended = post(url, "/v1/completions", {**body, "eos_token_id": CHARS.index(eos)})
    assert (
        ended["choices"][0]["text"] == text[: text.find(eos)]
        and ended["choices"][0]["finish_reason"] == "stop"
    )


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": "abc", "max_tokenz": 3}, r"unknown fields \['max_tokenz'\]"),
        (
            {"prompt": "abc", "frequency_penalty": 0.5},
            "frequency_penalty is not supported .* repetition_penalty",
        ),
        ({"prompt": 3}, "prompt must be a string or a non-empty list of strings"),
        ({"prompt": "abc", "top_p": 0}, r"top_p=0 must be in \(0, 1\]"),
        ({"prompt": "zz"}, "not in the tokenizer's vocab"),
        ({"prompt": "abc", "num_beams": 2, "stream": True}, "beam search is not streamed; drop stream"),
        ({"prompt": "abc", "best_of": 3}, "best_of must equal n"),
        ({"prompt": "abc", "stop": 5}, "stop=5 must be a string or a list of non-empty strings"),
        (
            {"prompt": "abc", "stop": ["ab", 5]},
            r"stop=\('ab', 5\) must be a string or a list of non-empty strings",
        ),
        (b"{not json", r"the body is not valid JSON \(Expecting property name"),
        ([1, 2], "must be a JSON object"),
        ({"prompt": "abc", "stream": "false"}, "stream='false' must be true or false"),
        ({"prompt": "abc", "echo": 1}, "echo=1 must be true or false"),
        ({"prompt": "abc", "logprobs": -1}, r"logprobs=-1 must be an integer in \[0, 5\]"),
        ({"prompt": "abc", "logprobs": 1, "stream": True}, "logprobs is not streamed"),
        (
            {"prompt": "abc", "max_tokens": 3, "max_new_tokens": 5},
            "max_tokens and max_new_tokens are the same",
        ),
        ({"prompt": "abc", "max_tokens": "4"}, "max_tokens='4' must be an integer >= 1"),
        ({"prompt": "abc", "n": 0}, "n=0 must be an integer >= 1"),
        ({"prompt": "", "max_tokens": 2}, "a prompt is empty, and this model's tokenizer has no start token"),
        ({"prompt": "a", "max_tokens": 10**12}, "max_tokens=1000000000000 is more than this server's limit"),
        ({"prompt": "a", "n": 1000}, "n=1000 is more than this server's limit of 128"),
        ({"prompt": "a", "max_tokens": 0, "echo": True, "stream": True}, "max_tokens=0 scores the prompt"),
    ],
)
def test_bad_requests_get_one_line_400s_and_the_server_goes_on(url, body, message):
    status, _, out = post(url, "/v1/completions", body)
    assert status == 400 and out["error"]["type"] == "invalid_request_error"
    assert re.search(message, out["error"]["message"]) and "\n" not in out["error"]["message"]
    assert post(url, "/v1/completions", {"prompt": "a", "max_tokens": 1})[0] == 200


# ----- /v1/chat/completions. -----


@pytest.fixture(scope="module")
def byte_url():
    """A served tiny model over bytes, so that it reads ChatML's markers, with room for a few turns."""
    cfg = GPTConfig(vocab_size=256, block_size=256, n_layer=1, n_head=2, n_embd=16)
    params = GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    server, url = start((params, cfg, ByteTokenizer(), {}))
    yield url
    server.shutdown()
    server.server_close()


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def test_chat_is_the_completion_of_the_chatml_prompt(byte_url):
    """A chat request is the completions request of chat.generation_prompt(messages) with <|im_end|> among
    the stop strings, the choices as assistant messages; streamed, its deltas join to the same messages."""
    body = {
        "messages": MESSAGES,
        "max_completion_tokens": 6,
        "n": 2,
        "seed": 3,
        "temperature": 1.0,
        "stop": "q",
    }
    status, _, out = post(byte_url, "/v1/chat/completions", body)
    prompt = chat.generation_prompt(MESSAGES)
    plain = {
        "prompt": prompt,
        "max_tokens": 6,
        "n": 2,
        "seed": 3,
        "temperature": 1.0,
        "stop": ["q", "<|im_end|>"],
    }
    want = post(byte_url, "/v1/completions", plain)[2]
    assert status == 200 and out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    messages = [{"role": "assistant", "content": c["text"]} for c in want["choices"]]
    assert [c["message"] for c in out["choices"]] == messages
    assert [c["finish_reason"] for c in out["choices"]] == [c["finish_reason"] for c in want["choices"]]
    assert out["usage"] == want["usage"] and out["usage"]["prompt_tokens"] == len(prompt)
    chunks = streamed(byte_url, body, "/v1/chat/completions")
    for i, choice in enumerate(out["choices"]):
        mine = [c for c in chunks if c["index"] == i]
        assert mine[0]["delta"]["role"] == "assistant" and all("role" not in c["delta"] for c in mine[1:])
        assert "".join(c["delta"].get("content", "") for c in mine) == choice["message"]["content"]
        assert [c["finish_reason"] for c in mine] == [None] * (len(mine) - 1) + [choice["finish_reason"]]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"max_tokens": 3}, r"messages: messages must be a non-empty list of \{role, content\}"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "message 0 is .* not"),
        ({"messages": MESSAGES, "prompt": "abc"}, "prompt is a /v1/completions field, not a chat one"),
        ({"messages": MESSAGES, "logprobs": True}, "chat completions give no logprobs here"),
        (
            {"messages": MESSAGES, "max_tokens": 2, "max_completion_tokens": 3},
            "are the same option; give one",
        ),
        ({"messages": MESSAGES, "stop": 5}, "stop=.* must be a string or a list of non-empty strings"),
    ],
)
def test_bad_chat_requests_get_one_line_400s(byte_url, body, message):
    status, _, out = post(byte_url, "/v1/chat/completions", body)
    assert status == 400 and re.search(message, out["error"]["message"]), out


def test_models_other_paths_and_the_studio_page(url):
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as r:
        (info,) = json.loads(r.read())["data"]
    assert info["id"] == "tiny" and info["gptjax"]["kind"] == "text" and info["gptjax"]["block_size"] == 8
    assert info["gptjax"]["sample_defaults"] == {"temperature": 0.9, "top_k": 12}
    assert (
        post(url, "/v1/images", {})[2]["error"]["message"] == "this model writes text; POST /v1/completions"
    )
    assert post(url, "/v1/chat", {})[0] == 404
    with urllib.request.urlopen(url + "/v1/models/tiny", timeout=30) as r:  # OpenAI's models.retrieve
        assert json.loads(r.read())["id"] == "tiny"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/v1/completions", timeout=30)
    assert e.value.code == 405 and "takes POST" in json.loads(e.value.read())["error"]["message"]
    with urllib.request.urlopen(url + "/", timeout=30) as r:
        page = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
    for element in ('id="prompt"', 'id="generate"', 'id="send"', 'id="draw"', "/v1/chat/completions"):
        assert element in page
    if shutil.which("node"):  # the page's script at least parses (no browser here to run it)
        script = page.split("<script>")[1].split("</script>")[0]
        result = subprocess.run(
            ["node", "--check", "-"], input=script, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr


def test_echo_with_no_new_tokens_scores_the_prompt_with_its_top_tokens(url, text_model):
    """lm-eval's way to score a text: echo, max_tokens 0, logprobs k: every token after the first gets its
    log-probability under the model and the k likeliest tokens at its place."""
    body = {"prompt": "abcdh", "max_tokens": 0, "echo": True, "logprobs": 2}
    status, _, out = post(url, "/v1/completions", body)
    assert status == 200, out
    (choice,) = out["choices"]
    assert choice["text"] == "abcdh" and choice["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 0
    lp = choice["logprobs"]
    assert lp["tokens"] == list("abcdh") and lp["text_offset"] == [0, 1, 2, 3, 4]
    params, cfg = text_model[:2]
    ids = [CHARS.index(ch) for ch in "abcdh"]
    logits = GPT(cfg).apply({"params": params}, jnp.asarray([ids]))[0][0]
    logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    np.testing.assert_allclose(
        lp["token_logprobs"][1:], [logp[i - 1, ids[i]] for i in range(1, 5)], atol=1e-5
    )
    for i in range(1, 5):
        best = np.argsort(-logp[i - 1])[:2]
        top = lp["top_logprobs"][i]
        assert list(top) == [CHARS[j] for j in best]
        np.testing.assert_allclose(list(top.values()), logp[i - 1, best], atol=1e-5)
    too_long = {"prompt": "abcdefgh", "max_tokens": 2, "logprobs": 1}  # 10 tokens, a context of 8
    assert "exceed the model's context of 8" in post(url, "/v1/completions", too_long)[2]["error"]["message"]
    assert "in [0, 5]" in post(url, "/v1/completions", {"prompt": "a", "logprobs": 6})[2]["error"]["message"]
    assert (
        "(0 with echo)"
        in post(url, "/v1/completions", {"prompt": "a", "max_tokens": 0})[2]["error"]["message"]
    )


def test_a_request_without_a_seed_draws_a_fresh_one_and_says_which(url):
    body = {"prompt": "abc", "max_tokens": 6, "temperature": 1.0, "top_k": 0}
    first, second = (post(url, "/v1/completions", body)[2] for _ in range(2))
    assert first["seed"] != second["seed"]  # 1 in 2**31 to collide
    again = post(url, "/v1/completions", {**body, "seed": first["seed"]})[2]
    assert again["seed"] == first["seed"] and again["choices"] == first["choices"]


def test_a_port_in_use_is_one_line(text_model, url):
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match=f"^cannot listen on 127.0.0.1:{port} .*; pass another --port"):
        serve.make_server(text_model, port=port)


def test_a_port_in_use_is_said_before_the_model_loads(url, text_model, tmp_path):
    port, missing = int(url.rsplit(":", 1)[1]), tmp_path / "no_checkpoint"  # loading it would fail
    with pytest.raises(OSError, match=f"^cannot listen on 127.0.0.1:{port} .*; pass another --port"):
        serve.make_server(missing, port=port)
    with socket.socket() as s:  # a free port; a load that fails gives it back
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(FileNotFoundError, match="no checkpoint") as failed:  # its traceback holds the server
        serve.make_server(missing, port=free)
    serve.make_server(text_model, port=free).server_close()
    del failed


def test_concurrent_requests_get_what_they_get_alone(url):
    bodies = [{"prompt": "abc", "max_tokens": 4 + s, "seed": s} for s in range(4)]
    alone = [post(url, "/v1/completions", b)[2]["choices"] for b in bodies]
    together = [None] * 4

    def ask(i):
        together[i] = post(url, "/v1/completions", bodies[i])[2]["choices"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_broken_headers_and_a_failure_mid_stream(url, monkeypatch):
    import http.client

    port = int(url.rsplit(":", 1)[1])
    for length, message in [("-1", "Content-Length=-1 must be >= 0"), ("abc", "is not an integer")]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("POST", "/v1/completions")
        conn.putheader("Content-Length", length)
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 400 and message in json.loads(response.read())["error"]["message"]
        conn.close()

    def fails_after_a_piece(params, config, prompts, options, on_chunk, chunk):
        on_chunk(np.array([[0, 1]]))
        raise RuntimeError("the device fell over")

    monkeypatch.setattr(sample, "generate_ids", fails_after_a_piece)  # the server runs in this process
    status, _, raw = post(url, "/v1/completions", {"prompt": "a", "stream": True}, raw=True)
    events = raw.decode().split("\n\n")
    assert status == 200 and events[-2:] == ["data: [DONE]", ""]
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["text"] == "ab"
    error = json.loads(events[-3].removeprefix("data: "))["error"]
    assert error == {"message": "RuntimeError: the device fell over", "type": "server_error"}


def test_a_chunked_body_is_read_and_bounded_as_any_other(url):
    """Transfer-Encoding: chunked (no Content-Length), which http.server leaves to the handler."""
    import http.client

    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"prompt": "abc", "max_tokens": 1, "seed": 1}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/completions", body=iter([body[:10], body[10:]]))  # an iterable: chunked
    response = conn.getresponse()
    out = json.loads(response.read())
    conn.close()
    assert response.status == 200, out
    assert out["choices"] == post(url, "/v1/completions", json.loads(body))[2]["choices"]
    too_big = f"{serve.MAX_BODY_BYTES + 1:x}\r\n".encode()  # refused at its size line, before its bytes
    for chunks, message, status in [
        (too_big, f"the chunked request has more than this endpoint's {serve.MAX_BODY_BYTES} bytes", 413),
        (b"zz\r\n", r"the chunked body has a bad chunk size line b'zz\\r\\n'; send Content-Length", 400),
        (b"3\r\n{}}}\r\n", "a chunk of the body is shorter or longer than its size line says", 400),
    ]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("POST", "/v1/completions")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders(chunks)
        response = conn.getresponse()
        error = json.loads(response.read())["error"]["message"]
        conn.close()
        assert response.status == status and re.search(message, error), error


def test_an_oversized_body_is_answered_413_not_reset(url):
    """A body over the limit gets a 413 and its one line; the server reads and drops the rest, so that a
    client that sends all of it before reading (http.client, browsers) gets the answer, not a reset."""
    import http.client

    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/completions", body=b" " * (16 * serve.MAX_BODY_BYTES))
    response = conn.getresponse()
    error = json.loads(response.read())["error"]["message"]
    conn.close()
    assert response.status == 413, error
    assert error == f"the request has {16 * serve.MAX_BODY_BYTES} bytes, more than this endpoint's 1048576"
    assert post(url, "/v1/completions", {"prompt": "a", "max_tokens": 1})[0] == 200  # it serves on


def joined(chunks: list[dict]) -> dict:
    """{choice index: (its streamed text, its finish_reason)} of a stream's chunks."""
    out = {}
    for c in chunks:
        text, _ = out.get(c["index"], ("", None))
        out[c["index"]] = (text + c["text"], c["finish_reason"])
    return out


def test_an_assistant_decodes_what_it_can_and_the_text_is_the_models(text_model, url, monkeypatch):
    """--assistant: greedy requests that fit both contexts (streamed: one choice) decode with the draft,
    and give the model's own text; beam search, a stream of several choices and a request past the context
    decode without it. The model is its own draft here (same tokenizer): the text must be the same."""
    from gptjax import assisted

    calls = []
    generate = assisted.generate
    monkeypatch.setattr(assisted, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    server = serve.make_server(text_model, port=0, name="tiny", assistant=text_model, num_assistant_tokens=3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    helped = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(helped + "/v1/models/tiny", timeout=30) as response:
            info = json.loads(response.read())["gptjax"]["assistant"]
        assert info["num_assistant_tokens"] == 3 and info["block_size"] == 8
        greedy = {"prompt": ["ab", "ba"], "max_tokens": 5, "temperature": 0}
        for body, uses in [
            (greedy, True),
            ({**greedy, "prompt": "ab", "stream": True}, True),
            (
                {**greedy, "prompt": "ab", "n": 2, "stream": True, "temperature": 1, "top_k": 1, "seed": 3},
                False,
            ),
            ({**greedy, "num_beams": 2}, False),
            ({**greedy, "max_tokens": 12}, False),  # 2 + 12 tokens > block_size 8: the window slides
        ]:
            calls.clear()
            if body.get("stream"):  # an assisted stream may bring several tokens a piece: the joined text
                want, got = (joined(streamed(u, body)) for u in (url, helped))
            else:
                want, got = (
                    post(url, "/v1/completions", body)[2]["choices"],
                    post(helped, "/v1/completions", body)[2]["choices"],
                )
            assert got == want and bool(calls) == uses, body
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ValueError, match="num_assistant_tokens=8 needs K \\+ 1 <= the model's block_size=8"):
        serve.make_server(text_model, port=0, assistant=text_model, num_assistant_tokens=8)


def served_image_model(tok: PaletteTokenizer):
    """((params, GPTConfig, tok, {}), url) of a server of a random one-layer model of tok's images."""
    cfg = GPTConfig(
        vocab_size=tok.vocab_size, block_size=tok.height * tok.width, n_layer=1, n_head=1, n_embd=8
    )
    params = GPT(cfg).init(jax.random.key(1), jnp.zeros((1, cfg.block_size), jnp.int32))["params"]
    model = (params, cfg, tok, {})
    server, url = start(model)
    yield model, url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def class_images():
    """A class-conditional model of 2x2 grey images, and its server."""
    yield from served_image_model(PaletteTokenizer([[0], [128], [255]], 2, 2, classes=["dark", "light"]))


@pytest.fixture(scope="module")
def plain_images():
    """An unconditional model of 4x4 RGB images, and its server."""
    yield from served_image_model(
        PaletteTokenizer([[0, 0, 0], [255, 0, 0], [0, 0, 255], [255, 255, 255]], 4, 4)
    )


def png_of(out: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(out["png"]))))


def test_images_endpoint_draws_what_image_draw_does(class_images, tmp_path):
    model, url = class_images
    status, _, out = post(url, "/v1/images", {"classes": ["light"], "n": 3, "seed": 4})
    assert status == 200 and out["classes"] == ["light"] and out["shape"] == [1, 3, 2, 2, 1]
    expected = np.asarray(image.grid_image(image.draw(model, ["light"], 3, seed=4)))
    np.testing.assert_array_equal(png_of(out), expected)
    assert post(url, "/v1/images", {"n": 2})[2]["classes"] == ["dark", "light"]
    one = post(url, "/v1/images", {"classes": "light", "n": None, "seed": 4})[2]  # n null: the default, 8
    assert one["classes"] == ["light"] and one["shape"] == [1, 8, 2, 2, 1] and one["seed"] == 4
    bad = [
        ({"n": 0}, "n=0 must be"),
        ({"seed": 1, "beams": 2}, "unknown fields"),
        ({"classes": {}}, "a list"),
        ({"classes": []}, "classes is empty"),
        ({"classes": [True]}, "must be a list of class names or indices"),  # JSON true is no index 1
        ({"classes": False}, "must be a list of class names or indices"),
    ]
    for body, message in bad:
        status, _, out = post(url, "/v1/images", body)
        assert status == 400 and message in out["error"]["message"]
    assert "draws images" in post(url, "/v1/completions", {"prompt": "a"})[2]["error"]["message"]
    studio = run_studio(url, "image", {"n": "2", "seed": "1", "class": "dark"}, tmp_path)
    assert studio["images"] == ["data:image/png;base64,"] and studio["status"].startswith("drew dark")


def encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "served, label, fmt, given_rows",
    [("class_images", "light", "PNG", None), ("plain_images", None, "JPEG", 3)],
)
def test_completing_an_image_is_image_complete_of_it_read_as_training_reads_files(
    served, label, fmt, given_rows, request, tmp_path
):
    """The server crops, resizes and encodes the image as training reads an image file; its completions
    are image.complete's of that row (same seed and options), each keeping the given rows as they are."""
    model, url = request.getfixturevalue(served)
    tok = model[2]
    pixels = np.random.default_rng(0).integers(0, 256, (9, 14, 3), np.uint8)  # not square, not 2x2 or 4x4
    file = tmp_path / "given" / f"a.{fmt.lower()}"
    file.parent.mkdir()
    file.write_bytes(encoded(pixels, fmt))
    as_trained, _, _ = load_images(str(file.parent), tok.height, tok.channels)
    start_id = tok.bos_id if label is None else tok.class_id(label)
    rows = np.concatenate([[[start_id]], tok.encode_images(as_trained)], axis=1)
    data = base64.b64encode(file.read_bytes()).decode()
    body = {"image": f"data:image/{fmt.lower()};base64,{data}" if fmt == "PNG" else data, "n": 3}
    body.update(given_rows=given_rows, classes=label, seed=4, temperature=1.5, top_k=2)
    status, _, out = post(url, "/v1/images", body)
    assert status == 200, out
    assert out["shape"] == [1, 5, tok.height, tok.width, tok.channels] and out["seed"] == 4
    assert out["classes"] == ([] if label is None else [label])

    given = tok.height // 2 if given_rows is None else given_rows
    drawn = image.complete(model, rows, given, 3, seed=4, temperature=1.5, top_k=2)
    original = tok.decode_images(rows[:, 1:])  # quantized to the palette
    np.testing.assert_array_equal(drawn[0, :, :given], np.repeat(original[:, :given], 3, axis=0))
    assert (drawn[0, :, given:] != original[:, given:]).any()  # drawn, not copied
    expected = image.completion_grid(original, drawn, given)
    np.testing.assert_array_equal(png_of(out), np.asarray(image.grid_image(expected)))


def png_header(width: int, height: int) -> str:
    """A PNG (base64) that says it is width x height and holds no pixels: what a header promises."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + head + chunk(b"IEND", b"")).decode()


GREY = base64.b64encode(encoded(np.full((3, 3), 200, np.uint8))).decode()


@pytest.mark.parametrize(
    "served, body, message",
    [
        ("class_images", {"image": "not base64!", "classes": "dark"}, r"^image is not base64 \("),
        ("class_images", {"image": 5, "classes": "dark"}, "^image must be a base64 string .*, not int$"),
        (
            "class_images",
            {"image": "data:image/png,abc", "classes": "dark"},
            "^image is a data URL of 'data:image/png', not base64",
        ),
        (
            "class_images",
            {"image": base64.b64encode(b"GIF89a, or not").decode(), "classes": "dark"},
            "^image is not a PNG, JPEG, GIF, BMP, WEBP file Pillow can read",
        ),
        ("class_images", {"image": png_header(3, 3), "classes": "dark"}, "Pillow can read .*cannot load"),
        (
            "class_images",
            {"image": png_header(4097, 4097), "classes": "dark"},
            "^image is 4097x4097, more than this server's 16,777,216 pixels; send a smaller one$",
        ),
        ("class_images", {"image": png_header(20000, 20000), "classes": "dark"}, "^image has more than"),
        (
            "class_images",
            {"image": GREY, "classes": "dark", "given_rows": 2},
            r"given_rows=2 must be in \[0, 2\)",
        ),
        (
            "class_images",
            {"image": GREY, "classes": "dark", "given_rows": -1},
            r"given_rows=-1 must be in \[0, 2\)",
        ),
        (
            "class_images",
            {"image": GREY, "classes": "dark", "given_rows": "1"},
            r"given_rows='1' must be an integer",
        ),
        (
            "class_images",
            {"image": GREY},
            r"starts each image with its class: name one of \['dark', 'light'\]",
        ),
        ("class_images", {"image": GREY, "classes": ["dark", "light"]}, "name one of"),
        ("class_images", {"image": GREY, "classes": "bright"}, "class 'bright' is not one of"),
        ("class_images", {"given_rows": 1}, "^given_rows goes with an image to complete"),
        ("class_images", {"image": GREY, "size": 2}, r"unknown fields \['size'\]; known: classes, n, image"),
        ("plain_images", {"image": GREY, "classes": "dark"}, "trained without classes; drop classes"),
        # Photos may take more than the 1 MiB of other requests: 2 MB is read (and refused as no image).
        ("plain_images", {"image": base64.b64encode(bytes(1_500_000)).decode()}, "^image is not a PNG"),
    ],
)
def test_bad_images_to_complete_get_one_line_400s(served, body, message, request):
    _, url = request.getfixturevalue(served)
    status, _, out = post(url, "/v1/images", {"n": 1, **body})
    assert status == 400 and out["error"]["type"] == "invalid_request_error", out
    assert re.search(message, out["error"]["message"]) and "\n" not in out["error"]["message"], out
    assert post(url, "/v1/images", {"n": 1})[0] == 200


def test_the_studio_completes_a_chosen_image(class_images, tmp_path):
    _, url = class_images
    data_url = f"data:image/png;base64,{GREY}"
    settings = {"n": "2", "seed": "1", "class": "light", "temperature": "1", "top_k": "0", "top_p": "1"}
    studio = run_studio(
        url, "complete", settings, tmp_path, files=[{"name": "grey.png", "dataURL": data_url}]
    )
    assert studio["images"] == ["data:image/png;base64,"], studio
    assert studio["status"].startswith("completed light")
    body = {"image": data_url, "given_rows": 1, "classes": ["light"], "n": 2, "seed": 1, "temperature": 1}
    _, _, api = post(url, "/v1/images", {**body, "top_k": 0, "top_p": 1})
    assert studio["newest"] == "data:image/png;base64," + api["png"] and api["shape"][1] == 4
    no_file = run_studio(url, "complete", settings, tmp_path)
    assert no_file["status"] == "error: choose an image to complete first" and no_file["images"] == []


# A stand-in for the browser: just enough DOM for the studio's script, and fetch aimed at the server.
FAKE_BROWSER = """
const elements = {};
const node = (id) => ({
  id, v: "", get value() { return this.v; }, set value(v) { this.v = String(v); },  // inputs hold strings
  textContent: "", innerHTML: "", disabled: false, checked: false, className: "", style: {},
  children: [], files: [],
  classList: {names: new Set(), add(c) { this.names.add(c); }, remove(c) { this.names.delete(c); }},
  append(...c) { this.children.push(...c); },
  prepend(c) { this.children.unshift(c); },
  add(o) { this.children.push(o); },
  addEventListener() {},
});
globalThis.document = {
  getElementById: (id) => (elements[id] ??= node(id)),
  createElement: (tag) => node(tag),
  querySelectorAll: () => [],
};
globalThis.Option = function (label, value) { this.label = label; this.value = value; };
globalThis.Image = function () { this.style = {}; };
globalThis.FileReader = function () {  // the chosen file's data URL comes as a stand-in file's own
  this.readAsDataURL = (file) => setTimeout(() => { this.result = file.dataURL; this.onload(); });
};
const server = process.argv[2], browserFetch = fetch;
globalThis.fetch = (path, options) => browserFetch(server + path, options);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
"""
STUDIO_SESSION = """
(async () => {
  while ($("status").textContent !== "ready") {
    if ($("status").className === "error") throw new Error($("status").textContent);
    await sleep(20);
  }
  const loaded = {temperature: $("temperature").value, prompt: $("prompt").value};
  $("new_seed").checked = false;
  for (const [id, v] of Object.entries(SETTINGS)) $(id).value = v;
  $("image_file").files = FILES;
  if (MODE === "chat") for (const message of CHAT) { $("message").value = message; await send(); }
  else if (MODE === "complete") await complete();
  else if ($("draw").onclick && MODE === "image") await draw(); else await generate();
  const out = $("output").children[1];
  console.log(JSON.stringify({
    loaded, status: $("status").textContent, text: out ? out.textContent : null,
    images: $("drawing").children.map((img) => img.src.slice(0, 22)),
    newest: $("drawing").children.length ? $("drawing").children[0].src : null,
    turns: $("conversation").children.map((el) => [el.className, el.textContent]),
  }));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def run_studio(url: str, mode: str, settings: dict, tmp_path, files: list = (), chat: list = ()) -> dict:
    """What the studio shows after a session: mode "text" generates, "image" draws, "complete" completes
    the first of `files` ({"name", "dataURL"}: what the file input holds), "chat" sends each message of
    `chat` in turn."""
    with urllib.request.urlopen(url + "/", timeout=30) as r:
        script = r.read().decode().split("<script>")[1].split("</script>")[0]
    session = STUDIO_SESSION.replace("SETTINGS", json.dumps(settings)).replace("MODE", json.dumps(mode))
    session = session.replace("FILES", json.dumps(list(files))).replace("CHAT", json.dumps(list(chat)))
    (tmp_path / "studio.js").write_text(FAKE_BROWSER + script + session)
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the studio's script is checked with node")
    out = subprocess.run([node, tmp_path / "studio.js", url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_the_studio_streams_what_the_api_gives(url, tmp_path):
    settings = {"prompt": "abc", "max_tokens": "6", "temperature": "0", "seed": "3", "stop": ""}
    result = run_studio(url, "text", settings, tmp_path)
    assert result["loaded"] == {"temperature": "0.9", "prompt": ""}  # the model's saved defaults
    _, _, api = post(url, "/v1/completions", {"prompt": "abc", "max_tokens": 6, "temperature": 0, "seed": 3})
    assert result["text"] == api["choices"][0]["text"] and len(result["text"]) == 6
    assert result["status"].startswith("reached max new tokens")


def test_the_studio_chats_as_the_chat_api_answers_and_keeps_the_conversation(byte_url, tmp_path):
    """Chat mode: each message goes to /v1/chat/completions with the system message and every turn so far,
    and the conversation shows what the API answers to that same request."""
    settings = {"mode": "chat", "system": "Be brief.", "max_tokens": "5", "temperature": "0", "stop": ""}
    result = run_studio(byte_url, "chat", settings, tmp_path, chat=["hi", "and then?"])
    roles = [role for role, _ in result["turns"]]
    assert roles == ["turn user", "turn assistant"] * 2 and result["turns"][2][1] == "and then?"
    messages, options = [{"role": "system", "content": "Be brief."}], {"max_tokens": 5, "temperature": 0}
    for (_, asked), (_, answered) in zip(result["turns"][::2], result["turns"][1::2], strict=True):
        messages.append({"role": "user", "content": asked})
        _, _, api = post(byte_url, "/v1/chat/completions", {"messages": messages, **options})
        assert answered == api["choices"][0]["message"]["content"] != ""
        messages.append({"role": "assistant", "content": answered})
    assert result["status"].startswith("reached max new tokens")
