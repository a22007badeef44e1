"""``lmops visionprefer``: annotate -> train-score -> align on the bundled examples and a small synthetic
set, the demo's output, and user errors (exit 2 with a message)."""

import json

import pytest

from lmops.cli import main
from lmops.methods.visionprefer import make_synthetic_dataset, read_records, write_records

pytestmark = pytest.mark.usefixtures("one_thread")


def test_verb_is_registered(capsys):
    assert main(["visionprefer"]) == 2
    assert "train-score" in capsys.readouterr().out


def test_annotate_the_bundled_examples_then_resume(tmp_path, capsys):
    out = tmp_path / "ann"
    assert (
        main(
            [
                "visionprefer",
                "annotate",
                "--data",
                "example",
                "--judge",
                "scripted",
                "--malformed",
                "0.2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out.split("\nannotation log")[0])
    assert report["requested"] == 3 * 4 * 4 and report["annotated"] + report["skipped"] == 48
    records, bad = read_records(out / "annotated.jsonl")
    assert (
        bad == []
        and len(records) == 3
        and sum(len(im.scores) for r in records for im in r.images) == report["annotated"]
    )
    assert all(im.rationales[a] for r in records for im in r.images for a in im.scores)
    assert (
        main(["visionprefer", "annotate", "--data", "example", "--judge", "scripted", "--out", str(out), "--quiet"])
        == 0
    )
    again = json.loads(capsys.readouterr().out.split("\nannotation log")[0])
    assert again["already_done"] == report["annotated"] and again["requested"] == report["skipped"]


def test_annotate_train_score_align_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    write_records(data / "prompts.jsonl", make_synthetic_dataset(data, 24, seed=3))
    with open(data / "prompts.jsonl", "a") as f:
        f.write('{"prompt_id": "broken"}\n')
    assert (
        main(
            [
                "visionprefer",
                "annotate",
                "--data",
                str(data / "prompts.jsonl"),
                "--judge",
                "scripted",
                "--out",
                str(tmp_path / "ann"),
                "--quiet",
            ]
        )
        == 0
    )
    assert ":25: skipped" in capsys.readouterr().err  # the malformed row is reported with its line
    annotated = tmp_path / "ann" / "annotated.jsonl"
    assert (
        main(
            [
                "visionprefer",
                "train-score",
                "--data",
                str(annotated),
                "--backbone",
                "clip",
                "--out",
                str(tmp_path / "vp"),
                "--epochs",
                "2",
                "--lr",
                "1e-3",
                "--head-dims",
                "16",
                "--valid-fraction",
                "0.25",
                "--lora",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index("{", printed.index("\n")) : printed.rindex("}") + 1])
    assert report["n_valid"] > 0 and report["valid_accuracy"] is not None and len(report["epoch_loss"]) == 2
    assert (tmp_path / "vp" / "adapter.safetensors").is_file()
    pytest.importorskip("diffusers")
    assert (
        main(
            [
                "visionprefer",
                "align",
                "--method",
                "refl",
                "--reward",
                str(tmp_path / "vp"),
                "--data",
                str(annotated),
                "--out",
                str(tmp_path / "gen"),
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--sample-steps",
                "3",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "gen" / "align_report.json").read_text())
    assert summary["method"] == "refl" and len(summary["train"]["losses"]) == 2
    assert (tmp_path / "gen" / "unet" / "config.json").is_file()
    assert (
        main(
            [
                "visionprefer",
                "align",
                "--method",
                "dpo",
                "--reward",
                "planted",
                "--data",
                str(annotated),
                "--out",
                str(tmp_path / "gen-dpo"),
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--sample-steps",
                "3",
                "--beta",
                "100",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "visionprefer",
                "align",
                "--method",
                "ppo",
                "--reward",
                "planted",
                "--generator",
                str(tmp_path / "gen"),
                "--out",
                str(tmp_path / "gen-ppo"),
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--sample-steps",
                "3",
            ]
        )
        == 0
    )
    assert "before" in capsys.readouterr().out


def test_demo_prints_held_out_accuracy(tmp_path, capsys):
    assert main(["visionprefer", "demo", "--prompts", "24", "--json", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0 <= summary["valid_accuracy"] <= 1 and summary["valid_pairs"] > 0 and summary["images"] == 96
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "vp_score" / "vpscore.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["annotate", "--data", "missing.jsonl", "--judge", "scripted", "--out", "x"], "does not exist"),
        (["annotate", "--data", "example", "--judge", "gpt4v", "--out", "x"], "--judge"),
        (["annotate", "--data", "example", "--judge", "http://127.0.0.1:9/v1", "--out", "x"], "--model"),
        (["annotate", "--data", "example", "--judge", "scripted", "--aspects", "beauty", "--out", "x"], "aspect"),
        (["train-score", "--data", "example", "--backbone", "clip", "--out", "x"], "no preference pair"),
        (["align", "--method", "refl", "--reward", "nowhere", "--out", "x"], "--reward"),
    ],
)
def test_user_errors_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "align":
        pytest.importorskip("diffusers")
    assert main(["visionprefer", *argv]) == 2
    assert message in capsys.readouterr().err
