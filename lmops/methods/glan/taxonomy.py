"""GLAN's taxonomy of human knowledge: a JSON tree that people edit (fields -> sub-fields -> disciplines;
the leaves are the disciplines), its validation, and the optional LLM stage that drafts one.

Two file forms are read, and both build the same :class:`Taxonomy`:

- **nested** (what :func:`save_taxonomy` writes, and the easiest to edit)::

      {"name": "...", "fields": [
          {"name": "Natural Sciences", "children": [
              {"name": "Physical Sciences", "children": ["Physics", {"name": "Chemistry"}]}]}]}

  a node is ``{"name", "children"?, "description"?, "keep"?, "notes"?}`` or a bare string (a leaf);
- **flat** (parent links, as a spreadsheet export gives them)::

      {"nodes": [{"name": "Natural Sciences", "parent": null}, {"name": "Physics", "parent": "Natural Sciences"}]}

``"keep": false`` removes a node and everything under it (the paper's human vote). Names must be unique
in the whole tree, compared case-insensitively with whitespace collapsed, because a discipline's name
keys its data; a duplicate name, a duplicate JSON key, an unknown key, a parent that does not exist or a
cycle of parent links is a ``ValueError`` that names it. Adding a node to the file adds its data on the
next run of :func:`lmops.methods.glan.run_glan`; the data of the other nodes is kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...common.files import atomic_write
from ...llm import LLM, ask, extract_json
from . import prompts

__all__ = [
    "Discipline",
    "Taxonomy",
    "TaxonomyNode",
    "example_taxonomy_path",
    "generate_taxonomy",
    "load_taxonomy",
    "parse_taxonomy",
    "save_taxonomy",
]

_NODE_KEYS = {"name", "children", "description", "keep", "notes"}
_FLAT_KEYS = {"name", "parent", "description", "keep", "notes"}


@dataclass
class TaxonomyNode:
    """One node: a field, a sub-field or (a leaf) a discipline."""

    name: str
    children: list[TaxonomyNode] = field(default_factory=list)
    description: str = ""

    def to_dict(self) -> dict | str:
        if not self.children and not self.description:
            return self.name
        d: dict[str, Any] = {"name": self.name}
        if self.description:
            d["description"] = self.description
        if self.children:
            d["children"] = [c.to_dict() for c in self.children]
        return d


@dataclass(frozen=True)
class Discipline:
    """A leaf of the taxonomy. ``path`` runs from the field down to the discipline's own name."""

    name: str
    path: tuple[str, ...]
    description: str = ""

    @property
    def path_str(self) -> str:
        return " / ".join(self.path)


@dataclass
class Taxonomy:
    """A validated taxonomy (nodes voted out already removed)."""

    fields: list[TaxonomyNode]
    name: str = "taxonomy"

    def disciplines(self) -> list[Discipline]:
        """The leaves, depth first in file order."""
        out: list[Discipline] = []

        def walk(node: TaxonomyNode, path: tuple[str, ...]) -> None:
            here = path + (node.name,)
            if not node.children:
                out.append(Discipline(node.name, here, node.description))
            for child in node.children:
                walk(child, here)

        for root in self.fields:
            walk(root, ())
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "fields": [f.to_dict() for f in self.fields]}


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate JSON key {k!r} in one object (the second would silently replace the first)")
        seen[k] = v
    return seen


class _Names:
    """Checks name uniqueness across the whole tree, remembering where each name was first seen."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}

    def add(self, name: object, where: str) -> str:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: expected a non-empty string name, got {name!r}")
        name = " ".join(name.split())
        k = _key(name)
        if k in self.where:
            raise ValueError(f"duplicate name {name!r} at {where} (already at {self.where[k]}); names must be unique "
                             "because a discipline's name keys its data")
        self.where[k] = where
        return name


def _check_keys(obj: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _keep(obj: dict, where: str) -> bool:
    keep = obj.get("keep", True)
    if not isinstance(keep, bool):
        raise ValueError(f"{where}.keep: expected true or false, got {keep!r}")
    return keep


def _description(obj: dict, where: str) -> str:
    desc = obj.get("description", "")
    if not isinstance(desc, str):
        raise ValueError(f"{where}.description: expected a string, got {type(desc).__name__}")
    return desc


def _parse_nested(items: object, names: _Names, where: str) -> list[TaxonomyNode]:
    if not isinstance(items, list):
        raise ValueError(f"{where}: expected a list of nodes, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            out.append(TaxonomyNode(names.add(item, at)))
            continue
        if not isinstance(item, dict):
            raise ValueError(f"{at}: expected a node object or a name string, got {type(item).__name__}")
        _check_keys(item, _NODE_KEYS, at)
        name = names.add(item.get("name"), f"{at}.name")
        raw_children = item.get("children", [])
        children = _parse_nested(raw_children, names, f"{at}({name}).children")
        # a node whose children were all voted out goes too (it must not turn into a discipline)
        if _keep(item, at) and (children or not raw_children):
            out.append(TaxonomyNode(name, children, _description(item, at)))
    return out


def _parse_flat(items: object, names: _Names) -> list[TaxonomyNode]:
    if not isinstance(items, list):
        raise ValueError(f"nodes: expected a list of {{name, parent}} objects, got {type(items).__name__}")
    nodes: dict[str, TaxonomyNode] = {}
    parent_of: dict[str, str | None] = {}
    keep: dict[str, bool] = {}
    order: list[str] = []
    for i, item in enumerate(items):
        at = f"nodes[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{at}: expected a {{name, parent}} object, got {type(item).__name__}")
        _check_keys(item, _FLAT_KEYS, at)
        name = names.add(item.get("name"), f"{at}.name")
        parent = item.get("parent")
        if parent is not None and (not isinstance(parent, str) or not parent.strip()):
            raise ValueError(f"{at}.parent: expected a node name or null, got {parent!r}")
        k = _key(name)
        nodes[k] = TaxonomyNode(name, [], _description(item, at))
        parent_of[k] = None if parent is None else _key(parent)
        keep[k] = _keep(item, at)
        order.append(k)
    for k in order:
        p = parent_of[k]
        if p is not None and p not in nodes:
            raise ValueError(f"node {nodes[k].name!r}: parent {p!r} is not a node of the taxonomy")
    for k in order:  # every parent chain must end at a root; one that comes back to itself is a cycle
        chain, cur = [k], parent_of[k]
        while cur is not None:
            if cur in chain:
                loop = chain[chain.index(cur):] + [cur]
                raise ValueError("cycle in the taxonomy: " + " -> ".join(nodes[c].name for c in loop))
            chain.append(cur)
            cur = parent_of[cur]
    roots = []
    for k in order:
        p = parent_of[k]
        (roots if p is None else nodes[p].children).append(nodes[k])

    def prune(children: list[TaxonomyNode]) -> list[TaxonomyNode]:
        kept = []
        for c in children:
            had = bool(c.children)
            c.children = prune(c.children)
            # a node whose children were all voted out goes too (it must not turn into a discipline)
            if keep[_key(c.name)] and (c.children or not had):
                kept.append(c)
        return kept

    return prune(roots)


def parse_taxonomy(data: object) -> Taxonomy:
    """Build a :class:`Taxonomy` from the decoded JSON (nested ``fields`` or flat ``nodes`` form)."""
    if not isinstance(data, dict):
        raise ValueError(f"taxonomy: expected a JSON object with 'fields' or 'nodes', got {type(data).__name__}")
    _check_keys(data, {"name", "fields", "nodes", "description", "notes"}, "taxonomy")
    if ("fields" in data) == ("nodes" in data):
        raise ValueError("taxonomy: expected exactly one of 'fields' (nested tree) or 'nodes' (parent links)")
    title = data.get("name", "taxonomy")
    if not isinstance(title, str):
        raise ValueError(f"taxonomy.name: expected a string, got {title!r}")
    names = _Names()
    roots = _parse_nested(data["fields"], names, "fields") if "fields" in data else _parse_flat(data["nodes"], names)
    tax = Taxonomy(roots, title)
    if not tax.disciplines():
        raise ValueError("taxonomy: no discipline (leaf) is left (empty, or every node has keep: false)")
    return tax


def load_taxonomy(path: str | os.PathLike) -> Taxonomy:
    """Read and validate a taxonomy file (see the module docstring); errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        return parse_taxonomy(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def save_taxonomy(taxonomy: Taxonomy, path: str | os.PathLike) -> None:
    """Write ``taxonomy`` in the nested form, atomically (the folder is created if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(taxonomy.to_dict(), indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def example_taxonomy_path() -> Path:
    """The small taxonomy shipped with the package (3 fields, 6 disciplines)."""
    return Path(__file__).resolve().parent / "examples" / "taxonomy.json"


def _parse_names(text: str) -> list[str]:
    value = extract_json(text, expect=list)
    names = [" ".join(v.split()) for v in value if isinstance(v, str) and v.strip()]
    if not names:
        raise ValueError("expected a JSON list of names, got none")
    return names


def generate_taxonomy(
    llm: LLM,
    *,
    max_fields: int | None = None,
    temperature: float = 0.0,
    max_new_tokens: int = 1024,
    retries: int = 2,
    name: str = "generated taxonomy",
) -> tuple[Taxonomy, int]:
    """Paper step 1 as a draft for people to edit: ask for the fields of human knowledge, then each
    field's sub-fields, then each sub-field's disciplines (one batched call per level). A name the model
    repeats is kept where it first appears. Returns the taxonomy and the number of malformed answers
    skipped. Asking level by level with JSON-list answers is a choice (the paper prompted GPT-4 with
    several instructions and had humans vote on the nodes)."""
    names = _Names()

    def unique(items: list[str], where: str) -> list[str]:
        out = []
        for n in items:
            try:
                out.append(names.add(n, where))
            except ValueError:
                continue
        return out

    kw = dict(chat=True, retries=retries, temperature=temperature, max_new_tokens=max_new_tokens)
    res = ask(llm, [[{"role": "user", "content": prompts.taxonomy_fields()}]], _parse_names, **kw)
    malformed = res.n_failed
    if res.values[0] is None:
        raise ValueError(f"generate_taxonomy: the model gave no usable list of fields ({res.failures[0][1]})")
    fields_ = unique(res.values[0], "fields")[:max_fields]
    res = ask(llm, [[{"role": "user", "content": prompts.taxonomy_subfields(f)}] for f in fields_], _parse_names, **kw)
    malformed += res.n_failed
    subs = [(f, unique(v or [], f)) for f, v in zip(fields_, res.values)]
    pairs = [(f, s) for f, ss in subs for s in ss]
    res = ask(llm, [[{"role": "user", "content": prompts.taxonomy_disciplines(f, s)}] for f, s in pairs],
              _parse_names, **kw)
    malformed += res.n_failed
    leaves = {(f, s): unique(v or [], f"{f}/{s}") for (f, s), v in zip(pairs, res.values)}
    roots = []
    for f, ss in subs:
        children = [TaxonomyNode(s, [TaxonomyNode(d) for d in leaves[(f, s)]]) for s in ss]
        children = [c for c in children if c.children]
        if children:
            roots.append(TaxonomyNode(f, children))
    tax = Taxonomy(roots, name)
    if not tax.disciplines():
        raise ValueError("generate_taxonomy: the model's answers gave no discipline")
    return tax, malformed
