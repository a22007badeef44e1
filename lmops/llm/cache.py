"""``CachedLLM``: a persistent SQLite cache around any :class:`~lmops.llm.LLM`, so that a rerun costs
nothing and an interrupted pipeline resumes where it stopped.

Each prompt (conversation, context pair) is one entry, keyed by the backend's class, its ``name`` (the
model) and the whole request: the prompt and every generation argument, ``n`` and the sampling ones
included, so ``n=4, temperature=0.8`` never answers for ``n=1`` or greedy. Requests not in the cache go
to the backend in chunks of ``chunk_size``, and each chunk is written as soon as it returns (one SQLite
transaction), so a kill loses at most the chunk in flight. Only well-formed answers are written: a
backend error or a reply of the wrong shape raises :class:`~lmops.llm.LLMError` and caches nothing.

Safe under concurrent use: threads share one connection behind a lock; processes share the file
through SQLite's write-ahead log and a busy timeout (the pattern of lm-evaluation-harness's
``CachingLM``, with SQLite's own locking instead of a home-made one).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Sequence

from .errors import LLMError
from .protocol import LLM, Message, check_conversations, check_generation_args, check_loglikelihood_args, stop_list

__all__ = ["CachedLLM"]

_SCHEMA = "CREATE TABLE IF NOT EXISTS llm_cache (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def _sampling(max_new_tokens, temperature, top_p, stop, n) -> tuple[dict, dict]:
    """The backend's keyword arguments, and the same as the cache key holds them (``stop`` as a list)."""
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop, n=n)
    return kw, {**kw, "stop": stop_list(stop)}


class CachedLLM:
    """Wraps ``llm`` with a cache in the SQLite file ``path`` (created with its folder if missing).

    Args:
        llm: any backend with ``name``, ``generate``, ``chat``, ``loglikelihood``.
        path: the cache file; several processes may share it.
        chunk_size: requests sent to ``llm`` per call (and written per transaction).
    Attributes:
        hits, misses: requests answered from the cache / sent to the backend since construction.
    """

    def __init__(self, llm: LLM, path: str | os.PathLike, *, chunk_size: int = 16) -> None:
        for method in ("generate", "chat", "loglikelihood"):
            if not callable(getattr(llm, method, None)):
                raise TypeError(f"llm: expected an lmops.llm backend with {method}(), got {type(llm).__name__}")
        if not isinstance(getattr(llm, "name", None), str):
            raise TypeError(f"llm: expected a backend with a str .name (the model), got {type(llm).__name__}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
        self.llm = llm
        self.name = llm.name
        self.path = Path(path)
        self.chunk_size = chunk_size
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connect()

    # ------------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # a forked child opens its own connection
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _key(self, method: str, request: dict) -> str:
        blob = json.dumps(
            {"backend": f"{type(self.llm).__module__}.{type(self.llm).__qualname__}", "model": self.name,
             "method": method, "request": request},
            sort_keys=True, ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _lookup(self, keys: list[str]) -> dict[str, object]:
        found: dict[str, object] = {}
        with self._lock:
            conn = self._connect()
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                for key, value in conn.execute(f"SELECT key, value FROM llm_cache WHERE key IN ({marks})", part):
                    found[key] = json.loads(value)
        return found

    def _store(self, items: list[tuple[str, object]]) -> None:
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO llm_cache (key, value) VALUES (?, ?)",
                    [(k, json.dumps(v, ensure_ascii=False)) for k, v in items],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _cached(
        self,
        method: str,
        requests: list[dict],
        call: Callable[[list[int]], list],
        check: Callable[[object], object],
    ) -> list:
        """Answer ``requests`` from the cache, sending the missing ones (by index) through ``call`` in
        chunks; ``check`` validates (and normalizes) one answer, raising ``LLMError`` when malformed."""
        keys = [self._key(method, r) for r in requests]
        found = self._lookup(list(dict.fromkeys(keys)))
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        for start in range(0, len(missing), self.chunk_size):
            chunk = missing[start : start + self.chunk_size]
            answers = call(chunk)
            if not isinstance(answers, list) or len(answers) != len(chunk):
                raise LLMError(self.name, f"{method} returned {type(answers).__name__} of the wrong length for "
                                          f"{len(chunk)} requests")
            checked = [check(a) for a in answers]
            self._store([(keys[i], a) for i, a in zip(chunk, checked)])
            found.update({keys[i]: a for i, a in zip(chunk, checked)})
        return [found[k] for k in keys]

    def _completions(self, n: int) -> Callable[[object], list[str]]:
        def check(answer: object) -> list[str]:
            if not isinstance(answer, list) or len(answer) != n or not all(isinstance(s, str) for s in answer):
                raise LLMError(self.name, f"expected {n} completion strings per request, got {answer!r:.200}")
            return answer

        return check

    # ------------------------------------------------------------------------------------------
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
        prompts = check_generation_args(prompts, max_new_tokens, temperature, top_p, stop, n)
        kw, params = _sampling(max_new_tokens, temperature, top_p, stop, n)
        return self._cached(
            "generate",
            [{"prompt": p, **params} for p in prompts],
            lambda idx: self.llm.generate([prompts[i] for i in idx], **kw),
            self._completions(n),
        )

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
        conversations = check_conversations(conversations)
        check_generation_args([], max_new_tokens, temperature, top_p, stop, n)
        kw, params = _sampling(max_new_tokens, temperature, top_p, stop, n)
        return self._cached(
            "chat",
            [{"conversation": c, **params} for c in conversations],
            lambda idx: self.llm.chat([conversations[i] for i in idx], **kw),
            self._completions(n),
        )

    def loglikelihood(self, contexts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        contexts, continuations = check_loglikelihood_args(contexts, continuations)

        def check(answer: object) -> list:
            try:
                logprob, count = float(answer[0]), int(answer[1])  # type: ignore[index]
            except (TypeError, ValueError, IndexError):
                raise LLMError(self.name, f"expected (logprob, token count), got {answer!r:.200}") from None
            if logprob != logprob or logprob > 0 or count < 1:
                raise LLMError(self.name, f"expected a log-probability <= 0 over >= 1 token, got {answer!r}")
            return [logprob, count]

        got = self._cached(
            "loglikelihood",
            [{"context": c, "continuation": t} for c, t in zip(contexts, continuations)],
            lambda idx: self.llm.loglikelihood([contexts[i] for i in idx], [continuations[i] for i in idx]),
            check,
        )
        return [(float(lp), int(k)) for lp, k in got]

    def close(self) -> None:
        """Close the cache file (it reopens on the next call)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
