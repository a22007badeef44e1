"""peft LoRA adapters as MoLE experts, and the arithmetic-merge baseline MoLE is compared against.

Reads what peft's ``save_pretrained`` writes (``adapter_config.json`` + ``adapter_model.safetensors``)
with safetensors only (no pickle): plain LoRA on linear layers, any rank and target modules,
``lora_alpha / r`` scaling, rsLoRA (``use_rslora``: ``alpha / sqrt(r)``), ``rank_pattern`` and
``alpha_pattern`` (matched as peft's ``get_pattern_key`` does). DoRA, LoRA biases, embedding LoRA,
``modules_to_save`` and ``fan_in_fan_out`` (GPT-2 ``Conv1D``) are refused with a clear error.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from .model import apply_mole

__all__ = ["merge_adapters_arithmetic", "mole_from_peft", "read_peft_lora"]

_PREFIX = "base_model.model."
_CONFIG = "adapter_config.json"
_WEIGHTS = "adapter_model.safetensors"


def _pattern_key(patterns: Sequence[str], module: str) -> str | None:
    # peft's file format, not a converter's target rule (so not lmops.common.targets.match_target): the
    # keys of rank_pattern / alpha_pattern are regular expressions that peft itself matches with
    # peft.utils.other.get_pattern_key (the first key matching the end of the name); reading them with
    # peft's rule is what gives the rank and alpha peft trained with (e.g. a key "layers\.1\..*_proj")
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def _lookup(pattern: Mapping, module: str, default):
    key = _pattern_key(list(pattern), module)
    return default if key is None else pattern[key]


def read_peft_lora(adapter_dir: str | os.PathLike, name: str | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """One peft LoRA adapter directory -> ``{module_name: (A (r, in), B (out, r), scaling)}``.

    Module names are relative to the model given to ``get_peft_model`` (the ``base_model.model.``
    prefix removed). ``name`` only labels error messages (default: the directory name).
    """
    root = Path(adapter_dir)
    label = name or root.name
    cfg_path, w_path = root / _CONFIG, root / _WEIGHTS
    if not cfg_path.is_file():
        raise ValueError(f"adapter {label!r}: {cfg_path} not found (expected a peft save_pretrained directory)")
    if not w_path.is_file():
        hint = " (only a pickled adapter_model.bin is there: lmops loads safetensors only)" if (root / "adapter_model.bin").exists() else ""
        raise ValueError(f"adapter {label!r}: {w_path} not found{hint}")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter {label!r}: peft_type {cfg.get('peft_type')!r}, expected 'LORA'")
    for key, bad, what in (
        ("use_dora", lambda v: bool(v), "DoRA"),
        ("lora_bias", lambda v: bool(v), "LoRA biases (lora_bias=True)"),
        ("bias", lambda v: v not in (None, "none"), "trained base biases (bias != 'none')"),
        ("modules_to_save", lambda v: bool(v), "modules_to_save (fully trained modules cannot be mixed)"),
        ("fan_in_fan_out", lambda v: bool(v), "fan_in_fan_out (Conv1D layers)"),
        ("trainable_token_indices", lambda v: bool(v), "trainable_token_indices"),
        ("target_parameters", lambda v: bool(v), "target_parameters"),
    ):
        if bad(cfg.get(key)):
            raise ValueError(f"adapter {label!r}: {what} is not supported by MoLE ({key}={cfg.get(key)!r})")

    from safetensors.torch import load_file

    tensors = load_file(str(w_path))
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        k = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight", k)
        if m is None:
            raise ValueError(
                f"adapter {label!r}: unsupported tensor {key!r} (only lora_A/lora_B weights of linear layers are read)"
            )
        modules.setdefault(m.group(1), {})[m.group(2)] = t
    if not modules:
        raise ValueError(f"adapter {label!r}: {w_path} holds no LoRA weights")

    r_default, alpha_default = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    out = {}
    for module, ab in modules.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise ValueError(f"adapter {label!r}, module {module!r}: has {sorted(ab)}, expected lora_A and lora_B")
        a, b = ab["lora_A"], ab["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise ValueError(
                f"adapter {label!r}, module {module!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                "are not (r, in) and (out, r)"
            )
        r = int(_lookup(rank_pattern, module, r_default))
        alpha = float(_lookup(alpha_pattern, module, alpha_default))
        if r != a.shape[0]:
            raise ValueError(
                f"adapter {label!r}, module {module!r}: the config says r={r} but lora_A has shape {tuple(a.shape)}"
            )
        if r < 1:
            raise ValueError(f"adapter {label!r}, module {module!r}: rank 0")
        scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[module] = (a, b, scaling)
    return out


def _read_all(adapters: Mapping[str, str | os.PathLike]) -> dict[str, dict[str, tuple]]:
    if not isinstance(adapters, Mapping) or not adapters:
        raise ValueError(f"adapters: expected a non-empty mapping name -> adapter directory, got {adapters!r:.80}")
    return {name: read_peft_lora(path, name) for name, path in adapters.items()}


def mole_from_peft(
    model: nn.Module,
    adapters: Mapping[str, str | os.PathLike],
    granularity: str = "block",
    gate_input: str = "experts",
    norm: str = "layernorm",
    target_modules: Sequence[str] | None = None,
    *,
    temperature_init: float = 1.0,
) -> nn.Module:
    """MoLE over peft LoRA adapters: ``{expert_name: adapter_dir}`` read by :func:`read_peft_lora`,
    checked against ``model`` (an unknown target module, or shapes that do not fit the module, are a
    ``ValueError`` naming the adapter, the module and the shapes), then :func:`lmops.mole.apply_mole`.
    A module adapted by only some adapters gets only those experts. Returns ``model``."""
    return apply_mole(
        model, _read_all(adapters), granularity=granularity, gate_input=gate_input, norm=norm,
        target_modules=target_modules, temperature_init=temperature_init,
    )


_COMBINATIONS = ("linear", "cat")


def merge_adapters_arithmetic(
    model: nn.Module,
    adapters: Mapping[str, str | os.PathLike],
    weights: Sequence[float] | Mapping[str, float],
    combination: str = "linear",
) -> nn.Module:
    """The arithmetic-merge baseline (peft's ``add_weighted_adapter``): one fixed LoRA per module.

    - ``"cat"``: exact, ``delta W = sum_i w_i s_i B_i A_i`` (A's weighted and stacked, rank = sum of ranks).
    - ``"linear"``: as peft, A's and B's combined separately, ``A = sum_i sign(w_i) sqrt(|w_i s_i|) A_i``,
      ``B = sum_i sqrt(|w_i s_i|) B_i``, ``delta W = B A``. Caveat: for two or more adapters this is
      not ``sum_i w_i s_i B_i A_i``: it adds the cross terms ``sqrt(|w_i s_i w_j s_j|) B_i A_j``
      (i != j). Needs equal ranks in each module.

    Only the adapters that target a module take part there. The merged delta is installed as a
    single-expert :class:`~lmops.mole.MoLELinear` (expert ``"merged"``, gate 1, no gate
    parameters) on every adapted module, so it works on any base (``BitLinear`` packed included) and
    :func:`lmops.mole.unload_mole` removes it. Returns ``model``.
    """
    if combination not in _COMBINATIONS:
        raise ValueError(f"combination: expected one of {_COMBINATIONS}, got {combination!r}")
    read = _read_all(adapters)
    names = list(read)
    if isinstance(weights, Mapping):
        missing = [n for n in names if n not in weights]
        if missing or set(weights) - set(names):
            raise ValueError(f"weights: expected one weight per adapter {names}, got keys {sorted(weights)}")
        w = {n: float(weights[n]) for n in names}
    else:
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(f"weights: expected {len(names)} weights (one per adapter {names}), got {len(weights)}")
        w = {n: float(v) for n, v in zip(names, weights)}

    merged: dict[str, tuple] = {}
    for module in dict.fromkeys(m for n in names for m in read[n]):
        parts = [(n, *read[n][module]) for n in names if module in read[n]]
        if combination == "cat":
            a = torch.cat([aa.float() * (w[n] * s) for n, aa, _, s in parts], dim=0)
            b = torch.cat([bb.float() for _, _, bb, _ in parts], dim=1)
        else:
            ranks = {n: aa.shape[0] for n, aa, _, _ in parts}
            if len(set(ranks.values())) != 1:
                raise ValueError(
                    f"combination='linear': module {module!r} has adapters of different ranks {ranks}; "
                    "use combination='cat'"
                )
            a = sum(math.copysign(math.sqrt(abs(w[n] * s)), w[n] * s) * aa.float() for n, aa, _, s in parts)
            b = sum(math.sqrt(abs(w[n] * s)) * bb.float() for n, _, bb, s in parts)
        merged[module] = (a, b, 1.0)
    return apply_mole(model, {"merged": merged}, granularity="matrix")
