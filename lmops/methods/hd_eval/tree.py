"""The criteria tree: the task at the root, the given criteria below it, sub-criteria from decomposition
below those. Serializable to JSON (``to_dict``/``from_dict``, ``to_json``/``from_json``).

A criterion is addressed by its *path*, the names from the top level down joined with ``/`` (e.g.
``"coherence/logic"``), so names may not contain ``/``. A criterion is *active* when neither it nor an
ancestor is pruned; an *effective leaf* is an active criterion with no active child (a criterion whose
children were all pruned is scored itself again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterator

__all__ = ["CriteriaTree", "CriterionNode", "parse_criterion"]

SEP = "/"


def parse_criterion(text: str) -> tuple[str, str]:
    """``"name: description"`` or ``"name"`` -> ``(name, description)`` (the description defaults to the
    name). Raises ``ValueError`` for an empty name or one holding ``/``."""
    if not isinstance(text, str):
        raise TypeError(f"criterion: expected a string, got {type(text).__name__}")
    name, _, description = text.partition(":")
    name, description = name.strip(), description.strip()
    if not name:
        raise ValueError(f"criterion: expected 'name' or 'name: description', got {text!r}")
    if SEP in name:
        raise ValueError(f"criterion: a name may not contain {SEP!r} (it separates levels), got {name!r}")
    return name, description or name


@dataclass
class CriterionNode:
    """One criterion.

    Attributes:
        name: short name (unique among its siblings).
        description: what the LLM is asked to judge.
        children: sub-criteria from decomposition.
        pruned: removed by attribution pruning (``prune_reason`` says why).
        weight: the linear aggregator's coefficient on this criterion in the final fit (None when pruned,
            not a direct input of an aggregator, or the aggregator is not linear).
        attribution: share of its aggregator's total attribution in the final fit (None when not an input).
        fill: the value a missing score of this criterion is replaced with (mean over the training split).
        note: why a decomposition was not made, when one was tried and failed.
    """

    name: str
    description: str
    children: list["CriterionNode"] = field(default_factory=list)
    pruned: bool = False
    prune_reason: str | None = None
    weight: float | None = None
    attribution: float | None = None
    fill: float | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description,
            "children": [c.to_dict() for c in self.children],
            "pruned": self.pruned, "prune_reason": self.prune_reason, "weight": self.weight,
            "attribution": self.attribution, "fill": self.fill, "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CriterionNode":
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError(f"criterion node: expected a dict with a 'name' string, got {data!r:.100}")
        if SEP in data["name"] or not data["name"]:
            raise ValueError(f"criterion node: invalid name {data['name']!r}")

        def opt_float(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(
            name=data["name"],
            description=str(data.get("description") or data["name"]),
            children=[cls.from_dict(c) for c in data.get("children") or []],
            pruned=bool(data.get("pruned", False)),
            prune_reason=data.get("prune_reason"),
            weight=opt_float("weight"),
            attribution=opt_float("attribution"),
            fill=opt_float("fill"),
            note=data.get("note"),
        )


class CriteriaTree:
    """The task and its criteria (see the module docstring)."""

    def __init__(self, task: str, criteria: list[CriterionNode]) -> None:
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"task: expected a non-empty description of the evaluation task, got {task!r}")
        self.task = task
        self.criteria = list(criteria)
        self._check_unique(self.criteria, "criteria")

    @staticmethod
    def _check_unique(nodes: list[CriterionNode], where: str) -> None:
        seen: set[str] = set()
        for node in nodes:
            if node.name in seen:
                raise ValueError(f"{where}: duplicate criterion name {node.name!r}")
            seen.add(node.name)

    @classmethod
    def from_criteria(cls, task: str, criteria: list[str]) -> "CriteriaTree":
        """A one-level tree from ``["name" or "name: description", ...]``."""
        if not isinstance(criteria, (list, tuple)) or not criteria:
            raise ValueError(f"criteria: expected a non-empty list of strings, got {criteria!r}")
        return cls(task, [CriterionNode(*parse_criterion(c)) for c in criteria])

    # ----------------------------------------------------------------------------------------------
    def walk(self) -> Iterator[tuple[str, CriterionNode, int]]:
        """Every node, parents first: ``(path, node, depth)`` with depth 1 for the top level."""
        stack = [(n.name, n, 1) for n in reversed(self.criteria)]
        while stack:
            path, node, depth = stack.pop()
            yield path, node, depth
            stack.extend((path + SEP + c.name, c, depth + 1) for c in reversed(node.children))

    def index(self) -> dict[str, CriterionNode]:
        return {path: node for path, node, _ in self.walk()}

    def node(self, path: str) -> CriterionNode:
        found = self.index().get(path)
        if found is None:
            raise KeyError(f"path: no criterion {path!r} in the tree")
        return found

    def active(self) -> list[tuple[str, CriterionNode, int]]:
        """Active nodes (not pruned, no pruned ancestor), parents first."""
        out = []
        pruned_prefixes: list[str] = []
        for path, node, depth in self.walk():
            if any(path.startswith(p + SEP) for p in pruned_prefixes):
                continue
            if node.pruned:
                pruned_prefixes.append(path)
                continue
            out.append((path, node, depth))
        return out

    def active_children(self, path: str) -> list[str]:
        node = self.node(path)
        return [path + SEP + c.name for c in node.children if not c.pruned]

    def top_level(self) -> list[str]:
        return [n.name for n in self.criteria if not n.pruned]

    def effective_leaves(self) -> list[str]:
        """Active criteria with no active child, in tree order."""
        return [p for p, n, _ in self.active() if not any(not c.pruned for c in n.children)]

    def add_children(self, path: str, children: list[tuple[str, str]]) -> list[str]:
        """Attach sub-criteria ``(name, description)`` to ``path``; returns their paths."""
        node = self.node(path)
        new = [CriterionNode(name, description) for name, description in children]
        self._check_unique(node.children + new, f"children of {path!r}")
        node.children.extend(new)
        return [path + SEP + c.name for c in new]

    @staticmethod
    def display(path: str) -> str:
        """A path as the LLM reads it: ``"coherence > logic"``."""
        return " > ".join(path.split(SEP))

    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"task": self.task, "criteria": [c.to_dict() for c in self.criteria]}

    @classmethod
    def from_dict(cls, data: dict) -> "CriteriaTree":
        if not isinstance(data, dict) or "task" not in data or not isinstance(data.get("criteria"), list):
            raise ValueError("tree: expected a dict with 'task' and a 'criteria' list")
        return cls(data["task"], [CriterionNode.from_dict(c) for c in data["criteria"]])

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "CriteriaTree":
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CriteriaTree) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"CriteriaTree(task={self.task!r}, criteria={[p for p, _, _ in self.walk()]})"
