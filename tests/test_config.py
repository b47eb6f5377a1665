"""Config errors name the file, the dotted key, the value, what was expected and the line; `kdlab validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import tiny_digits_config
from kdlab.cli import main
from kdlab.config import RunConfig, flatten, parse_override
from kdlab.errors import ConfigError
from kdlab_test_helpers import load_config

GOOD_YAML = """\
data:
  name: digits
teacher:
  name: mlp
  params: {hidden: [64]}
student:
  name: mlp
  params:
    hidden: [16]
loss:
  name: kd
  params:
    temperature: 4.0
    alpha: 0.9
training:
  epochs: 3
  device: cpu
"""


def _error(write_config, text: str, name: str = "run.yaml", **kw) -> ConfigError:
    path = write_config(text, name)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kw)
    return info.value


def test_good_config_resolves_defaults_and_params(write_config):
    loaded = load_config(write_config(GOOD_YAML))
    cfg = loaded.config
    assert isinstance(cfg, RunConfig)
    assert cfg.training.epochs == 3 and cfg.training.batch_size == 128 and cfg.optimizer.name == "adam"
    assert loaded.params["loss"].temperature == 4.0
    assert loaded.components["student"].name == "mlp" and loaded.components["data"].kind == "data"
    # component params are stored resolved (with the plugin's defaults), as they are logged to MLflow
    assert cfg.student.params == {"hidden": [16], "activation": "relu", "dropout": 0.0}


def test_wrong_type_names_file_key_value_expectation_and_line(write_config):
    err = _error(write_config, GOOD_YAML.replace("epochs: 3", "epochs: ten"), "typed.yaml")
    assert err.source.endswith("typed.yaml")
    (p,) = err.problems
    assert p.key == "training.epochs" and p.value == "ten" and p.line == 16
    assert "valid integer" in p.message
    text = str(err)
    assert "typed.yaml" in text and "line 16" in text and "training.epochs" in text and "'ten'" in text


def test_unknown_key_hints_the_known_keys(write_config):
    err = _error(write_config, GOOD_YAML.replace("  device: cpu", "  device: cpu\n  batchsize: 3"))
    (p,) = err.problems
    assert p.key == "training.batchsize" and p.line == 18
    assert p.message.startswith("unknown key")
    assert "did you mean 'batch_size'?" in p.message
    assert "Known keys:" in p.message and "epochs" in p.message and "seed" in p.message


def test_unknown_top_level_section(write_config):
    err = _error(write_config, GOOD_YAML + "optimiser: {lr: 0.1}\n")
    (p,) = err.problems
    assert p.key == "optimiser" and "did you mean 'optimizer'?" in p.message


def test_missing_required_section(write_config):
    err = _error(write_config, "data: {name: digits}\n")
    (p,) = err.problems
    assert p.key == "student" and "required" in p.message


def test_every_structural_problem_is_listed(write_config):
    text = GOOD_YAML.replace("epochs: 3", "epochs: -1").replace("device: cpu", "device: gpu")
    err = _error(write_config, text)
    keys = {p.key: p for p in err.problems}
    assert set(keys) == {"training.epochs", "training.device"}
    assert "greater than 0" in keys["training.epochs"].message
    assert "auto, cpu, cuda or cuda:N" in keys["training.device"].message and keys["training.device"].value == "gpu"
    assert str(err).splitlines()[0].endswith("2 problems")


def test_component_problems_are_listed_with_structural_ones(write_config):
    text = (GOOD_YAML.replace("epochs: 3", "epochs: ten").replace("name: kd", "name: kdd")
            .replace("hidden: [16]", "hiden: [16]"))
    err = _error(write_config, text)
    keys = {p.key: p for p in err.problems}
    assert set(keys) == {"training.epochs", "loss.name", "student.params.hiden"}
    assert "did you mean 'kd'?" in keys["loss.name"].message and keys["loss.name"].line == 11
    assert "did you mean 'hidden'?" in keys["student.params.hiden"].message


def test_a_section_with_a_bad_name_type_is_reported_once(write_config):
    err = _error(write_config, GOOD_YAML.replace("name: kd", "name: [kd]"))
    assert [p.key for p in err.problems] == ["loss.name"]


@pytest.mark.parametrize("section,bad,close",
                         [("loss", "kdd", "kd"), ("student", "mpl", "mlp"), ("data", "digit", "digits")])
def test_unknown_component_lists_available_and_closest(write_config, section, bad, close):
    data = yaml.safe_load(GOOD_YAML)
    data[section]["name"] = bad
    err = _error(write_config, yaml.safe_dump(data, sort_keys=False))
    (p,) = err.problems
    assert p.key == f"{section}.name" and p.value == bad and p.line is not None
    assert f"did you mean {close!r}?" in p.message
    assert "Available" in p.message and close in p.message.split("Available", 1)[1]


def test_unknown_component_without_close_match_still_lists_all(write_config):
    err = _error(write_config, GOOD_YAML.replace("name: kd", "name: zzzzzz"))
    (p,) = err.problems
    assert "did you mean" not in p.message
    assert "ce" in p.message and "kd" in p.message


def test_bad_component_param_value(write_config):
    err = _error(write_config, GOOD_YAML.replace("temperature: 4.0", "temperature: -2"), "bad.yaml")
    (p,) = err.problems
    assert p.key == "loss.params.temperature"
    assert p.value == -2
    assert "greater than 0" in p.message
    assert p.line == 13
    assert "bad.yaml" in str(err) and "line 13: loss.params.temperature" in str(err) and "(got -2)" in str(err)


def test_bad_component_param_type(write_config):
    err = _error(write_config, GOOD_YAML.replace("alpha: 0.9", "alpha: lots"))
    (p,) = err.problems
    assert p.key == "loss.params.alpha" and p.value == "lots" and p.line == 14 and "valid number" in p.message


def test_unknown_component_param_lists_known_params(write_config):
    err = _error(write_config, GOOD_YAML.replace("temperature: 4.0", "temprature: 4.0"))
    (p,) = err.problems
    assert p.key == "loss.params.temprature"
    assert "unknown param of loss 'kd'" in p.message and "did you mean 'temperature'?" in p.message
    assert "Known params: alpha, temperature" in p.message


def test_problems_in_several_components_are_all_reported(write_config):
    text = GOOD_YAML.replace("temperature: 4.0", "temperature: 0").replace("hidden: [16]", "hidden: 16")
    err = _error(write_config, text)
    assert {p.key for p in err.problems} == {"loss.params.temperature", "student.params.hidden"}


def test_invalid_yaml_names_the_line(write_config):
    err = _error(write_config, "data: {name: digits\n  x: [\n", "broken.yaml")
    (p,) = err.problems
    assert "not valid YAML" in p.message and p.line == 2
    assert "broken.yaml" in str(err)


def test_yaml_that_is_not_a_mapping(write_config):
    err = _error(write_config, "- just\n- a list\n")
    assert "expected a mapping" in err.problems[0].message


def test_yaml_is_read_with_the_safe_loader(write_config):
    err = _error(write_config, "data: !!python/object/apply:os.system ['echo unsafe']\n")
    assert "not valid YAML" in err.problems[0].message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "cannot read file" in str(info.value)


def test_both_teacher_sources_is_an_error(write_config, tmp_path):
    text = GOOD_YAML.replace("  params: {hidden: [64]}",
                             "  params: {hidden: [64]}\n  checkpoint: t.pt\n  mlflow_uri: runs:/x/teacher")
    err = _error(write_config, text)
    assert err.problems[0].key == "teacher.checkpoint" and "not both" in err.problems[0].message


# -- overrides ------------------------------------------------------------------------------------------------------


def test_overrides_set_dotted_keys_parsed_as_yaml(write_config):
    path = write_config(GOOD_YAML)
    loaded = load_config(path, overrides=dict(parse_override(o) for o in [
        "loss.params.temperature=2", "student.params.hidden=[8, 4]", "training.device=cpu", "optimizer.lr=0.5",
        "student.name=cnn2d", "student.params={channels: [4]}"]))
    cfg = loaded.config
    assert loaded.params["loss"].temperature == 2.0
    assert cfg.optimizer.lr == 0.5
    assert cfg.student.name == "cnn2d" and cfg.student.params["channels"] == [4]
    loaded = load_config(path, overrides={"student.params.hidden": [8, 4]})
    assert loaded.config.student.params["hidden"] == [8, 4]


def test_switching_the_loss_by_override_validates_the_params_against_the_new_loss(write_config):
    path = write_config(GOOD_YAML)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"loss.name": "ce"})
    assert {p.key for p in info.value.problems} == {"loss.params.temperature", "loss.params.alpha"}
    assert "unknown param of loss 'ce'" in str(info.value)
    loaded = load_config(path, overrides={"loss.name": "ce", "loss.params": {}})
    assert loaded.components["loss"].name == "ce"


def test_override_of_a_component_param_is_validated(write_config):
    path = write_config(GOOD_YAML)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=dict([parse_override("loss.params.temperature=hot")]))
    (p,) = info.value.problems
    assert p.key == "loss.params.temperature" and p.value == "hot"


def test_a_bad_override_names_the_override_not_a_file_line(write_config):
    path = write_config(GOOD_YAML)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=dict(parse_override(o) for o in ["training.device=gpu"]))
    (p,) = info.value.problems
    assert p.key == "training.device" and p.line is None and "[from --set training.device]" in p.message
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"loss.params": {"temperature": 0}})
    (p,) = info.value.problems
    assert p.key == "loss.params.temperature" and p.line is None and "[from --set loss.params]" in p.message
    assert "line" not in str(info.value).splitlines()[1]


def test_override_into_a_scalar_is_an_error(write_config):
    path = write_config(GOOD_YAML)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"training.epochs.x": 1})
    assert info.value.problems[0].key == "training.epochs.x"


def test_override_without_equals_sign():
    with pytest.raises(ConfigError) as info:
        parse_override("training.epochs")
    assert "KEY=VALUE" in str(info.value)


def test_parse_override_types():
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=text=with=equals") == ("a", "text=with=equals")


def test_flatten_gives_dotted_keys():
    assert flatten({"loss": {"name": "kd", "params": {"alpha": 0.5}}, "x": [1, 2], "empty": {}}) == {
        "loss.name": "kd", "loss.params.alpha": 0.5, "x": [1, 2]}


# -- kdlab validate -------------------------------------------------------------------------------------------------


def test_validate_ok(write_config, capsys):
    path = write_config(tiny_digits_config())
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and "ok" in out and "loss=kd" in out and "teacher=mlp" in out


def test_validate_reports_problems_with_exit_code_2(write_config, capsys):
    path = write_config(GOOD_YAML.replace("temperature: 4.0", "temperature: -1"), "v.yaml")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdlab: error:") and "v.yaml: 1 problem" in err
    assert "line 13: loss.params.temperature" in err and "(got -1)" in err
    assert "Traceback" not in err


def test_validate_with_set(write_config, capsys):
    path = write_config(tiny_digits_config())
    assert main(["validate", str(path), "--set", "student.params={hidden: [4]}", "--set", "training.epochs=1"]) == 0
    assert "student=mlp" in capsys.readouterr().out
    assert main(["validate", str(path), "--set", "loss.name=nope"]) == 2
    assert "loss.name: unknown loss" in capsys.readouterr().err
    assert main(["validate", str(path), "--set", "training.epochs"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_validate_invalid_yaml_and_missing_file(write_config, tmp_path, capsys):
    assert main(["validate", str(write_config("a: [", "x.yaml"))]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read file" in capsys.readouterr().err


STUDIES = sorted((Path(__file__).resolve().parent.parent / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_shipped_study_files_validate(path, capsys):
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert "ok" in capsys.readouterr().out
