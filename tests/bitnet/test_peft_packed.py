"""peft's own LoRA over a packed BitNet model (QLoRA-style: adapters train over 2-bit weights).

``get_peft_model(model, LoraConfig(target_modules=[...]))`` as a user writes it, no registration call:
a packed ``BitLinear`` is an ``nn.Linear`` whose ``.weight`` is a read-only
:class:`~lmops.bitnet.layer.PackedTernaryWeight`, so peft's ``dispatch_default`` wraps it in its own
``lora.Linear``. Checked on tiny transformers models built from configs (nothing is downloaded):

- training steps run (forward and backward through the packed kernel), lower the loss, and leave the
  packed weights (``weight_packed``, ``weight_scale``, ``bias``) bit-identical;
- each adapted layer's output is its packed forward plus ``scaling * x @ A^T @ B^T`` computed here in
  float64 (tolerance ``1e-5`` of the output's scale: float32 GEMMs in another order);
- the whole model equals the packed model with each target replaced by that hand-written sum;
- merging fails with :class:`~lmops.bitnet.layer.PackedWeightError` and changes nothing.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
from tiny_models import random_ids, tiny_model  # noqa: E402  (skips the file without transformers)

import lmops.bitnet  # noqa: E402
from lmops import BitLinear  # noqa: E402
from lmops.bitnet.layer import PackedTernaryWeight, PackedWeightError  # noqa: E402

LoraLinear = peft.tuners.lora.layer.Linear
TARGETS = ["q_proj", "v_proj", "down_proj"]


def packed_model(arch: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    model = tiny_model(arch)
    lmops.bitnet.convert(model)
    lmops.bitnet.pack(model)
    return model.to(dtype)


def wrap(model: nn.Module, **config) -> nn.Module:
    """``get_peft_model`` exactly as a user calls it; fails on any warning that peft does not know the layer."""
    config = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS, **config}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = peft.get_peft_model(model, peft.LoraConfig(**config))
    unsupported = [str(w.message) for w in caught if "Unsupported layer type" in str(w.message)]
    assert not unsupported, unsupported
    return wrapped


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """peft's LoRA layers by their name in the unwrapped model."""
    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def packed_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, BitLinear):
            assert m.is_packed, name
            for key, t in m.state_dict().items():
                plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
                out[f"{plain}.{key}"] = t.clone()
    return out


def train(model: nn.Module, ids: torch.Tensor, steps: int, lr: float = 2e-2) -> list[float]:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_B" in n:  # B gets gradient from the first step (A after B moves)
                assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


class HandLoRA(nn.Module):
    """``base(x) + scaling * x @ A^T @ B^T``, written out (float64 product, cast to ``x``'s dtype)."""

    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
        super().__init__()
        self.base, self.a, self.b, self.scaling = base, a.detach().clone(), b.detach().clone(), scaling

    def forward(self, x):
        delta = self.scaling * (x.double() @ self.a.double().T @ self.b.double().T)
        return self.base(x) + delta.to(x.dtype)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q/k/v with biases
def test_peft_lora_trains_over_a_packed_model(arch):
    model = packed_model(arch)
    reference = copy.deepcopy(model)
    before = packed_snapshot(model)
    ids = random_ids(seed=2)
    with torch.no_grad():
        logits_base = model(input_ids=ids).logits

    wrapped = wrap(model)
    layers = lora_layers(wrapped)
    n_blocks = model.config.num_hidden_layers
    assert sorted(layers) == sorted(
        f"model.layers.{i}.{'mlp' if t == 'down_proj' else 'self_attn'}.{t}" for i in range(n_blocks) for t in TARGETS
    )
    for layer in layers.values():
        assert isinstance(layer.base_layer, BitLinear) and isinstance(layer.base_layer.weight, PackedTernaryWeight)
        assert layer.lora_A["default"].weight.dtype == torch.float32  # peft follows the packed weight's dtype
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)

    losses = train(wrapped, ids, steps=4)
    assert losses[-1] < losses[0], losses
    after = packed_snapshot(wrapped)
    assert after.keys() == before.keys()
    for key, t in before.items():
        assert after[key].dtype == t.dtype and torch.equal(after[key], t), key

    # each adapted layer, on the input it sees inside the model: packed forward + s x A^T B^T
    seen = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=n: seen.__setitem__(name, (args[0], out)))
        for n, m in layers.items()
    ]
    with torch.no_grad():
        logits = wrapped(input_ids=ids).logits
    for h in hooks:
        h.remove()
    for name, layer in layers.items():
        x, y = seen[name]
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        scaling = layer.scaling["default"]
        assert scaling == 2.0
        with torch.no_grad():
            base = layer.base_layer(x)
            want = base.double() + scaling * (x.double() @ a.double().T @ b.double().T)
        torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
        assert (y - base).abs().max() > 1e-2 * base.abs().max(), name  # the adapter changed the output

    # the whole model: the packed model with each target replaced by the hand-written sum
    for name, layer in layers.items():
        hand = HandLoRA(reference.get_submodule(name), layer.lora_A["default"].weight,
                        layer.lora_B["default"].weight, layer.scaling["default"])
        reference.set_submodule(name, hand)
    with torch.no_grad():
        logits_hand = reference(input_ids=ids).logits
    scale = logits_hand.abs().max()
    err = ((logits - logits_hand).abs() / scale).reshape(-1, logits.shape[-1]).amax(-1)  # per position
    # float32 vs float64 adapter products: equal but for an int8 activation rounding tie that an ulp
    # may flip downstream (one int8 step, < 1e-2 of scale); most positions agree to float32 accuracy
    assert (err <= 1e-5).float().mean() >= 0.75 and err.max() <= 1e-2, err
    assert ((logits - logits_base).abs() / scale).max() > 1e-2  # and the adapters did change the model


def test_all_linear_targets_every_packed_bitlinear():
    model = packed_model("llama")
    names = {n for n, m in model.named_modules() if isinstance(m, BitLinear)}
    wrapped = wrap(model, target_modules="all-linear")
    assert names and set(lora_layers(wrapped)) == names  # every projection; lm_head (a float linear) is not


@pytest.mark.parametrize("safe_merge", [False, True])
def test_merging_into_a_packed_model_fails_and_changes_nothing(safe_merge):
    model = packed_model("llama")
    ids = random_ids(seed=3)
    with torch.no_grad():
        logits_base = model(input_ids=ids).logits
    wrapped = wrap(model)
    train(wrapped, ids, steps=1)
    before = packed_snapshot(wrapped)
    with torch.no_grad():
        logits = wrapped(input_ids=ids).logits
    with pytest.raises(PackedWeightError, match=r"A LoRA cannot be merged into a packed BitLinear"):
        wrapped.merge_and_unload(safe_merge=safe_merge)
    assert not any(layer.merged for layer in lora_layers(wrapped).values())
    after = packed_snapshot(wrapped)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    with torch.no_grad():
        assert torch.equal(wrapped(input_ids=ids).logits, logits)
    # unloading without a merge gives the packed model back
    unloaded = wrapped.unload()
    assert not lora_layers(unloaded) and all(m.is_packed for m in unloaded.modules() if isinstance(m, BitLinear))
    with torch.no_grad():
        assert torch.equal(unloaded(input_ids=ids).logits, logits_base)


def test_bfloat16_packed_model_gets_bfloat16_adapters():
    model = packed_model("llama", dtype=torch.bfloat16)
    scales = {n: m.weight_scale.clone() for n, m in model.named_modules() if isinstance(m, BitLinear)}
    assert all(s.dtype == torch.float32 for s in scales.values())
    # peft puts adapters in the base weight's dtype (then, by default, upcasts bf16 ones to float32)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=TARGETS), autocast_adapter_dtype=False)
    for layer in lora_layers(wrapped).values():
        assert layer.base_layer.weight.dtype == torch.bfloat16
        assert layer.lora_A["default"].weight.dtype == layer.lora_B["default"].weight.dtype == torch.bfloat16
    ids = random_ids(seed=4)
    losses = train(wrapped, ids, steps=2)
    assert all(torch.isfinite(torch.tensor(losses)))
    for name, m in wrapped.named_modules():
        if isinstance(m, BitLinear):
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert m.weight_scale.dtype == torch.float32 and torch.equal(m.weight_scale, scales[key])
