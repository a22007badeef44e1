"""TREC: text diffusion with Reinforced Conditioning.

Paper: Liu et al., "Text Diffusion with Reinforced Conditioning" (arXiv 2402.14843, AAAI 2024, pp. 14069-14077).
No official code was found; only the abstract, the introduction's opening and a secondary note that quotes
the paper's equations for RC could be read. So this package is a continuous embedding-space seq2seq
diffusion model in the Diffusion-LM / DiffuSeq lineage with TREC's two additions, each pluggable.

Pieces (one module each):

- :class:`TRECModel` (``model.py``): token embedding (the diffusion space, tied to the rounding softmax), a
  transformer source encoder and a transformer denoiser with cross-attention, a timestep embedding, the
  self-conditioning input ``[z_t ; x0_prev]`` and an x0 head. Every linear comes from one factory
  (``linear_cls``; ``ModelConfig.linear="bitlinear"`` gives ``lmops.BitLinear``), and
  ``lmops.bitnet.convert`` / ``lmops.reslora.apply_reslora`` work on the model after construction.
- :class:`NoiseSchedule` (``schedule.py``): sqrt (default), cosine and linear schedules, ``q(z_t | x0)``.
- :func:`training_loss` (``diffusion.py``): DiffuSeq's x0-parametrised loss (MSE, the t=T prior term, the
  rounding cross-entropy), optional Difformer anchor loss, self-conditioning on 50% of batches.
- Reinforced Conditioning (``reinforced.py``): ``A = clip(R(z0_sc) - R(z0_hat), -eps, eps)``,
  ``L_RL = -mean(A * log p(y | z0_sc))`` added with ``rc_weight``; ``rc_weight = 0`` skips it entirely, so
  training is bitwise plain self-conditioning.
- Time-Aware Variance Scaling (:class:`TimeAwareVarianceScaling`): a training-time factor ``1 + gamma t/T``
  on the noise; ``gamma = 0`` is bitwise the plain schedule.
- :func:`sample` / :func:`generate` (``sampling.py``): DDIM with step skipping (eta 0 deterministic; eta 1
  with all T steps = DDPM), self-conditioning across steps, optional clamping, argmax rounding, pads removed.
- :func:`train`, :func:`evaluate`, :func:`save_checkpoint`, :func:`load_model` (``training.py``): seeded,
  resumable AdamW training with safetensors checkpoints; sacrebleu corpus BLEU.
- :func:`run_ablation` (``ablation.py``) and ``lmops trec train|sample|ablate`` (``cli.py``).
- The synthetic task (``data.py``): reverse a word sequence and shift each word in a 32-word vocabulary.

Faithful (to the paper or, where it builds on them, to Diffusion-LM/DiffuSeq/Analog Bits): continuous
embeddings learned jointly and tied to the output; x0 parametrisation; the sqrt schedule and T=2000;
Diffusion-LM's rounding loss and DiffuSeq's loss terms; self-conditioning with probability 0.5; RC's paired
advantage with clipping and its REINFORCE term added to the diffusion loss (Eq. 10-12 as quoted second-hand);
fixed-length targets with pads (DiffuSeq); BLEU with sacrebleu.

Choices (unconfirmed in what could be read): the encoder-decoder backbone (DiffuSeq concatenates instead);
R = sentence BLEU / 100 (pluggable ``reward``); y = the argmax rounding of z0_sc (or a sample,
``rc_action``); eps = 0.5; log p summed over all target positions; the advantage detached; one
self-conditioning coin per batch; TAVS's whole form (``s(t) = 1 + gamma f(t/T)``, ``f(u) = u``, applied in
training only, pluggable ``NoiseScaling``); the anchor loss (weight 1; 0 = Diffusion-LM's objective); the
learning-rate warm-up; the synthetic task.
"""

from .ablation import SETTINGS, AblationResult, SettingResult, format_table, run_ablation
from .config import AblationConfig, DiffusionConfig, ModelConfig, SampleConfig, TrainConfig
from .data import (
    SYNTHETIC_WORDS,
    Seq2SeqExample,
    Vocab,
    encode_examples,
    invert_synthetic,
    read_examples,
    synthetic_splits,
    synthetic_task,
    transform_synthetic,
    write_examples,
)
from .diffusion import LossOutput, training_loss
from .model import LinearFactory, TRECModel, linear_factory, timestep_embedding
from .reinforced import RCOutput, Reward, clipped_advantage, rc_loss, reinforce_loss, sentence_bleu_reward
from .sampling import corpus_bleu, ddim_timesteps, generate, sample
from .schedule import NoiseScaling, NoiseSchedule, TimeAwareVarianceScaling, alpha_bar_schedule
from .training import EvalResult, Loaded, TrainResult, build_model, evaluate, load_model, save_checkpoint, train

__all__ = [
    "SETTINGS",
    "SYNTHETIC_WORDS",
    "AblationConfig",
    "AblationResult",
    "DiffusionConfig",
    "EvalResult",
    "LinearFactory",
    "Loaded",
    "LossOutput",
    "ModelConfig",
    "NoiseSchedule",
    "NoiseScaling",
    "RCOutput",
    "Reward",
    "SampleConfig",
    "Seq2SeqExample",
    "SettingResult",
    "TRECModel",
    "TimeAwareVarianceScaling",
    "TrainConfig",
    "TrainResult",
    "Vocab",
    "alpha_bar_schedule",
    "build_model",
    "clipped_advantage",
    "corpus_bleu",
    "ddim_timesteps",
    "encode_examples",
    "evaluate",
    "format_table",
    "generate",
    "invert_synthetic",
    "linear_factory",
    "load_model",
    "rc_loss",
    "read_examples",
    "reinforce_loss",
    "run_ablation",
    "sample",
    "save_checkpoint",
    "sentence_bleu_reward",
    "synthetic_splits",
    "synthetic_task",
    "timestep_embedding",
    "train",
    "training_loss",
    "transform_synthetic",
    "write_examples",
]
