"""Builders and timers for the end-to-end decode benchmark (see bench_e2e_decode.py).

One model shape for every end-to-end comparison (../shared/research/peers-measured.md): Llama-shaped,
random weights, hidden 2048, FFN 5632, 12 layers, 16 heads / 4 KV heads, vocab 32000, untied head;
672M parameters, 541M of them in the 84 projection matrices.

Providers, all driven through ``transformers``' own ``generate`` (greedy):
- ``bf16``: the plain transformers model in bfloat16 (what users run today);
- ``lmops``: the same model with every projection a packed ``lmops.BitLinear`` (native W2A8 kernel),
  embeddings, norms and the output head left in bfloat16 (as bitnet.cpp and llama.cpp do);
- ``hf-bitlinear``: the same ternary weights in transformers' packed ``BitLinear`` (which unpacks the
  whole matrix to bf16 on every call).
"""

from __future__ import annotations

import copy
import os
import time

import torch
from torch import nn

import lmops_kernels as lk
from lmops import BitLinear

E2E_SHAPE = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=12,
    num_attention_heads=16,
    num_key_value_heads=4,
    vocab_size=32000,
    tie_word_embeddings=False,
    max_position_embeddings=1024,
)


def llama_config(num_layers: int | None = None, **overrides):
    """The E2E_SHAPE ``LlamaConfig``, with ``num_layers`` and any other field overridden."""
    from transformers import LlamaConfig

    shape = {**E2E_SHAPE, **overrides}
    if num_layers is not None:
        shape["num_hidden_layers"] = num_layers
    return LlamaConfig(**shape)


def build_bf16(config, seed: int = 0) -> nn.Module:
    """The reference transformers model, random N(0, 0.02) weights, bfloat16, eval mode."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.generation_config.pad_token_id = 0
    return model.to(torch.bfloat16).eval()


def _swap_projections(model: nn.Module, make) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name != "lm_head":
                setattr(parent, name, make(child))
    return model


def build_lmops(bf16_model: nn.Module) -> nn.Module:
    """A deep copy of ``bf16_model`` with every projection packed into an lmops ``BitLinear``."""
    return _swap_projections(copy.deepcopy(bf16_model), lambda lin: BitLinear.from_linear(lin).pack()).eval()


def build_hf_bitlinear(bf16_model: nn.Module) -> nn.Module:
    """The same ternary weights in transformers' packed ``BitLinear`` (weight_scale = 1 / gamma)."""
    from transformers.integrations.bitnet import BitLinear as HFBitLinear

    def make(lin: nn.Linear) -> nn.Module:
        q, gamma = lk.quantize_weight_absmean(lin.weight)
        layer = HFBitLinear(lin.in_features, lin.out_features, bias=False, dtype=torch.bfloat16)
        layer.weight = lk.to_hf_bitnet(q)
        layer.weight_scale = (1.0 / gamma).reshape(1).to(torch.bfloat16)
        return layer

    return _swap_projections(copy.deepcopy(bf16_model), make).eval()


def weight_bytes(model: nn.Module, projections_only: bool = False) -> int:
    """Bytes of parameters and buffers (the projections' only, when asked)."""
    total = 0
    for mod_name, mod in model.named_modules():
        is_proj = mod_name.split(".")[-1].endswith("_proj")
        if projections_only and not is_proj:
            continue
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            total += t.numel() * t.element_size()
    return total


@torch.inference_mode()
def generate_seconds(model: nn.Module, prompt: torch.Tensor, n: int, **gen_kwargs) -> float:
    """Wall time of one greedy ``generate`` of exactly ``n`` new tokens (the GPU drained on both sides
    when ``prompt`` is on CUDA)."""
    sync = torch.cuda.synchronize if prompt.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, **gen_kwargs)
    sync()
    return time.perf_counter() - t0


def decode_tokens_per_s(model: nn.Module, prompt: torch.Tensor, new_tokens: int, **gen_kwargs) -> float:
    """Greedy decode speed: ``new_tokens`` / (time of generate(new_tokens + 1) - time of generate(1)),
    so prefill and the first token are excluded."""
    full = generate_seconds(model, prompt, new_tokens + 1, **gen_kwargs)
    return new_tokens / max(full - generate_seconds(model, prompt, 1, **gen_kwargs), 1e-9)


@torch.inference_mode()
def prefill_tokens_per_s(model: nn.Module, prompt: torch.Tensor) -> float:
    """Prompt processing speed: one forward over the whole prompt (batch 1), logits of the last
    position only (as generate and llama.cpp's prompt processing do)."""
    t0 = time.perf_counter()
    model(prompt, use_cache=True, logits_to_keep=1)
    return prompt.shape[1] / (time.perf_counter() - t0)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def e2e_layers() -> int | None:
    """``LMOPS_E2E_LAYERS`` shrinks the model for a quick run (default: the full 12 layers)."""
    v = os.environ.get("LMOPS_E2E_LAYERS")
    return int(v) if v else None
