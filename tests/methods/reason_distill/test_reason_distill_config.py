"""Settings are validated on construction and survive a JSON round trip."""

import json

import pytest

from lmops.methods.reason_distill import (
    DistillConfig,
    ExamConfig,
    LossConfig,
    TeacherConfig,
    TrainConfig,
)


@pytest.mark.parametrize("make, field", [
    (lambda: ExamConfig(k=0), "k"),
    (lambda: ExamConfig(temperature=-1), "temperature"),
    (lambda: ExamConfig(top_p=0), "top_p"),
    (lambda: ExamConfig(stop=("",)), "stop"),
    (lambda: TeacherConfig(samples=0), "samples"),
    (lambda: TeacherConfig(retries=-1), "retries"),
    (lambda: LossConfig(prefix_weight=float("nan")), "prefix_weight"),
    (lambda: LossConfig(margin=-0.1), "margin"),
    (lambda: TrainConfig(learning_rate=0), "learning_rate"),
    (lambda: TrainConfig(max_steps=0), "max_steps"),
    (lambda: TrainConfig(epochs=True), "epochs"),
    (lambda: DistillConfig(rounds=0), "rounds"),
    (lambda: DistillConfig(round_data="all"), "round_data"),
])
def test_bad_values_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_wrong_types_are_type_errors():
    with pytest.raises(TypeError, match="chat"):
        TeacherConfig(chat="yes")
    with pytest.raises(TypeError, match="exam"):
        DistillConfig(exam=3)


def test_defaults_are_the_official_ones_and_round_trip_through_json():
    cfg = DistillConfig()
    assert (cfg.exam.k, cfg.exam.temperature, cfg.exam.max_new_tokens) == (4, 1.0, 128)
    assert (cfg.loss.prefix_weight, cfg.loss.cl_ratio, cfg.loss.margin) == (0.1, 0.5, 1.0)
    assert (cfg.loss.cl_pos_num, cfg.loss.cl_neg_num) == (10, 4)
    assert (cfg.train.learning_rate, cfg.train.epochs, cfg.train.weight_decay) == (7e-6, 10, 0.01)
    again = DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown"):
        DistillConfig.from_dict({"nope": 1})
