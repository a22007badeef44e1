"""Se2 records and settings: validation with errors that name the field, JSONL round trips."""

import json

import pytest

from lmops.methods.se2 import (
    Candidate,
    Example,
    Pool,
    ScoreConfig,
    ScoredRecord,
    SelectConfig,
    Template,
    TrainConfig,
    read_examples,
    read_records,
    write_examples,
    write_records,
)


def test_example_validation_and_defaults():
    ex = Example(3, "Is it?", options=["yes", "no"], gold=1)
    assert ex.answer == "no" and ex.is_classification
    assert not Example(4, "Write", answer="text").is_classification
    with pytest.raises(ValueError, match="gold"):
        Example(1, "q", options=["a", "b"], gold=2)
    with pytest.raises(ValueError, match="options"):
        Example(1, "q", options=["a"], gold=0)
    with pytest.raises(ValueError, match="gold"):
        Example(1, "q", answer="a", gold=0)
    with pytest.raises(ValueError, match="answer"):
        Example(1, "q", answer="b", options=["a", "b"], gold=0)
    with pytest.raises(TypeError, match="id"):
        Example("1", "q")


def test_examples_and_records_round_trip(tmp_path):
    exs = [Example(0, "line\nbreak", options=["a", "b"], gold=0), Example(1, "gen", answer="ref")]
    write_examples(tmp_path / "ex.jsonl", exs)
    assert read_examples(tmp_path / "ex.jsonl") == exs
    assert "options" not in json.loads((tmp_path / "ex.jsonl").read_text().splitlines()[1])
    recs = [ScoredRecord(7, [1, 2], [Candidate(3, 0.2, 1.0, 0), Candidate(4, 0.5, 0.0, "x")], step=3)]
    write_records(tmp_path / "r.jsonl", recs)
    assert read_records(tmp_path / "r.jsonl") == recs


def test_read_examples_names_the_bad_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": 0, "question": "q"}\n{"question": "no id"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing key"):
        read_examples(p)
    p.write_text('{"id": 0, "question": "q", "options": ["a", "b"], "gold": 5}\n')
    with pytest.raises(ValueError, match="record 1: gold"):
        read_examples(p)


def test_pool_ids_and_self_membership():
    pool = Pool([Example(5, "a"), Example(9, "b")])
    assert pool.ids == [5, 9] and pool.row_of[9] == 1 and 9 in pool and pool[5].question == "a"
    assert pool.self_id(Example(9, "b")) == 9 and pool.self_id(Example(9, "other")) is None
    with pytest.raises(ValueError, match="duplicate pool id 5"):
        Pool([Example(5, "a"), Example(5, "b")])
    with pytest.raises(ValueError, match="non-empty"):
        Pool([])
    with pytest.raises(KeyError, match="pool id 3"):
        pool[3]


def test_template_renders_and_validates():
    t = Template(question_format="Q: {question}\nA:", answer_format=" {answer}")
    ex = Example(0, "why", options=["x", "y"], gold=1)
    assert t.demonstration(ex) == "Q: why\nA: y" and t.answer("x") == " x"
    assert Template.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="question_format"):
        Template(question_format="no placeholder")
    with pytest.raises(ValueError, match="answer_format"):
        Template(answer_format="none")


@pytest.mark.parametrize("cls, field, value", [
    (ScoreConfig, "n_candidates", 0), (ScoreConfig, "valid_ratio", 1.0), (ScoreConfig, "steps", True),
    (TrainConfig, "lr", 0.0), (TrainConfig, "max_grad_norm", -1.0), (TrainConfig, "n_hard_negatives", -1),
    (SelectConfig, "beam_size", 0), (SelectConfig, "max_prompt_tokens", 0),
])
def test_configs_name_the_bad_field(cls, field, value):
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


def test_config_defaults_are_the_official_ones_and_round_trip():
    s, t, sel = ScoreConfig(), TrainConfig(), SelectConfig()
    assert (s.n_candidates, s.steps, s.valid_ratio, s.split_seed, s.max_new_tokens) == (50, 3, 0.1, 42, 100)
    assert (t.lr, t.epochs, t.batch_size, t.warmup_steps, t.max_grad_norm) == (1e-5, 6, 8, 1000, 2.0)
    assert (t.n_hard_negatives, t.n_random_negatives, t.adam_eps, t.weight_decay) == (20, 20, 1e-8, 0.0)
    assert (sel.beam_size, sel.shots) == (3, 3)
    assert TrainConfig.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="unknown"):
        ScoreConfig.from_dict({"nope": 1})
