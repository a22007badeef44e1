"""``lmops.llm``: the one way lmops methods talk to a language model.

- :class:`LLM`: the protocol (``generate``, ``chat``, ``loglikelihood``, in batches).
- :class:`HFLocal`: a local ``transformers`` causal LM (packed or adapted by lmops included).
- :class:`FunctionLLM`: a Python callable as a backend (scripted demos, tests).
- :class:`OpenAICompatible`: an OpenAI-compatible HTTP server as a backend (retries, concurrency limit).
- :class:`CachedLLM`: a persistent SQLite cache around any backend (reruns are free; runs resume).
- :class:`LLMError`: a failed or malformed reply, after retries.
- :func:`ask`, :func:`extract_json`: parse answers, retry the malformed ones, count and skip the rest.

``lmops serve MODEL_DIR`` (:mod:`lmops.llm.server`) puts a local model behind an OpenAI-compatible
HTTP API; to scale past one machine, point the HTTP backend at vLLM, TGI or a hosted API instead.
"""

from .cache import CachedLLM
from .errors import LLMError
from .function import FunctionLLM, render_chat
from .openai_compat import OpenAICompatible
from .hf_local import HFLocal, load_local_model
from .parse import AskResult, ask, extract_json
from .spec import llm_from_spec
from .protocol import LLM, check_conversations, check_generation_args, check_loglikelihood_args

__all__ = [
    "LLM",
    "AskResult",
    "ask",
    "extract_json",
    "llm_from_spec",
    "load_local_model",
    "CachedLLM",
    "FunctionLLM",
    "OpenAICompatible",
    "HFLocal",
    "LLMError",
    "check_conversations",
    "check_generation_args",
    "check_loglikelihood_args",
    "render_chat",
]
