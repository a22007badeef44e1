"""The one target-matching rule (``lmops.common.targets.match_target``) and the converters that use it:
``bitnet.convert(exclude=...)``, ``apply_reslora(target_modules=...)``, ``apply_mole(target_modules=...)``
must pick exactly the modules the rule names, written out by hand below."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tiny_models import tiny_model

from lmops.common.targets import match_target

Q0 = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    "name, pattern, matches",
    [
        # the full name and every dotted suffix (peft's rule)
        (Q0, Q0, True),
        (Q0, "q_proj", True),
        (Q0, "self_attn.q_proj", True),
        (Q0, "layers.0.self_attn.q_proj", True),
        # any run of whole components, not only suffixes
        (Q0, "self_attn", True),
        (Q0, "layers.0", True),
        (Q0, "model", True),
        (Q0, "0.self_attn", True),
        # whole components only: no substrings, layer 1 is not layer 10 or 11
        ("model.layers.10.self_attn.q_proj", "layers.1", False),
        ("model.layers.11.mlp.up_proj", "layers.1", False),
        ("model.layers.1.mlp.up_proj", "layers.1", True),
        (Q0, "proj", False),
        (Q0, "q_pro", False),
        (Q0, "_proj", False),
        (Q0, "attn", False),
        (Q0, "layers.0.q_proj", False),  # a run must be consecutive
        (Q0, "q_proj.self_attn", False),  # and in order
        (Q0, "model.layers.0.self_attn.q_proj.lora_A", False),  # longer than the name
        # not regular expressions
        (Q0, ".*q_proj", None),  # an empty first component: an error, below
        (Q0, "layers.[0-9].self_attn", False),
        ("model.layers.0Xself_attn.q_proj", "layers.0.self_attn", False),  # '.' is a separator, not any char
        # a trailing .weight names the module
        ("lm_head", "lm_head.weight", True),
        (Q0, "q_proj.weight", True),
        ("lm_head", "head", False),
    ],
)
def test_rule(name, pattern, matches):
    if matches is None:
        with pytest.raises(ValueError, match="patterns"):
            match_target(name, [pattern])
        return
    assert (match_target(name, [pattern]) == pattern) is matches
    assert (match_target(name, pattern) == pattern) is matches  # a str is one pattern


def test_first_matching_pattern_is_returned():
    assert match_target(Q0, ["v_proj", "self_attn", "q_proj"]) == "self_attn"
    assert match_target(Q0, ("k_proj", "v_proj")) is None
    assert match_target(Q0, []) is None
    assert match_target(Q0, iter(["mlp", "q_proj"])) == "q_proj"  # any iterable, read once


def test_a_string_is_one_pattern_not_its_characters():
    # iterated as characters, "mlp" would match the component "m"
    assert match_target("m.l", "mlp") is None
    assert match_target("model.layers.0.mlp", "mlp") == "mlp"


@pytest.mark.parametrize("bad", ["", "layers.", ".q_proj", "a..b", ".weight"])
def test_empty_components_are_refused(bad):
    with pytest.raises(ValueError, match=rf"exclude: {bad!r} is not a dotted module name"):
        match_target(Q0, ["q_proj", bad], argument="exclude")  # checked even after a match


def test_non_strings_are_refused():
    with pytest.raises(TypeError, match="target_modules: expected module names .*int 3"):
        match_target(Q0, ["q_proj", 3], argument="target_modules")


# --------------------------------------------------------------------------------------------------
# every converter picks the same modules

PATTERNS = ["layers.1.self_attn", "down_proj"]
# what PATTERNS name in a 2-layer Llama, written out by hand
CHOSEN = {
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.self_attn.k_proj",
    "model.layers.1.self_attn.v_proj",
    "model.layers.1.self_attn.o_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.1.mlp.down_proj",
}


def _projections(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if n.endswith("_proj")}


def test_bitnet_convert_excludes_what_the_rule_names():
    from lmops import bitnet
    from lmops.bitnet import BitLinear

    model = bitnet.convert(tiny_model("llama"), exclude=PATTERNS + ["lm_head"])
    kept = {n for n in _projections(model) if type(model.get_submodule(n)) is nn.Linear}
    assert kept == CHOSEN
    assert all(isinstance(model.get_submodule(n), BitLinear) for n in _projections(model) - CHOSEN)


def test_bitnet_convert_layer_1_is_not_layer_10():
    from lmops import bitnet

    model = bitnet.convert(tiny_model("llama", num_hidden_layers=11), exclude=["layers.1", "lm_head"])
    plain = {n.split(".")[2] for n, m in model.named_modules() if type(m) is nn.Linear and n != "lm_head"}
    assert plain == {"1"}


def test_bitnet_convert_refuses_a_bad_exclude_before_changing_anything():
    from lmops import bitnet

    model = tiny_model("llama")
    with pytest.raises(ValueError, match="exclude: 'layers.' is not a dotted module name"):
        bitnet.convert(model, exclude=["lm_head", "layers."])
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("_proj"))


def test_reslora_wraps_what_the_rule_names():
    from lmops.reslora import apply_reslora, reslora_layers

    model = apply_reslora(tiny_model("llama"), PATTERNS, structure="bs", r=2)
    assert set(reslora_layers(model)) == CHOSEN
    # chains still follow blocks: layer 1's attention linears are single-layer chains, down_proj spans both
    down = [n for n in reslora_layers(model) if n.endswith("down_proj")]
    assert down == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def test_mole_restricts_to_what_the_rule_names():
    from lmops.mole import apply_mole, mole_layers

    model = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    experts = {
        e: {n: (torch.randn(2, m.in_features, generator=g), torch.randn(m.out_features, 2, generator=g), 1.0)
            for n, m in model.named_modules() if n.endswith("_proj")}
        for e in ("e0", "e1")
    }
    apply_mole(model, experts, granularity="matrix", target_modules=PATTERNS)
    wrapped = {n for n, m in model.named_modules() if m in mole_layers(model)}
    assert wrapped == CHOSEN


def test_mole_names_unused_targets_and_refuses_regexes():
    from lmops.mole import apply_mole, mole_layers

    model = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    q = model.model.layers[0].self_attn.q_proj
    experts = {"e0": {Q0: (torch.randn(2, 64, generator=g), torch.randn(q.out_features, 2, generator=g), 1.0)}}
    # q_proj matches first, self_attn matches the same module: both are used, neither is reported
    apply_mole(model, experts, target_modules=["q_proj", "self_attn"])
    assert len(mole_layers(model)) == 1
    with pytest.raises(ValueError, match=r"\['mlp'\] match none .*not regular expressions"):
        apply_mole(tiny_model("llama"), experts, target_modules=["q_proj", "mlp"])
    with pytest.raises(ValueError, match=r"\['model.layers.\[01\].self_attn.q_proj'\] match none"):
        apply_mole(tiny_model("llama"), experts, target_modules=["model.layers.[01].self_attn.q_proj"])
