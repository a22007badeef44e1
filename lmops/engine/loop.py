"""``lmops.generate``: the decode loop over :class:`~lmops.engine.step.DecodeEngine`.

The loop follows ``transformers``' ``GenerationMixin._sample`` step for step, so that greedy output is
token-identical to ``model.generate``: positions from the attention mask's cumulative sum (left
padding), the mask dropped when it holds no padding, float32 logits of the last position, the token
choice (:class:`~lmops.engine.sampling.Sampler`), finished rows continued with the pad id, stopping
when every row met an end-of-sequence id or a stopping criterion, or at ``max_new_tokens``. Buffers
(the output ids, the KV cache, the padding mask, the positions) are allocated once per call.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .sampling import Sampler
from .threads import ThreadTuner
from .step import CudaGraphStep, engine_for

__all__ = ["GenerationResult", "generate", "unmirrored_processors"]

# generation_config fields whose logits processors model.generate applies and the engine does not,
# with the value that leaves them off
_UNMIRRORED = {
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None, "min_length": 0,
    "min_new_tokens": None, "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "sequence_bias": None, "exponential_decay_length_penalty": None,
}


@dataclass
class GenerationResult:
    """What ``generate(..., return_dict=True)`` returns.

    Attributes:
        sequences: ``(B, T + new_tokens)`` int64, as ``model.generate`` returns them.
        prompt_tokens: ``T`` (the padded prompt width).
        new_tokens: tokens generated per row (finished rows padded).
        prefill_seconds: the prompt's forward and the first token's choice.
        decode_seconds: the remaining ``new_tokens - 1`` steps.
    """

    sequences: torch.Tensor
    prompt_tokens: int
    new_tokens: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.sequences.shape[0] * self.prompt_tokens / max(self.prefill_seconds, 1e-12)

    @property
    def decode_tokens_per_s(self) -> float:
        """Decoded tokens per second per row (the first token, chosen from the prefill, excluded)."""
        return (self.new_tokens - 1) / self.decode_seconds if self.new_tokens > 1 and self.decode_seconds > 0 else 0.0


def _id_list(value: Any, name: str) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        value = value.reshape(-1).tolist()
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}: expected a token id (int >= 0) or a list of them, got {value!r}")
    return values


def _check_inputs(input_ids: Any, attention_mask: Any, device: torch.device) -> torch.Tensor | None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (
        torch.int64, torch.int32
    ):
        is_tensor = isinstance(input_ids, torch.Tensor)
        got = f"{input_ids.dtype} {tuple(input_ids.shape)}" if is_tensor else type(input_ids).__name__
        raise TypeError(f"input_ids: expected an int64 tensor (batch, prompt_len), got {got}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids: expected at least one prompt of at least one token, got {tuple(input_ids.shape)}")
    if input_ids.device != device:
        raise ValueError(f"input_ids: on {input_ids.device}, the model on {device}; move one of them")
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask: expected a tensor of input_ids' shape {tuple(input_ids.shape)}, got {got}")
    if attention_mask.device != device:
        raise ValueError(f"attention_mask: on {attention_mask.device}, the model on {device}; move one of them")
    mask = attention_mask.bool()
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask: expected 0/1 values")
    if not bool(mask[:, -1].all()) or not bool((mask[:, 1:] >= mask[:, :-1]).all()):
        raise ValueError(
            "attention_mask: expected left padding (each row: zeros, then ones, ending with a real token); "
            "tokenize with padding_side='left'"
        )
    return mask


def unmirrored_processors(model: nn.Module) -> list[str]:
    """The fields of ``model.generation_config`` that make ``model.generate`` apply a logits processor
    :func:`generate` does not (repetition penalty, forced tokens, ...): empty when the two agree."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return []
    return [k for k, off in _UNMIRRORED.items() if getattr(config, k, off) not in (off, None, [], {})]


def _warn_unmirrored(model: nn.Module) -> None:
    active = unmirrored_processors(model)
    if active:
        warnings.warn(
            f"lmops.generate applies no logits processor but temperature/top-k/top-p; the model's "
            f"generation_config sets {', '.join(active)}, which model.generate would apply",
            UserWarning,
            stacklevel=3,
        )


@torch.no_grad()  # as model.generate: the ids it returns stay usable with autograd
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    streamer: Any = None,
    generator: torch.Generator | None = None,
    stopping_criteria: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    compile: bool | dict[str, Any] = False,
    cuda_graph: bool | None = None,
    head_dtype: str | None = None,
    threads: int | str | None = None,
    return_dict: bool = False,
) -> torch.Tensor | GenerationResult:
    """Generate with the lmops decode engine; greedy output is token-identical to ``model.generate``.

    Args:
        model: a ``transformers`` Llama, Mistral, Qwen2 or BitNet causal LM, dense or with lmops
            ``BitLinear`` layers (packed or not); other classes raise
            :class:`~lmops.engine.UnsupportedModelError` (a ``TypeError``). Its attention implementation
            must be ``"sdpa"`` or ``"eager"``.
        input_ids: ``(B, T)`` int64 on the model's device, left-padded when rows differ in length.
        attention_mask: ``(B, T)`` 0/1, zeros on the left only; None: no padding.
        max_new_tokens: >= 0.
        do_sample, temperature, top_k, top_p, generator: see :class:`~lmops.engine.sampling.Sampler`
            (None top_k/top_p: no filtering).
        eos_token_id: id(s) that end a row; None: the model's ``generation_config.eos_token_id`` (as
            ``model.generate``); ``[]``: none.
        pad_token_id: what finished rows continue with; None: ``generation_config.pad_token_id``, else
            the first EOS id.
        streamer: a ``transformers`` streamer: ``put(prompt ids)``, then ``put(new ids (B,))`` each step,
            then ``end()``.
        stopping_criteria: ``(ids (B, cur_len), scores (B, vocab)) -> (B,) bool``, True where a row is
            done (``transformers``' ``StoppingCriteria`` protocol; a ``StoppingCriteriaList`` works).
        on_step: ``on_step(step, scores, tokens)`` after each choice: ``scores`` the raw float32 logits
            ``(B, vocab)`` (a fresh tensor the engine does not reuse), ``tokens`` ``(B,)`` the chosen ids.
        compile: ``torch.compile`` the decode step (True, or a dict of ``torch.compile`` options).
        cuda_graph: on a CUDA model, capture the decode step once in a CUDA graph and replay it per token
            (:class:`~lmops.engine.step.CudaGraphStep`); None (default): yes on CUDA unless ``compile`` is
            set; True on a model that is not on CUDA raises ``ValueError``. If the capture fails, the call
            warns and decodes eagerly.
        head_dtype: None (default): the model's own output head; ``"bf16"``: the same head computed by
            lmops's bf16 GEMV (:class:`~lmops.engine.head.Bf16Head`: float32 accumulation, the model's bf16
            weight as is, a bf16 copy of a float32 one; logits within float32 summation-order rounding of
            the model's own bf16 head); ``"int8"``: an int8 per-channel copy of it (W8A8,
            :class:`~lmops.engine.head.Int8Linear`; half the bytes of a bf16 head per token). Copies are
            made on first use and kept with the engine; the model is not changed. Greedy int8 output
            matches ``model.generate`` after :func:`~lmops.engine.head.quantize_head`, not before.
        threads: CPU intra-op threads for this call: None (default) leaves torch's setting; an int sets it
            for the call; ``"auto"`` chooses among counts up to torch's while decoding, by timing the steps
            (:class:`~lmops.engine.threads.ThreadTuner`), so a core taken by another process does not stall
            every GEMV's barrier. torch's setting is restored afterwards. Ignored on GPUs.
        return_dict: return a :class:`GenerationResult` (with timings) instead of the ids.
    Returns:
        ``(B, T + n)`` int64: the prompt and ``n <= max_new_tokens`` new tokens per row (fewer when
        every row finished early), as ``model.generate``.
    """
    engine = engine_for(model)
    engine.select_head(head_dtype)
    device = engine.device
    if threads is not None and threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int)
                                                      or threads < 1):
        raise ValueError(f"threads: expected None, a positive int or 'auto', got {threads!r}")
    padding = _check_inputs(input_ids, attention_mask, device)
    if cuda_graph not in (None, True, False):
        raise ValueError(f"cuda_graph: expected None, True or False, got {cuda_graph!r}")
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True: the model is on {device}, CUDA graphs need a CUDA device")
    use_graph = device.type == "cuda" and (cuda_graph if cuda_graph is not None else not compile)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    sampler = Sampler(do_sample, float(temperature), top_k, top_p, generator)
    gen_config = getattr(model, "generation_config", None)
    eos = _id_list(getattr(gen_config, "eos_token_id", None) if eos_token_id is None else eos_token_id, "eos_token_id")
    if pad_token_id is None:
        pad_token_id = getattr(gen_config, "pad_token_id", None)
        if pad_token_id is None and eos:
            pad_token_id = eos[0]
    if pad_token_id is not None and (isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int)
                                     or pad_token_id < 0):
        raise ValueError(f"pad_token_id: expected a token id (int >= 0), got {pad_token_id!r}")
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step: expected a callable, got {type(on_step).__name__}")
    _warn_unmirrored(model)

    batch, width = input_ids.shape
    input_ids = input_ids.long()
    total = width + max_new_tokens
    out = torch.empty((batch, total), dtype=torch.long, device=device)
    out[:, :width] = input_ids
    if max_new_tokens == 0:
        result = out
        return GenerationResult(result, width, 0, 0.0, 0.0) if return_dict else result
    if padding is not None and bool(padding.all()):
        padding = None  # as model.generate: a mask without padding is dropped
    if padding is None:
        positions = torch.arange(width, device=device).expand(batch, width)
        slot_padding = None
    else:
        positions = (padding.long().cumsum(-1) - 1).masked_fill_(~padding, 0)
        slot_padding = torch.ones((batch, total), dtype=torch.bool, device=device)
        slot_padding[:, :width] = padding
    next_position = positions[:, -1:] + 1
    cache = engine.new_cache(batch, total - 1, zeros=use_graph)  # the last token is never fed back
    step_fn = engine.decode_fn(compile)
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
    unfinished = torch.ones(batch, dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" and return_dict else (lambda: None)

    tuner, previous = None, None
    if device.type == "cpu" and threads == "auto":
        tuner = ThreadTuner()
    elif device.type == "cpu" and threads is not None:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        return _decode(engine, out, input_ids, positions, next_position, slot_padding, cache, step_fn, sampler,
                       eos_ids, pad_token_id, unfinished, streamer, on_step, stopping_criteria, sync, tuner,
                       width, total, device, return_dict, use_graph)
    finally:
        if tuner is not None:
            tuner.close()
        if previous is not None:
            torch.set_num_threads(previous)


def _decode(engine, out, input_ids, positions, next_position, slot_padding, cache, step_fn, sampler, eos_ids,
            pad_token_id, unfinished, streamer, on_step, stopping_criteria, sync, tuner, width, total, device,
            return_dict, use_graph=False):
    """Prefill, then the decode steps (each timed by ``tuner`` when it is given; replayed from a CUDA
    graph when ``use_graph``)."""
    graph_step = None
    may_finish = eos_ids is not None or stopping_criteria is not None
    if streamer is not None:
        streamer.put(input_ids.cpu())
    sync()
    t0 = time.perf_counter()
    logits = engine.forward(cache.keys, cache.values, input_ids, positions, 0, engine.masks(slot_padding, 0, width))
    t1 = None
    cur = width
    step = 0
    while True:
        scores = logits[:, -1].to(copy=True, dtype=torch.float32)
        tokens = sampler(scores)
        if eos_ids is not None:
            tokens = tokens * unfinished + pad_token_id * (1 - unfinished)
        out[:, cur] = tokens
        cur += 1
        if on_step is not None:
            on_step(step, scores, tokens)
        if streamer is not None:
            streamer.put(tokens.cpu())
        if eos_ids is not None:
            unfinished = unfinished & ~torch.isin(tokens, eos_ids)
        if stopping_criteria is not None:
            unfinished = unfinished & ~stopping_criteria(out[:, :cur], scores).to(device=device, dtype=torch.bool)
        step += 1
        if t1 is None:
            sync()
            t1 = time.perf_counter()
        # (reading `unfinished` synchronizes a GPU: only when something can finish a row)
        if cur == total or (may_finish and int(unfinished.max()) == 0):
            break
        if use_graph and graph_step is None:
            try:
                graph_step = CudaGraphStep(engine, cache, slot_padding)
            except RuntimeError as err:  # an op of this model cannot be captured: decode eagerly
                warnings.warn(f"lmops.generate: CUDA graph capture failed ({err}); decoding without it", stacklevel=3)
                use_graph = False
        if tuner is not None:
            tuner.begin()
        if graph_step is not None:
            logits = graph_step(tokens[:, None], next_position, cur - 1)
        else:
            logits = step_fn(cache.keys, cache.values, tokens[:, None], next_position, cur - 1,
                             engine.masks(slot_padding, cur - 1, 1))
        if tuner is not None:
            tuner.end()
        next_position = next_position + 1
    sync()
    t2 = time.perf_counter()
    if streamer is not None:
        streamer.end()
    sequences = out[:, :cur] if cur == total else out[:, :cur].contiguous()
    if return_dict:
        return GenerationResult(sequences, width, cur - width, t1 - t0, t2 - t1)
    return sequences
