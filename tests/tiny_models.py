"""Tiny transformers causal LMs (random weights, built from configs; nothing is downloaded) and a
writer of transformers BitNet checkpoints, shared by the tests of :mod:`lmops.bitnet` (a plain module,
not conftest.py, so that test files and spawned DDP workers can import it by name)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import lmops_kernels as lk  # noqa: E402

VOCAB = 128
ARCHS = ("llama", "mistral", "qwen2", "bitnet")

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
)


def tiny_config(arch: str, **overrides):
    """A 2-layer, hidden-64, vocab-128 config of ``arch`` (Qwen2 has q/k/v biases; Llama ties its
    embeddings unless told otherwise)."""
    kwargs = dict(_COMMON)
    if arch == "llama":
        cls, kwargs["tie_word_embeddings"] = transformers.LlamaConfig, True
    elif arch == "mistral":
        cls, kwargs["sliding_window"] = transformers.MistralConfig, None
    elif arch == "qwen2":
        cls = transformers.Qwen2Config
    elif arch == "bitnet":
        cls = transformers.BitNetConfig
    else:
        raise ValueError(f"arch: unknown {arch!r}")
    kwargs.update(overrides)
    return cls(**kwargs)


def tiny_model(arch: str, seed: int = 0, **overrides) -> nn.Module:
    """A float32 ``AutoModelForCausalLM`` of :func:`tiny_config` with seeded random weights, eval mode.
    Norm weights are randomised too, so that nothing in the model is the identity."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.uniform_(-0.1, 0.1)
    return model.eval()


def random_ids(batch: int = 2, seq: int = 12, seed: int = 1) -> torch.Tensor:
    """Token ids in ``[3, VOCAB)`` (never the special ids), ``(batch, seq)`` int64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


def write_hf_bitnet_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    linear_class: str = "bitlinear",
    quantization_mode: str = "offline",
    use_rms_norm: bool = False,
    rms_norm_eps: float = 1e-6,
    modules_to_not_convert: list[str] | None = None,
    shards: int = 1,
    seed: int = 3,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Quantize every linear of ``model`` but the excluded ones (absmean) and write what transformers'
    BitNet quantizer expects: ``<name>.weight`` uint8 ``(out/4, in)`` in transformers' packing,
    ``<name>.weight_scale`` (1,) (1/gamma for ``bitlinear``, gamma for ``autobitlinear``), optional
    ``<name>.rms_norm.weight``, and a config with ``quantization_config``. Returns ``{name: (q, gamma)}``."""
    from safetensors.torch import save_file

    from lmops.common.targets import match_target

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    skip = modules_to_not_convert or ["lm_head"]
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    quantized = {}
    for name in linear_names(model):
        if match_target(name, skip) is not None:
            continue
        q, gamma = lk.quantize_weight_absmean(sd.pop(f"{name}.weight"))
        quantized[name] = (q, gamma)
        sd[f"{name}.weight"] = lk.to_hf_bitnet(q)
        scale = 1.0 / gamma if linear_class == "bitlinear" else gamma
        sd[f"{name}.weight_scale"] = scale.reshape(1).to(torch.float32)
        if use_rms_norm:
            sd[f"{name}.rms_norm.weight"] = torch.rand(q.shape[1], generator=g) + 0.5
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)  # transformers stores a tied weight once
    keys = sorted(sd)
    if shards == 1:
        save_file(sd, str(root / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i in range(shards):
            part = keys[i::shards]
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: sd[k] for k in part}, str(root / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
        (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = model.config.to_dict()
    cfg["quantization_config"] = {
        "quant_method": "bitnet",
        "linear_class": linear_class,
        "quantization_mode": quantization_mode,
        "use_rms_norm": use_rms_norm,
        "rms_norm_eps": rms_norm_eps,
        "modules_to_not_convert": modules_to_not_convert,
    }
    (root / "config.json").write_text(json.dumps(cfg, indent=2))
    return quantized


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor, *, tol: float = 2e-6,
                        int8_ties: bool = False, tie_tol: float = 1e-2, max_tied_fraction: float = 0.25) -> None:
    """Logits of two models that compute the same thing in a different float order, compared per token
    position, relative to the logits' scale (``max |expected|``, at least 1).

    Default (tight): every position within ``tol``. Where the two sides agree, the float32 paths of the
    tests agree to 3.2e-7 of scale at worst (6976 positions measured: the tests' own inputs, where the
    worst is 2.4e-7, and 12-15 more seeds per case), hence the default 2e-6.

    ``int8_ties=True`` is only for two paths that both quantize activations per token to int8
    (``round(x * 127 / max|x|)``) from inputs computed in a different float order: a 1-ulp difference
    can flip one rounding at an exact .5 tie, which moves that token's later activations by one int8
    step (and, through attention, the later positions a little). Then at most ``max_tied_fraction`` of
    the positions may exceed ``tol``, each by no more than ``tie_tol``. Measured on this repository's
    tiny models (seeds beyond the tests'): BitLinear packed vs QAT 35 of 3072 positions over tol, the
    worst 1.7e-3; lmops vs transformers reading the same checkpoint 17 of 1024, the worst 4.3e-3 (12 of
    one run's 64 positions); lmops QAT vs transformers' online AutoBitLinear 4 of 2880, the worst 5.2e-4.
    No position lay between 5e-7 and 1e-5: flips are one int8 step, never a drift.
    """
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().clamp(min=1.0)
    err = ((actual - expected).abs() / scale).reshape(-1, actual.shape[-1]).amax(-1)  # per position
    over = int((err > tol).sum())
    worst = err.max().item()
    if not int8_ties:
        assert over == 0, f"{over} of {err.numel()} positions differ by more than {tol} of scale (worst {worst:.3g})"
        return
    assert over <= max_tied_fraction * err.numel(), (
        f"{over} of {err.numel()} positions differ by more than {tol} of scale: more than int8 rounding ties explain"
    )
    assert worst <= tie_tol, f"worst position differs by {worst:.3g} of scale > {tie_tol} (more than an int8 step)"
