"""QA generation: the paper's prompt, parsing that survives malformed answers, and the resumable,
counted run over a corpus with the scripted teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmops.common.jsonl import read_jsonl
from lmops.llm import FunctionLLM
from lmops.methods.domain_rc import (
    QA_PROMPT,
    Document,
    QAConfig,
    build_prompt,
    generate_qa,
    parse_qa,
    read_corpus,
    read_qa,
    scripted_teacher,
)

DOCS = [Document(f"d{i}", f"Topic {i} has a first fact. Topic {i} has a second fact! And a third? Yes.")
        for i in range(10)]


def test_prompt_is_the_papers_verbatim():
    assert QA_PROMPT == (
        "{DOCUMENT} Ask a few questions to help understand the above passage about {DOMAIN} and give the "
        "corresponding answers in JSON list (each JSON contain two keys: question and answer)"
    )
    p = build_prompt("A {braced} text.", "finance")
    assert p.startswith("A {braced} text. Ask a few questions") and "passage about finance and give" in p
    assert build_prompt("abcdef", "x", max_document_chars=3).startswith("abc Ask")
    with pytest.raises(ValueError, match="domain"):
        build_prompt("text", "  ")


@pytest.mark.parametrize("text", [
    '[{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]',
    'Sure, here they are:\n```json\n[{"question": "Q1?", "answer": "A1"},\n {"question": "Q2?", "answer": "A2"}]\n```',
    'Here: [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}] Hope it helps.',
    '{"qa": [{"question": "Q1?", "answer": "A1"}, {"question": " Q2? ", "answer": "A2 "}]}',
])
def test_parse_qa_finds_the_list_wherever_it_is(text):
    pairs, dropped = parse_qa(text)
    assert [(p.question, p.answer) for p in pairs] == [("Q1?", "A1"), ("Q2?", "A2")]
    assert dropped == 0


def test_parse_qa_drops_bad_items_and_fails_without_a_good_one():
    pairs, dropped = parse_qa('[{"question": "Q?", "answer": "A"}, {"question": "no answer"}, 3, '
                              '{"question": "", "answer": "x"}, {"question": 1, "answer": "y"}]')
    assert [(p.question, p.answer) for p in pairs] == [("Q?", "A")] and dropped == 4
    for bad in ["no JSON at all", '{"question": "Q", "answer": "A"}', '[{"q": 1}, "x"]', "[]", '[{"question": "Q?",']:
        with pytest.raises(ValueError):
            parse_qa(bad)


def test_generate_qa_counts_and_skips_answers_that_never_parse(tmp_path: Path):
    teacher = scripted_teacher(malformed_rate=0.35, malformed="always")
    out = tmp_path / "qa.jsonl"
    report = generate_qa(teacher, DOCS, "biology", out, config=QAConfig(batch_size=3, retries=2), progress=False)
    records, malformed = read_qa(out)
    assert not malformed and len(records) == 10
    failed = [r for r in records.values() if r.status == "failed"]
    assert 1 <= len(failed) <= 8, "the planted rate should fail some documents, not all"
    assert report.failed == len(failed) and report.ok == 10 - len(failed) and report.asked == 10
    assert report.retries == 2 * len(failed)  # each failure was tried retries more times
    assert all(r.qa == [] and "ValueError" in r.error for r in failed)
    ok = [r for r in records.values() if r.status == "ok"]
    assert all(len(r.qa) == 3 and r.qa[0].answer == "Topic %s has a first fact." % r.id[1:] for r in ok)
    assert report.pairs == 3 * len(ok)


def test_generate_qa_recovers_on_retry_and_counts_dropped_items(tmp_path: Path):
    teacher = scripted_teacher(malformed_rate=1.0, malformed="first", bad_items=True)
    report = generate_qa(teacher, DOCS[:4], "biology", tmp_path / "qa.jsonl", progress=False)
    assert report.ok == 4 and report.failed == 0 and report.retries == 4
    assert report.dropped_items == 4 * 3  # three bad items planted per answer


def test_generate_qa_resumes_and_retries_failed_on_request(tmp_path: Path):
    out = tmp_path / "qa.jsonl"
    calls: list[str] = []
    broken = {"d1", "d2"}

    def answer(prompt: str, **_: object) -> str:
        doc = prompt.split(" Ask a few", 1)[0].removeprefix("user: ")
        calls.append(doc)
        if broken and any(doc.startswith(f"Topic {i[1:]} ") for i in broken):
            return "no json"
        return json.dumps([{"question": "What?", "answer": doc[:10]}])

    llm = FunctionLLM(answer)
    first = generate_qa(llm, DOCS[:4], "x", out, config=QAConfig(retries=0), progress=False)
    assert (first.ok, first.failed) == (2, 2)
    # a killed run leaves a partial last line: the appender drops it, the record is asked again
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"id": "d9", "text": "cut')
    calls.clear()
    again = generate_qa(llm, DOCS[:6], "x", out, config=QAConfig(retries=0), progress=False)
    assert again.skipped_existing == 4 and again.asked == 2 and len(calls) == 2
    broken.clear()
    retried = generate_qa(llm, DOCS[:6], "x", out, config=QAConfig(retries=0), retry_failed=True, progress=False)
    assert retried.asked == 2 and retried.ok == 2
    records, malformed = read_qa(out)
    assert not malformed and len(records) == 6 and all(r.status == "ok" for r in records.values())
    assert len(read_jsonl(out)) == 8  # two failed records were superseded, not rewritten


def test_generate_qa_on_an_empty_corpus_and_bad_arguments(tmp_path: Path):
    report = generate_qa(scripted_teacher(), [], "x", tmp_path / "qa.jsonl", progress=False)
    assert report.documents == 0 and report.asked == 0
    with pytest.raises(ValueError, match="unique"):
        generate_qa(scripted_teacher(), [DOCS[0], DOCS[0]], "x", tmp_path / "qa.jsonl", progress=False)
    with pytest.raises(ValueError, match="domain"):
        generate_qa(scripted_teacher(), DOCS, "", tmp_path / "qa.jsonl", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        QAConfig(batch_size=0)


def test_completion_mode_sends_plain_prompts(tmp_path: Path):
    seen: list[str] = []

    def answer(prompt: str, **_: object) -> str:
        seen.append(prompt)
        return '[{"question": "Q?", "answer": "A"}]'

    generate_qa(FunctionLLM(answer), DOCS[:2], "law", tmp_path / "qa.jsonl", config=QAConfig(chat=False),
                progress=False)
    assert seen == [build_prompt(d.text, "law") for d in DOCS[:2]]


def test_read_corpus_reports_what_it_skips(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "a", "text": "first"}),
        "not json",
        json.dumps({"id": "a", "text": "duplicate"}),
        json.dumps({"text": "no id"}),
        json.dumps({"id": 7, "text": "   "}),
        json.dumps({"id": "b", "body": "no text"}),
        json.dumps({"id": ["x"], "text": "bad id"}),
    ]) + "\n")
    docs, report = read_corpus(path)
    assert [(d.id, d.text) for d in docs] == [("a", "first"), ("doc-3", "no id")]
    assert report.duplicates == ["a"] and report.empty == ["7"] and len(report.malformed) == 3
