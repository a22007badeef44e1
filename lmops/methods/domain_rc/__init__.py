"""ETRC: domain adaptation through extended-text reading comprehension (Jiang et al., "Improving Domain
Adaptation through Extended-Text Reading Comprehension", arXiv 2401.07284).

A general LLM is adapted to a domain (biomedicine, finance) by continued training on its corpus turned
into reading-comprehension texts: a teacher LLM writes QA pairs about each document; documents are
grouped by a length-bounded greedy clustering on embeddings, so each training text is several related
documents followed by all their QA pairs (extended text); these are mixed with general instructions,
packed into full contexts by 0/1 knapsack, and trained on with LoRA on every linear layer, the loss on
every token.

Pipeline (each stage also an ``lmops domain-rc`` verb on a data directory, see :mod:`.stages`):

1. :func:`generate_qa` (:mod:`.qa`): the paper's prompt (:data:`QA_PROMPT`, verbatim) through
   :func:`lmops.llm.ask`; malformed answers retried, then counted and skipped; resumable JSONL.
2. :func:`embed_texts` + :func:`cluster_documents` / :func:`length_based_clustering` (Algorithm 1).
3. :func:`format_clusters`, :func:`mix_general`, :func:`pack_examples` / :func:`knapsack_fill`.
4. :func:`train` (peft LoRA ``all-linear``, lmops ResLoRA, or full), one process or DDP.

Faithful to the paper: the QA prompt; Algorithm 1's seeded-random seed document, nearest-document
growth under ``L_max``/``D_max``, the 0.7 similarity stop; cluster text = documents then their QA pairs
shuffled; mixing with general instructions; 0/1-knapsack packing to the context length; LoRA on all
linear layers (default rank 256); LM loss on every token (AdaptLLM issues #149, #258).

Choices (the paper does not say, or says it loosely): the embedding model (any ``transformers``
encoder, mean pooling, cosine); ``L_max``/``D_max`` values; "nearest" measured from the seed document
(``anchor="centroid"`` is the variant); a cluster never exceeds ``L_max`` and the first non-fitting
neighbour ends it; documents longer than ``L_max`` become singleton clusters (reported); documents whose
QA failed are kept without QA; the cluster text template (:class:`ClusterTemplate`); the general-data
ratio 1:1 by tokens (AdaptLLM's maintainer); general examples not repeated; over-long examples split
into context-sized pieces; EOS between packed examples, no cross-example attention mask; LoRA alpha
``2 * rank``, AdamW with linear warmup/decay. Not done: the teacher-to-LLaMA-7B distillation step
(point ``--llm`` at a distilled model instead), int8 quantization of the base model, and the
benchmark evaluation.
"""

from .clustering import ClusterReport, cluster_documents, document_lengths, length_based_clustering, token_length_fn
from .config import ClusterConfig, PackConfig, QAConfig, TrainConfig
from .data import Cluster, Document, DocumentQA, Example, PackedSequence, QAPair, read_corpus, read_general, read_qa
from .embed import embed_texts, load_encoder, mean_pool
from .formatting import ClusterTemplate, MixReport, format_cluster, format_clusters, mix_general
from .neighbors import ExactIndex, FaissIndex, build_index
from .packing import PackReport, knapsack_fill, pack_examples, pack_lengths
from .qa import QA_PROMPT, QAReport, build_prompt, generate_qa, parse_qa
from .scripted import scripted_teacher
from .training import TrainResult, apply_adapter, evaluate_loss, init_distributed, save_trained, train

__all__ = [
    "QA_PROMPT",
    "Cluster",
    "ClusterConfig",
    "ClusterReport",
    "ClusterTemplate",
    "Document",
    "DocumentQA",
    "ExactIndex",
    "Example",
    "FaissIndex",
    "MixReport",
    "PackConfig",
    "PackReport",
    "PackedSequence",
    "QAConfig",
    "QAPair",
    "QAReport",
    "TrainConfig",
    "TrainResult",
    "apply_adapter",
    "build_index",
    "build_prompt",
    "cluster_documents",
    "document_lengths",
    "embed_texts",
    "evaluate_loss",
    "format_cluster",
    "format_clusters",
    "generate_qa",
    "init_distributed",
    "knapsack_fill",
    "length_based_clustering",
    "load_encoder",
    "mean_pool",
    "mix_general",
    "pack_examples",
    "pack_lengths",
    "parse_qa",
    "read_corpus",
    "read_general",
    "read_qa",
    "save_trained",
    "scripted_teacher",
    "token_length_fn",
    "train",
]
