"""``HFLocal``: a ``transformers`` causal LM in this process as an :class:`~lmops.llm.LLM` backend,
including models packed or adapted by lmops (BitNet ``BitLinear``, ResLoRA, MoLE), since those stay
ordinary ``transformers`` models.

- **generate / chat**: left-padded batches of ``batch_size`` prompts (sorted by length so a batch pads
  little), on the lmops decode engine (:func:`lmops.generate`: the same greedy tokens as
  ``model.generate``) for the families it runs, else ``model.generate``; greedy at ``temperature=0``
  and nucleus sampling otherwise (no top-k, as the OpenAI API), stop strings checked during decoding
  and cut after it. Sampling is reproducible: with ``seed`` set, each batch draws from a generator
  seeded by ``seed`` and the batch's own requests, so a rerun (or a different call order) gives the
  same text.
- **loglikelihood**: exact and token-aligned, as lm-evaluation-harness computes it: the context and
  the continuation are tokenized together, the continuation's tokens are those past the context's own
  tokenization, and each is scored under the model given everything before it (right-padded batches,
  so positions are those of an unpadded run; float32 log-softmax).

The lower-level :meth:`HFLocal.complete` returns token ids, per-token log-probabilities and their
top alternatives, and finish reasons: what ``lmops serve`` needs for the OpenAI wire format.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .protocol import (
    Message,
    check_conversations,
    check_generation_args,
    check_loglikelihood_args,
    stop_list,
    text_content,
)

__all__ = ["Completion", "HFLocal", "load_local_model"]


@dataclass
class Completion:
    """One generated sequence, as :meth:`HFLocal.complete` returns it.

    Attributes:
        text: the completion (cut before the first stop string).
        token_ids: the generated tokens kept (those that make up ``text``; a stop string's own tokens
            and the end-of-sequence token are not included).
        logprobs: log p of each kept token under the model's raw distribution (before temperature or
            top-p), float.
        top_logprobs: per kept token, the ``top_logprobs`` most likely ``(token_id, logprob)``; empty
            lists when not asked for.
        finish_reason: ``"stop"`` (end of sequence or a stop string) or ``"length"``.
        prompt_tokens: the prompt's token count.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    finish_reason: str
    prompt_tokens: int


@dataclass
class PromptScores:
    """Per prompt token: its id, character span in the prompt, log p given the tokens before it (``None``
    for the first token), and the top alternatives at that position."""

    token_ids: list[int]
    offsets: list[tuple[int, int]]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


def _pad_id(tokenizer, model) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, getattr(model.config, "pad_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def _eos_ids(tokenizer, model) -> list[int]:
    ids: list[int] = []
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if int(v) not in ids:
                ids.append(int(v))
    return ids


class HFLocal:
    """A local ``transformers`` causal LM as an :class:`~lmops.llm.LLM`.

    Args:
        model: an ``AutoModelForCausalLM``-style module (``model.generate``, ``model(input_ids).logits``
            of shape ``(batch, seq, vocab)``), on any device; it is put in eval mode.
        tokenizer: its ``transformers`` tokenizer (fast or slow).
        batch_size: prompts per forward batch (each with its ``n`` samples).
        name: the model name caches key on (default: ``model.config.name_or_path`` or the class name).
        seed: sampling seed (see the module docstring); ``None`` draws from torch's global generator.
        chat_template: conversation -> prompt, for a tokenizer without a chat template (otherwise
            ``tokenizer.apply_chat_template`` is used).
        max_length: the longest prompt + completion (default: the model's ``max_position_embeddings``).
        engine_options: keyword arguments for :func:`lmops.generate` where the engine runs the model:
            ``compile``, ``head_dtype`` (``"bf16"`` or ``"int8"``: faster heads; log-probabilities then
            come from that head), ``threads`` (``"auto"`` on a shared machine), ``cuda_graph``. Default:
            none (the engine's defaults: the model's own head, tokens as ``model.generate``).
    """

    #: the lmops.generate options engine_options may set
    ENGINE_OPTIONS = ("compile", "cuda_graph", "head_dtype", "threads")

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        batch_size: int = 8,
        name: str | None = None,
        seed: int | None = None,
        chat_template: Callable[[list[Message]], str] | None = None,
        max_length: int | None = None,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        if not callable(getattr(model, "generate", None)):
            raise TypeError(f"model: expected a transformers causal LM with generate(), got {type(model).__name__}")
        if not callable(tokenizer) or not hasattr(tokenizer, "decode"):
            raise TypeError(f"tokenizer: expected a transformers tokenizer, got {type(tokenizer).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed: expected an int or None, got {seed!r}")
        if engine_options is not None and not isinstance(engine_options, dict):
            raise TypeError(f"engine_options: expected a dict or None, got {type(engine_options).__name__}")
        unknown = sorted(set(engine_options or {}) - set(self.ENGINE_OPTIONS))
        if unknown:
            raise ValueError(f"engine_options: unknown option(s) {unknown}; expected some of {list(self.ENGINE_OPTIONS)}")
        self.engine_options = dict(engine_options or {})
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.chat_template = chat_template
        config = getattr(model, "config", None)
        self.name = name or getattr(config, "name_or_path", None) or type(model).__name__
        self.max_length = max_length or getattr(config, "max_position_embeddings", None) or 2048
        self.pad_id = _pad_id(tokenizer, model)
        self.eos_ids = _eos_ids(tokenizer, model)
        # the special tokens the tokenizer puts before a text (e.g. <s>), added once before every prompt
        self.prefix_ids: list[int] = self._leading_specials()

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str = "cpu", **kwargs: Any
    ) -> "HFLocal":
        """Load a local model directory (see :func:`load_local_model`) and its tokenizer."""
        model, tokenizer = load_local_model(path, dtype=dtype, device=device)
        if kwargs.get("name") is None:
            kwargs["name"] = os.path.basename(os.path.normpath(str(path)))
        return cls(model, tokenizer, **kwargs)

    # ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _leading_specials(self) -> list[int]:
        try:
            with_specials = self.tokenizer("x", add_special_tokens=True)["input_ids"]
            plain = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        except Exception:  # a tokenizer without add_special_tokens: no prefix
            return []
        if plain and with_specials[-len(plain):] == plain:
            return list(with_specials[: len(with_specials) - len(plain)])
        return []

    def encode(self, text: str) -> list[int]:
        """The prompt's token ids: the tokenizer's leading special tokens, then ``text`` without specials."""
        return self.prefix_ids + list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render_chat(self, conversation: list[Message]) -> str:
        """The prompt for a conversation: ``chat_template`` if given, else the tokenizer's chat template.
        Content given as parts must be text only (this backend takes no images)."""
        if any(not isinstance(m["content"], str) for m in conversation):
            if any(p["type"] != "text" for m in conversation if isinstance(m["content"], list) for p in m["content"]):
                raise NotImplementedError(f"{self.name}: a text-only model; the conversation holds image parts")
            conversation = [{**m, "content": text_content(m)} for m in conversation]
        if self.chat_template is not None:
            return self.chat_template(conversation)
        if not getattr(self.tokenizer, "chat_template", None):
            raise NotImplementedError(
                f"{self.name}: the tokenizer has no chat template; pass HFLocal(chat_template=callable) "
                "or use generate()"
            )
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        # the template writes the tokenizer's own leading specials (e.g. <s>); encode() adds them again
        for tid in self.prefix_ids:
            special = self.tokenizer.convert_ids_to_tokens(tid)
            if isinstance(special, str) and text.startswith(special):
                text = text[len(special):]
        return text

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
        done = self.complete([self.encode(p) for p in prompts], max_new_tokens=max_new_tokens,
                             temperature=temperature, top_p=top_p, stop=stop, n=n)
        return [[c.text for c in group] for group in done]

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
        prompts = [self.render_chat(c) for c in conversations]
        return self.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             stop=stop, n=n)

    # ------------------------------------------------------------------------------------------
    def complete(
        self,
        prompt_ids: list[list[int]],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        n: int = 1,
        top_logprobs: int = 0,
        streamer: Any = None,
    ) -> list[list[Completion]]:
        """``n`` completions of each tokenized prompt, with per-token log-probabilities.

        ``max_new_tokens=0`` returns empty completions (``finish_reason="length"``). ``streamer``
        (a ``transformers`` streamer) is passed to ``model.generate`` and needs a single prompt with
        ``n=1``. Raises ``ValueError`` when a prompt plus ``max_new_tokens`` exceeds ``max_length``.
        """
        stops = stop_list(stop)
        for i, ids in enumerate(prompt_ids):
            if not ids:
                raise ValueError(f"prompt {i}: empty (the tokenizer has no leading special token to start from)")
            if len(ids) + max_new_tokens > self.max_length:
                raise ValueError(
                    f"prompt {i}: {len(ids)} tokens + max_new_tokens {max_new_tokens} exceed the model's "
                    f"{self.max_length} positions"
                )
        if streamer is not None and (len(prompt_ids) != 1 or n != 1):
            raise ValueError("streamer: streaming needs one prompt and n=1")
        out: list[list[Completion] | None] = [None] * len(prompt_ids)
        if max_new_tokens == 0:
            return [[Completion("", [], [], [], "length", len(ids)) for _ in range(n)] for ids in prompt_ids]
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self._generate_batch([prompt_ids[i] for i in idx], max_new_tokens, temperature, top_p, stops,
                                         n, top_logprobs, streamer)
            for i, group in zip(idx, batch):
                out[i] = group
        return out  # type: ignore[return-value]

    def _generation_seed(self, prompts: list[list[int]], params: tuple) -> int | None:
        if self.seed is None:
            return None
        blob = json.dumps([self.seed, prompts, params]).encode()
        return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << 63) - 1)

    @torch.inference_mode()
    def _generate_batch(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stops: list[str],
        n: int,
        top_logprobs: int,
        streamer: Any,
    ) -> list[list[Completion]]:
        sample = temperature > 0
        copies = n if sample else 1  # greedy: one decode, repeated n times
        width = max(len(p) for p in prompts)
        device = self.device
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        seed = self._generation_seed(prompts, (max_new_tokens, temperature, top_p, stops, n))
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            run = self._generate_engine if self._use_engine() else self._generate_transformers
            sequences, scored = run(ids.to(device), mask.to(device), max_new_tokens, temperature, top_p, stops,
                                    copies, streamer, top_logprobs)
        new = sequences[:, width:].cpu()
        groups: list[list[Completion]] = []
        for row, p in enumerate(prompts):
            group = []
            for k in range(copies):
                r = row * copies + k
                group.append(self._completion(new[r], scored.row(r), stops, len(p)))
            groups.append(group * (n // copies))
        return groups

    def _use_engine(self) -> bool:
        """Whether generation runs on the lmops decode engine (:mod:`lmops.engine`): a model family it
        runs (Llama, Mistral, Qwen2, BitNet; dense or BitLinear) whose generation config asks for no
        logits processor it lacks; otherwise ``model.generate``. Both give the same greedy tokens."""
        from ..engine import supports, unmirrored_processors

        return supports(self.model) and not unmirrored_processors(self.model)

    def _generate_engine(self, ids, mask, max_new_tokens, temperature, top_p, stops, copies, streamer, top_logprobs):
        """``(sequences, _StepScores)`` from :func:`lmops.generate` (rows repeated ``copies`` times); each
        step's logits are reduced to log-probabilities as they come, never kept vocabulary-wide."""
        from ..engine import generate

        if copies > 1:
            ids, mask = ids.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)
        sample = temperature > 0
        scored = _StepScores(top_logprobs)
        sequences = generate(
            self.model, ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=sample,
            temperature=float(temperature) if sample else 1.0, top_p=float(top_p) if sample and top_p < 1 else None,
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id, streamer=streamer,
            stopping_criteria=_StopStrings(self.tokenizer, stops, ids.shape[1]) if stops else None,
            on_step=lambda step, scores, tokens: scored.add(scores, tokens), **self.engine_options,
        )
        return sequences, scored

    def _generate_transformers(self, ids, mask, max_new_tokens, temperature, top_p, stops, copies, streamer,
                               top_logprobs):
        """``(sequences, _StepScores)`` from ``model.generate``."""
        from transformers import GenerationConfig

        sample = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=float(temperature) if sample else None,
            top_p=float(top_p) if sample and top_p < 1 else None,
            top_k=0 if sample else None,
            num_return_sequences=copies,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids or None,
            return_dict_in_generate=True,
            output_logits=True,
        )
        kwargs: dict[str, Any] = dict(input_ids=ids, attention_mask=mask, generation_config=config)
        if stops:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopStrings(self.tokenizer, stops, ids.shape[1])])
        if streamer is not None:
            kwargs["streamer"] = streamer
        result = self.model.generate(**kwargs)
        scored = _StepScores(top_logprobs)
        width = ids.shape[1]
        for step, logits in enumerate(result.logits or ()):
            scored.add(logits, result.sequences[:, width + step])
        return result.sequences, scored

    def _completion(
        self, tokens: torch.Tensor, scored: tuple[list[float], list[list[tuple[int, float]]]], stops: list[str],
        n_prompt: int,
    ) -> Completion:
        kept: list[int] = []
        reason = "length"
        for t in tokens.tolist():
            if t in self.eos_ids:
                reason = "stop"
                break
            kept.append(t)
        # a pad after an unfinished sequence cannot occur: generate pads only finished rows
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
            # keep the tokens whose decoded prefix lies within the cut text
            keep = 0
            while keep < len(kept) and len(self.tokenizer.decode(kept[: keep + 1], skip_special_tokens=True)) <= cut:
                keep += 1
            kept = kept[:keep]
        lps, tops = scored
        return Completion(text, kept, lps[: len(kept)], tops[: len(kept)], reason, n_prompt)

    # ------------------------------------------------------------------------------------------
    def _pair_tokens(self, context: str, continuation: str) -> tuple[list[int], int]:
        """(all token ids, index of the first continuation token), lm-evaluation-harness's rule: trailing
        spaces of the context move to the continuation; the continuation is what tokenizing the whole
        text adds past the context's own tokens."""
        stripped = context.rstrip(" ")
        continuation = context[len(stripped):] + continuation
        whole = self.encode(stripped + continuation)
        n_ctx = len(self.encode(stripped))
        if n_ctx == 0:
            raise ValueError("context: empty and the tokenizer has no leading special token to condition on")
        if len(whole) <= n_ctx:
            raise ValueError(f"continuation {continuation!r}: tokenizes to nothing after the context")
        return whole, n_ctx

    def loglikelihood(self, contexts: list[str], continuations: list[str]) -> list[tuple[float, int]]:
        contexts, continuations = check_loglikelihood_args(contexts, continuations)
        pairs = [self._pair_tokens(c, t) for c, t in zip(contexts, continuations)]
        scored = self._token_logprobs([ids for ids, _ in pairs])
        out = []
        for (ids, n_ctx), lps in zip(pairs, scored):
            cont = lps[n_ctx:]
            out.append((float(sum(cont)), len(cont)))
        return out

    def prompt_scores(self, texts: list[str], *, top_logprobs: int = 0) -> list[PromptScores]:
        """Each text's tokens with their character spans and log-probabilities (``echo`` in the
        completions API). Needs a fast tokenizer (for the spans)."""
        out = []
        encoded = []
        for text in texts:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = self.prefix_ids + list(enc["input_ids"])
            offsets = [(0, 0)] * len(self.prefix_ids) + [tuple(o) for o in enc["offset_mapping"]]
            encoded.append((ids, offsets))
        scored = self._token_logprobs([ids for ids, _ in encoded], top_logprobs=top_logprobs)
        for (ids, offsets), lps in zip(encoded, scored):
            tops = getattr(lps, "tops", [[] for _ in ids])
            out.append(PromptScores(ids, offsets, [None] + list(lps[1:]), tops))
        return out

    @torch.inference_mode()
    def _token_logprobs(self, sequences: list[list[int]], *, top_logprobs: int = 0) -> list[list[float]]:
        """log p(token_i | tokens before i) for i >= 1 (index 0 holds 0.0), per sequence; right-padded
        batches sorted by length. With ``top_logprobs`` each result list has a ``tops`` attribute."""
        for i, seq in enumerate(sequences):
            if len(seq) > self.max_length:
                raise ValueError(f"request {i}: {len(seq)} tokens exceed the model's {self.max_length} positions")
        results: list[Any] = [None] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        device = self.device
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
                mask[row, : len(sequences[i])] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, i in enumerate(idx):
                seq = sequences[i]
                target = torch.tensor(seq[1:], dtype=torch.long)
                got = logp[row, : len(seq) - 1].gather(1, target[:, None])[:, 0]
                values = _Scores([0.0] + got.tolist())
                if top_logprobs:
                    v, k = logp[row, : len(seq) - 1].topk(top_logprobs, dim=-1)
                    values.tops = [[]] + [[(int(a), float(b)) for a, b in zip(kk, vv)] for kk, vv in zip(k, v)]
                results[i] = values
        return results


class _StepScores:
    """Per decoding step, the log-probability of each row's chosen token and its ``top_logprobs`` best
    alternatives under the raw distribution (float32 log-softmax), computed as each step's logits arrive
    so that no ``(steps, batch, vocab)`` tensor is ever held."""

    def __init__(self, top_logprobs: int) -> None:
        self.top_logprobs = top_logprobs
        self.chosen: list[torch.Tensor] = []  # (B,) per step
        self.top: list[tuple[torch.Tensor, torch.Tensor]] = []  # ((B, k) values, (B, k) ids) per step

    def add(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        logp = torch.log_softmax(logits.float(), dim=-1)
        self.chosen.append(logp.gather(1, tokens.to(logp.device).long()[:, None])[:, 0].cpu())
        if self.top_logprobs:
            values, ids = logp.topk(self.top_logprobs, dim=-1)
            self.top.append((values.cpu(), ids.cpu()))

    def row(self, r: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
        """Row ``r``'s per-step log-probabilities and top alternatives (empty lists without ``top_logprobs``)."""
        lps = [float(step[r]) for step in self.chosen]
        if not self.top_logprobs:
            return lps, [[] for _ in lps]
        return lps, [[(int(i), float(v)) for v, i in zip(values[r], ids[r])] for values, ids in self.top]


class _StopStrings:
    """Stop a row once its *generated* text holds a stop string. (``transformers``' own ``stop_strings``
    also matches across the prompt's end, which the OpenAI API does not.) Only the last few tokens are
    decoded per step: a stop string of ``L`` characters spans at most ``4 L`` byte-level tokens."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_width: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, stops, prompt_width
        self.window = 4 * max(len(s) for s in stops) + 4

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.start:]
        tail = new[:, -self.window:].tolist()
        hit = [any(s in self.tokenizer.decode(row, skip_special_tokens=True) for s in self.stops) for row in tail]
        return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)


class _Scores(list):
    tops: list


def load_local_model(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """``(model, tokenizer)`` from a local directory, whatever lmops wrote there: an lmops BitNet
    directory (packed or not) or a ``transformers`` BitNet checkpoint through
    :func:`lmops.bitnet.from_pretrained`, any other causal LM through ``AutoModelForCausalLM``. Never
    downloads. Raises ``FileNotFoundError`` for a missing directory or tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = os.fspath(path)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such model directory")
    config_file = os.path.join(root, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{root}: no config.json (not a model directory)")
    with open(config_file, encoding="utf-8") as f:
        cfg = json.load(f)
    quant = cfg.get("quantization_config") or {}
    if (cfg.get("lmops") or {}).get("bitnet") is not None or quant.get("quant_method") == "bitnet":
        from ..bitnet import from_pretrained

        model = from_pretrained(root, dtype=dtype, device=device)
    else:
        model = AutoModelForCausalLM.from_pretrained(root, dtype=dtype, local_files_only=True).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{root}: no tokenizer files ({exc})") from None
    return model, tokenizer
