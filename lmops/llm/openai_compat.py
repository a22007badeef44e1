"""``OpenAICompatible``: an :class:`~lmops.llm.LLM` over HTTP, for any server that speaks the OpenAI
completions and chat-completions wire format (``lmops serve``, vLLM, llama.cpp's server, OpenAI itself).

- :meth:`~OpenAICompatible.generate`: ``POST {base_url}/completions`` with ``prompt``, ``max_tokens``,
  ``temperature``, ``top_p``, ``stop``, ``n``; each completion is cut at the first stop string here too,
  in case a server ignores ``stop``.
- :meth:`~OpenAICompatible.chat`: ``POST {base_url}/chat/completions`` with ``messages`` (one
  conversation per request).
- :meth:`~OpenAICompatible.loglikelihood`: ``POST {base_url}/completions`` with
  ``prompt = context + continuation``, ``echo=true``, ``logprobs=1``, ``max_tokens=0`` (``1`` where the
  server rejects ``0`` with HTTP 400; the generated token is then ignored), and the sum of the echoed
  prompt's ``token_logprobs`` over the tokens whose ``text_offset >= len(context)``; their count is the
  token count.

**Token alignment.** The server tokenizes ``context + continuation`` as one string, so the split is
exact only where the context ends at a token boundary. A token that straddles it (it starts inside the
context and ends inside the continuation) is an :class:`~lmops.llm.LLMError` saying so, never a
silently wrong number. Let the continuation start with the space that separates it from the context
(``"The capital of France is"`` + ``" Paris"``), as lm-evaluation-harness's tasks do. The context must
be non-empty: the server gives no log-probability for the first token of a prompt.

**Concurrency** (a choice): one synchronous ``httpx.Client`` per instance (connections are reused)
driven by a pool of ``max_concurrency`` threads, shared by every call on the instance, so at most
``max_concurrency`` requests are in flight however many threads call it. Unlike an asyncio client run
through ``asyncio.run``, this works the same from a script, from worker threads, and from inside a
running event loop (a Jupyter cell, an async web handler), where it simply blocks like any other
synchronous call. ``close()`` (or a ``with`` block) releases the connections and threads; a later call
opens new ones.

**Retries.** HTTP 429, 500, 502, 503, 504, a timeout, a failed connection, and a malformed reply (a
body that is not JSON, no ``choices`` list, the wrong number of choices, a choice without its text) are
retried up to ``max_retries`` times, waiting ``uniform(0, min(backoff_cap, backoff_base * 2**attempt))``
seconds (exponential backoff with full jitter) or, when the reply has a ``Retry-After`` header (seconds
or an HTTP date), that long, capped at ``max_wait``. Then :class:`~lmops.llm.LLMError` names the
endpoint, the retries and the last failure. Any other HTTP error (400, 401, 404, 422, ...) is an
``LLMError`` at once, with the start of the body. The first request of a batch that fails for good
stops the batch (requests not yet sent are not sent).

**Batching.** One request per prompt by default (the most compatible), all in flight up to
``max_concurrency``; ``batch_prompts=k`` sends ``k`` prompts per completions request (a list
``prompt``; the choices come back with ``index = prompt_i * n + sample_j``, as OpenAI's spec says).
Results are always in input order. Batches of 20 requests or more show a progress bar
(:func:`lmops.common.progress.progress_bar`; ``progress=False`` turns it off).
"""

from __future__ import annotations

import concurrent.futures as cf
import email.utils
import json
import math
import os
import random
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

import httpx

from .errors import LLMError
from .protocol import (
    Message,
    check_conversations,
    check_generation_args,
    check_loglikelihood_args,
    stop_list,
)

__all__ = ["RETRY_STATUSES", "OpenAICompatible", "retry_after_seconds"]

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})  # overloaded or failing servers: worth another try
PROGRESS_MIN_REQUESTS = 20  # smaller batches finish before a bar would say anything useful
_SNIPPET = 300  # characters of a reply body quoted in an error


class _Malformed(Exception):
    """A reply that a flaky proxy or an overloaded server may have garbled: retried like a 5xx."""


class _Aborted(Exception):
    """Another request of the batch failed for good (or the caller was interrupted): stop quietly."""


class _RejectedError(LLMError):
    """A 4xx (other than 429) reply: not retried. ``status`` lets loglikelihood fall back on a 400."""

    def __init__(self, endpoint: str, reason: str, status: int) -> None:
        super().__init__(endpoint, reason)
        self.status = status


def _snippet(text: str, limit: int = _SNIPPET) -> str:
    flat = " ".join(text.split())
    if not flat:
        return "(empty body)"
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def retry_after_seconds(value: str | None) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (>= 0), from a number of seconds or an
    HTTP date; ``None`` when absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # an HTTP date is GMT by definition
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _cut(text: str, stops: list[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def _parse_json(response: httpx.Response) -> Any:
    if not response.content.strip():
        raise _Malformed(f"HTTP {response.status_code} with an empty body")
    try:
        return response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise _Malformed(f"the body is not JSON: {_snippet(response.text)}") from None


def _choices(data: Any, expected: int, n: int) -> list[dict]:
    """``data["choices"]`` checked to hold ``expected`` choice objects, sorted by their ``index``."""
    if not isinstance(data, dict):
        raise _Malformed(f"expected a JSON object, got {type(data).__name__}: {_snippet(json.dumps(data))}")
    choices = data.get("choices")
    if not isinstance(choices, list):
        error = f" (it has an error: {_snippet(json.dumps(data['error']))})" if "error" in data else ""
        raise _Malformed(f'the reply has no "choices" list{error}')
    if len(choices) != expected:
        hint = " (does the server support n > 1?)" if n > 1 and len(choices) * n == expected else ""
        raise _Malformed(f"expected {expected} choices, got {len(choices)}{hint}")
    if not all(isinstance(c, dict) for c in choices):
        raise _Malformed("a choice is not a JSON object")
    indices = [c.get("index") for c in choices]
    if all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        if sorted(indices) != list(range(expected)):
            raise _Malformed(f"the choices' indices {sorted(indices)[:20]} are not 0..{expected - 1}")
        return sorted(choices, key=lambda c: c["index"])
    if any(i is not None for i in indices):
        raise _Malformed("some choices have an integer index and some do not")
    return choices  # no indices at all: the list order is the only order there is


def _completion_text(choice: dict, k: int) -> str:
    text = choice.get("text")
    if not isinstance(text, str):
        raise _Malformed(f'choice {k} has no "text" string')
    return text


def _chat_text(choice: dict, k: int) -> str:
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise _Malformed(f'choice {k} has no "message.content" string')
    return content


def _offset_shift(tokens: list, offsets: list[int], text: object) -> int:
    """Characters the server counted before the prompt: vLLM echoes a BOS token (``"<s>"``) and counts
    its text in ``text_offset`` though the echoed ``text`` lacks it. Detected when the tokens joined are
    the echoed text with a prefix that ends at a token boundary (a choice); otherwise 0."""
    if not isinstance(text, str) or not all(isinstance(t, str) for t in tokens):
        return 0
    joined = "".join(tokens)
    extra = len(joined) - len(text)
    if extra > 0 and joined.endswith(text) and extra in offsets:
        return extra
    return 0


def _echo_score(choice: dict, context: str, continuation: str, endpoint: str) -> tuple[float, int]:
    """``(sum of token_logprobs, count)`` over the echoed tokens of ``continuation`` in ``choice``."""
    logprobs = choice.get("logprobs")
    if (
        not isinstance(logprobs, dict)
        or not isinstance(logprobs.get("token_logprobs"), list)
        or not isinstance(logprobs.get("text_offset"), list)
    ):
        raise LLMError(endpoint, 'the reply has no "logprobs" with "token_logprobs" and "text_offset": the '
                                 "server does not support echo logprobs (the prompt's log-probabilities), "
                                 "which loglikelihood needs")
    tokens, values, offsets = logprobs.get("tokens"), logprobs["token_logprobs"], logprobs["text_offset"]
    if not isinstance(tokens, list) or not len(tokens) == len(values) == len(offsets):
        raise _Malformed("logprobs.tokens, token_logprobs and text_offset differ in length")
    if not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets) or any(
        b < a for a, b in zip(offsets, offsets[1:])
    ):
        raise _Malformed("logprobs.text_offset is not a non-decreasing list of ints")
    shift = _offset_shift(tokens, offsets, choice.get("text"))
    start, end = len(context), len(context) + len(continuation)
    total, count = 0.0, 0
    for i, (token, value, offset) in enumerate(zip(tokens, values, offsets)):
        offset -= shift
        if offset >= end:  # the token generated after the prompt (the max_tokens=1 fallback)
            break
        # where the token ends: the next token's offset (robust to tokens shown as "bytes:\x.."), else its text
        stop = offsets[i + 1] - shift if i + 1 < len(offsets) else offset + len(token if isinstance(token, str) else "")
        if offset < start < stop:
            raise LLMError(endpoint, f"tokenization is not aligned: the token {token!r} (characters {offset}..{stop}) "
                                     f"straddles the end of the context (character {start}); end the context at a "
                                     f"token boundary, e.g. start the continuation with a space")
        if offset < start:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value <= 0:
            raise LLMError(endpoint, f"no log-probability <= 0 for the continuation token {token!r}: got {value!r}")
        total += float(value)
        count += 1
    if count == 0:
        raise LLMError(endpoint, f"the echoed prompt has no token at or after the end of the context (character "
                                 f"{start}): the server does not echo the prompt's log-probabilities")
    return total, count


class OpenAICompatible:
    """An :class:`~lmops.llm.LLM` backed by an OpenAI-compatible HTTP server (see the module docstring).

    Args:
        base_url: the API root, e.g. ``"http://127.0.0.1:8000/v1"`` (a trailing slash is fine). The
            endpoint paths ``completions`` and ``chat/completions`` are appended as they are: a
            ``/v1`` is never added, so give it where the server needs it.
        model: the ``model`` field of every request (and part of :attr:`name`).
        api_key_env: the environment variable holding the API key, sent as ``Authorization: Bearer``;
            when it is unset (or ``None`` is given) no header is sent, which suits local servers. It is
            read when the connections open (the first call, and the first after :meth:`close`).
        max_concurrency: the most requests in flight at once.
        timeout: seconds to connect, to send, and between bytes of the reply.
        max_retries: retries per request after the first attempt (0: no retry).
        backoff_base, backoff_cap: the backoff before retry ``a`` (from 0) is
            ``uniform(0, min(backoff_cap, backoff_base * 2**a))`` seconds.
        max_wait: the longest wait a ``Retry-After`` header can ask for.
        batch_prompts: prompts per completions request (``generate`` and ``loglikelihood``); 1 sends a
            plain string ``prompt``, the most compatible.
        progress: show a progress bar for batches of 20 requests or more.
    Attributes:
        name: ``"openai:{model}@{base_url}"``, what :class:`~lmops.llm.CachedLLM` keys on.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        max_wait: float = 60.0,
        batch_prompts: int = 1,
        progress: bool = True,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected an http:// or https:// URL such as 'http://127.0.0.1:8000/v1', "
                             f"got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model: expected a non-empty string, got {model!r}")
        if api_key_env is not None and (not isinstance(api_key_env, str) or not api_key_env):
            raise ValueError(f"api_key_env: expected an environment variable name or None, got {api_key_env!r}")
        for field, value in (("max_concurrency", max_concurrency), ("batch_prompts", batch_prompts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field}: expected a positive int, got {value!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries: expected an int >= 0, got {max_retries!r}")
        for field, value, positive in (("timeout", timeout, True), ("backoff_base", backoff_base, False),
                                       ("backoff_cap", backoff_cap, False), ("max_wait", max_wait, False)):
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if not ok or value < 0 or (positive and value == 0):
                raise ValueError(f"{field}: expected a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}@{self.base_url}"
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self.backoff_cap = float(backoff_cap)
        self.max_wait = float(max_wait)
        self.batch_prompts = batch_prompts
        self.progress = bool(progress)
        self._echo_max_tokens = 0  # becomes 1 once the server has rejected max_tokens=0
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._pool: cf.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:  # never the API key
        return f"OpenAICompatible({self.base_url!r}, {self.model!r}, max_concurrency={self.max_concurrency})"

    # -- lifecycle ---------------------------------------------------------------------------------
    def _open(self) -> tuple[httpx.Client, cf.ThreadPoolExecutor]:
        with self._lock:
            if self._client is None or self._pool is None:
                headers = {}
                key = os.environ.get(self.api_key_env) if self.api_key_env else None
                if key:
                    headers["Authorization"] = f"Bearer {key}"
                limits = httpx.Limits(max_connections=self.max_concurrency,
                                      max_keepalive_connections=self.max_concurrency)
                self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(self.timeout), limits=limits)
                self._pool = cf.ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="lmops-openai")
            return self._client, self._pool

    def close(self) -> None:
        """Release the connections and the worker threads (a later call opens new ones)."""
        with self._lock:
            client, pool, self._client, self._pool = self._client, self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.close()

    def __enter__(self) -> OpenAICompatible:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request, with retries -----------------------------------------------------------------
    def _endpoint(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt, 60)))

    def _post(self, client: httpx.Client, path: str, payload: dict, parse: Callable[[Any], T],
              abort: threading.Event) -> T:
        """POST ``payload`` and return ``parse(reply JSON)``, retrying as the module docstring says."""
        url = self._endpoint(path)
        last = ""
        for attempt in range(self.max_retries + 1):
            if abort.is_set():
                raise _Aborted
            wait = None
            try:
                response = client.post(url, json=payload)
            except httpx.TimeoutException as exc:
                last = f"no reply within timeout={self.timeout:g}s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__}: {exc})"
            except httpx.DecodingError as exc:
                last = f"malformed reply: the body could not be decoded ({exc})"
            else:
                status = response.status_code
                if status in RETRY_STATUSES:
                    last = f"HTTP {status}: {_snippet(response.text)}"
                    asked = retry_after_seconds(response.headers.get("retry-after"))
                    wait = None if asked is None else min(asked, self.max_wait)
                elif not 200 <= status < 300:
                    where = f" (redirected to {response.headers['location']})" if "location" in response.headers else ""
                    raise _RejectedError(url, f"HTTP {status}{where}, not retried: {_snippet(response.text)}", status)
                else:
                    try:
                        return parse(_parse_json(response))
                    except _Malformed as exc:
                        last = f"malformed reply: {exc}"
            if attempt == self.max_retries:
                break
            if abort.wait(self._backoff(attempt) if wait is None else wait):
                raise _Aborted
        raise LLMError(url, f"failed after {self.max_retries} retries ({self.max_retries + 1} attempts); "
                            f"last: {last}")

    def _run(self, tasks: list[Callable[[httpx.Client, threading.Event], T]], desc: str) -> list[T]:
        """Run ``tasks`` on the pool (at most ``max_concurrency`` at once); results in order. The first
        task that fails for good stops the others and its error is raised."""
        if not tasks:
            return []
        client, pool = self._open()
        abort = threading.Event()
        results: list[Any] = [None] * len(tasks)
        futures = {pool.submit(task, client, abort): i for i, task in enumerate(tasks)}
        bar = None
        if self.progress and len(tasks) >= PROGRESS_MIN_REQUESTS:
            from lmops.common.progress import progress_bar

            bar = progress_bar(len(tasks), desc=desc, unit="req")
        try:
            for future in cf.as_completed(futures):
                results[futures[future]] = future.result()
                if bar is not None:
                    bar.update(1)
        except BaseException as exc:
            abort.set()
            for future in futures:
                future.cancel()
            if isinstance(exc, (_Aborted, cf.CancelledError)):  # only when close() ran during the batch
                raise LLMError(self.base_url, "the client was closed while requests were in flight") from None
            raise
        finally:
            if bar is not None:
                bar.close()
        return results

    # -- the protocol ------------------------------------------------------------------------------
    def _sampling(self, max_new_tokens: int, temperature: float, top_p: float, stops: list[str], n: int) -> dict:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_new_tokens, "temperature": temperature,
                                "top_p": top_p, "n": n}
        if stops:
            body["stop"] = stops
        return body

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        n: int = 1,
    ) -> list[list[str]]:
        """``n`` completions per prompt from ``{base_url}/completions``, cut at the first ``stop``."""
        prompts = check_generation_args(prompts, max_new_tokens, temperature, top_p, stop, n)
        stops = stop_list(stop)
        base = self._sampling(max_new_tokens, temperature, top_p, stops, n)
        k = self.batch_prompts

        def task_for(group: list[str]) -> Callable[[httpx.Client, threading.Event], list[list[str]]]:
            def parse(data: Any) -> list[list[str]]:
                texts = [_completion_text(c, j) for j, c in enumerate(_choices(data, len(group) * n, n))]
                return [[_cut(t, stops) for t in texts[i * n : (i + 1) * n]] for i in range(len(group))]

            payload = {**base, "prompt": group[0] if k == 1 else group}
            return lambda client, abort: self._post(client, "completions", payload, parse, abort)

        groups = [prompts[i : i + k] for i in range(0, len(prompts), k)]
        answers = self._run([task_for(g) for g in groups], f"{self.model} completions")
        return [samples for answer in answers for samples in answer]

    def chat(
        self,
        conversations: list[list[Message]],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        n: int = 1,
    ) -> list[list[str]]:
        """``n`` assistant replies per conversation from ``{base_url}/chat/completions``."""
        conversations = check_conversations(conversations)
        check_generation_args([], max_new_tokens, temperature, top_p, stop, n)
        stops = stop_list(stop)
        base = self._sampling(max_new_tokens, temperature, top_p, stops, n)

        def parse(data: Any) -> list[str]:
            return [_cut(_chat_text(c, j), stops) for j, c in enumerate(_choices(data, n, n))]

        def task_for(conversation: list[Message]) -> Callable[[httpx.Client, threading.Event], list[str]]:
            payload = {**base, "messages": conversation}
            return lambda client, abort: self._post(client, "chat/completions", payload, parse, abort)

        return self._run([task_for(c) for c in conversations], f"{self.model} chat")

    def loglikelihood(self, contexts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        """Echoed prompt log-probabilities from ``{base_url}/completions`` (see the module docstring)."""
        contexts, continuations = check_loglikelihood_args(contexts, continuations)
        for i, context in enumerate(contexts):
            if not context:
                raise ValueError(f"contexts[{i}]: expected a non-empty string (an OpenAI-compatible server gives "
                                 f"no log-probability for the first token of a prompt)")
        endpoint = self._endpoint("completions")
        k = self.batch_prompts

        def task_for(pairs: list[tuple[str, str]]) -> Callable[[httpx.Client, threading.Event], list]:
            def parse(data: Any) -> list[tuple[float, int]]:
                choices = _choices(data, len(pairs), 1)
                return [_echo_score(c, ctx, cont, endpoint) for c, (ctx, cont) in zip(choices, pairs)]

            prompts = [ctx + cont for ctx, cont in pairs]
            payload = {"model": self.model, "prompt": prompts[0] if k == 1 else prompts, "echo": True,
                       "logprobs": 1, "temperature": 0.0}

            def task(client: httpx.Client, abort: threading.Event) -> list[tuple[float, int]]:
                max_tokens = self._echo_max_tokens
                try:
                    return self._post(client, "completions", {**payload, "max_tokens": max_tokens}, parse, abort)
                except _RejectedError as exc:
                    if max_tokens != 0 or exc.status != 400:
                        raise LLMError(endpoint, f"{exc.reason} (the server may not support echo logprobs, "
                                                 f"which loglikelihood needs)") from None
                try:  # some servers reject max_tokens=0: generate one token and ignore it
                    out = self._post(client, "completions", {**payload, "max_tokens": 1}, parse, abort)
                except _RejectedError as exc:
                    raise LLMError(endpoint, f"the echo request was rejected with max_tokens=0 and with max_tokens=1 "
                                             f"({exc.reason}); the server may not support echo logprobs, which "
                                             f"loglikelihood needs") from None
                self._echo_max_tokens = 1
                return out

            return task

        pairs = list(zip(contexts, continuations))
        groups = [pairs[i : i + k] for i in range(0, len(pairs), k)]
        answers = self._run([task_for(g) for g in groups], f"{self.model} loglikelihood")
        return [score for answer in answers for score in answer]
