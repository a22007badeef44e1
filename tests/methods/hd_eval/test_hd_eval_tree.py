"""The criteria tree: criteria parsing, active nodes and leaves, JSON round trip."""

from __future__ import annotations

import json

import pytest

from lmops.methods.hd_eval import CriteriaTree
from lmops.methods.hd_eval.tree import parse_criterion


def _tree():
    tree = CriteriaTree.from_criteria("Rate it", ["coherence: well organized", "fluency", "relevance"])
    tree.add_children("coherence", [("logic", "claims follow"), ("flow", "smooth")])
    tree.add_children("coherence/logic", [("premises", "p"), ("steps", "s")])
    return tree


def test_parse_criterion():
    assert parse_criterion(" coherence : well organized: really ") == ("coherence", "well organized: really")
    assert parse_criterion("fluency") == ("fluency", "fluency")
    for bad in ["", ": no name", "a/b"]:
        with pytest.raises(ValueError):
            parse_criterion(bad)
    with pytest.raises(TypeError):
        parse_criterion(3)


def test_walk_active_and_effective_leaves():
    tree = _tree()
    assert [(p, d) for p, _, d in tree.walk()] == [
        ("coherence", 1), ("coherence/logic", 2), ("coherence/logic/premises", 3), ("coherence/logic/steps", 3),
        ("coherence/flow", 2), ("fluency", 1), ("relevance", 1)]
    assert tree.effective_leaves() == ["coherence/logic/premises", "coherence/logic/steps", "coherence/flow",
                                       "fluency", "relevance"]
    tree.node("coherence/logic/premises").pruned = True
    tree.node("coherence/logic/steps").pruned = True
    tree.node("relevance").pruned = True
    # a criterion whose children are all pruned is a leaf again; pruned subtrees are inactive
    assert tree.effective_leaves() == ["coherence/logic", "coherence/flow", "fluency"]
    tree.node("coherence").pruned = True
    assert [p for p, _, _ in tree.active()] == ["fluency"]
    assert CriteriaTree.display("coherence/logic") == "coherence > logic"


def test_json_round_trip():
    tree = _tree()
    node = tree.node("coherence/flow")
    node.pruned, node.prune_reason = True, "share 0.01 < 0.05"
    tree.node("coherence/logic").weight = 1.25
    tree.node("fluency").note = "decomposition failed"
    text = tree.to_json()
    back = CriteriaTree.from_json(text)
    assert back == tree and back.to_json() == text
    assert json.loads(text)["criteria"][0]["children"][1]["prune_reason"] == "share 0.01 < 0.05"
    assert back.node("coherence/logic").weight == 1.25


def test_invalid_trees():
    with pytest.raises(ValueError, match="duplicate"):
        CriteriaTree.from_criteria("t", ["a", "a: again"])
    with pytest.raises(ValueError, match="task"):
        CriteriaTree.from_criteria("  ", ["a"])
    with pytest.raises(ValueError, match="criteria"):
        CriteriaTree.from_criteria("t", [])
    with pytest.raises(ValueError, match="duplicate"):
        _tree().add_children("coherence", [("logic", "again")])
    with pytest.raises(KeyError):
        _tree().node("nope")
    with pytest.raises(ValueError):
        CriteriaTree.from_dict({"task": "t", "criteria": [{"name": "a/b"}]})
