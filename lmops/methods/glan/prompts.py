"""The prompts of each GLAN stage, after the paper's descriptions (its exact wording is not published in
full; these templates are a choice). Every record's provenance holds :func:`prompt_hashes`, so data made
with different prompts can be told apart.

As the paper reports, the first subject prompt asks for free text (level, introduction, subtopics) and
has no format instruction; a separate second turn converts the answer to JSONL. The syllabus follows the
same pattern (free text, then an extraction turn into class sessions and key concepts). Questions and
answers are asked separately, the answers of another model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "TEMPLATES",
    "answer",
    "convert_subjects",
    "extract_sessions",
    "prompt_hashes",
    "question",
    "subjects",
    "syllabus",
    "taxonomy_disciplines",
    "taxonomy_fields",
    "taxonomy_subfields",
]

TAXONOMY_FIELDS = (
    "List all the fields of human knowledge and capabilities, from the natural sciences and the humanities "
    "to services and vocational skills. Answer with a JSON list of field names only."
)
TAXONOMY_SUBFIELDS = (
    "List the sub-fields of the field \"{field}\" of human knowledge and capabilities. "
    "Answer with a JSON list of sub-field names only."
)
TAXONOMY_DISCIPLINES = (
    "List the disciplines of the sub-field \"{subfield}\" (in the field \"{field}\") that a student could "
    "study. Answer with a JSON list of discipline names only."
)

SUBJECTS = (
    "You are an education expert in {discipline}. List all the subjects that a student should learn in "
    "{discipline}, from the introductory to the advanced level. For each subject, give its level (e.g. "
    "an undergraduate or graduate year), a short introduction, and the subtopics it covers."
)
CONVERT_SUBJECTS = (
    "Convert the subjects you listed above to JSONL: one JSON object per line, with the keys "
    "\"subject_name\" (a string), \"level\" (a string) and \"subtopics\" (a list of strings). Output only "
    "the JSONL lines."
)

SYLLABUS = (
    "You are an expert teacher of {discipline}. Design a syllabus for the course \"{subject}\" for "
    "students at the level \"{level}\". The course covers these subtopics: {subtopics}. Divide the course "
    "into class sessions. For each class session, give a detailed description and list the key concepts "
    "that students should learn in it."
)
EXTRACT_SESSIONS = (
    "Extract the class sessions of the syllabus above as JSON: {{\"sessions\": [{{\"title\": string, "
    "\"description\": string, \"key_concepts\": [string, ...]}}, ...]}}, in the order of the course. "
    "Output only the JSON."
)

QUESTION = (
    "You are a teacher of the course \"{subject}\" ({discipline}, level: {level}). Here is the syllabus of "
    "the course:\n\n{syllabus}\n\n"
    "Assume the students have learned up to the class session(s): {sessions}.\n"
    "Key concepts to use: {concepts}.\n"
    "Write one homework question for the students that tests these key concepts{across}. The question "
    "should be self-contained and answerable from what the students have learned. Write only the question."
)
ACROSS = ", combining key concepts across the sessions"

ANSWER = "{question}"

TEMPLATES: dict[str, str] = {
    "taxonomy_fields": TAXONOMY_FIELDS,
    "taxonomy_subfields": TAXONOMY_SUBFIELDS,
    "taxonomy_disciplines": TAXONOMY_DISCIPLINES,
    "subjects": SUBJECTS,
    "convert_subjects": CONVERT_SUBJECTS,
    "syllabus": SYLLABUS,
    "extract_sessions": EXTRACT_SESSIONS,
    "question": QUESTION + ACROSS,
    "answer": ANSWER,
}


def prompt_hashes() -> dict[str, str]:
    """``{stage: first 12 hex digits of the SHA-256 of its template}`` for the data stages."""
    stages = ("subjects", "convert_subjects", "syllabus", "extract_sessions", "question", "answer")
    return {s: hashlib.sha256(TEMPLATES[s].encode("utf-8")).hexdigest()[:12] for s in stages}


def taxonomy_fields() -> str:
    return TAXONOMY_FIELDS


def taxonomy_subfields(field: str) -> str:
    return TAXONOMY_SUBFIELDS.format(field=field)


def taxonomy_disciplines(field: str, subfield: str) -> str:
    return TAXONOMY_DISCIPLINES.format(field=field, subfield=subfield)


def subjects(discipline: str) -> str:
    return SUBJECTS.format(discipline=discipline)


def convert_subjects() -> str:
    return CONVERT_SUBJECTS


def syllabus(discipline: str, subject: str, level: str, subtopics: Sequence[str]) -> str:
    return SYLLABUS.format(discipline=discipline, subject=subject, level=level,
                           subtopics="; ".join(subtopics) if subtopics else "(not listed)")


def extract_sessions() -> str:
    return EXTRACT_SESSIONS.format()


def question(discipline: str, subject: str, level: str, syllabus_text: str, sessions: Sequence[str],
             concepts: Sequence[str]) -> str:
    return QUESTION.format(
        discipline=discipline, subject=subject, level=level, syllabus=syllabus_text.strip(),
        sessions="; ".join(sessions), concepts="; ".join(concepts), across=ACROSS if len(sessions) > 1 else "",
    )


def answer(question_text: str) -> str:
    return ANSWER.format(question=question_text)
