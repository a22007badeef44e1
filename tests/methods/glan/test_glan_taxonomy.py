"""GLAN's taxonomy file: both forms, the errors (cycles, duplicate names, duplicate keys, typos), the
paper's keep/remove vote, round trips, and the LLM-drafted taxonomy."""

import json

import pytest

from lmops.methods.glan import (
    example_taxonomy_path,
    generate_taxonomy,
    load_taxonomy,
    parse_taxonomy,
    save_taxonomy,
    scripted_llm,
)


def _write(tmp_path, obj, name="tax.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return p


def test_example_taxonomy_loads():
    tax = load_taxonomy(example_taxonomy_path())
    ds = tax.disciplines()
    assert [d.name for d in ds] == ["Physics", "Chemistry", "Mathematics", "Philosophy", "Linguistics", "Accounting"]
    assert ds[0].path == ("Natural Sciences", "Physical Sciences", "Physics")
    assert all(len(d.path) == 3 for d in ds)


def test_nested_and_flat_forms_agree():
    nested = {"fields": [{"name": "Sci", "children": [{"name": "Phys", "children": ["Optics", {"name": "Mechanics"}]}]},
                         {"name": "Arts", "children": ["Music"]}]}
    flat = {"nodes": [{"name": "Sci", "parent": None}, {"name": "Phys", "parent": "Sci"},
                      {"name": "Optics", "parent": "Phys"}, {"name": "Arts", "parent": None},
                      {"name": "Mechanics", "parent": "Phys"}, {"name": "Music", "parent": "arts"}]}
    a, b = parse_taxonomy(nested).disciplines(), parse_taxonomy(flat).disciplines()
    assert [d.path for d in a] == [("Sci", "Phys", "Optics"), ("Sci", "Phys", "Mechanics"), ("Arts", "Music")]
    assert [d.path for d in b] == [d.path for d in a]


def test_cycle_is_an_error(tmp_path):
    flat = {"nodes": [{"name": "Root", "parent": None}, {"name": "Leaf", "parent": "Root"},
                      {"name": "A", "parent": "C"}, {"name": "B", "parent": "A"}, {"name": "C", "parent": "B"}]}
    with pytest.raises(ValueError, match=r"cycle in the taxonomy: A -> C -> B -> A"):
        load_taxonomy(_write(tmp_path, flat))
    with pytest.raises(ValueError, match="cycle"):
        parse_taxonomy({"nodes": [{"name": "Self", "parent": "Self"}]})


def test_duplicate_names_are_errors(tmp_path):
    dup = {"fields": [{"name": "Sci", "children": ["Physics"]}, {"name": "Eng", "children": ["physics "]}]}
    with pytest.raises(ValueError, match=r"duplicate name 'physics' at .*already at fields\[0\]"):
        load_taxonomy(_write(tmp_path, dup))
    with pytest.raises(ValueError, match="duplicate name"):
        parse_taxonomy({"nodes": [{"name": "A", "parent": None}, {"name": "A", "parent": None}]})
    # even under a node voted out: the name still keys data in the file
    with pytest.raises(ValueError, match="duplicate name"):
        parse_taxonomy({"fields": [{"name": "X", "keep": False, "children": ["Y"]}, {"name": "Z", "children": ["Y"]}]})


def test_duplicate_json_key_unknown_key_and_bad_parent_are_errors(tmp_path):
    with pytest.raises(ValueError, match="duplicate JSON key 'children'"):
        load_taxonomy(_write(tmp_path, '{"fields": [{"name": "A", "children": ["B"], "children": ["C"]}]}'))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['childern'\]"):
        parse_taxonomy({"fields": [{"name": "A", "childern": ["B"]}]})
    with pytest.raises(ValueError, match="parent 'nowhere' is not a node"):
        parse_taxonomy({"nodes": [{"name": "A", "parent": "Nowhere"}]})
    with pytest.raises(ValueError, match="exactly one of"):
        parse_taxonomy({"fields": [], "nodes": []})
    with pytest.raises(ValueError, match="non-empty string name"):
        parse_taxonomy({"fields": [{"name": "  "}]})
    with pytest.raises(ValueError, match="not valid JSON"):
        load_taxonomy(_write(tmp_path, "{oops"))


def test_keep_false_removes_the_subtree():
    tax = parse_taxonomy({"fields": [
        {"name": "Sci", "children": [{"name": "Phys", "children": ["Optics", {"name": "Acoustics", "keep": False}]},
                                     {"name": "Bio", "children": [{"name": "Zoology", "keep": False}]}]},
        {"name": "Arts", "keep": False, "children": ["Music"]},
    ]})
    # Bio lost all its disciplines: it is removed too, not turned into a discipline
    assert [d.name for d in tax.disciplines()] == ["Optics"]
    flat = parse_taxonomy({"nodes": [{"name": "S", "parent": None}, {"name": "P", "parent": "S"},
                                     {"name": "O", "parent": "P"}, {"name": "Q", "parent": "S", "keep": False},
                                     {"name": "R", "parent": "Q"}]})
    assert [d.name for d in flat.disciplines()] == ["O"]
    with pytest.raises(ValueError, match="no discipline"):
        parse_taxonomy({"fields": [{"name": "A", "keep": False}]})


def test_save_and_load_round_trip(tmp_path):
    tax = load_taxonomy(example_taxonomy_path())
    save_taxonomy(tax, tmp_path / "sub" / "t.json")
    again = load_taxonomy(tmp_path / "sub" / "t.json")
    assert again.to_dict() == tax.to_dict()
    assert [d.path for d in again.disciplines()] == [d.path for d in tax.disciplines()]


def test_generate_taxonomy_with_the_scripted_model(tmp_path):
    tax, malformed = generate_taxonomy(scripted_llm())
    assert malformed == 0
    names = [d.name for d in tax.disciplines()]
    assert names[:2] == ["Physics", "Chemistry"] and "Psychology" in names and len(names) == 11
    save_taxonomy(tax, tmp_path / "g.json")
    assert [d.path for d in load_taxonomy(tmp_path / "g.json").disciplines()] == [d.path for d in tax.disciplines()]
    # malformed list answers are retried, then counted and skipped (here: every sub-field list fails)
    with pytest.raises(ValueError, match="no usable list of fields"):
        generate_taxonomy(scripted_llm(malformed=1.0))
