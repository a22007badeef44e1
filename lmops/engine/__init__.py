"""The lmops decode engine: generation for Llama, Mistral, Qwen2 and BitNet causal LMs (dense, or with
lmops ``BitLinear`` layers packed or not) without ``transformers``' per-token machinery.

Typical use::

    model = lmops.engine.load_packed("packed_dir")           # or any supported transformers model
    ids = lmops.generate(model, input_ids, attention_mask=mask, max_new_tokens=64)

What it is: a static KV cache allocated once per call, and a decode step that calls the model's own
norms, projections and rotary embedding but does the cache writes, positions, masks and attention
itself (no Cache objects, mask builders, output dataclasses or logits processors), computing logits for
the last position only; optionally compiled (``compile=True``).

Faithful to ``transformers`` 5.x (tested token for token against ``model.generate``): greedy output on
every supported family, batches with left padding, EOS and pad handling, the streamer protocol; the
sampling warpers compute what ``transformers``' temperature/top-k/top-p warpers compute.

Choices:

- An unsupported model raises :class:`UnsupportedModelError` naming its class and the supported ones
  (no silent fallback); :func:`supports` tells beforehand, and ``lmops.llm.HFLocal`` falls back to
  ``model.generate`` on its own.
- ``top_k=None`` means no top-k filtering (``model.generate`` would apply its default 50).
- ``attention_mask=None`` means no padding (``model.generate`` may infer a mask from the pad id).
- Logits processors other than the three warpers (repetition penalty, ...) are not applied; a
  warning says so when the model's ``generation_config`` sets one.
- Sliding windows (Mistral, Qwen2) are applied by masking over the full cache; ``transformers`` drops
  keys outside the window instead, so past the window the two agree in value, not to the last bit.

Files: ``families.py`` (which models, where their parts are), ``attention.py`` (masks, SDPA/eager
attention as transformers calls them), ``step.py`` (cache, forward, compile, the CUDA-graph step), ``sampling.py``,
``loop.py`` (the decode loop, :func:`generate`), ``loading.py`` (packed checkpoints without float
weights), ``head.py`` (optional output heads: ``generate(..., head_dtype="bf16")``, the model's 16-bit head
through lmops's bf16 GEMV; ``head_dtype="int8"``, an int8 per-channel copy; :func:`quantize_head` /
:func:`restore_head`).
"""

from .families import FAMILIES, DecoderPlan, LayerProjections, UnsupportedModelError, build_plan, supported_classes
from .head import Bf16Head, Int8Linear, quantize_head, restore_head
from .loading import load_packed
from .loop import GenerationResult, generate, unmirrored_processors
from .sampling import Sampler
from .step import CudaGraphStep, DecodeEngine, StaticKVCache, engine_for

__all__ = [
    "FAMILIES",
    "Bf16Head",
    "CudaGraphStep",
    "DecodeEngine",
    "DecoderPlan",
    "GenerationResult",
    "Int8Linear",
    "LayerProjections",
    "Sampler",
    "StaticKVCache",
    "UnsupportedModelError",
    "build_plan",
    "engine_for",
    "generate",
    "load_packed",
    "quantize_head",
    "restore_head",
    "supported_classes",
    "supports",
    "unmirrored_processors",
]


def supports(model) -> bool:
    """True when :func:`generate` runs ``model`` (see :class:`UnsupportedModelError` for why not)."""
    try:
        build_plan(model)
    except UnsupportedModelError:
        return False
    return True
