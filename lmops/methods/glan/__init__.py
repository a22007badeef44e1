"""GLAN: instruction data generated (almost) from scratch from a taxonomy of human knowledge.

Paper: Li et al., "Synthetic Data (Almost) from Scratch: Generalized Instruction Tuning for Language
Models", arXiv 2402.13064 (2024). No official code was released (``microsoft/unilm/glan`` holds only a
README); this follows the paper's text.

Pipeline (:func:`run_glan`, ``lmops glan run``), every model call through :mod:`lmops.llm`:

1. **taxonomy** (:mod:`.taxonomy`): fields -> sub-fields -> disciplines as a JSON tree people edit
   (``keep: false`` is the paper's vote to remove a node); :func:`generate_taxonomy` drafts one.
2. **subjects**: per discipline, 10 sampled free-text lists (T=1.0, top-p 0.95), then a separate turn
   converting each to JSONL ``{subject_name, level, subtopics}``.
3. **syllabus**: one per subject (T=1.0, top-p 0.95), then an extraction turn into class sessions, each
   with a description and key concepts.
4. **questions** (:mod:`.sampling`): strategy (a) one session and 1-5 of its concepts, (b) two sessions
   and 2-5 concepts spanning both; a homework question from the full syllabus, "assume students have
   learned up to these sessions".
5. **answers** from a separate model (T=0.7, top-p 0.95).
6. **decontamination** (:mod:`.decontam`) against benchmark texts the user gives.

Then :mod:`.sft` fine-tunes a causal LM with the loss on the response tokens only (``lmops glan sft``).

Faithful: the stage structure and prompt flow (no format instruction in the first subject prompt;
separate conversion/extraction turns; questions and answers from separate calls and models), the
sampling hyper-parameters, the two concept-sampling strategies and their combination spaces, the
response-only loss, the SFT schedule (cosine with warm-up to 0; :meth:`SFTConfig.paper` gives the
paper's numbers). Choices (the paper is silent or the scale differs): the prompt wording, the taxonomy
file format, the (a)/(b) mixing ratio (0.5) and uniform draws over the combination space, the number of
questions per syllabus, greedy conversion turns, 13-gram word-overlap decontamination, the plain prompt
template when a tokenizer has no chat template, and the short-run SFT defaults.

Runs resume exactly after a kill (deterministic record ids and draws, one JSONL line per finished unit),
and malformed model answers are retried, then counted and skipped. ``--llm scripted``
(:func:`scripted_llm`) is an offline recipe that answers every stage deterministically.
"""

from .config import GlanConfig, SFTConfig
from .data import (
    DisciplineSubjects,
    InstructionRecord,
    Session,
    Subject,
    Syllabus,
    record_id,
    subject_id,
)
from .decontam import NgramDecontaminator, load_benchmark_texts
from .pipeline import GlanSummary, run_glan
from .sampling import (
    MixedSampler,
    QuestionSample,
    QuestionSampler,
    basic_combinations,
    count_basic,
    count_harder,
    harder_combinations,
    sample_basic,
    sample_harder,
)
from .scripted import scripted_llm
from .stages import answer_stage, question_stage, subjects_stage, syllabus_stage
from .taxonomy import (
    Discipline,
    Taxonomy,
    TaxonomyNode,
    example_taxonomy_path,
    generate_taxonomy,
    load_taxonomy,
    parse_taxonomy,
    save_taxonomy,
)

__all__ = [
    "Discipline",
    "DisciplineSubjects",
    "GlanConfig",
    "GlanSummary",
    "InstructionRecord",
    "MixedSampler",
    "NgramDecontaminator",
    "QuestionSample",
    "QuestionSampler",
    "SFTConfig",
    "Session",
    "Subject",
    "Syllabus",
    "Taxonomy",
    "TaxonomyNode",
    "answer_stage",
    "basic_combinations",
    "count_basic",
    "count_harder",
    "example_taxonomy_path",
    "generate_taxonomy",
    "harder_combinations",
    "load_benchmark_texts",
    "load_taxonomy",
    "parse_taxonomy",
    "question_stage",
    "record_id",
    "run_glan",
    "sample_basic",
    "sample_harder",
    "save_taxonomy",
    "scripted_llm",
    "subject_id",
    "subjects_stage",
    "syllabus_stage",
]
