"""``lmops.llm``: the one way lmops methods talk to a language model.

- :class:`LLM`: the protocol (``generate``, ``chat``, ``loglikelihood``, in batches).
- :class:`FunctionLLM`: a Python callable as a backend (scripted demos, tests).
- :class:`CachedLLM`: a persistent SQLite cache around any backend (reruns are free; runs resume).
- :class:`LLMError`: a failed or malformed reply, after retries.

The local ``transformers`` backend, the OpenAI-compatible HTTP client and ``lmops serve`` are the next
pieces of this package (issue "LLM-driven methods").
"""

from .cache import CachedLLM
from .errors import LLMError
from .function import FunctionLLM, render_chat
from .protocol import LLM, check_conversations, check_generation_args, check_loglikelihood_args

__all__ = [
    "LLM",
    "CachedLLM",
    "FunctionLLM",
    "LLMError",
    "check_conversations",
    "check_generation_args",
    "check_loglikelihood_args",
    "render_chat",
]
