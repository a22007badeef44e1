"""Continued training on the packed data (paper, section 3.3): LoRA on every linear layer, the LM loss
on every token (AdaptLLM issue #149: next-token prediction over the whole text, not response-only).

Adapters: ``"lora"`` is peft's ``LoraConfig(target_modules="all-linear")`` (every linear but the output
layer; on a packed BitNet model too: a packed ``BitLinear`` is an ``nn.Linear`` whose weight is the
read-only 2-bit view, so adapters train over the frozen ternary weights, QLoRA-style); ``"reslora"`` is
:func:`lmops.reslora.apply_reslora` on the same linears; ``"none"`` trains every weight (the paper's
full fine-tuning ablation). The paper also quantizes the base to int8 (bitsandbytes); that is not done
here (a packed BitNet base is this package's low-memory option).

One loop serves one process and many: when ``torch.distributed`` is initialized (``torchrun``,
``accelerate launch``, or :func:`init_distributed` from their environment variables) the model is
wrapped in ``DistributedDataParallel`` and each process reads its shard through a
``DistributedSampler``; only rank 0 saves, atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ...common.files import atomic_directory
from .config import TrainConfig
from .data import PackedSequence

__all__ = [
    "TrainResult",
    "all_linear_names",
    "apply_adapter",
    "collate_packed",
    "evaluate_loss",
    "init_distributed",
    "save_trained",
    "train",
]

TRAIN_LOG = "domain_rc_train.json"


def _linear_types() -> tuple[type, ...]:
    from ...bitnet import BitLinear

    return (nn.Linear, BitLinear)


def _is_packed_bitnet(model: nn.Module) -> bool:
    from ...bitnet import BitLinear

    return any(isinstance(m, BitLinear) and m.is_packed for m in model.modules())


def all_linear_names(model: nn.Module) -> list[str]:
    """Full names of every ``nn.Linear``/``BitLinear`` but the output layer (``lm_head`` or whatever
    ``get_output_embeddings()`` returns): peft's ``"all-linear"`` set, for ResLoRA."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [n for n, m in model.named_modules() if n and isinstance(m, _linear_types()) and m is not out]
    return [n for n in names if n.rsplit(".", 1)[-1] != "lm_head"]


def apply_adapter(model: nn.Module, config: TrainConfig) -> nn.Module:
    """``model`` with ``config.adapter`` applied: a peft ``PeftModel`` (``"lora"``), the model with
    ResLoRA layers in place (``"reslora"``), or the model itself with every parameter trainable
    (``"none"``; refused for a packed BitNet model, whose ternary weights cannot train)."""
    if config.adapter == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.dropout,
                          target_modules="all-linear", bias="none")
        with warnings.catch_warnings():  # peft still calls a transformers API deprecated in v5: noise to a user
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, lora)
    if config.adapter == "reslora":
        from ...reslora import apply_reslora

        targets = all_linear_names(model)
        if not targets:
            raise ValueError("model: has no nn.Linear/BitLinear besides the output layer to put ResLoRA on")
        return apply_reslora(model, targets, structure=config.reslora_structure, r=config.rank,
                             alpha=config.lora_alpha, dropout=config.dropout)
    if _is_packed_bitnet(model):
        raise ValueError("adapter: 'none' trains every weight, but this packed BitNet model's ternary weights are "
                         "read-only; use 'lora' or 'reslora' (or unpack it first)")
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _sequences(packed: Sequence[PackedSequence] | Sequence[Sequence[int]]) -> list[list[int]]:
    out = [list(p.input_ids) if isinstance(p, PackedSequence) else list(p) for p in packed]
    if not out:
        raise ValueError("packed: no sequences to train on (is the corpus empty? see pack_report.json)")
    for i, s in enumerate(out):
        if not s:
            raise ValueError(f"packed[{i}]: an empty sequence")
    return out


def collate_packed(batch: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of token-id lists: ``input_ids``, ``attention_mask`` (``(B, T)`` int64) and
    ``labels`` (``input_ids`` with -100 at padding: the loss covers every real token)."""
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if isinstance(value, int):
            return value
    return 0


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int, int]:
    """Join the process group that ``torchrun``/``accelerate launch`` describe in the environment
    (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): NCCL on CUDA, gloo on
    CPU. Returns ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` without those variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), local


@dataclass
class TrainResult:
    """What :func:`train` did: the trained (adapted) model, the loss of every optimizer step (averaged
    over processes), the mean loss of each epoch, and the counts."""

    model: nn.Module
    step_losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    trainable_params: int = 0
    total_params: int = 0
    world_size: int = 1
    config: TrainConfig | None = None

    def summary(self) -> dict[str, Any]:
        return {"steps": self.steps, "step_losses": self.step_losses, "epoch_losses": self.epoch_losses,
                "trainable_params": self.trainable_params, "total_params": self.total_params,
                "world_size": self.world_size, "config": self.config.to_dict() if self.config else None}


def train(
    model: nn.Module,
    tokenizer: Any,
    packed: Sequence[PackedSequence] | Sequence[Sequence[int]],
    *,
    config: TrainConfig | None = None,
    log: Callable[[str], None] | None = print,
    **overrides: Any,
) -> TrainResult:
    """Continued training of ``model`` on ``packed`` sequences with the LM loss on every token.

    Args:
        model: a ``transformers`` causal LM (float, a converted or packed BitNet model included), on
            the device to train on.
        tokenizer: for the pad id (any id works: padding is masked out of attention and loss).
        packed: :class:`PackedSequence` records (or token-id lists), each at most the context length.
        config: :class:`TrainConfig`; keyword ``overrides`` replace its fields (``train(m, t, p,
            adapter="lora", rank=8, lr=1e-3)``).
        log: where progress lines go (rank 0 only; ``None``: silent).
    Returns:
        :class:`TrainResult` whose ``model`` is the adapted model (a ``PeftModel`` for ``"lora"``).
    Raises:
        ValueError: no sequences, or a token id outside the model's vocabulary (data packed with
            another tokenizer).
    """
    cfg = replace(config or TrainConfig(), **overrides) if overrides or config is None else config
    seqs = _sequences(packed)
    vocab = model.get_input_embeddings().num_embeddings
    top = max(max(s) for s in seqs)
    if top >= vocab:
        raise ValueError(f"packed: token id {top} >= the model's vocabulary size {vocab} "
                         "(packed with another tokenizer?)")
    rank, world = _world()
    torch.manual_seed(cfg.seed)  # the same adapter initialisation on every rank (DDP broadcasts rank 0's anyway)
    model = apply_adapter(model, cfg)
    model.train()
    device = next(model.parameters()).device
    trainable = [p for p in model.parameters() if p.requires_grad]
    result = TrainResult(model=model, world_size=world, config=cfg,
                         trainable_params=sum(p.numel() for p in trainable),
                         total_params=sum(p.numel() for p in model.parameters()))
    if not trainable:
        raise ValueError("model: no trainable parameter after applying the adapter")
    module: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    pad_id = _pad_id(tokenizer)
    sampler: Any
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(range(len(seqs)), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    else:
        sampler = None
    loader = torch.utils.data.DataLoader(
        seqs, batch_size=cfg.batch_size, sampler=sampler, shuffle=sampler is None,
        generator=torch.Generator().manual_seed(cfg.seed) if sampler is None else None,
        collate_fn=lambda b: collate_packed(b, pad_id),
    )
    per_epoch = math.ceil(len(loader) / cfg.grad_accum)
    total = per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, per_epoch * cfg.epochs)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_lambda(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    say = log if (log is not None and rank == 0) else (lambda _m: None)
    say(f"domain-rc train: {len(seqs)} sequences, {total} steps, adapter={cfg.adapter}, "
        f"trainable {result.trainable_params:,} of {result.total_params:,} parameters, {world} process(es)")
    step = 0
    for epoch in range(cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        micro: list[float] = []
        epoch_sum, epoch_n = 0.0, 0
        n_batches = len(loader)
        for b, batch in enumerate(loader):
            if step >= total:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            last_micro = (b + 1) % cfg.grad_accum == 0 or b + 1 == n_batches
            sync = module.no_sync() if (world > 1 and not last_micro) else contextlib.nullcontext()
            with sync:
                loss = module(**batch).loss
                (loss / cfg.grad_accum).backward()
            micro.append(float(loss.detach()))
            if not last_micro:
                continue
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            value = torch.tensor(sum(micro) / len(micro), dtype=torch.float32, device=device)  # NCCL: on the GPU
            if world > 1:
                dist.all_reduce(value)
                value /= world
            micro = []
            step += 1
            result.step_losses.append(float(value))
            epoch_sum, epoch_n = epoch_sum + float(value), epoch_n + 1
            if step % cfg.log_every == 0 or step == total:
                say(f"domain-rc train: step {step}/{total} epoch {epoch + 1} loss {float(value):.4f}")
        if epoch_n:
            result.epoch_losses.append(epoch_sum / epoch_n)
        if step >= total:
            break
    result.steps = step
    model.eval()
    return result


@torch.inference_mode()
def evaluate_loss(model: nn.Module, packed: Sequence[PackedSequence] | Sequence[Sequence[int]], *,
                  pad_id: int = 0, batch_size: int = 4) -> float:
    """The mean next-token loss over every real token of ``packed`` (token-weighted, in eval mode;
    the model's mode is restored)."""
    seqs = _sequences(packed)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(seqs), batch_size):
            batch = {k: v.to(device) for k, v in collate_packed(seqs[start:start + batch_size], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                reduction="sum")
            total += float(loss)
            count += int((labels != -100).sum())
    finally:
        model.train(was_training)
    return total / max(1, count)


def save_trained(result: TrainResult, out_dir: str | os.PathLike, *, tokenizer: Any = None,
                 extra: dict[str, Any] | None = None) -> Path | None:
    """Save what :func:`train` trained to ``out_dir`` on rank 0 (other ranks wait at a barrier), as one
    atomic directory: the peft adapter (``adapter_config.json``, ``adapter_model.safetensors``), the
    ResLoRA adapter (:func:`lmops.reslora.save_adapter`), or the whole model (``"none"``:
    ``save_pretrained``, lmops BitNet format for a BitNet model); the tokenizer; and
    ``domain_rc_train.json`` (the config, the losses, ``extra``). Returns the path on rank 0."""
    rank, world = _world()
    path: Path | None = None
    if rank == 0:
        adapter = result.config.adapter if result.config else "none"
        with atomic_directory(out_dir) as tmp:
            if adapter == "lora":
                result.model.save_pretrained(str(tmp))
            elif adapter == "reslora":
                from ...reslora import save_adapter

                save_adapter(result.model, tmp)
            else:
                from ...bitnet import BitLinear, save_pretrained

                if any(isinstance(m, BitLinear) for m in result.model.modules()):
                    save_pretrained(result.model, tmp)
                else:
                    result.model.save_pretrained(str(tmp), safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            (tmp / TRAIN_LOG).write_text(json.dumps({**result.summary(), **(extra or {})}, indent=2))
        path = Path(out_dir)
    if world > 1:
        dist.barrier()
    return path
