"""``lmops domain-rc demo``: the four stages offline on the embedded example (twelve biomedical
paragraphs, ten general instructions), with a scripted teacher, a tiny random BERT encoder and a tiny
Llama built from configs (nothing is downloaded). The numbers show the pipeline works, not that the
method helps: the encoder is untrained, and the model only memorizes the packed text.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch

from .config import ClusterConfig, PackConfig, QAConfig, TrainConfig
from .scripted import scripted_teacher
from .stages import cluster_stage, pack_stage, qa_stage, train_stage

__all__ = ["DEMO_CLUSTER", "DEMO_PACK", "DEMO_TRAIN", "example_path", "run_demo", "tiny_causal_lm", "tiny_encoder"]

# the demo's settings: sized for byte-level tokens and a model trained in seconds (not the paper's)
DEMO_CLUSTER = ClusterConfig(l_max=1600, d_max=3, threshold=0.7, encoder_max_length=512)
DEMO_PACK = PackConfig(context_length=1024, ratio=1.0)
DEMO_TRAIN = TrainConfig(adapter="lora", rank=8, alpha=16, lr=2e-2, epochs=6, batch_size=2, log_every=10)


def example_path(name: str) -> Path:
    """A file of the embedded example: ``"corpus.jsonl"`` or ``"general.jsonl"``."""
    return Path(str(resources.files("lmops.methods.domain_rc").joinpath("examples").joinpath(name)))


def tiny_encoder(seed: int = 0) -> tuple[Any, Any]:
    """A 1-layer, hidden-32 ``BertModel`` with random weights and the offline byte-level tokenizer."""
    from transformers import BertConfig, BertModel

    from ...common.offline_tokenizer import byte_level_tokenizer

    tok = byte_level_tokenizer(padding_side="right")
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    return BertModel(cfg).eval(), tok


def tiny_causal_lm(seed: int = 0, *, max_positions: int = 2048) -> tuple[Any, Any]:
    """A 2-layer, hidden-64 ``LlamaForCausalLM`` with random weights and the byte-level tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ...common.offline_tokenizer import byte_level_tokenizer

    tok = byte_level_tokenizer(padding_side="right", model_max_length=max_positions)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def run_demo(out_dir: str | os.PathLike, *, train_config: TrainConfig = DEMO_TRAIN,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run QA generation, clustering, packing and LoRA training into ``out_dir`` (``data/``,
    ``trained/``, and the tiny ``encoder/`` and ``model/`` directories, so that each
    ``lmops domain-rc`` verb can be tried on them); returns the counts and the loss before/after."""
    out = Path(out_dir)
    data = out / "data"
    encoder, enc_tok = tiny_encoder()
    model, tok = tiny_causal_lm()
    for name, (m, t) in {"encoder": (encoder, enc_tok), "model": (model, tok)}.items():
        m.save_pretrained(str(out / name))
        t.save_pretrained(str(out / name))
    # a fifth of the documents get an answer with no JSON, on every retry: counted, kept without QA
    teacher = scripted_teacher(malformed_rate=0.2)
    qa = qa_stage(example_path("corpus.jsonl"), "biomedicine", teacher, data, config=QAConfig(batch_size=4),
                  progress=False)
    log(f"qa: {qa.documents} documents, {qa.ok} answered ({qa.pairs} QA pairs), {qa.failed} without a parsable "
        f"answer after {qa.retries} retries (kept without QA)")
    clusters, _ = cluster_stage(data, encoder, enc_tok, tok, config=DEMO_CLUSTER)
    log(f"cluster: {clusters.clusters} clusters of {clusters.documents} documents (mean {clusters.mean_documents:.1f}), "
        f"stops {clusters.stops}, {len(clusters.overlong)} longer than l_max={DEMO_CLUSTER.l_max}")
    pack = pack_stage(data, tok, config=DEMO_PACK, general=example_path("general.jsonl"))
    mix, p = pack["mix"], pack["pack"]
    log(f"pack: {mix['domain_examples']} domain examples ({mix['domain_tokens']} tokens) + {mix['general_examples']} "
        f"general ({mix['general_tokens']} tokens, ratio {mix['achieved_ratio']:.2f} of {mix['asked_ratio']}) -> "
        f"{p['sequences']} contexts of {DEMO_PACK.context_length} tokens, fill {p['fill']:.1%}"
        + (" (the example's general file is small: all of it used once)" if mix["achieved_ratio"] < mix["asked_ratio"]
           else ""))
    result, extra = train_stage(data, model, tok, out / "trained", config=train_config, evaluate=True, log=None)
    log(f"train: {result.steps} steps of LoRA r={train_config.rank} on all linear layers "
        f"({result.trainable_params:,} trainable parameters); loss on the packed data "
        f"{extra['loss_before']:.3f} -> {extra['loss_after']:.3f}")
    return {"qa": qa.to_dict(), "cluster": clusters.to_dict(), "pack": pack, "train": result.summary(), **extra,
            "out": str(out)}
