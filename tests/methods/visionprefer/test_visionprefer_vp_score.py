"""VP-Score: the Bradley-Terry loss, the MLP head, CLIP and BLIP features from tiny backbones built from
configs, the differentiable image path, fine-tuning modes (head, full, LoRA, ResLoRA), save/load."""

import math

import numpy as np
import pytest
import torch

from lmops.methods.visionprefer import VPScore, VPScoreConfig, bradley_terry_loss, load_backbone, tiny_blip, tiny_clip
from lmops.methods.visionprefer.synthetic import Drawing, draw
from lmops.methods.visionprefer.vp_score import MLPHead, pairwise_accuracy_from_scores

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = VPScoreConfig(head_dims=(16, 8), head_dropout=(0.0,))


def _images(tmp_path, n=4):
    paths = []
    for i in range(n):
        p = tmp_path / f"im{i}.png"
        draw(Drawing(["red", "blue", "green", "yellow"][i % 4], "circle", dx=i, noise=5.0 * i), seed=i).save(p)
        paths.append(str(p))
    return paths


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.5, -1.0])
    want = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(0.5))) + math.log(0.5)) / 3
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(want, rel=1e-6)
    c = torch.tensor([0.3], requires_grad=True)
    bradley_terry_loss(c, torch.tensor([0.1])).backward()
    assert float(c.grad) < 0  # descending the loss raises the chosen reward
    assert pairwise_accuracy_from_scores(chosen, rejected) == pytest.approx((1 + 0 + 0.5) / 3)
    with pytest.raises(ValueError, match="shape"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_mlp_head_is_imagereward_shaped():
    head = MLPHead(768)
    linears = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (768, 1024),
        (1024, 128),
        (128, 64),
        (64, 16),
        (16, 1),
    ]
    assert [m.p for m in head.layers if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2, 0.1]
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.GELU)) for m in head.layers)  # ImageReward: no activation
    w = linears[0].weight.detach()
    assert float(w.std()) == pytest.approx(1 / 769, rel=0.05) and float(linears[0].bias.detach().abs().sum()) == 0
    assert head(torch.randn(5, 768)).shape == (5,)


def test_clip_text_gets_its_eos_and_features_have_the_right_shapes(tmp_path):
    bb = tiny_clip()
    text = bb.encode_text(["a red circle", "a"])
    eos = bb.model.config.text_config.eos_token_id
    assert text["input_ids"][0, 12].item() == eos and text["input_ids"][1, 1].item() == eos  # appended after the bytes
    assert text["attention_mask"].tolist()[1] == [1, 1] + [0] * 11
    pixels = bb.pixels_from_images(_images(tmp_path, 2))
    feats = bb.features(pixels, text["input_ids"], text["attention_mask"])
    assert feats.shape == (2, 96)  # [image, text, image * text], projection 32
    img, txt, prod = feats.split(32, dim=1)
    assert torch.allclose(img.norm(dim=1), torch.ones(2), atol=1e-5) and torch.allclose(prod, img * txt)
    long = bb.encode_text(["x" * 200])["input_ids"]
    assert long.shape[1] == bb.max_text_length and long[0, -1].item() == eos  # truncated, EOS kept


def test_clip_text_tower_sees_each_prompt_once_with_the_same_result(tmp_path):
    bb = tiny_clip(seed=3)
    pixels = bb.pixels_from_images(_images(tmp_path, 4))
    text = bb.encode_text(["a red circle", "a blue square", "a red circle", "a"])
    feats = bb.features(pixels, text["input_ids"], text["attention_mask"])
    single = torch.cat(
        [
            bb.features(
                pixels[i : i + 1],
                text["input_ids"][i : i + 1, : int(text["attention_mask"][i].sum())],
                text["attention_mask"][i : i + 1, : int(text["attention_mask"][i].sum())],
            )
            for i in range(4)
        ]
    )
    assert torch.allclose(feats, single, atol=1e-5)  # padding and the dedup change nothing


def test_blip_feature_is_the_cls_of_the_image_grounded_text_encoder(tmp_path):
    bb = tiny_blip()
    text = bb.encode_text(["a red circle", "a blue square"])
    assert text["input_ids"][:, 0].tolist() == [bb.tokenizer.cls_token_id] * 2
    p1 = bb.pixels_from_images(_images(tmp_path, 2))
    f1 = bb.features(p1, text["input_ids"], text["attention_mask"])
    assert f1.shape == (2, 32)
    f2 = bb.features(p1.flip(0), text["input_ids"], text["attention_mask"])
    assert not torch.allclose(f1, f2)  # the [CLS] feature depends on the image (cross-attention)


def test_tensor_path_matches_the_processor_and_is_differentiable(tmp_path):
    bb = tiny_clip()
    paths = _images(tmp_path, 2)
    from PIL import Image

    arr = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255 for p in paths])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    assert torch.allclose(bb.pixels_from_tensor(x), bb.pixels_from_images(paths), atol=1e-4)
    model = VPScore(bb, TINY).eval()
    x16 = torch.rand(2, 3, 16, 16, requires_grad=True)  # another size: resized inside
    r = model.reward_fn()(x16, ["a red circle", "a blue circle"])
    r.sum().backward()
    assert r.shape == (2,) and x16.grad is not None and float(x16.grad.abs().sum()) > 0


@pytest.mark.parametrize("mode", ["head", "full", "lora", "reslora"])
def test_finetune_modes_train_what_they_say(mode):
    model = VPScore(tiny_clip(), VPScoreConfig(head_dims=(16,), head_dropout=(), finetune=mode, lora_r=2))
    backbone_trainable = [n for n, p in model.backbone.model.named_parameters() if p.requires_grad]
    assert all(p.requires_grad for p in model.head.parameters())
    if mode == "head":
        assert backbone_trainable == []
    elif mode == "full":
        assert len(backbone_trainable) == len(list(model.backbone.model.parameters()))
    else:
        assert backbone_trainable and all(".lora_" in n for n in backbone_trainable)
        assert any("q_proj" in n for n in backbone_trainable) and any("v_proj" in n for n in backbone_trainable)
        assert not any("k_proj" in n for n in backbone_trainable)


def test_blip_lora_targets_attention():
    model = VPScore(tiny_blip(), VPScoreConfig(head_dims=(8,), head_dropout=(), finetune="lora", lora_r=2))
    names = [n for n, p in model.backbone.model.named_parameters() if p.requires_grad]
    assert (
        any(".qkv." in n for n in names) and any(".query." in n for n in names) and any(".value." in n for n in names)
    )


def _perturb_adapters(model):
    with torch.no_grad():
        for n, p in model.backbone.model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        for p in model.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.reward_mean.fill_(0.3)
        model.reward_std.fill_(1.7)


@pytest.mark.parametrize("kind, mode", [("clip", "full"), ("clip", "lora"), ("clip", "reslora"), ("blip", "head")])
def test_save_and_load_give_the_same_scores(tmp_path, kind, mode):
    bb = tiny_clip(seed=1) if kind == "clip" else tiny_blip(seed=1)
    model = VPScore(bb, VPScoreConfig(head_dims=(16, 8), head_dropout=(0.0,), finetune=mode, lora_r=2)).eval()
    _perturb_adapters(model)
    paths = _images(tmp_path, 3)
    prompts = ["a red circle", "a blue circle", "a green circle"]
    with torch.no_grad():
        before = model.score(prompts, paths)
    out = model.save(tmp_path / "vp")
    assert (out / "vpscore.json").is_file() and (out / "head.safetensors").is_file() and (out / "backbone").is_dir()
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in out.rglob("*"))  # no pickle
    loaded = VPScore.load(out)
    with torch.no_grad():
        after = loaded.score(prompts, paths)
    assert torch.allclose(before, after, atol=1e-5)
    assert loaded.config == model.config and float(loaded.reward_std) == pytest.approx(1.7)


def test_a_from_pretrained_backbone_is_referenced_not_copied(tmp_path):
    tiny_clip(seed=2).save_pretrained(tmp_path / "clip-base")  # a "downloaded" checkpoint
    bb = load_backbone("clip", tmp_path / "clip-base")
    assert bb.source == str((tmp_path / "clip-base").resolve())
    model = VPScore(bb, VPScoreConfig(head_dims=(8,), head_dropout=(), finetune="lora", lora_r=2)).eval()
    _perturb_adapters(model)
    paths = _images(tmp_path, 2)
    with torch.no_grad():
        before = model.score(["a red circle", "a"], paths)
    out = model.save(tmp_path / "vp")
    assert not (out / "backbone").exists() and (out / "adapter.safetensors").is_file()
    with torch.no_grad():
        after = VPScore.load(out).score(["a red circle", "a"], paths)
    assert torch.allclose(before, after, atol=1e-5)
    with pytest.raises(ValueError, match="not a saved VP-Score"):
        VPScore.load(tmp_path / "clip-base")


def test_calibration_standardizes_scores(tmp_path):
    model = VPScore(tiny_clip(), TINY).eval()
    paths = _images(tmp_path, 4)
    prompts = ["a red circle"] * 4
    model.calibrate(prompts, paths)
    with torch.no_grad():
        s = model.score(prompts, paths)
    assert float(s.mean()) == pytest.approx(0.0, abs=1e-5) and float(s.std()) == pytest.approx(1.0, abs=1e-4)
