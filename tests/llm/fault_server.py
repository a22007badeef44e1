"""A scripted OpenAI-compatible HTTP server for the tests of ``lmops.llm.OpenAICompatible``.

A real server (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive) on 127.0.0.1 and a free port, in a
background thread. Each request takes the next :class:`Behaviour` from a queue the test scripts
(``server.script(error(429, retry_after=1), ok())``), or ``default`` once the queue is empty: an HTTP
error, a raw body (malformed JSON), a delay, or the normal answer. The server records every request
(path, headers, JSON body) and the most requests it ever had in flight at once.

Normal answers, deterministic so tests know them in advance:

- ``/v1/completions``: choice ``i * n + j`` of prompt ``i`` has text ``text_fn(prompt, j)`` (default
  ``"echo:{prompt}#{j}"``), with ``index`` (the choices' order is shuffled with ``shuffle_choices``).
  ``stop`` is ignored unless ``honor_stop``, as some servers do.
- with ``echo``: a fake tokenization of the prompt (:func:`tokenize`: a word with the spaces before it
  is one token), ``token_logprobs`` ``-0.25 * len(token)`` (``None`` for the first token),
  ``text_offset`` the tokens' character offsets; ``max_tokens=1`` adds the generated token ``" X"``
  (log-prob -7). Options: ``reject_max_tokens_zero`` (HTTP 400 for ``max_tokens=0``), ``bos`` (a
  ``"<s>"`` token counted in ``text_offset``, as vLLM does), ``echo_logprobs=False`` (``logprobs: null``).
- ``/v1/chat/completions``: text ``chat_fn(messages, j)`` (default ``"chat:{last content}#{j}"``).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["Behaviour", "FaultServer", "Recorded", "error", "json_reply", "ok", "raw", "tokenize"]

_TOKEN = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[str]:
    """The server's fake tokenization: each word with the whitespace before it."""
    return _TOKEN.findall(text)


def token_logprob(token: str) -> float:
    return -0.25 * len(token)


@dataclass
class Behaviour:
    """What the server does with one request: wait ``delay`` seconds, then answer ``status`` with
    ``body`` (``None``: the normal answer) and ``headers``."""

    status: int = 200
    body: bytes | None = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


def ok(delay: float = 0.0) -> Behaviour:
    return Behaviour(delay=delay)


def error(status: int, body: str = '{"error": {"message": "scripted failure"}}', retry_after: str | float | None = None,
          delay: float = 0.0) -> Behaviour:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return Behaviour(status=status, body=body.encode(), headers=headers, delay=delay)


def raw(body: str | bytes, status: int = 200) -> Behaviour:
    return Behaviour(status=status, body=body if isinstance(body, bytes) else body.encode())


def json_reply(obj: object, status: int = 200) -> Behaviour:
    return Behaviour(status=status, body=json.dumps(obj).encode())


@dataclass
class Recorded:
    path: str
    headers: dict  # lower-cased names
    body: object  # the parsed JSON, or None
    at: float  # time.monotonic() on arrival


class FaultServer:
    """The scripted server; a context manager (``with FaultServer() as server:``)."""

    def __init__(
        self,
        *,
        default: Behaviour | None = None,
        delay_fn: Callable[[object], float] | None = None,
        text_fn: Callable[[str, int], str] | None = None,
        chat_fn: Callable[[list, int], str] | None = None,
        shuffle_choices: bool = False,
        honor_stop: bool = False,
        reject_max_tokens_zero: bool = False,
        bos: str | None = None,
        echo_logprobs: bool = True,
    ) -> None:
        self.default = default or ok()
        self.delay_fn = delay_fn
        self.text_fn = text_fn or (lambda prompt, j: f"echo:{prompt}#{j}")
        self.chat_fn = chat_fn or (lambda messages, j: f"chat:{messages[-1]['content']}#{j}")
        self.shuffle_choices = shuffle_choices
        self.honor_stop = honor_stop
        self.reject_max_tokens_zero = reject_max_tokens_zero
        self.bos = bos
        self.echo_logprobs = echo_logprobs
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def script(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queue.extend(behaviours)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------
    def _next(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def _answer(self, path: str, body: dict) -> tuple[int, dict]:
        n = int(body.get("n", 1))
        if path == "/v1/chat/completions":
            choices = [{"index": j, "message": {"role": "assistant", "content": self.chat_fn(body["messages"], j)},
                        "finish_reason": "stop"} for j in range(n)]
            return 200, {"id": "chat-1", "object": "chat.completion", "model": body.get("model"), "choices": choices}
        if path != "/v1/completions":
            return 404, {"error": {"message": f"no route {path}"}}
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = []
        for i, prompt in enumerate(prompts):
            for j in range(n):
                if body.get("echo"):
                    if self.reject_max_tokens_zero and body.get("max_tokens") == 0:
                        return 400, {"error": {"message": "max_tokens must be at least 1, got 0."}}
                    choice = self._echo(prompt, int(body.get("max_tokens", 16)))
                else:
                    text = self.text_fn(prompt, j)
                    stops = body.get("stop") or []
                    if self.honor_stop:
                        for s in stops:
                            text = text.split(s)[0]
                    choice = {"text": text, "logprobs": None, "finish_reason": "length"}
                choices.append({"index": i * n + j, **choice})
        if self.shuffle_choices:
            random.Random(len(choices)).shuffle(choices)
        return 200, {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body.get("model"),
                     "choices": choices, "usage": {}}

    def _echo(self, prompt: str, max_tokens: int) -> dict:
        tokens = ([self.bos] if self.bos else []) + tokenize(prompt)
        logprobs: list = [None] + [token_logprob(t) for t in tokens[1:]]
        text = prompt
        if max_tokens >= 1:
            tokens.append(" X")
            logprobs.append(-7.0)
            text += " X"
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t)
        info = {"tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets,
                "top_logprobs": [None] + [{t: lp} for t, lp in zip(tokens[1:], logprobs[1:])]}
        return {"text": text, "logprobs": info if self.echo_logprobs else None, "finish_reason": "length"}

    def _handler_class(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                try:
                    body = json.loads(data)
                except ValueError:
                    body = None
                with server._lock:
                    server.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                    body, time.monotonic()))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    behaviour = server._next()
                    delay = behaviour.delay + (server.delay_fn(body) if server.delay_fn else 0.0)
                    if delay:
                        time.sleep(delay)
                    if behaviour.body is not None:
                        status, payload, headers = behaviour.status, behaviour.body, behaviour.headers
                    elif not isinstance(body, dict):
                        status, payload, headers = 400, b'{"error": {"message": "body is not JSON"}}', {}
                    else:
                        status, obj = server._answer(self.path, body)
                        payload, headers = json.dumps(obj).encode(), {}
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                    self.close_connection = True
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler
