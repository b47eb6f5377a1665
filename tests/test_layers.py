"""``kdlab layers FILE``: a configured model's dotted module paths with output shapes, for picking the layers of
feature-based losses; the paths it prints are the ones those losses accept."""

from __future__ import annotations

import json

from kdlab.cli import main
from kdlab.modes import Session, run
from kdlab_test_helpers import load_config, tiny_digits_config


def test_layers_of_the_teacher_and_the_student(write_config, capsys):
    cfg = tiny_digits_config(**{"teacher.name": "resnet20", "teacher.params": {}})
    path = write_config(cfg)
    assert main(["layers", str(path), "--teacher", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    layers = {r["path"]: r for r in out["layers"]}
    assert out["role"] == "teacher" and out["name"] == "resnet20" and out["input_shape"] == [1, 8, 8]
    assert layers["layer2"]["output"] == "(2, 32, 4, 4)" and layers["fc"]["output"] == "(2, 10)"
    assert layers["conv1"]["type"] == "Conv2d" and layers["conv1"]["params"] == 16 * 9
    assert main(["layers", str(path)]) == 0  # the student, as a table
    text = capsys.readouterr().out
    assert text.startswith("student 'mlp' on digits inputs (1, 8, 8)") and "blocks.0" in text and "(2, 10)" in text


def test_a_listed_path_works_in_a_feature_loss(write_config, capsys):
    cfg = tiny_digits_config(**{"teacher.name": "resnet20", "teacher.params": {}, "teacher.training.epochs": 1,
                                "student.name": "resnet20", "student.params": {}, "training.epochs": 1,
                                "tracking.enabled": False})
    path = write_config(cfg)
    main(["layers", str(path), "--teacher", "--json"])
    teacher = {r["path"]: r["output"] for r in json.loads(capsys.readouterr().out)["layers"]}
    main(["layers", str(path), "--json"])
    student = {r["path"]: r["output"] for r in json.loads(capsys.readouterr().out)["layers"]}
    assert "layer3" in teacher and "layer3" in student
    cfg["loss"] = {"name": "fitnet", "params": {"student_layer": "layer3", "teacher_layer": "layer3"}}
    result = run(load_config(write_config(cfg)), session=Session())
    assert "train_hint" in result.fit.history[0]


def test_layers_without_a_teacher_section(write_config, capsys):
    cfg = tiny_digits_config()
    del cfg["teacher"]
    cfg["loss"] = {"name": "ce"}
    assert main(["layers", str(write_config(cfg)), "--teacher"]) == 1
    assert "no `teacher:` section" in capsys.readouterr().err
