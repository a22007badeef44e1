"""The four stages on a data directory (see :mod:`.data` for its files), as the ``lmops domain-rc``
verbs and the demo run them: QA generation, clustering, formatting + mixing + packing, training.
Each stage writes its outputs atomically (QA: appended record by record) and a ``*_report.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from ...common.files import atomic_write
from ...llm import LLM
from .clustering import ClusterReport, cluster_documents, token_length_fn
from .config import ClusterConfig, PackConfig, QAConfig, TrainConfig
from .data import (
    CLUSTERS_FILE,
    EXAMPLES_FILE,
    PACKED_FILE,
    QA_FILE,
    DocumentQA,
    read_clusters,
    read_corpus,
    read_general,
    read_packed,
    read_qa,
    write_records,
)
from .embed import embed_texts
from .formatting import ClusterTemplate, format_clusters, mix_general
from .packing import pack_examples
from .qa import QAReport, generate_qa
from .training import TrainResult, save_trained, train

__all__ = ["PACK_META", "cluster_stage", "pack_stage", "qa_stage", "train_stage", "write_report"]

PACK_META = "pack_meta.json"


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """``report`` as indented JSON, atomically."""
    text = json.dumps(report, indent=2, ensure_ascii=False, default=str)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))


def _need(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `lmops domain-rc {stage}` on this data directory first)")
    return path


def qa_stage(corpus: str | os.PathLike, domain: str, llm: LLM, data_dir: str | os.PathLike, *,
             config: QAConfig | None = None, retry_failed: bool = False, progress: bool = True) -> QAReport:
    """Read the corpus JSONL, ask the teacher about every document not yet in ``qa.jsonl``, write
    ``qa_report.json`` (with the corpus lines skipped). An empty corpus gives an empty ``qa.jsonl``."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    docs, corpus_report = read_corpus(corpus)
    (data / QA_FILE).touch()  # later stages then see an empty corpus, not a missing stage
    report = generate_qa(llm, docs, domain, data / QA_FILE, config=config, retry_failed=retry_failed,
                         progress=progress)
    write_report(data / "qa_report.json", {**report.to_dict(), "corpus": corpus_report.to_dict(), "domain": domain})
    return report


def cluster_stage(data_dir: str | os.PathLike, encoder: Any, encoder_tokenizer: Any, length_tokenizer: Any, *,
                  config: ClusterConfig | None = None, keep_failed: bool = True,
                  template: ClusterTemplate | None = None) -> tuple[ClusterReport, dict[str, Any]]:
    """Embed the documents of ``qa.jsonl`` with ``encoder``, measure them in ``length_tokenizer``'s
    tokens (the training tokenizer), cluster them, write ``clusters.jsonl`` and
    ``cluster_report.json``. Documents whose QA failed keep their text (``keep_failed``) or are left out.
    Returns the report and the extra counts written with it."""
    cfg = config or ClusterConfig()
    data = Path(data_dir)
    records, malformed = read_qa(_need(data / QA_FILE, "qa"))
    docs: list[DocumentQA] = [d for d in records.values() if keep_failed or d.status == "ok"]
    extra = {"qa_malformed_lines": len(malformed), "failed_qa": sum(d.status == "failed" for d in records.values()),
             "failed_qa_kept": keep_failed, "config": cfg.to_dict()}
    embeddings = embed_texts([d.text for d in docs], encoder, encoder_tokenizer,
                             batch_size=cfg.encoder_batch_size, max_length=cfg.encoder_max_length)
    clusters, report = cluster_documents(docs, embeddings, token_length_fn(length_tokenizer), config=cfg,
                                         template=template)
    write_records(data / CLUSTERS_FILE, clusters)
    write_report(data / "cluster_report.json", {**report.to_dict(), **extra})
    return report, extra


def pack_stage(data_dir: str | os.PathLike, tokenizer: Any, *, config: PackConfig | None = None,
               general: str | os.PathLike | None = None, template: ClusterTemplate | None = None) -> dict[str, Any]:
    """Format every cluster, mix in the general instructions of ``general`` (JSONL) at
    ``config.ratio``, tokenize with ``tokenizer`` (no special tokens; EOS after each example), pack
    into ``config.context_length`` contexts; write ``examples.jsonl``, ``packed.jsonl``,
    ``pack_meta.json`` and ``pack_report.json``. Returns the report."""
    cfg = config or PackConfig()
    data = Path(data_dir)
    eos = getattr(tokenizer, "eos_token_id", None)
    if not isinstance(eos, int):
        raise ValueError("tokenizer: has no EOS token, which separates packed examples")
    records, _ = read_qa(_need(data / QA_FILE, "qa"))
    clusters = read_clusters(_need(data / CLUSTERS_FILE, "cluster"))
    domain = format_clusters(clusters, records, seed=cfg.seed, template=template)
    domain = [e for e in domain if e.text.strip()]
    general_examples, general_malformed = read_general(general) if general is not None else ([], [])
    lengths = token_length_fn(tokenizer)
    examples, mix = mix_general(domain, general_examples, lengths, ratio=cfg.ratio, seed=cfg.seed,
                                allow_repeat=cfg.allow_repeat)
    write_records(data / EXAMPLES_FILE, examples)
    token_ids: list[list[int]] = []
    for start in range(0, len(examples), 256):
        chunk = [e.text for e in examples[start:start + 256]]
        token_ids += tokenizer(chunk, add_special_tokens=False)["input_ids"]
    packed, pack = pack_examples(token_ids, cfg.context_length, eos_id=eos, ids=[e.id for e in examples],
                                 overlong=cfg.overlong)
    write_records(data / PACKED_FILE, packed)
    meta = {"tokenizer": getattr(tokenizer, "name_or_path", ""), "vocab_size": len(tokenizer), "eos_id": eos,
            "pad_id": tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else eos,
            "context_length": cfg.context_length}
    write_report(data / PACK_META, meta)
    report = {"clusters": len(clusters), "mix": mix.to_dict(), "general_malformed": len(general_malformed),
              "pack": pack.to_dict(), "config": cfg.to_dict()}
    write_report(data / "pack_report.json", report)
    return report


def train_stage(data_dir: str | os.PathLike, model: Any, tokenizer: Any, out_dir: str | os.PathLike, *,
                config: TrainConfig | None = None, log: Callable[[str], None] | None = print,
                evaluate: bool = False) -> tuple[TrainResult, dict[str, Any]]:
    """Train on ``packed.jsonl`` and save to ``out_dir`` (rank 0, atomically). Refuses data packed
    with a tokenizer of another vocabulary size. With ``evaluate``, the mean token loss on the packed
    data is measured before and after (one process). Returns the result and the extra log fields."""
    from .training import evaluate_loss

    data = Path(data_dir)
    packed = read_packed(_need(data / PACKED_FILE, "pack"))
    meta_file = data / PACK_META
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("vocab_size") not in (None, len(tokenizer)):
            raise ValueError(f"tokenizer: vocabulary size {len(tokenizer)}, but {data} was packed with a tokenizer "
                             f"of {meta['vocab_size']} ({meta.get('tokenizer')}); pack again with this model's tokenizer")
    if not packed:
        raise ValueError(f"{data / PACKED_FILE}: no packed sequences (empty corpus? see pack_report.json)")
    pad = tokenizer.pad_token_id if isinstance(getattr(tokenizer, "pad_token_id", None), int) else 0
    extra: dict[str, Any] = {"data": str(data), "sequences": len(packed)}
    if evaluate:
        extra["loss_before"] = evaluate_loss(model, packed, pad_id=pad)
    result = train(model, tokenizer, packed, config=config, log=log)
    if evaluate:
        extra["loss_after"] = evaluate_loss(result.model, packed, pad_id=pad)
    save_trained(result, out_dir, tokenizer=tokenizer, extra=extra)
    return result, extra
