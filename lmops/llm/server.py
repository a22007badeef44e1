"""``lmops serve``: an OpenAI-compatible HTTP server over a local model (:class:`~lmops.llm.HFLocal`),
packed BitNet included, on starlette (ASGI) run by uvicorn.

Endpoints, in the wire format of the OpenAI API as vLLM serves it, so the same client points at either:

- ``GET  /v1/models``: the one served model;
- ``POST /v1/completions``: ``prompt`` (a string or a list), ``max_tokens`` (default 16), ``temperature``
  (default 1), ``top_p``, ``n``, ``stop``, ``logprobs`` (0-20: per-token log-probabilities with
  ``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``), ``echo`` (the prompt's tokens and
  their log-probabilities too; with ``max_tokens=0`` this is how clients score a continuation),
  ``stream`` (server-sent events, ``data: [DONE]`` last);
- ``POST /v1/chat/completions``: ``messages`` through the tokenizer's chat template, ``max_tokens`` or
  ``max_completion_tokens``, ``logprobs`` (bool) and ``top_logprobs``, ``stream``;
- ``GET  /health``.

Requests are queued to one worker thread that owns the model and groups queued requests with the same
sampling settings into one batch (up to ``batch_size`` prompts), so concurrent clients share forward
passes; the event loop never waits on the model. Log-probabilities are the model's raw ones (before
temperature and top-p), as vLLM returns them. Errors come back as ``{"error": {"message", "type",
"param", "code"}}`` with status 400 (bad request), 404 (unknown model or path) or 500.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from .hf_local import Completion, HFLocal

__all__ = ["BatchingWorker", "create_app", "serve"]

_MAX_LOGPROBS = 20


# ----------------------------------------------------------------------------------------------
# the model's worker thread
# ----------------------------------------------------------------------------------------------
@dataclass
class _Job:
    kind: str  # "generate" or "score"
    items: list  # token-id lists (generate) or texts (score)
    params: dict
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    streamer: Any = None

    def key(self) -> str | None:
        return None if self.streamer is not None else json.dumps([self.kind, self.params], sort_keys=True)


class BatchingWorker:
    """One thread that runs every model call; queued jobs with equal settings run as one batch."""

    def __init__(self, llm: HFLocal, *, batch_size: int | None = None) -> None:
        self.llm = llm
        self.batch_size = batch_size or llm.batch_size
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lmops-serve-model", daemon=True)
        self._thread.start()

    def submit(self, kind: str, items: list, params: dict, streamer: Any = None) -> concurrent.futures.Future:
        job = _Job(kind, items, params, streamer=streamer)
        with self._cv:
            if self._closed:
                raise RuntimeError("the model worker has stopped")
            self._jobs.append(job)
            self._cv.notify()
        return job.future

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _take(self) -> list[_Job] | None:
        with self._cv:
            while not self._jobs and not self._closed:
                self._cv.wait()
            if not self._jobs:
                return None
            first = self._jobs.popleft()
            batch, key = [first], first.key()
            if key is not None:
                size = len(first.items)
                for job in list(self._jobs):
                    if size >= self.batch_size:
                        break
                    if job.key() == key:
                        self._jobs.remove(job)
                        batch.append(job)
                        size += len(job.items)
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            items = [x for job in batch for x in job.items]
            first = batch[0]
            try:
                if first.kind == "score":
                    results: list = self.llm.prompt_scores(items, **first.params)
                else:
                    results = self.llm.complete(items, streamer=first.streamer, **first.params)
            except BaseException as exc:  # handed to each waiting request
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                if first.streamer is not None:
                    first.streamer.end()
                continue
            start = 0
            for job in batch:
                job.future.set_result(results[start : start + len(job.items)])
                start += len(job.items)


# ----------------------------------------------------------------------------------------------
# request checks
# ----------------------------------------------------------------------------------------------
class RequestError(ValueError):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param, self.status = param, status


def _number(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise RequestError(f"{key}: expected a number in [{lo}, {hi}], got {value!r}", key)
    return float(value)


def _integer(body: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(f"{key}: expected an integer in [{lo}, {hi}], got {value!r}", key)
    return value


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise RequestError(f"stop: expected a string or a list of non-empty strings, got {stop!r}", "stop")
    return items


def _unsupported(body: dict) -> None:
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise RequestError(f"{key}: not supported by lmops serve (only 0)", key)
    if body.get("logit_bias"):
        raise RequestError("logit_bias: not supported by lmops serve", "logit_bias")
    if body.get("suffix"):
        raise RequestError("suffix: not supported by lmops serve", "suffix")
    best_of = body.get("best_of")
    if best_of not in (None, body.get("n", 1)):
        raise RequestError("best_of: not supported by lmops serve (only equal to n)", "best_of")


# ----------------------------------------------------------------------------------------------
# the app
# ----------------------------------------------------------------------------------------------
def create_app(llm: HFLocal, *, model_name: str | None = None, batch_size: int | None = None):
    """The starlette app serving ``llm`` under ``model_name`` (default ``llm.name``). The model worker
    starts with the app and stops at its shutdown."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    name = model_name or llm.name
    created = int(time.time())
    tok = llm.tokenizer
    state: dict[str, BatchingWorker] = {}

    def worker() -> BatchingWorker:
        if "worker" not in state:
            state["worker"] = BatchingWorker(llm, batch_size=batch_size)
        return state["worker"]

    def error(message: str, status: int = 400, param: str | None = None, kind: str = "invalid_request_error"):
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                            status_code=status)

    def token_text(tid: int) -> str:
        return tok.decode([tid], skip_special_tokens=False)

    async def read_body(request: Request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != name:
            raise RequestError(f"The model `{model}` does not exist; this server has `{name}`", "model", 404)
        _unsupported(body)
        return body

    async def run_job(kind: str, items: list, params: dict) -> list:
        return await asyncio.wrap_future(worker().submit(kind, items, params))

    def sampling(body: dict, max_key: str, default_max: int | None) -> dict:
        max_tokens = _integer(body, max_key, default_max, 0, llm.max_length)
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 1e-9, 1.0)
        n = _integer(body, "n", 1, 1, 128)
        return dict(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=_stops(body), n=n)

    def completion_logprobs(c: Completion, base_offset: int) -> dict:
        tokens, offsets, offset = [], [], base_offset
        for i, tid in enumerate(c.token_ids):
            tokens.append(token_text(tid))
            offsets.append(offset)
            offset = base_offset + len(tok.decode(c.token_ids[: i + 1], skip_special_tokens=True))
        tops = [{token_text(t): lp for t, lp in alts} for alts in c.top_logprobs] if c.top_logprobs else None
        return {"tokens": tokens, "token_logprobs": list(c.logprobs), "top_logprobs": tops, "text_offset": offsets}

    def echo_logprobs(scores, want_top: bool) -> dict:
        tops = None
        if want_top:
            tops = [None] + [{token_text(t): lp for t, lp in alts} for alts in scores.top_logprobs[1:]]
        return {"tokens": [token_text(t) for t in scores.token_ids], "token_logprobs": list(scores.logprobs),
                "top_logprobs": tops, "text_offset": [start for start, _ in scores.offsets]}

    # -------------------------------------------------------------------------------------------
    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "lmops", "max_model_len": llm.max_length}
        ]})

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def completions(request: Request):
        try:
            body = await read_body(request)
            prompt = body.get("prompt")
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise RequestError("prompt: expected a string or a non-empty list of strings", "prompt")
            params = sampling(body, "max_tokens", 16)
            logprobs = _integer(body, "logprobs", None, 0, _MAX_LOGPROBS)
            echo = bool(body.get("echo", False))
            stream = bool(body.get("stream", False))
            params["top_logprobs"] = logprobs or 0
            ids = [llm.encode(p) for p in prompts]
            if stream:
                if echo:
                    raise RequestError("echo: not supported with stream", "echo")
                return await stream_completion(ids, params, logprobs, chat=False)
            n = params["n"]
            results = await run_job("generate", ids, params) if params["max_new_tokens"] > 0 else [
                [Completion("", [], [], [], "length", len(x)) for _ in range(n)] for x in ids]
            scores = await run_job("score", prompts, {"top_logprobs": logprobs or 0}) if echo else None
        except RequestError as exc:
            return error(str(exc), exc.status, exc.param)
        except ValueError as exc:
            return error(str(exc))
        choices, completion_tokens = [], 0
        for i, group in enumerate(results):
            for j, c in enumerate(group):
                text = (prompts[i] if echo else "") + c.text
                lp = None
                if logprobs is not None:
                    lp = completion_logprobs(c, len(prompts[i]) if echo else 0)
                    if echo:
                        head = echo_logprobs(scores[i], bool(logprobs))
                        lp = {k: head[k] + (lp[k] or []) if head[k] is not None else None for k in lp}
                choices.append({"index": i * n + j, "text": text, "logprobs": lp, "finish_reason": c.finish_reason})
                completion_tokens += len(c.token_ids)
        prompt_tokens = sum(len(x) for x in ids)
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    async def chat_completions(request: Request):
        try:
            body = await read_body(request)
            messages = body.get("messages")
            from .protocol import check_conversations

            try:
                check_conversations([messages])
            except (TypeError, ValueError) as exc:
                raise RequestError(f"messages: {exc}".replace("conversations[0]", "messages"), "messages") from None
            try:
                prompt = llm.render_chat(messages)
            except NotImplementedError as exc:
                raise RequestError(str(exc), "messages") from None
            ids = llm.encode(prompt)
            key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
            params = sampling(body, key, None)
            if params["max_new_tokens"] is None:
                params["max_new_tokens"] = max(1, min(1024, llm.max_length - len(ids)))
            want = bool(body.get("logprobs", False))
            top = _integer(body, "top_logprobs", 0, 0, _MAX_LOGPROBS) or 0
            params["top_logprobs"] = top
            if body.get("stream"):
                return await stream_completion([ids], params, top if want else None, chat=True)
            results = (await run_job("generate", [ids], params))[0] if params["max_new_tokens"] > 0 else [
                Completion("", [], [], [], "length", len(ids)) for _ in range(params["n"])]
        except RequestError as exc:
            return error(str(exc), exc.status, exc.param)
        except ValueError as exc:
            return error(str(exc))
        choices = []
        for j, c in enumerate(results):
            lp = None
            if want:
                lp = {"content": [
                    {"token": token_text(t), "logprob": v, "bytes": list(token_text(t).encode("utf-8")),
                     "top_logprobs": [{"token": token_text(a), "logprob": b, "bytes": list(token_text(a).encode())}
                                      for a, b in alts]}
                    for t, v, alts in zip(c.token_ids, c.logprobs, c.top_logprobs)]}
            choices.append({"index": j, "message": {"role": "assistant", "content": c.text}, "logprobs": lp,
                            "finish_reason": c.finish_reason})
        completion_tokens = sum(len(c.token_ids) for c in results)
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": choices,
            "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                      "total_tokens": len(ids) + completion_tokens},
        })

    # -------------------------------------------------------------------------------------------
    async def stream_completion(ids: list[list[int]], params: dict, logprobs: int | None, *, chat: bool):
        """Server-sent events: one request streams one sequence at a time (``n`` > 1 or several prompts
        run one after another), text deltas as tokens arrive."""
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        obj = "chat.completion.chunk" if chat else "text_completion"
        n = params["n"]
        one = dict(params, n=1)

        def event(payload: dict) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        def chunk(index: int, text: str | None, finish: str | None, role: bool = False) -> str:
            if chat:
                delta: dict = {"role": "assistant"} if role else {}
                if text:
                    delta["content"] = text
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
            return event({"id": rid, "object": obj, "created": int(time.time()), "model": name, "choices": [choice]})

        async def events() -> AsyncIterator[str]:
            loop = asyncio.get_running_loop()
            for i, prompt_ids in enumerate(ids):
                for j in range(n):
                    index = i * n + j
                    if chat:
                        yield chunk(index, None, None, role=True)
                    if one["max_new_tokens"] == 0:
                        yield chunk(index, "", "length")
                        continue
                    queue: asyncio.Queue = asyncio.Queue()
                    streamer = _QueueStreamer(lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
                    future = worker().submit("generate", [prompt_ids], one, streamer=streamer)
                    sent, tokens = "", []
                    stops = one["stop"]
                    while True:
                        item = await queue.get()
                        if item is None:
                            break
                        tokens.extend(item)
                        text = tok.decode(tokens, skip_special_tokens=True)
                        cut = min((k for k in (text.find(s) for s in stops) if k >= 0), default=-1)
                        if cut >= 0:
                            text = text[:cut]
                        else:
                            text = text[: len(text) - _held_back(text, stops)]
                        if text.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
                            continue
                        if len(text) > len(sent) and text.startswith(sent):
                            yield chunk(index, text[len(sent):], None)
                            sent = text
                    try:
                        done: Completion = (await asyncio.wrap_future(future))[0][0]
                    except ValueError as exc:
                        yield event({"error": {"message": str(exc), "type": "invalid_request_error",
                                               "param": None, "code": None}})
                        return
                    if len(done.text) > len(sent) and done.text.startswith(sent):
                        yield chunk(index, done.text[len(sent):], None)
                    yield chunk(index, None, done.finish_reason)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def not_found(request: Request, exc: Exception):
        return error(f"no route {request.method} {request.url.path}", 404, kind="not_found_error")

    async def crashed(request: Request, exc: Exception):
        return error(f"{type(exc).__name__}: {exc}", 500, kind="server_error")

    async def lifespan(app):
        yield
        if "worker" in state:
            state.pop("worker").close()

    import contextlib

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        exception_handlers={404: not_found, 500: crashed},
        lifespan=contextlib.asynccontextmanager(lifespan),
    )


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string (not sent yet)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


class _QueueStreamer:
    """A ``transformers`` streamer that hands each new token id list to ``push`` (the first ``put`` is
    the prompt, skipped); ``end`` pushes ``None``."""

    def __init__(self, push: Callable[[Any], None]) -> None:
        self.push = push
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.push([int(v) for v in value.reshape(-1).tolist()])

    def end(self) -> None:
        self.push(None)


def serve(llm: HFLocal, *, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          batch_size: int | None = None, log_level: str = "info") -> None:
    """Run the server in this process until interrupted."""
    import uvicorn

    uvicorn.run(create_app(llm, model_name=model_name, batch_size=batch_size), host=host, port=port,
                log_level=log_level)
