"""TREC's ablation on the shipped synthetic task: plain self-conditioning, +RC, +TAVS and +both, several seeds
each, test BLEU as mean ± standard deviation (``lmops trec ablate``).

Within one seed every setting starts from the same initialisation and sees the same batches, timesteps and
noise (all drawn from the seed's generator; RC with argmax actions draws nothing extra), so the settings
differ only by their loss terms and noise scale.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from .config import AblationConfig, ModelConfig, SampleConfig, TrainConfig
from .data import SYNTHETIC_WORDS, Vocab, synthetic_splits
from .schedule import NoiseSchedule
from .training import build_model, evaluate, train

__all__ = ["SETTINGS", "AblationResult", "SettingResult", "format_table", "run_ablation"]

#: name -> (uses RC, uses TAVS)
SETTINGS: dict[str, tuple[bool, bool]] = {
    "plain": (False, False),
    "+RC": (True, False),
    "+TAVS": (False, True),
    "+both": (True, True),
}


@dataclass
class SettingResult:
    """One setting's test BLEU and exact-match rate per seed, and their summaries."""

    name: str
    rc_weight: float
    tavs_gamma: float
    bleu: list[float] = field(default_factory=list)
    exact: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.bleu)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 with one seed)."""
        return statistics.stdev(self.bleu) if len(self.bleu) > 1 else 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "rc_weight": self.rc_weight, "tavs_gamma": self.tavs_gamma, "bleu": self.bleu,
                "bleu_mean": self.mean, "bleu_std": self.std, "exact": self.exact,
                "exact_mean": statistics.fmean(self.exact) if self.exact else 0.0, "seconds": round(self.seconds, 1)}


@dataclass
class AblationResult:
    config: AblationConfig
    settings: list[SettingResult]
    untrained_bleu: float
    seconds: float

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "untrained_bleu": self.untrained_bleu,
                "settings": [s.to_dict() for s in self.settings], "seconds": round(self.seconds, 1)}


def format_table(result: AblationResult) -> str:
    """The result as a plain-text table: one row per setting, BLEU mean ± std and the per-seed values."""
    cfg = result.config
    lines = [
        (f"TREC ablation: synthetic reverse-and-shift task ({cfg.min_len}-{cfg.max_len} words of {cfg.n_words}), "
         f"{cfg.train_steps} steps x batch {cfg.batch_size}, {cfg.seeds} seeds, {cfg.sample_steps} DDIM steps, "
         f"T={cfg.num_timesteps}"),
        f"{'setting':<8} {'rc_weight':>9} {'tavs_gamma':>10} {'BLEU mean ± std':>17} {'exact':>6}  per seed",
    ]
    for s in result.settings:
        exact = statistics.fmean(s.exact) if s.exact else 0.0
        per_seed = " ".join(f"{b:.2f}" for b in s.bleu)
        lines.append(f"{s.name:<8} {s.rc_weight:>9g} {s.tavs_gamma:>10g} {s.mean:>8.2f} ± {s.std:<6.2f} "
                     f"{exact:>6.3f}  {per_seed}")
    lines.append(f"untrained model: BLEU {result.untrained_bleu:.2f}; total {result.seconds:.0f} s")
    return "\n".join(lines)


def run_ablation(
    config: AblationConfig | None = None,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    model_config: dict | None = None,
) -> AblationResult:
    """Train and evaluate every setting of :data:`SETTINGS` with ``config.seeds`` seeds.

    Args:
        config: the budget and the RC/TAVS strengths (default :class:`AblationConfig`()).
        progress: progress bars of the training runs.
        log: called with one line per finished run.
        model_config: overrides of :class:`ModelConfig`'s size fields (vocabulary and lengths come from the task).
    """
    cfg = config or AblationConfig()
    began = time.perf_counter()
    train_set, test_set = synthetic_splits(cfg.n_train, cfg.n_test, seed=0, min_len=cfg.min_len,
                                           max_len=cfg.max_len, words=SYNTHETIC_WORDS[: cfg.n_words])
    vocab = Vocab.build(train_set + test_set)
    mcfg = ModelConfig(vocab_size=len(vocab), max_source_len=cfg.max_len, target_len=cfg.max_len,
                       **(model_config or {}))
    schedule = NoiseSchedule("sqrt", cfg.num_timesteps)
    sample_cfg = SampleConfig(steps=cfg.sample_steps)
    untrained = evaluate(build_model(mcfg, seed=0), schedule, vocab, test_set, sample_cfg).bleu
    results = []
    for name, (use_rc, use_tavs) in SETTINGS.items():
        res = SettingResult(name, cfg.rc_weight if use_rc else 0.0, cfg.tavs_gamma if use_tavs else 0.0)
        start = time.perf_counter()
        for seed in range(cfg.seeds):
            tcfg = TrainConfig(steps=cfg.train_steps, batch_size=cfg.batch_size, seed=seed,
                               rc_weight=res.rc_weight, tavs_gamma=res.tavs_gamma)
            model = build_model(mcfg, seed=seed)
            train(model, schedule, vocab, train_set, tcfg, progress=progress)
            ev = evaluate(model, schedule, vocab, test_set, sample_cfg)
            res.bleu.append(ev.bleu)
            res.exact.append(ev.exact)
            if log is not None:
                log(f"{name} seed {seed}: BLEU {ev.bleu:.2f}, exact {ev.exact:.3f}")
            del model
        res.seconds = time.perf_counter() - start
        results.append(res)
    return AblationResult(cfg, results, untrained, time.perf_counter() - began)
