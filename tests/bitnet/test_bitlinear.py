"""``BitLinear``: drop-in for ``nn.Linear``, numerically transformers' ``AutoBitLinear(online_quant=True)``.

Tolerances (float32 unless stated):
- training forward vs ``AutoBitLinear``: ``rtol = 1e-6``, ``atol = 1e-6 * max |y|``. Not bit-equal:
  transformers' activation scale is ``127 * (1 / amax)`` where lmops computes ``127 / amax`` (1 ulp
  apart) and its weight is ``q / (1 / gamma)`` where lmops has ``q * gamma``.
- gradients vs ``AutoBitLinear`` and vs the float64 STE formula: ``rtol = atol_rel = 1e-5``.
- packed forward (exact int32 product, float32 rescale) vs training forward (float32 GEMM on the
  dequantized operands): ``rtol = atol_rel = 1e-5``; bfloat16: ``2e-2``.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lmops_kernels as lk
from lmops import BitLinear
from lmops.bitnet.layer import PackedTernaryWeight, PackedWeightError

hf_bitnet = pytest.importorskip("transformers.integrations.bitnet")


def close(got, want, rel):
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * want.abs().max().item())


def random_layer(in_f, out_f, bias=True, seed=0, **kw):
    torch.manual_seed(seed)
    layer = BitLinear(in_f, out_f, bias=bias, **kw)
    with torch.no_grad():
        layer.weight.normal_(0, 0.02)
        if bias:
            layer.bias.normal_(0, 0.1)
    return layer


def random_input(*shape, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 3).to(dtype)


def autobitlinear_like(layer: BitLinear, rms_norm: bool):
    theirs = hf_bitnet.AutoBitLinear(
        layer.in_features, layer.out_features, bias=layer.bias is not None, online_quant=True,
        use_rms_norm=rms_norm, rms_norm_eps=layer.eps,
    )
    theirs.load_state_dict(layer.state_dict())  # same keys: weight, bias, rms_norm.weight
    return theirs


# ---------------------------------------------------------------------------------------------
# drop-in for nn.Linear
# ---------------------------------------------------------------------------------------------


def test_signature_matches_nn_linear():
    ours = list(inspect.signature(BitLinear.__init__).parameters.values())
    theirs = list(inspect.signature(nn.Linear.__init__).parameters.values())
    for a, b in zip(ours, theirs):
        assert (a.name, a.default, a.kind) == (b.name, b.default, b.kind)
    extra = ours[len(theirs):]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra), [p.name for p in extra]


def test_positional_construction_like_nn_linear():
    layer = BitLinear(12, 5, False, "cpu", torch.bfloat16)
    ref = nn.Linear(12, 5, False, "cpu", torch.bfloat16)
    assert layer.bias is None and layer.weight.dtype == torch.bfloat16 and layer.weight.shape == ref.weight.shape
    default = BitLinear(12, 5)
    assert default.bias is not None and default.weight.dtype == torch.float32
    assert set(default.state_dict()) == set(nn.Linear(12, 5).state_dict()) == {"weight", "bias"}
    assert "in_features=12, out_features=5" in repr(default) and "packed=False" in repr(default)


def test_nn_linear_state_dict_loads_into_bitlinear():
    linear = nn.Linear(20, 7)
    layer = BitLinear(20, 7)
    layer.load_state_dict(linear.state_dict())
    assert torch.equal(layer.weight, linear.weight) and torch.equal(layer.bias, linear.bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_from_linear_keeps_weights(bias, dtype):
    linear = nn.Linear(33, 9, bias=bias, dtype=dtype)
    layer = BitLinear.from_linear(linear)
    assert (layer.in_features, layer.out_features) == (33, 9)
    assert layer.weight.dtype == dtype and torch.equal(layer.weight, linear.weight)
    assert layer.weight.data_ptr() != linear.weight.data_ptr()  # a copy
    assert (layer.bias is None) == (not bias)
    if bias:
        assert torch.equal(layer.bias, linear.bias)
    with pytest.raises(TypeError, match=r"^linear: expected an nn.Linear"):
        BitLinear.from_linear(nn.Conv1d(3, 3, 1))
    with pytest.raises(TypeError, match=r"^linear: expected an nn.Linear \(not a BitLinear\), got BitLinear"):
        BitLinear.from_linear(layer)  # a BitLinear is an nn.Linear, but not one to convert again


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"^in_features: expected a positive int"):
        BitLinear(0, 3)
    with pytest.raises(ValueError, match=r"^out_features: expected a positive int"):
        BitLinear(3, True)
    with pytest.raises(TypeError, match=r"^dtype: expected a floating-point dtype"):
        BitLinear(3, 3, dtype=torch.int8)


# ---------------------------------------------------------------------------------------------
# training forward and STE gradients vs transformers AutoBitLinear
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rms_norm", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 37), (2, 3, 100), (1, 1000)])
def test_training_forward_and_grads_match_autobitlinear(rms_norm, bias, shape):
    k, n = shape[-1], 23
    ours = random_layer(k, n, bias=bias, rms_norm=rms_norm, seed=k)
    if rms_norm:
        with torch.no_grad():
            ours.rms_norm.weight.uniform_(0.5, 1.5)
    theirs = autobitlinear_like(ours, rms_norm)
    x = random_input(*shape, seed=k + n)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    # transformers wraps its quantizers in torch.compile; eager runs the same Python (one test
    # below runs the compiled path)
    with torch.compiler.set_stance("force_eager"):
        y_theirs = theirs(x2)
    y_ours = ours(x1)
    assert y_ours.shape == (*shape[:-1], n) and y_ours.dtype == torch.float32
    close(y_ours, y_theirs, 1e-6)

    grad_y = random_input(*y_ours.shape, seed=3)
    y_ours.backward(grad_y)
    with torch.compiler.set_stance("force_eager"):
        y_theirs.backward(grad_y)
    close(x1.grad, x2.grad, 1e-5)
    close(ours.weight.grad, theirs.weight.grad, 1e-5)
    if bias:
        close(ours.bias.grad, theirs.bias.grad, 1e-5)
    if rms_norm:
        close(ours.rms_norm.weight.grad, theirs.rms_norm.weight.grad, 1e-5)


def test_training_forward_matches_compiled_autobitlinear():
    ours = random_layer(64, 48, seed=7)
    theirs = autobitlinear_like(ours, rms_norm=False)
    x = random_input(4, 64, seed=8)
    close(ours(x), theirs(x), 1e-6)


@pytest.mark.parametrize("shape", [(6, 40), (2, 5, 128)])
def test_ste_gradients_reach_latent_weight(shape):
    """grad_W = grad_y^T @ Q(x) (dequantized), grad_x = grad_y @ (q gamma), grad_b = sum grad_y: float64."""
    k, n = shape[-1], 17
    layer = random_layer(k, n, seed=9)
    x = random_input(*shape, seed=10).requires_grad_()
    y = layer(x)
    grad_y = random_input(*y.shape, seed=11)
    y.backward(grad_y)

    q, gamma = lk.quantize_weight_absmean(layer.weight.detach())
    x_int, s = lk.quantize_activation_absmax(x.detach())
    x_deq = (x_int.double() / s.double()).reshape(-1, k)
    gy = grad_y.double().reshape(-1, n)
    close(layer.weight.grad.double(), gy.t() @ x_deq, 1e-5)
    close(x.grad.double().reshape(-1, k), gy @ (q.double() * gamma.double()), 1e-5)
    close(layer.bias.grad.double(), gy.sum(0), 1e-5)
    # and the layer learns: one SGD step moves the latent weight
    before = layer.weight.detach().clone()
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    assert not torch.equal(before, layer.weight)


# ---------------------------------------------------------------------------------------------
# packed mode
# ---------------------------------------------------------------------------------------------


def test_pack_and_unpack():
    layer = random_layer(100, 37, seed=12)
    q, gamma = lk.quantize_weight_absmean(layer.weight.detach())
    bias = layer.bias.detach().clone()
    assert layer.pack() is layer and layer.is_packed
    assert layer.pack() is layer  # idempotent
    assert set(layer.state_dict()) == {"weight_packed", "weight_scale", "bias"}
    assert "weight" not in dict(layer.named_parameters())
    assert layer.weight_packed.dtype == torch.uint8 and layer.weight_packed.shape == (37, 4 * 7)
    assert torch.equal(layer.weight_scale, gamma.reshape(1))
    assert torch.equal(layer.bias, bias) and not layer.bias.requires_grad
    assert "packed=True" in repr(layer)
    q_packed, g_packed = layer.ternary_weight()
    assert torch.equal(q_packed, q) and torch.equal(g_packed, gamma)
    with pytest.raises(RuntimeError, match="packed"):
        layer.reset_parameters()

    assert layer.unpack() is layer and not layer.is_packed
    assert set(layer.state_dict()) == {"weight", "bias"}
    nonzero = q.ne(0).float().mean()
    assert torch.equal(layer.weight, q.float() * (gamma / nonzero))
    assert layer.weight.requires_grad and layer.bias.requires_grad
    # re-quantizing the unpacked weights gives the same ternary codes and, up to float rounding of the
    # mean, the same gamma: pack() after unpack() is the identity (the scale no longer shrinks)
    q2, gamma2 = lk.quantize_weight_absmean(layer.weight.detach())
    assert torch.equal(q2, q)
    torch.testing.assert_close(gamma2, gamma, rtol=1e-6, atol=0)
    layer.pack()
    torch.testing.assert_close(layer.weight_scale, gamma.reshape(1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 100), (9, 100), (2, 65, 100)])
def test_packed_forward_equals_training_forward(bias, shape):
    layer = random_layer(100, 37, bias=bias, seed=13)
    x = random_input(*shape, seed=14)
    with torch.no_grad():
        y_train = layer(x)
    layer.pack()
    y_packed = layer(x)
    assert y_packed.dtype == torch.float32 and y_packed.shape == y_train.shape
    close(y_packed, y_train, 1e-5)
    # same as calling the op directly
    assert torch.equal(y_packed, lk.ternary_linear(x, layer.weight_packed, layer.weight_scale, layer.bias))


def test_packed_forward_with_rms_norm():
    layer = random_layer(64, 16, seed=15, rms_norm=True)
    with torch.no_grad():
        layer.rms_norm.weight.uniform_(0.5, 1.5)
        x = random_input(3, 64, seed=16)
        y_train = layer(x)
        close(layer.pack()(x), y_train, 1e-5)
    assert "rms_norm.weight" in layer.state_dict()


def test_packed_input_gradient_ste():
    layer = random_layer(48, 24, seed=17).pack()
    x = random_input(5, 48, seed=18).requires_grad_()
    layer(x).sum().backward()
    q, gamma = layer.ternary_weight()
    close(x.grad.double(), (q.double() * gamma.double()).sum(0).expand(5, 48), 1e-5)


def test_from_ternary():
    gen = torch.Generator().manual_seed(19)
    q = torch.randint(-1, 2, (21, 50), dtype=torch.int8, generator=gen)
    bias = torch.randn(21, generator=gen)
    layer = BitLinear.from_ternary(q, 0.03, bias)
    assert layer.is_packed and (layer.in_features, layer.out_features) == (50, 21)
    x = random_input(4, 50, seed=20)
    assert torch.equal(layer(x), lk.ternary_linear(x, lk.pack_ternary(q), torch.tensor(0.03), bias))


def test_packed_state_dict_safetensors_round_trip(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    layer = random_layer(100, 37, seed=21, rms_norm=True).pack()
    path = tmp_path / "bitlinear.safetensors"
    safetensors_torch.save_file(layer.state_dict(), str(path))
    loaded_sd = safetensors_torch.load_file(str(path))
    assert {k: (v.dtype, v.shape) for k, v in loaded_sd.items()} == {
        k: (v.dtype, v.shape) for k, v in layer.state_dict().items()
    }
    fresh = BitLinear(100, 37, rms_norm=True).pack()
    fresh.load_state_dict(loaded_sd)
    x = random_input(6, 100, seed=22)
    assert torch.equal(fresh(x), layer(x))


def test_loading_across_modes_raises():
    packed = random_layer(40, 12, seed=23).pack()
    training = random_layer(40, 12, seed=24)
    with pytest.raises(RuntimeError, match=r"holds a packed BitLinear .*weight_packed.*training mode.*\.pack\(\)"):
        training.load_state_dict(packed.state_dict())
    with pytest.raises(RuntimeError, match=r"holds latent float weights .*weight.*but this layer is packed"):
        packed.load_state_dict(training.state_dict())
    other = random_layer(56, 12, seed=25).pack()
    with pytest.raises(RuntimeError, match=r"weight_packed: expected shape \(12, 12\).*got \(12, 16\)"):
        packed.load_state_dict(other.state_dict())
    # inside a model, the message names the submodule
    model = nn.Sequential(random_layer(40, 12, seed=26))
    with pytest.raises(RuntimeError, match=r"0\.: the state_dict holds a packed BitLinear"):
        model.load_state_dict(nn.Sequential(packed).state_dict())


@pytest.mark.parametrize("pack", [False, True])
def test_wrong_in_features_raises(pack):
    layer = random_layer(32, 8, seed=27)
    if pack:
        layer.pack()
    with pytest.raises(ValueError, match=r"^x: expected last dimension in_features=32, got shape \(4, 33\)"):
        layer(torch.randn(4, 33))
    # 33 and 32 share the packed width (K padded to 16): the layer, not the op, catches 30
    with pytest.raises(ValueError, match=r"in_features=32, got shape \(2, 30\)"):
        layer(torch.randn(2, 30))


def test_bfloat16_layer():
    layer = random_layer(96, 40, seed=28).to(torch.bfloat16)
    x = random_input(2, 7, 96, seed=29, dtype=torch.bfloat16).requires_grad_()
    y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 7, 40)
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.bfloat16 and bool(layer.weight.grad.abs().sum() > 0)
    assert x.grad.dtype == torch.bfloat16
    layer.pack()
    with torch.no_grad():
        y_packed = layer(x)
    assert y_packed.dtype == torch.bfloat16
    close(y_packed.float(), y.detach().float(), 2e-2)


# ---------------------------------------------------------------------------------------------
# .weight in both modes: what peft, transformers and F.linear see
# ---------------------------------------------------------------------------------------------


def test_packed_layer_keeps_a_read_only_weight():
    layer = random_layer(50, 21, seed=30)
    assert isinstance(layer, nn.Linear) and isinstance(layer.weight, nn.Parameter)  # peft wraps nn.Linear
    layer.pack()
    w = layer.weight
    assert isinstance(w, PackedTernaryWeight) and isinstance(w, torch.Tensor)
    assert (tuple(w.shape), w.dtype, w.device, w.requires_grad) == ((21, 50), torch.float32, torch.device("cpu"), False)
    assert w.packed is layer.weight_packed and w.scale is layer.weight_scale and w.packed_layout == layer.weight_layout
    # a view, not a parameter: the state_dict keys of a packed layer stay as they were
    assert set(layer.state_dict()) == {"weight_packed", "weight_scale", "bias"}
    assert [n for n, _ in layer.named_parameters()] == ["bias"]
    assert "PackedTernaryWeight(shape=(21, 50), dtype=torch.float32" in repr(w)

    q, gamma = layer.ternary_weight()
    dense = q.float() * gamma
    assert type(w.dequantize()) is torch.Tensor and torch.equal(w.dequantize(), dense)
    assert w.dequantize(torch.bfloat16).dtype == torch.bfloat16
    # reads compute on the dequantized weight and give plain tensors
    x = random_input(4, 50, seed=31)
    for got in (w.clone(), w.data.clone(), w.detach().to(torch.float64), w * 1):
        assert type(got) is torch.Tensor and torch.equal(got.float(), dense)
    assert torch.equal(w.bfloat16(), dense.bfloat16()) and type(w.bfloat16()) is torch.Tensor
    assert torch.equal(x @ w.T, x @ dense.T) and torch.equal(w.norm(), dense.norm())
    assert isinstance(w.data, PackedTernaryWeight) and isinstance(w.detach(), PackedTernaryWeight)
    c = copy.deepcopy(w)
    assert isinstance(c, PackedTernaryWeight) and c.packed is not w.packed and torch.equal(c.dequantize(), dense)
    # F.linear runs the packed kernel (torchao's contract for quantized weights): the layer's forward
    assert torch.equal(F.linear(x, w, layer.bias), layer(x))
    assert torch.equal(F.linear(x, weight=w), lk.ternary_linear(x, layer.weight_packed, layer.weight_scale,
                                                                 layout=layer.weight_layout))
    assert not torch.equal(F.linear(x, w), F.linear(x, dense))  # activations quantized: not the float product


def _merge_like_peft(layer):
    w = layer.weight  # peft's lora.Linear.merge(): base_layer.weight.data += delta
    w.data += torch.ones(layer.out_features, layer.in_features)


def _safe_merge_like_peft(layer):
    merged = layer.weight.data.clone() + 1.0  # a plain copy: allowed
    layer.weight.data = merged  # peft's safe_merge writes it back


@pytest.mark.parametrize(
    "write",
    [
        _merge_like_peft,
        _safe_merge_like_peft,
        lambda layer: layer.weight.copy_(torch.zeros(layer.out_features, layer.in_features)),
        lambda layer: nn.init.normal_(layer.weight),  # transformers' _init_weights on an nn.Linear
        lambda layer: layer.weight.zero_(),
        lambda layer: delattr(layer, "weight"),
    ],
    ids=["merge", "safe_merge", "copy_", "init", "zero_", "del"],
)
def test_packed_weight_rejects_writes(write):
    layer = random_layer(40, 12, seed=32).pack()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = random_input(3, 40, seed=33)
    y = layer(x)
    with pytest.raises(PackedWeightError, match=r"read-only view of its 2-bit ternary weights.*"
                                                r"A LoRA cannot be merged into a packed BitLinear"):
        write(layer)
    after = layer.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())
    assert layer.is_packed and torch.equal(layer(x), y)


def test_assigning_a_weight_to_a_packed_layer_raises():
    layer = random_layer(40, 12, seed=34).pack()
    with pytest.raises(TypeError, match=r"^weight: a packed BitLinear holds no float weight to assign Tensor"):
        layer.weight = torch.zeros(12, 40)
    with pytest.raises(TypeError, match=r"^weight: a packed BitLinear keeps its weights in weight_packed"):
        layer.weight = nn.Parameter(torch.zeros(12, 40))
    assert layer.is_packed and isinstance(layer.weight, PackedTernaryWeight)
    layer.unpack()  # training mode: a weight Parameter as nn.Linear's
    new = nn.Parameter(torch.zeros(12, 40))
    layer.weight = new
    assert layer.weight is new and not layer.is_packed


def test_from_ternary_dtype():
    gen = torch.Generator().manual_seed(35)
    q = torch.randint(-1, 2, (9, 30), dtype=torch.int8, generator=gen)
    bias = torch.randn(9, generator=gen)
    layer = BitLinear.from_ternary(q, 0.25, bias, rms_norm=True, dtype=torch.bfloat16)
    assert layer.weight.dtype == layer.bias.dtype == layer.rms_norm.weight.dtype == torch.bfloat16
    assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer.bias, bias.to(torch.bfloat16))
    assert BitLinear.from_ternary(q, 0.25, bias.half()).weight.dtype == torch.float16  # default: the bias's
    assert BitLinear.from_ternary(q, 0.25).weight.dtype == torch.float32
    with pytest.raises(TypeError, match=r"^dtype: expected a floating-point dtype, got torch.int8"):
        BitLinear.from_ternary(q, 0.25, dtype=torch.int8)


# ---------------------------------------------------------------------------------------------
# dtype casts: gamma stays float32
# ---------------------------------------------------------------------------------------------

CASTS = {
    "to(bfloat16)": (lambda m: m.to(torch.bfloat16), torch.bfloat16),
    "to(dtype=float16)": (lambda m: m.to(dtype=torch.float16), torch.float16),
    "half()": (lambda m: m.half(), torch.float16),
    "bfloat16()": (lambda m: m.bfloat16(), torch.bfloat16),
    "type(bfloat16)": (lambda m: m.type(torch.bfloat16), torch.bfloat16),  # casts every tensor, uint8 too
}


@pytest.mark.parametrize("cast", sorted(CASTS))
@pytest.mark.parametrize("bias", [True, False])
def test_cast_of_a_model_keeps_packed_scale_and_outputs(cast, bias):
    fn, dtype = CASTS[cast]
    layer = random_layer(100, 37, bias=bias, seed=36)
    if bias:  # multiples of 1/256 below 0.5: exact in bfloat16 and float16, so the cast keeps the bias
        with torch.no_grad():
            layer.bias.copy_((layer.bias * 256).round().clamp(-127, 127) / 256)
    model = nn.Sequential(layer.pack())
    x = random_input(2, 5, 100, seed=37, dtype=torch.bfloat16)
    y = model(x)
    scale, packed = layer.weight_scale.clone(), layer.weight_packed.clone()
    assert scale.dtype == torch.float32

    fn(model)
    assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer.weight_scale, scale)
    assert layer.weight_packed.dtype == torch.uint8 and torch.equal(layer.weight_packed, packed)
    assert layer.weight.dtype == dtype  # the packed weight reports the dtype the model was cast to
    if bias:
        assert layer.bias.dtype == dtype  # the bias is cast as nn.Linear's
    assert torch.equal(model(x), y)  # bit-identical

    model.float()
    assert layer.weight.dtype == torch.float32 and layer.weight_scale.dtype == torch.float32
    assert torch.equal(model(x), y)


@pytest.mark.parametrize("cast", ["to(bfloat16)", "half()"])
def test_cast_of_a_training_mode_layer_then_pack(cast):
    fn, dtype = CASTS[cast]
    layer = random_layer(64, 24, seed=38)
    linear = nn.Linear(64, 24)
    linear.load_state_dict(layer.state_dict())
    fn(layer)
    fn(linear)
    # training mode: latent weight and bias cast exactly as nn.Linear's; there is no weight_scale yet
    assert layer.weight.dtype == dtype and torch.equal(layer.weight, linear.weight)
    assert torch.equal(layer.bias, linear.bias) and set(layer.state_dict()) == {"weight", "bias"}
    x = random_input(3, 64, seed=39, dtype=dtype)
    y_train = layer(x)
    assert y_train.dtype == dtype
    # packing the cast layer: gamma in float32, from the cast latent weight
    _, gamma = lk.quantize_weight_absmean(linear.weight)
    layer.pack()
    assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer.weight_scale, gamma.reshape(1).float())
    assert layer.weight.dtype == dtype
    with torch.no_grad():
        y_packed = layer(x)
    close(y_packed.float(), y_train.detach().float(), 2e-2)
    fn(layer)  # again, now packed: nothing changes
    assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer(x), y_packed)
