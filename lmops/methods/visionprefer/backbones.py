"""Vision-language backbones for VP-Score: a ``transformers`` CLIP or BLIP model with its tokenizer and
image processor, reduced to one thing, a feature vector per (image, prompt).

- :class:`CLIPBackbone` (``CLIPModel``): the L2-normalized projected image and text embeddings,
  combined as ``[image, text, image * text]`` (``"concat"``, default), ``image * text`` or ``image``
  (a choice; the paper's CLIP variant is unconfirmed).
- :class:`BLIPBackbone` (``BlipForImageTextRetrieval``): the image-grounded text encoder's [CLS]
  feature, the prompt attending to the image by cross-attention: ImageReward's reward feature, the
  lineage the paper's BLIP VP-Score most likely follows (its ablation: BLIP slightly beats CLIP).

Images come in two ways: PIL images/paths through the model's own image processor (as the HF
checkpoint expects), or float tensors in [0, 1] through a differentiable resize + normalize with the
processor's mean and std (:meth:`ScoreBackbone.pixels_from_tensor`), which the reward-gradient
alignment needs. Users load real backbones with :func:`load_backbone` (``from_pretrained``); the tests
and the demo build tiny ones from configs (:func:`tiny_clip`, :func:`tiny_blip`; nothing downloaded).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BLIPBackbone",
    "CLIPBackbone",
    "ScoreBackbone",
    "backbone_kind_of",
    "load_backbone",
    "open_images",
    "tiny_blip",
    "tiny_clip",
]

_TOKEN_CACHE_SIZE = 65536
DEFAULT_LORA_TARGETS = {"clip": ("q_proj", "v_proj"), "blip": ("qkv", "query", "value")}


def open_images(images: Sequence[Any]) -> list:
    """PIL RGB images from paths or PIL images."""
    from PIL import Image

    out = []
    for i, im in enumerate(images):
        if isinstance(im, (str, os.PathLike)):
            with Image.open(im) as f:
                out.append(f.convert("RGB"))
        elif isinstance(im, Image.Image):
            out.append(im.convert("RGB"))
        else:
            raise TypeError(f"images[{i}]: expected a path or a PIL image, got {type(im).__name__}")
    return out


def _image_size(model: nn.Module) -> int:
    return int(model.config.vision_config.image_size)


class ScoreBackbone(nn.Module):
    """A vision-language model with its tokenizer and image processor (see the module docstring).

    Attributes:
        kind: ``"clip"`` or ``"blip"``.
        model: the ``transformers`` model.
        tokenizer, image_processor: its preprocessing.
        source: the directory or hub id it was loaded from (``None`` when built from a config).
        feature_dim: size of :meth:`features`' output.
    """

    kind = "base"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        image_processor: Any,
        *,
        source: str | None = None,
        max_text_length: int = 77,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source = source
        self.max_text_length = int(max_text_length)
        mean = torch.tensor(list(image_processor.image_mean), dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(list(image_processor.image_std), dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- text ----------------------------------------------------------------------------------------
    def _specials(self, ids: list[int]) -> list[int]:
        return ids

    def _token_ids(self, prompt: str) -> list[int]:
        cache = self.__dict__.setdefault("_token_cache", {})
        key = (prompt, self.max_text_length)
        if key not in cache:
            ids = self._specials(list(self.tokenizer(prompt)["input_ids"]))
            cut = ids[: self.max_text_length]
            if len(ids) > self.max_text_length:
                cut[-1] = ids[-1]  # keep the pooled end token (CLIP's EOS) when truncating
            if len(cache) >= _TOKEN_CACHE_SIZE:  # training repeats prompts; bound the memory all the same
                cache.clear()
            cache[key] = cut
        return list(cache[key])

    def encode_text(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (``(B, L)`` int64), right-padded, truncated to
        ``max_text_length``, with the special tokens the backbone pools on (see the subclasses)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts: expected a list of strings")
        rows = [self._token_ids(p) for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    # -- images --------------------------------------------------------------------------------------
    def pixels_from_images(self, images: Sequence[Any]) -> torch.Tensor:
        """``pixel_values`` ``(B, 3, S, S)`` float32 from paths or PIL images, by the model's image processor."""
        out = self.image_processor(images=open_images(images), return_tensors="pt")["pixel_values"]
        return out.to(self.device, torch.float32)

    def pixels_from_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable preprocessing of ``images`` ``(B, 3, H, W)`` in [0, 1]: bilinear (antialiased)
        resize to the model's image size, then the processor's normalization; ``(B, 3, S, S)``."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images: expected a (B, 3, H, W) tensor in [0, 1], got "
                f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}"
            )
        size = _image_size(self.model)
        x = images.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.image_mean.to(x.device)) / self.image_std.to(x.device)

    def features(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """``(B, feature_dim)`` features of each (image, prompt) pair."""
        raise NotImplementedError

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.features(pixel_values, input_ids, attention_mask)

    def save_pretrained(self, path: str | os.PathLike, state_dict: dict | None = None) -> None:
        """Model, tokenizer and image processor into ``path`` (loadable by :func:`load_backbone`)."""
        self.model.save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)


class CLIPBackbone(ScoreBackbone):
    """A ``CLIPModel``: features from its normalized projected embeddings (``features``: ``"concat"`` =
    ``[image, text, image * text]``, ``"product"``, ``"image"``). An EOS token (the text config's
    ``eos_token_id``) is appended when the tokenizer does not add it, since CLIP pools on it."""

    kind = "clip"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        image_processor: Any,
        *,
        features: str = "concat",
        source: str | None = None,
        max_text_length: int | None = None,
    ) -> None:
        text_cfg = model.config.text_config
        limit = int(text_cfg.max_position_embeddings)
        super().__init__(
            model, tokenizer, image_processor, source=source, max_text_length=min(limit, max_text_length or limit)
        )
        self.set_features(features)
        eos = text_cfg.eos_token_id
        # a legacy config (eos_token_id == 2) pools on the highest id, which a real CLIP tokenizer's EOS is
        self._append_eos = eos is not None and eos != 2 and eos not in tokenizer("a")["input_ids"]
        self._eos = eos

    def set_features(self, features: str) -> None:
        """Choose the score input: ``"concat"``, ``"product"`` or ``"image"`` (see the class docstring)."""
        if features not in ("concat", "product", "image"):
            raise ValueError(f"features: expected 'concat', 'product' or 'image', got {features!r}")
        self.feature_mode = features
        dim = int(self.model.config.projection_dim)
        self.feature_dim = {"concat": 3 * dim, "product": dim, "image": dim}[features]

    def _specials(self, ids: list[int]) -> list[int]:
        return ids + [self._eos] if self._append_eos else ids

    def features(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        m = self.model
        image = m.visual_projection(m.vision_model(pixel_values=pixel_values).pooler_output)
        image = F.normalize(image, dim=-1)
        if self.feature_mode == "image":
            return image
        # the text tower sees each distinct prompt once (pairs share a prompt; datasets repeat prompts)
        rows = torch.cat([input_ids, attention_mask], dim=1)
        unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
        width = input_ids.shape[1]
        text = m.text_projection(
            m.text_model(input_ids=unique[:, :width], attention_mask=unique[:, width:]).pooler_output
        )
        text = F.normalize(text, dim=-1)[inverse]
        if self.feature_mode == "product":
            return image * text
        return torch.cat([image, text, image * text], dim=-1)


class BLIPBackbone(ScoreBackbone):
    """A ``BlipForImageTextRetrieval``: the image-grounded text encoder's [CLS] feature (ImageReward's).
    A [CLS] token is prepended when the tokenizer does not start with one."""

    kind = "blip"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        image_processor: Any,
        *,
        source: str | None = None,
        max_text_length: int | None = None,
    ) -> None:
        limit = int(model.config.text_config.max_position_embeddings)
        super().__init__(
            model, tokenizer, image_processor, source=source, max_text_length=min(limit, max_text_length or limit)
        )
        self.feature_dim = int(model.config.text_config.hidden_size)
        cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        probe = tokenizer("a")["input_ids"]
        self._prepend = cls is not None and (not probe or probe[0] != cls)
        self._cls = cls

    def _specials(self, ids: list[int]) -> list[int]:
        return [self._cls] + ids if self._prepend else ids

    def features(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        m = self.model
        image_embeds = m.vision_model(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        text = m.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        )
        return text.last_hidden_state[:, 0, :]


def load_backbone(
    kind: str, path: str | os.PathLike, *, max_text_length: int | None = None, dtype: torch.dtype = torch.float32
) -> ScoreBackbone:
    """A backbone ``from_pretrained``: ``kind`` ``"clip"`` (``CLIPModel``, e.g. ``openai/clip-vit-large-patch14``)
    or ``"blip"`` (``BlipForImageTextRetrieval``, e.g. ``Salesforce/blip-itm-large-coco``), with its
    ``AutoTokenizer`` and ``AutoImageProcessor``, from a directory or a hub id."""
    from transformers import AutoImageProcessor, AutoTokenizer

    local = Path(path).expanduser()
    source = str(local.resolve()) if local.is_dir() else str(path)  # a saved VP-Score finds it from anywhere
    if kind == "clip":
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(source, dtype=dtype)
    elif kind == "blip":
        from transformers import BlipForImageTextRetrieval

        model = BlipForImageTextRetrieval.from_pretrained(source, dtype=dtype)
    else:
        raise ValueError(f"kind: expected 'clip' or 'blip', got {kind!r}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    processor = AutoImageProcessor.from_pretrained(source)
    if kind == "clip":
        return CLIPBackbone(model, tokenizer, processor, source=source, max_text_length=max_text_length)
    return BLIPBackbone(model, tokenizer, processor, source=source, max_text_length=max_text_length)


# -- tiny backbones from configs (tests, the demo) ---------------------------------------------------
def _processor_class(name: str):
    """``{name}Pil`` where transformers has it (no torchvision needed, no fallback warning), else ``name``."""
    import transformers

    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def _tiny_parts(image_size: int):
    from ...common.offline_tokenizer import byte_level_tokenizer

    CLIPImageProcessor = _processor_class("CLIPImageProcessor")

    tok = byte_level_tokenizer(padding_side="right", model_max_length=64)
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_convert_rgb=True,
    )
    return tok, processor


def tiny_clip(
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 2,
    projection_dim: int = 32,
    seed: int = 0,
) -> CLIPBackbone:
    """A random tiny ``CLIPModel`` built from a config, with the offline byte-level tokenizer and a
    ``CLIPImageProcessor`` built from arguments (nothing is downloaded)."""
    from transformers import CLIPConfig, CLIPModel

    tok, processor = _tiny_parts(image_size)
    text = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.sep_token_id,
    )  # not 2: see CLIPBackbone
    vision = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
    return CLIPBackbone(model, tok, processor)


def tiny_blip(
    *, image_size: int = 32, patch_size: int = 8, hidden: int = 32, layers: int = 2, seed: int = 0
) -> BLIPBackbone:
    """A random tiny ``BlipForImageTextRetrieval`` built from a config (offline tokenizer and processor)."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    BlipImageProcessor = _processor_class("BlipImageProcessor")

    tok, _ = _tiny_parts(image_size)
    processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    text = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=64,
        encoder_hidden_size=hidden,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        sep_token_id=tok.sep_token_id,
    )
    # BLIP's vision config initializes with std 1e-10 (it expects pretrained weights): a random tiny model
    # would see every image alike, so the usual 0.02
    vision = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(
        BlipConfig(text_config=text, vision_config=vision, projection_dim=hidden, image_text_hidden_size=hidden)
    )
    return BLIPBackbone(model, tok, processor)


def backbone_kind_of(path: str | os.PathLike) -> str:
    """``"clip"`` or ``"blip"`` from a model directory's ``config.json`` ``model_type``."""
    import json

    cfg = Path(path) / "config.json"
    try:
        model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise ValueError(f"path: cannot read {cfg}: {exc}") from None
    if model_type in ("clip", "blip"):
        return model_type
    raise ValueError(f"path: {path} holds a {model_type!r} model; expected a CLIP or BLIP model")
