"""VisionPrefer records, JSONL I/O with malformed lines reported, pair construction, config validation."""

import json

import pytest

from lmops.methods.visionprefer import (
    ASPECTS,
    AnnotateConfig,
    ImageEntry,
    PromptRecord,
    VPScoreConfig,
    aggregate_score,
    make_pairs,
    read_pairs,
    read_records,
    write_pairs,
    write_records,
)
from lmops.methods.visionprefer.config import DPOConfig, PPOConfig, ReFLConfig, SamplerConfig, TrainScoreConfig


def _record(pid="p0", scores=((5, 3, 5, 5), (1, 3, 5, 5), (5, 3, 5, 5), (3, 1, 1, 5))):
    images = [
        ImageEntry(
            f"{pid}-{k}", f"images/{pid}-{k}.png", f"gen-{k}", dict(zip(ASPECTS, s)), {a: f"why {a}" for a in ASPECTS}
        )
        for k, s in enumerate(scores)
    ]
    return PromptRecord(pid, "a red circle", images)


def test_records_round_trip_with_relative_paths(tmp_path):
    path = tmp_path / "data" / "set.jsonl"
    rec = _record()
    rec.images[0].path = str(tmp_path / "data" / "images" / "p0-0.png")  # absolute under the folder
    write_records(path, [rec])
    line = json.loads(path.read_text().splitlines()[0])
    assert line["images"][0]["path"] == "images/p0-0.png"  # written relative to the file
    back, bad = read_records(path)
    assert bad == [] and len(back) == 1
    assert back[0].images[1].path == str(tmp_path / "data" / "images" / "p0-1.png")  # resolved on read
    assert back[0].images[3].scores == {"prompt_following": 3.0, "aesthetic": 1.0, "fidelity": 1.0, "harmlessness": 5.0}
    assert back[0].images[2].rationales["fidelity"] == "why fidelity"


def test_malformed_rows_are_reported_with_line_numbers_and_skipped(tmp_path):
    good = _record("p0").to_dict()
    lines = [
        json.dumps(good),  # 1 ok
        "{not json",  # 2
        json.dumps({"prompt_id": "p1", "prompt": "x"}),  # 3 no images
        json.dumps({**_record("p2").to_dict(), "images": []}),  # 4 empty images
        json.dumps({**_record("p3").to_dict(), "prompt": ""}),  # 5 empty prompt
        "",  # blank: ignored
        json.dumps(good),  # 7 duplicate prompt_id
    ]
    bad_scores = _record("p4").to_dict()
    bad_scores["images"][0]["scores"] = {"prompt_following": "high"}
    lines.append(json.dumps(bad_scores))  # 8 score not a number
    unknown = _record("p5").to_dict()
    unknown["images"][1]["scores"] = {"beauty": 3}
    lines.append(json.dumps(unknown))  # 9 unknown aspect
    dup_image = _record("p6").to_dict()
    dup_image["images"][1]["image_id"] = dup_image["images"][0]["image_id"]
    lines.append(json.dumps(dup_image))  # 10 repeated image id
    lines.append(json.dumps(_record("p7").to_dict()))  # 11 ok
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n")
    records, bad = read_records(path)
    assert [r.prompt_id for r in records] == ["p0", "p7"]
    assert [line for line, _ in bad] == [2, 3, 4, 5, 7, 8, 9, 10]
    reasons = dict(bad)
    assert "not JSON" in reasons[2] and "images" in reasons[3] and "repeats" in reasons[7]
    assert "scores" in reasons[8] and "beauty" in reasons[9] and "twice" in reasons[10]


def test_every_pair_per_prompt_ties_dropped_aggregate_and_per_aspect():
    rec = _record()  # aggregate means: 4.5, 3.5, 4.5, 2.5
    pairs, stats = make_pairs([rec])
    assert stats.ties == 1 and stats.pairs == 5 and len(pairs) == 5  # 6 pairs, (0, 2) tie
    got = {(p.chosen.image_id, p.rejected.image_id): p.margin for p in pairs}
    assert got == {
        ("p0-0", "p0-1"): 1.0,
        ("p0-0", "p0-3"): 2.0,
        ("p0-2", "p0-1"): 1.0,
        ("p0-1", "p0-3"): 1.0,
        ("p0-2", "p0-3"): 2.0,
    }
    pf, st = make_pairs([rec], "prompt_following")  # 5, 1, 5, 3: one tie
    assert st.ties == 1 and {(p.chosen.image_id, p.rejected.image_id) for p in pf} == {
        ("p0-0", "p0-1"),
        ("p0-0", "p0-3"),
        ("p0-2", "p0-1"),
        ("p0-2", "p0-3"),
        ("p0-3", "p0-1"),
    }
    harm, st = make_pairs([rec], "harmlessness")  # all 5: every pair is a tie
    assert harm == [] and st.ties == 6
    assert all(p.chosen.scores["prompt_following"] > p.rejected.scores["prompt_following"] for p in pf)


def test_aggregate_weights_and_missing_scores():
    rec = _record()
    only_aesthetic, _ = make_pairs([rec], weights={"aesthetic": 1.0, "prompt_following": 0.0})
    assert {(p.chosen.image_id, p.rejected.image_id) for p in only_aesthetic} == {
        ("p0-0", "p0-3"),
        ("p0-1", "p0-3"),
        ("p0-2", "p0-3"),
    }
    assert aggregate_score({"aesthetic": 2.0, "fidelity": 4.0}, {"aesthetic": 3, "fidelity": 1}) == pytest.approx(2.5)
    assert aggregate_score({"aesthetic": 2.0}) is None  # equal weights need all four
    del rec.images[1].scores["fidelity"]
    pairs, stats = make_pairs([rec])
    assert stats.unscored_images == 1 and all("p0-1" not in (p.chosen.image_id, p.rejected.image_id) for p in pairs)
    # left: 0 (4.5), 2 (4.5), 3 (2.5); a tie margin of 2 makes 0-3 and 2-3 ties too
    assert (make_pairs([rec], tie_margin=1.5)[1].ties, make_pairs([rec], tie_margin=2.0)[1].ties) == (1, 3)
    with pytest.raises(ValueError, match="aspect"):
        make_pairs([rec], "beauty")
    with pytest.raises(ValueError, match="weights"):
        make_pairs([rec], weights={"aesthetic": -1.0})
    with pytest.raises(ValueError, match="sum to 0"):
        make_pairs([rec], weights={"aesthetic": 0.0})


def test_pairs_round_trip(tmp_path):
    pairs, _ = make_pairs([_record()])
    write_pairs(tmp_path / "pairs.jsonl", pairs)
    with open(tmp_path / "pairs.jsonl", "a") as f:
        f.write('{"prompt_id": "x", "prompt": "y", "chosen": {}, "rejected": {}, "aspect": "aggregate", "margin": 1}\n')
    back, bad = read_pairs(tmp_path / "pairs.jsonl")
    assert len(back) == len(pairs) and [line for line, _ in bad] == [len(pairs) + 1]
    assert [(p.chosen.image_id, p.rejected.image_id, p.margin) for p in back] == [
        (p.chosen.image_id, p.rejected.image_id, p.margin) for p in pairs
    ]


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (AnnotateConfig, {"aspects": ("beauty",)}, "aspects"),
        (AnnotateConfig, {"score_min": 5, "score_max": 5}, "score_max"),
        (AnnotateConfig, {"mode": "batch"}, "mode"),
        (VPScoreConfig, {"finetune": "qlora"}, "finetune"),
        (VPScoreConfig, {"head_dims": (8, 0)}, "head_dims"),
        (VPScoreConfig, {"head_dropout": (0.1, 0.1, 0.1, 0.1, 0.1)}, "head_dropout"),
        (TrainScoreConfig, {"lr": 0}, "lr"),
        (TrainScoreConfig, {"schedule": "linear"}, "schedule"),
        (SamplerConfig, {"eta": -1}, "eta"),
        (ReFLConfig, {"grad_steps": 20}, "grad_steps"),
        (DPOConfig, {"beta": 0}, "beta"),
        (PPOConfig, {"sampler": SamplerConfig(eta=0.0)}, "eta"),
        (PPOConfig, {"advantages": "global"}, "advantages"),
    ],
)
def test_configs_name_the_bad_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_config_dict_round_trip():
    cfg = PPOConfig(epochs=2, sampler=SamplerConfig(num_steps=4, eta=0.5))
    assert PPOConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    v = VPScoreConfig(head_dims=(8, 4), head_dropout=(0.1,), lora_targets=("q_proj",))
    assert VPScoreConfig.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    with pytest.raises(ValueError, match="unknown"):
        VPScoreConfig.from_dict({"heads": 3})
