"""VP-Score: a reward model over a vision-language backbone with an MLP head (ImageReward's design, the
lineage the paper's VP-Score follows; the exact head is unconfirmed), trained with the pairwise
Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)`` and evaluated by pairwise accuracy.

- :class:`MLPHead`: ImageReward's MLP (``768 -> 1024 -> 128 -> 64 -> 16 -> 1``, dropout 0.2, 0.2, 0.1,
  weights ``N(0, 1/(in+1))``, no activation between the linears), its sizes configurable.
- :class:`VPScore`: backbone + head; ``finetune`` = ``"head"`` (frozen backbone), ``"full"``,
  ``"lora"`` (peft ``inject_adapter_in_model``) or ``"reslora"`` (:func:`lmops.reslora.apply_reslora`).
  Scores are standardized with the mean and std of the training images' scores when calibrated
  (ImageReward's habit), so a reward of 0 is "average".
- :meth:`VPScore.save` / :meth:`VPScore.load`: an atomic directory with ``vpscore.json`` (config and
  backbone source), ``head.safetensors``, the adapter weights (``adapter.safetensors`` for LoRA, a
  ``reslora/`` folder for ResLoRA), and ``backbone/`` (``save_pretrained``) only when the backbone's
  weights cannot be found again by its ``from_pretrained`` source (built from a config, or fully
  fine-tuned). No pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ...common.files import atomic_directory
from .backbones import DEFAULT_LORA_TARGETS, CLIPBackbone, ScoreBackbone, load_backbone
from .config import VPScoreConfig

__all__ = ["MLPHead", "VPScore", "bradley_terry_loss", "pairwise_accuracy_from_scores"]

FORMAT = "lmops-vpscore"
CONFIG_NAME = "vpscore.json"


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log sigmoid(chosen - rejected)`` over ``(B,)`` rewards (``logsigmoid`` for stability)."""
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen, rejected: expected one shape, got {tuple(chosen.shape)} and {tuple(rejected.shape)}")
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def pairwise_accuracy_from_scores(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """The share of pairs whose chosen image scores higher (an exact tie counts one half, a choice)."""
    if chosen.numel() == 0:
        raise ValueError("chosen: expected at least one pair")
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return float(wins.mean())


class MLPHead(nn.Module):
    """ImageReward's reward MLP: ``in -> dims[0] -> ... -> dims[-1] -> 1``, dropout after each hidden
    layer, optional activation (``None``: none, as ImageReward), init ``N(0, 1/(in+1))``, zero bias.
    Input ``(B, in_dim)``, output ``(B,)``."""

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int] = (1024, 128, 64, 16),
        dropout: Sequence[float] = (0.2, 0.2, 0.1, 0.0),
        activation: str | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        sizes = [int(in_dim), *map(int, dims)]
        drops = list(dropout) + [0.0] * (len(dims) - len(dropout))
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Linear(a, b))
            if activation == "relu":
                layers.append(nn.ReLU())
            elif activation == "gelu":
                layers.append(nn.GELU())
            if drops[i] > 0:
                layers.append(nn.Dropout(drops[i]))
        layers.append(nn.Linear(sizes[-1], 1))
        self.layers = nn.Sequential(*layers)
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.0 / (m.in_features + 1))
                nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)


def _base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's own weights with adapters (peft LoRA, ResLoRA) left out and their ``base_layer``
    names mapped back, so ``save_pretrained`` writes a plain checkpoint."""
    out = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name or name.startswith("lora_"):
            continue
        out[name.replace(".base_layer.", ".")] = tensor
    return out


class VPScore(nn.Module):
    """The reward model (see the module docstring).

    Args:
        backbone: a :class:`~lmops.methods.visionprefer.backbones.ScoreBackbone` (CLIP or BLIP).
        config: head, score input, fine-tuning mode and adapters (:class:`VPScoreConfig`).
    Attributes:
        reward_mean, reward_std: buffers; scores are ``(head(features) - mean) / std``.
    """

    def __init__(self, backbone: ScoreBackbone, config: VPScoreConfig | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, ScoreBackbone):
            raise TypeError(
                f"backbone: expected a ScoreBackbone (CLIPBackbone, BLIPBackbone), got {type(backbone).__name__}"
            )
        self.config = config = config or VPScoreConfig()
        if isinstance(backbone, CLIPBackbone):
            backbone.set_features(config.clip_features)
        backbone.max_text_length = min(backbone.max_text_length, config.max_text_length)
        self.backbone = backbone
        self.head = MLPHead(backbone.feature_dim, config.head_dims, config.head_dropout, config.head_activation)
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))
        self._apply_finetune()

    @property
    def kind(self) -> str:
        return self.backbone.kind

    def _targets(self) -> list[str]:
        return list(self.config.lora_targets or DEFAULT_LORA_TARGETS[self.kind])

    def _apply_finetune(self) -> None:
        mode, model = self.config.finetune, self.backbone.model
        if mode == "full":
            return
        for p in model.parameters():
            p.requires_grad_(False)
        if mode == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(
                r=self.config.lora_r,
                lora_alpha=self.config.lora_alpha,
                lora_dropout=self.config.lora_dropout,
                target_modules=self._targets(),
            )
            inject_adapter_in_model(lora, model)
            for name, p in model.named_parameters():
                p.requires_grad_(".lora_" in name)
        elif mode == "reslora":
            from ...reslora import apply_reslora

            apply_reslora(
                model,
                self._targets(),
                r=self.config.lora_r,
                alpha=self.config.lora_alpha,
                dropout=self.config.lora_dropout,
            )

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The trained backbone adapter tensors (LoRA ``lora_A``/``lora_B``), by parameter name."""
        return {n: p.detach() for n, p in self.backbone.model.named_parameters() if ".lora_" in n}

    # -- scoring -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.reward_mean.device

    def raw_scores(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """``(B,)`` head outputs before standardization."""
        return self.head(self.backbone.features(pixel_values, input_ids, attention_mask))

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """``(B,)`` rewards of (image, prompt) pairs: ``pixel_values`` ``(B, 3, S, S)`` (preprocessed),
        ``input_ids``/``attention_mask`` ``(B, L)``."""
        return (self.raw_scores(pixel_values, input_ids, attention_mask) - self.reward_mean) / self.reward_std

    def score(self, prompts: Sequence[str], images: Sequence[Any] | torch.Tensor) -> torch.Tensor:
        """``(B,)`` rewards; ``images`` are paths or PIL images (the model's image processor), or a
        ``(B, 3, H, W)`` float tensor in [0, 1] (differentiable). One prompt per image."""
        if isinstance(images, torch.Tensor):
            pixels = self.backbone.pixels_from_tensor(images.to(self.device))
        else:
            pixels = self.backbone.pixels_from_images(list(images))
        if len(prompts) != pixels.shape[0]:
            raise ValueError(f"prompts: expected one per image ({pixels.shape[0]}), got {len(prompts)}")
        text = self.backbone.encode_text(list(prompts))
        return self(pixels, text["input_ids"], text["attention_mask"])

    def reward_fn(self, *, freeze: bool = True) -> Callable[[torch.Tensor, Sequence[str]], torch.Tensor]:
        """``fn(images, prompts) -> (B,)``: images ``(B, 3, H, W)`` in [0, 1]; differentiable with respect to
        the images (the reward the alignment methods use). The model is put in eval mode and, with
        ``freeze``, its parameters stop requiring gradients (a generator's reward-gradient loss then
        computes none for them)."""
        self.eval()
        if freeze:
            self.requires_grad_(False)

        def fn(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
            return self.score(list(prompts), images)

        return fn

    @torch.no_grad()
    def calibrate(self, prompts: Sequence[str], images: Sequence[Any], batch_size: int = 64) -> tuple[float, float]:
        """Set ``reward_mean``/``reward_std`` to the mean and std of the raw scores of these (prompt, image)
        pairs (the training images); returns them."""
        was = self.training
        self.eval()
        raw = []
        for i in range(0, len(images), batch_size):
            pixels = self.backbone.pixels_from_images(list(images[i : i + batch_size]))
            text = self.backbone.encode_text(list(prompts[i : i + batch_size]))
            raw.append(self.raw_scores(pixels, text["input_ids"], text["attention_mask"]))
        values = torch.cat(raw)
        std = float(values.std()) if values.numel() > 1 else 1.0
        self.reward_mean.fill_(float(values.mean()))
        self.reward_std.fill_(std if std > 1e-8 else 1.0)
        self.train(was)
        return float(self.reward_mean), float(self.reward_std)

    # -- files ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to directory ``path`` atomically (see the module docstring); returns the path."""
        from safetensors.torch import save_file

        from ...reslora import save_adapter

        mode = self.config.finetune
        source = self.backbone.source
        save_backbone = source is None or mode == "full"
        meta = {
            "format": FORMAT,
            "version": 1,
            "kind": self.kind,
            "config": self.config.to_dict(),
            "backbone": {"source": None if save_backbone else source, "saved": save_backbone},
        }
        with atomic_directory(path) as tmp:
            head = {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
            head["reward_mean"] = self.reward_mean.detach().cpu().reshape(1)
            head["reward_std"] = self.reward_std.detach().cpu().reshape(1)
            save_file(head, str(tmp / "head.safetensors"), metadata={"format": "pt"})
            if mode == "lora":
                save_file(
                    {k: v.cpu().contiguous() for k, v in self.adapter_state().items()},
                    str(tmp / "adapter.safetensors"),
                    metadata={"format": "pt"},
                )
            elif mode == "reslora":
                save_adapter(self.backbone.model, tmp / "reslora")
            if save_backbone:
                state = _base_state_dict(self.backbone.model) if mode in ("lora", "reslora") else None
                self.backbone.save_pretrained(tmp / "backbone", state_dict=state)
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        backbone: str | os.PathLike | None = None,
        map_location: str | torch.device = "cpu",
    ) -> "VPScore":
        """A model written by :meth:`save`. The backbone comes from ``path/backbone`` when saved there,
        else ``from_pretrained`` of its recorded source (``backbone`` overrides the location)."""
        from safetensors.torch import load_file

        from ...reslora import load_adapter

        root = Path(path)
        try:
            meta = json.loads((root / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"path: {root} is not a saved VP-Score ({CONFIG_NAME}: {exc})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"path: {root / CONFIG_NAME} has format {meta.get('format')!r}, expected {FORMAT!r}")
        config = VPScoreConfig.from_dict(meta["config"])
        info = meta["backbone"]
        where = backbone or (root / "backbone" if info["saved"] else info["source"])
        if where is None:
            raise ValueError(f"path: {root} records no backbone source; pass backbone=")
        bb = load_backbone(meta["kind"], where, max_text_length=config.max_text_length)
        if backbone is None and info["saved"]:
            bb.source = None  # weights that live in this folder: a later save writes them again
        model = cls(bb, config)
        if config.finetune == "lora":
            saved = load_file(str(root / "adapter.safetensors"))
            params = dict(model.backbone.model.named_parameters())
            expected = {n for n in params if ".lora_" in n}
            if set(saved) != expected:
                raise ValueError(
                    f"{root / 'adapter.safetensors'}: adapter names differ from the model's "
                    f"(missing {sorted(expected - set(saved))[:3]}, unexpected {sorted(set(saved) - expected)[:3]})"
                )
            with torch.no_grad():
                for n, t in saved.items():
                    if params[n].shape != t.shape:
                        raise ValueError(f"{n}: saved shape {tuple(t.shape)}, model shape {tuple(params[n].shape)}")
                    params[n].copy_(t)
        elif config.finetune == "reslora":
            load_adapter(model.backbone.model, root / "reslora")
        head = load_file(str(root / "head.safetensors"))
        model.head.load_state_dict({k[len("head.") :]: v for k, v in head.items() if k.startswith("head.")})
        with torch.no_grad():
            model.reward_mean.fill_(float(head["reward_mean"][0]))
            model.reward_std.fill_(float(head["reward_std"][0]))
        return model.to(map_location).eval()
