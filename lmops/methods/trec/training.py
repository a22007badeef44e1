"""Training TREC: a seeded AdamW loop over :func:`~lmops.methods.trec.diffusion.training_loss`, resumable
checkpoints (safetensors + JSON, written as one atomic directory), and BLEU evaluation.

A checkpoint directory holds ``config.json`` (format, model/diffusion/train configs, vocabulary, step, the
optimizer's hyper-parameters), ``model.safetensors`` (the model's ``state_dict``) and
``trainer_state.safetensors`` (AdamW's moments, the data/noise generator's state and torch's global RNG
state, so a resumed run is bitwise the run that was never stopped). Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ...common.files import atomic_directory
from ...common.progress import progress_bar
from .config import DiffusionConfig, ModelConfig, SampleConfig, TrainConfig
from .data import Seq2SeqExample, Vocab, encode_examples
from .diffusion import training_loss
from .model import LinearFactory, TRECModel
from .reinforced import Reward, sentence_bleu_reward
from .sampling import corpus_bleu, generate
from .schedule import NoiseScaling, NoiseSchedule, TimeAwareVarianceScaling

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "EvalResult",
    "Loaded",
    "TrainResult",
    "build_model",
    "evaluate",
    "load_model",
    "save_checkpoint",
    "train",
]

FORMAT = "lmops-trec"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "trainer_state.safetensors"
# train settings that may change when a run is resumed (the rest must match the checkpoint's)
_RESUMABLE = {"steps", "checkpoint_every"}


def build_model(config: ModelConfig, seed: int = 0, linear_cls: LinearFactory | None = None) -> TRECModel:
    """A freshly initialised :class:`TRECModel`, seeded (torch's global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TRECModel(config, linear_cls)


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model, its schedule and vocabulary, the last step, and the
    mean loss of every logged window (``history``: dicts of step, loss parts, seconds)."""

    model: TRECModel
    schedule: NoiseSchedule
    vocab: Vocab
    step: int
    history: list[dict] = field(default_factory=list)


@dataclass
class Loaded:
    """A checkpoint read back by :func:`load_model`."""

    model: TRECModel
    schedule: NoiseSchedule
    vocab: Vocab
    model_config: ModelConfig
    diffusion: DiffusionConfig
    train_config: TrainConfig
    step: int


# --------------------------------------------------------------------------------------------------
def _optimizer(model: TRECModel, config: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: no trainable parameter")
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def save_checkpoint(
    path: str | os.PathLike,
    model: TRECModel,
    vocab: Vocab,
    diffusion: DiffusionConfig,
    train_config: TrainConfig,
    *,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> Path:
    """Write a checkpoint directory atomically (an existing one is replaced only once all is written)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    trainer: dict[str, torch.Tensor] = {}
    groups = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        for idx, st in sd["state"].items():
            for name, value in st.items():
                trainer[f"optim.{idx}.{name}"] = torch.as_tensor(value).detach().contiguous().cpu()
        groups = sd["param_groups"]
    if generator is not None:
        trainer["rng.generator"] = generator.get_state()
    trainer["rng.torch"] = torch.get_rng_state()
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": int(step),
        "model": model.config.to_dict(),
        "diffusion": diffusion.to_dict(),
        "train": train_config.to_dict(),
        "vocab": vocab.to_dict(),
        "optimizer_param_groups": groups,
    }
    with atomic_directory(path) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        save_file(trainer, str(tmp / STATE_NAME), metadata={"format": FORMAT})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        for name in (WEIGHTS_NAME, STATE_NAME):  # safetensors writes 0600; a checkpoint is an ordinary file
            os.chmod(tmp / name, 0o666 & ~umask)
    return Path(path)


def _read_meta(path: Path) -> dict:
    file = path / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path}: not a TREC checkpoint (no {CONFIG_NAME}); write one with `lmops trec train`")
    meta = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{file}: not a {FORMAT} config (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    return meta


def load_model(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", linear_cls: LinearFactory | None = None
) -> Loaded:
    """Read a checkpoint directory written by :func:`save_checkpoint` (safetensors, strict key match)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = _read_meta(path)
    mcfg = ModelConfig.from_dict(meta["model"])
    model = TRECModel(mcfg, linear_cls)
    model.load_state_dict(load_file(str(path / WEIGHTS_NAME)), strict=True)
    model.to(device)
    dcfg = DiffusionConfig.from_dict(meta["diffusion"])
    return Loaded(model, NoiseSchedule(dcfg.schedule, dcfg.num_timesteps), Vocab.from_dict(meta["vocab"]), mcfg,
                  dcfg, TrainConfig.from_dict(meta["train"]), int(meta["step"]))


def _restore_trainer(path: Path, meta: dict, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path / STATE_NAME))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    if meta.get("optimizer_param_groups") is not None:
        groups = meta["optimizer_param_groups"]
        for g in groups:
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])


# --------------------------------------------------------------------------------------------------
def train(
    model: TRECModel,
    schedule: NoiseSchedule,
    vocab: Vocab,
    examples: Sequence[Seq2SeqExample],
    config: TrainConfig,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    noise_scaling: NoiseScaling | None = None,
    reward: Reward = sentence_bleu_reward,
    progress: bool = True,
    log_every: int = 50,
) -> TrainResult:
    """Train ``model`` in place for ``config.steps`` optimizer steps.

    Args:
        model, schedule, vocab: the denoiser, its forward process and its vocabulary.
        examples: the training pairs (batches of ``config.batch_size`` drawn with replacement).
        config: :class:`TrainConfig`; ``config.seed`` seeds the generator of batches, t, noise and the
            self-conditioning coin (the model's initialisation is :func:`build_model`'s seed).
        out: checkpoint directory, written every ``config.checkpoint_every`` steps and at the end.
        resume: continue from ``out`` when it holds a checkpoint (its model, optimizer and RNG states; the
            model/diffusion/train settings must match, except ``steps`` and ``checkpoint_every``).
        noise_scaling: TAVS strategy; default ``TimeAwareVarianceScaling(config.tavs_gamma)`` when
            ``tavs_gamma > 0``, else None (the plain schedule).
        reward: RC's reward (:func:`~lmops.methods.trec.reinforced.sentence_bleu_reward`).
        progress: show a progress bar.
        log_every: steps per ``history`` entry.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if noise_scaling is None and config.tavs_gamma > 0:
        noise_scaling = TimeAwareVarianceScaling(config.tavs_gamma)
    device = model.embed.weight.device
    src_all, tgt_all = encode_examples(examples, vocab, model.config.max_source_len, model.config.target_len)
    refs = [vocab.decode(row) for row in tgt_all.tolist()]
    diffusion = DiffusionConfig(schedule.T, schedule.name)
    optimizer = _optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    start = 0
    out_path = Path(out) if out is not None else None
    history: list[dict] = []
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG: seed it, leave the caller's
        torch.manual_seed(config.seed)
        if resume and out_path is not None and (out_path / CONFIG_NAME).is_file():
            meta = _read_meta(out_path)
            _check_resumable(meta, model, diffusion, config, vocab)
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(out_path / WEIGHTS_NAME)), strict=True)
            model.to(device)
            _restore_trainer(out_path, meta, optimizer, generator)
            start = int(meta["step"])
        model.train()
        bar = progress_bar(config.steps, desc="trec train", unit="step", disable=not progress)
        bar.update(start)
        window: dict[str, float] = {}
        began = time.perf_counter()
        for step in range(start, config.steps):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
            idx = torch.randint(0, len(examples), (config.batch_size,), generator=generator)
            loss = training_loss(model, schedule, src_all[idx].to(device), tgt_all[idx].to(device), config,
                                 generator=generator, noise_scaling=noise_scaling, reward=reward,
                                 decode=vocab.decode, references=[refs[i] for i in idx.tolist()])
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            for k in ("mse", "tT", "rounding", "anchor", "rc", "advantage"):
                window[k] = window.get(k, 0.0) + getattr(loss, k)
            window["loss"] = window.get("loss", 0.0) + loss.total.item()
            window["n"] = window.get("n", 0) + 1
            bar.update(1)
            done = step + 1
            if done % log_every == 0 or done == config.steps:
                n = window.pop("n")
                entry = {"step": done, **{k: v / n for k, v in window.items()},
                         "seconds": round(time.perf_counter() - began, 2)}
                history.append(entry)
                bar.set_postfix(loss=f"{entry['loss']:.3f}")
                window = {}
            if out_path is not None and (
                done == config.steps or (config.checkpoint_every and done % config.checkpoint_every == 0)
            ):
                save_checkpoint(out_path, model, vocab, diffusion, config, step=done, optimizer=optimizer,
                                generator=generator)
        bar.close()
    return TrainResult(model, schedule, vocab, max(start, config.steps), history)


def _check_resumable(meta: dict, model: TRECModel, diffusion: DiffusionConfig, config: TrainConfig, vocab: Vocab) -> None:
    if meta["model"] != model.config.to_dict():
        raise ValueError(f"resume: the checkpoint's model config {meta['model']} differs from the model's")
    if meta["diffusion"] != diffusion.to_dict():
        raise ValueError(f"resume: the checkpoint's diffusion {meta['diffusion']} differs from {diffusion.to_dict()}")
    saved = {k: v for k, v in meta["train"].items() if k not in _RESUMABLE}
    now = {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE}
    diff = sorted(k for k in now if saved.get(k) != now[k])
    if diff:
        raise ValueError(f"resume: train settings {diff} differ from the checkpoint's; only steps and "
                         "checkpoint_every may change")
    if meta["vocab"] != vocab.to_dict():
        raise ValueError("resume: the vocabulary differs from the checkpoint's (same data needed)")


# --------------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """BLEU (sacrebleu corpus BLEU, 0-100), exact-match rate, and the hypotheses in input order."""

    bleu: float
    exact: float
    hypotheses: list[str]


def evaluate(
    model: TRECModel,
    schedule: NoiseSchedule,
    vocab: Vocab,
    examples: Sequence[Seq2SeqExample],
    config: SampleConfig | None = None,
    *,
    noise_scaling: NoiseScaling | None = None,
) -> EvalResult:
    """Generate for every example's source and score against its target."""
    if not examples:
        raise ValueError("examples: expected at least one example")
    hyps = generate(model, schedule, vocab, [e.source for e in examples], config, noise_scaling=noise_scaling)
    refs = [" ".join(e.target.split()) for e in examples]
    exact = sum(h == r for h, r in zip(hyps, refs)) / len(refs)
    return EvalResult(corpus_bleu(hyps, refs), exact, hyps)
