"""VisionPrefer and VP-Score: a multimodal-LLM-annotated image preference dataset, a reward model trained
on it, and the alignment of text-to-image generators with that reward.

Paper: Xun Wu, Shaohan Huang, Furu Wei (+ Guolong Wang, Jing Xiong in the NeurIPS version), "Multimodal
Large Language Model is a Human-Aligned Annotator for Text-to-Image Generation", arXiv 2404.15100
(NeurIPS 2024: "Multimodal LLMs Make Text-to-Image Generative Models Align Better"). No official code
could be read; only the abstract and secondary summaries, so much below is a choice, and says so.

    >>> records, bad = read_records("prompts.jsonl")               # prompt, images (paths), generator
    >>> annotate(records, OpenAIVisionJudge(url, "gpt-4o"), "ann.jsonl")     # resumable, 4 aspects
    >>> pairs, stats = make_pairs(merge_annotations(records, "ann.jsonl"))  # every pair, ties dropped
    >>> model = VPScore(load_backbone("blip", "Salesforce/blip-itm-large-coco"))
    >>> train_vp_score(model, train_pairs, valid_pairs=valid_pairs).valid_accuracy
    >>> train_ppo(T2IPipeline.from_pretrained(sd_dir), prompts, model.reward_fn())

Faithful to the paper (abstract and secondary summaries): a multimodal judge (GPT-4V there; any
OpenAI-compatible vision endpoint or callable here) scores each image on four
aspects (prompt-following, aesthetic, fidelity, harmlessness) with a rationale, on a 1-5 scale
[secondary]; images of one prompt come from several generators; preference pairs are every pair of
images per prompt with ties removed; VP-Score is a reward model on a vision-language backbone (BLIP,
slightly better than CLIP in the paper's ablation; both offered) evaluated by pairwise preference
accuracy; generators are tuned with PPO (comparing reward models) and DPO (comparing datasets).

A choice (unconfirmed; each pluggable or configurable):

- the judge's instruction text and answer format (:func:`judge_instruction`, :func:`parse_judgement`),
  per-image requests by default (``AnnotateConfig.mode``);
- the aggregated preference: the weighted mean of aspect scores, equal weights (:func:`make_pairs`);
- VP-Score's head and loss: ImageReward's (MLP 1024-128-64-16-1 with dropout, Bradley-Terry
  ``-log sigmoid(r_w - r_l)``), the BLIP [CLS] feature of the image-grounded text encoder, for CLIP
  ``[image, text, image * text]`` of the normalized embeddings; full, head-only, LoRA or ResLoRA
  fine-tuning (ImageReward freezes 70% of BLIP's layers; not reproduced);
- the RL variants: DDPO's PPO (clipped ratio, per-batch or per-prompt advantages) for "PPO",
  Diffusion-DPO (Wallace et al.) for "DPO", and ReFL (ImageReward) as a cheap reward-gradient option;
- the demo's synthetic world (coloured shapes, four "generators", a planted rule, :mod:`.synthetic`)
  and its tiny models (a CLIP or BLIP and a pixel-space 16x16 UNet, built from configs).

The alignment parts need the optional ``diffusers`` package, imported only when a pipeline is built
(:func:`tiny_pipeline`, :meth:`T2IPipeline.from_pretrained`); ``pillow`` reads and draws the images.
Files: ``data.py`` (records, pairs), ``judge.py``/``annotate.py``/``scripted.py`` (annotation),
``backbones.py``/``vp_score.py``/``train_score.py`` (VP-Score), ``diffusion.py``/``refl.py``/``dpo.py``/
``ppo.py`` (alignment), ``synthetic.py``/``demo.py`` (the offline demo), ``cli.py``.
"""

from .annotate import AnnotationReport, JudgeLLM, annotate, merge_annotations, read_annotations
from .backbones import BLIPBackbone, CLIPBackbone, ScoreBackbone, load_backbone, tiny_blip, tiny_clip
from .config import (
    ASPECTS,
    AnnotateConfig,
    DPOConfig,
    PPOConfig,
    ReFLConfig,
    SamplerConfig,
    TrainScoreConfig,
    VPScoreConfig,
    default_weights,
)
from .data import (
    AGGREGATE,
    ImageEntry,
    PairStats,
    PreferencePair,
    PromptRecord,
    aggregate_score,
    make_pairs,
    read_pairs,
    read_records,
    write_pairs,
    write_records,
)
from .diffusion import SampleResult, T2IPipeline, ddim_step, sample, tiny_pipeline
from .dpo import diffusion_dpo_loss, train_dpo
from .judge import (
    CallableJudge,
    Judge,
    JudgeRequest,
    OpenAIVisionJudge,
    as_judge,
    image_data_url,
    judge_instruction,
    parse_judgement,
)
from .ppo import advantages, ppo_clip_loss, train_ppo
from .refl import mean_reward, refl_loss, train_refl
from .scripted import ScriptedJudge
from .synthetic import color_reward, make_synthetic_dataset, measure, planted_scores
from .train_score import TrainReport, pairwise_accuracy, split_by_prompt, train_vp_score
from .vp_score import MLPHead, VPScore, bradley_terry_loss

__all__ = [
    "AGGREGATE",
    "ASPECTS",
    "AnnotateConfig",
    "AnnotationReport",
    "BLIPBackbone",
    "CLIPBackbone",
    "CallableJudge",
    "DPOConfig",
    "ImageEntry",
    "Judge",
    "JudgeLLM",
    "JudgeRequest",
    "MLPHead",
    "OpenAIVisionJudge",
    "PPOConfig",
    "PairStats",
    "PreferencePair",
    "PromptRecord",
    "ReFLConfig",
    "SamplerConfig",
    "ScoreBackbone",
    "ScriptedJudge",
    "TrainReport",
    "TrainScoreConfig",
    "VPScore",
    "VPScoreConfig",
    "aggregate_score",
    "annotate",
    "as_judge",
    "bradley_terry_loss",
    "color_reward",
    "default_weights",
    "image_data_url",
    "judge_instruction",
    "load_backbone",
    "make_pairs",
    "make_synthetic_dataset",
    "measure",
    "merge_annotations",
    "pairwise_accuracy",
    "parse_judgement",
    "planted_scores",
    "read_annotations",
    "read_pairs",
    "read_records",
    "split_by_prompt",
    "tiny_blip",
    "tiny_clip",
    "train_vp_score",
    "write_pairs",
    "write_records",
    "SampleResult",
    "T2IPipeline",
    "advantages",
    "ddim_step",
    "diffusion_dpo_loss",
    "mean_reward",
    "ppo_clip_loss",
    "refl_loss",
    "sample",
    "tiny_pipeline",
    "train_dpo",
    "train_ppo",
    "train_refl",
]
