"""Decomposition: parsing the LLM's list of sub-criteria, malformed answers, retries."""

from __future__ import annotations

import json

import pytest

from lmops.llm import FunctionLLM
from lmops.methods.hd_eval import decompose, decomposition_request, parse_subcriteria


def test_json_list_of_objects():
    text = 'Sure!\n```json\n[{"name": "Logic", "description": "claims follow"}, {"name": "Flow", "description": "smooth"}]\n```'
    assert parse_subcriteria(text) == [("Logic", "claims follow"), ("Flow", "smooth")]


def test_json_list_of_strings_with_descriptions():
    text = '["logic: claims follow", "flow - sentences connect", "order"]'
    assert parse_subcriteria(text) == [("logic", "claims follow"), ("flow", "sentences connect"), ("order", "order")]


def test_numbered_and_bulleted_lines():
    text = "Here they are:\n1. **Logic**: claims follow\n2) Flow - sentences connect\n\n- Order: sensible order\nThanks"
    assert parse_subcriteria(text) == [("Logic", "claims follow"), ("Flow", "sentences connect"),
                                       ("Order", "sensible order")]


def test_names_are_cleaned_deduplicated_and_cut():
    items = [{"name": "a/b", "description": "x"}, {"name": "A-B"}, {"name": "c"}, {"name": "d"}, {"name": "e"},
             {"name": "f"}, {"name": "g"}]
    got = parse_subcriteria(json.dumps(items), 2, 5)
    assert [n for n, _ in got] == ["a-b", "c", "d", "e", "f"]  # "/" would split a path; dup dropped; cut at 5
    assert got[1] == ("c", "c")  # no description: the name


@pytest.mark.parametrize("text", [
    "",
    "I think this criterion cannot be split.",
    "[]",
    '["only one"]',
    '["same", "Same"]',
    "[1, 2, 3]",
    '[{"description": "no name"}, {"description": "none"}]',
    '[{"name": "***"}, {"name": "ok"}]',
    "1. logic",
])
def test_malformed_answers_raise_value_or_type_error(text):
    with pytest.raises((ValueError, TypeError)):
        parse_subcriteria(text)


def test_decompose_retries_a_malformed_answer_and_gives_up_on_another():
    calls = {"coherence": 0, "fluency": 0}

    def fn(prompt, **kw):
        which = "coherence" if "Criterion to decompose: coherence" in prompt else "fluency"
        calls[which] += 1
        if which == "fluency":
            return "No."
        if kw["sample"] == 0:  # the first sample of every attempt is malformed, the retry's second is good
            return "Let me think about it."
        return "1. logic: claims follow\n2. flow: sentences connect\n3. coherence: the same as the parent"

    got = decompose(FunctionLLM(fn), "Rate it", [("coherence", "organized"), ("fluency", "fluent")], retries=2)
    assert got.children[0] == [("logic", "claims follow"), ("flow", "sentences connect")]  # parent name dropped
    assert got.errors[0] is None
    assert got.children[1] is None and "ValueError" in got.errors[1]
    assert calls == {"coherence": 1 + 2, "fluency": 1 + 2 + 3}
    assert got.retries == 1 + 2  # coherence once, fluency twice


def test_decompose_sends_chat_or_plain_prompts():
    seen = []
    llm = FunctionLLM(lambda p, **_: (seen.append(p), '["a", "b"]')[1])
    decompose(llm, "Rate it", [("coherence > logic", "claims follow")], chat=True)
    decompose(llm, "Rate it", [("coherence > logic", "claims follow")], chat=False)
    user = decomposition_request("Rate it", "coherence > logic", "claims follow")
    assert seen[0].startswith("system: ") and user in seen[0] and seen[0].endswith("assistant:")
    assert user in seen[1] and not seen[1].startswith("system: ")
