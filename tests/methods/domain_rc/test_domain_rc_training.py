"""Continued training on packed data: LoRA on every linear (peft), ResLoRA, a packed BitNet base, full
fine-tuning; loss on every token, padding masked; saving; bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from lmops.methods.domain_rc import PackedSequence, TrainConfig, evaluate_loss, save_trained, train  # noqa: E402
from lmops.methods.domain_rc.demo import tiny_causal_lm  # noqa: E402
from lmops.methods.domain_rc.training import all_linear_names, collate_packed  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(rank=4, alpha=8, lr=2e-2, epochs=6, batch_size=2, log_every=100)


def planted_packed(n: int = 4, length: int = 48, vocab: int = 263, seed: int = 0) -> list[PackedSequence]:
    """Sequences with a repeating pattern (learnable), of unequal lengths (padding in every batch)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        period = torch.randint(7, vocab, (6,), generator=g).tolist()
        ids = (period * (length // 6 + 1))[: length - 3 * i]
        out.append(PackedSequence(ids, [f"s{i}"]))
    return out


def test_collate_masks_padding_out_of_the_loss():
    batch = collate_packed([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


def test_lora_on_all_linear_layers_lowers_the_loss_and_freezes_the_base():
    model, tok = tiny_causal_lm(seed=0, max_positions=64)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    data = planted_packed()
    before = evaluate_loss(model, data, pad_id=tok.pad_token_id)
    result = train(model, tok, data, log=None, **SMALL)
    after = evaluate_loss(result.model, data, pad_id=tok.pad_token_id)
    assert after < before - 0.5, (before, after)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert result.steps == 6 * 2 and len(result.step_losses) == 12
    lora = [n for n, m in result.model.named_modules() if n.endswith("lora_A")]
    assert len(lora) == 2 * 7  # q k v o gate up down in both layers; never lm_head
    assert not any("lm_head" in n for n in lora)
    for name, value in result.model.get_base_model().state_dict().items():
        key = name.replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(value, base[key]), f"{name} changed"


def test_loss_covers_every_token():
    """The training loss equals the mean next-token loss over all real tokens (no prompt masking)."""
    model, tok = tiny_causal_lm(seed=2, max_positions=64)
    seq = planted_packed(1)[0].input_ids
    ids = torch.tensor([seq])
    expected = model(input_ids=ids, labels=ids).loss.item()
    assert evaluate_loss(model, [seq]) == pytest.approx(expected, rel=1e-5)
    manual = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:]).item()
    assert expected == pytest.approx(manual, rel=1e-5)


def test_reslora_trains_only_its_adapters():
    model, tok = tiny_causal_lm(seed=1, max_positions=64)
    names = all_linear_names(model)
    assert len(names) == 14 and "lm_head" not in names
    data = planted_packed()
    before = evaluate_loss(model, data)
    result = train(model, tok, data, adapter="reslora", log=None, **SMALL)
    assert evaluate_loss(result.model, data) < before - 0.3
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)


def test_full_fine_tuning_and_packed_bitnet_base(tmp_path: Path):
    from tiny_models import tiny_model

    import lmops.bitnet as bitnet
    from lmops.bitnet import BitLinear

    data = planted_packed(vocab=128)
    full = train(tiny_model("llama", seed=0), None, data, adapter="none", log=None, **{**SMALL, "lr": 1e-2, "epochs": 2})
    assert full.trainable_params == full.total_params

    packed = bitnet.pack(bitnet.convert(tiny_model("llama", seed=0)))
    snapshot = {n: b.clone() for n, b in packed.named_buffers() if "weight_packed" in n}
    assert snapshot
    with pytest.raises(ValueError, match="packed BitNet"):
        train(packed, None, data, adapter="none", log=None, **SMALL)
    before = evaluate_loss(packed, data)
    result = train(packed, None, data, log=None, **SMALL)
    assert evaluate_loss(result.model, data) < before - 0.3
    wrapped = [m for m in result.model.modules() if isinstance(m, peft.tuners.lora.layer.Linear)]
    assert len(wrapped) == 14 and all(isinstance(m.base_layer, BitLinear) for m in wrapped)
    for n, b in result.model.named_buffers():
        if "weight_packed" in n:
            key = n.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(b, snapshot[key]), f"{n} changed"


def test_save_trained_writes_a_loadable_adapter(tmp_path: Path):
    model, tok = tiny_causal_lm(seed=0, max_positions=64)
    data = planted_packed()
    result = train(model, tok, data, log=None, **{**SMALL, "epochs": 2})
    save_trained(result, tmp_path / "out", tokenizer=tok, extra={"note": 1})
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "domain_rc_train.json", "tokenizer.json"} <= files
    log = json.loads((tmp_path / "out" / "domain_rc_train.json").read_text())
    assert log["steps"] == 4 and log["note"] == 1 and log["config"]["rank"] == 4
    fresh, _ = tiny_causal_lm(seed=0, max_positions=64)
    loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "out")).eval()
    ids = torch.tensor([data[0].input_ids])
    torch.testing.assert_close(loaded(input_ids=ids).logits, result.model(input_ids=ids).logits)


def test_bad_inputs_are_refused():
    model, tok = tiny_causal_lm(seed=0, max_positions=64)
    with pytest.raises(ValueError, match="no sequences"):
        train(model, tok, [], log=None, **SMALL)
    with pytest.raises(ValueError, match="vocabulary"):
        train(model, tok, [[1, 2, 500]], log=None, **SMALL)
    with pytest.raises(ValueError, match="adapter"):
        TrainConfig(adapter="qlora")
    with pytest.raises(ValueError, match="rank"):
        TrainConfig(rank=0)
    assert TrainConfig(rank=256).lora_alpha == 512.0


def test_max_steps_and_grad_accum():
    model, tok = tiny_causal_lm(seed=0, max_positions=64)
    result = train(model, tok, planted_packed(6), log=None, **{**SMALL, "batch_size": 1, "grad_accum": 2,
                                                                "max_steps": 4})
    assert result.steps == 4 and len(result.step_losses) == 4
