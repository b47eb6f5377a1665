"""Hard limits on config input: encodings, size, nesting, alias bombs, numbers that reach torch/numpy/the OS, and
checks across sections that validate must make (docs/faults.md)."""

from __future__ import annotations

import time

import pytest

from kdlab.cli import main
from kdlab.config import Source
from kdlab.errors import ConfigError
from kdlab_test_helpers import load_config

BASE = "data: {name: digits}\nstudent: {name: mlp}\nloss: {name: ce}\n"


def problems_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(Source("x.yaml", text))
    return str(info.value)


def alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return BASE + "\n".join(lines) + "\n"


@pytest.mark.parametrize("raw, expected", [
    (b"\xff\xfed\x00a\x00t\x00a\x00", "UTF-16 or UTF-32"),
    (BASE.encode().replace(b"digits", b"dig\xe9its"), "not UTF-8 text (byte 0xe9"),
])
def test_files_that_are_not_utf8_are_named_as_such(tmp_path, capsys, raw, expected):
    path = tmp_path / "run.yaml"
    path.write_bytes(raw)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert main(["validate", str(path)]) == 0


def test_alias_bomb_is_refused_at_once_and_the_message_stays_short(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    start = time.monotonic()
    assert main(["validate", str(path)]) == 2
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert "aliases expand to more than 100000 values" in err and len(err) < 1000


def test_deep_nesting_and_recursive_aliases_are_refused():
    assert "nested deeper than 64 levels" in problems_of(BASE + "x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "recursive document" in problems_of(BASE + "x: &x [*x]\n")


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text(BASE + "# " + "x" * (2 << 20) + "\n")
    assert main(["validate", str(path)]) == 2
    assert "larger than 1024 KiB" in capsys.readouterr().err


def test_an_alias_bomb_in_a_set_override_stays_a_string():
    bomb = "[" + ", ".join(["[x, x, x, x, x, x, x, x, x, x]"] * 3) + "]"
    from kdlab.config import parse_override

    assert parse_override(f"loss.params.x={bomb}")[1][0] == ["x"] * 10


@pytest.mark.parametrize("key, value, expected", [
    ("training.epochs", "true", "expected a number, not a boolean"),
    ("training.seed", str(2**64), "less than or equal to 4294967295"),
    ("data.seed", "-1", "greater than or equal to 0"),
    ("optimizer.lr", ".inf", "expected a finite number"),
    ("optimizer.lr", ".nan", "expected a finite number"),
    ("training.batch_size", str(2**40), "less than or equal to 2147483647"),
    ("training.threads", "100000", "less than or equal to 1024"),
])
def test_numbers_that_would_crash_torch_numpy_or_the_os_are_config_errors(key, value, expected):
    section, field = key.split(".")
    assert expected in problems_of(BASE + f"{section}: {{{field}: {value}}}\n")


def test_a_loss_that_needs_a_teacher_without_one_fails_validate():
    text = BASE.replace("{name: ce}", "{name: kd}")
    assert "loss 'kd' distils from a teacher: add a `teacher:` section" in problems_of(text)


@pytest.mark.parametrize("study, expected", [
    ("{objective: [], n_trials: 1}", "study.objective: expected a valid dictionary or instance of Objective or at "
                                     "least 1 item"),
    ("{workers: 0, n_trials: 1}", "study.workers: expected greater than or equal to 1 or one of 'auto'"),
    ("{workers: -2, n_trials: 1}", "study.workers: expected greater than or equal to 1"),
    ("{devices: [], n_trials: 1}", "study.devices"),
    ("{n_trials: 3, search: {optimizer.lr: {type: float, low: 0.001, high: .inf}}}", "expected a finite number"),
    ("{n_trials: 3}", "the search space is empty: all 3 trials would train the same config"),
    ("{n_trials: 1, sampler: {seed: true}}", "study.sampler.seed: expected a number, not a boolean"),
])
def test_study_values_the_study_could_not_run_fail_validate(study, expected):
    from kdlab.study.config import load_study_config

    with pytest.raises(ConfigError) as info:
        load_study_config(load_config(Source("x.yaml", BASE + f"study: {study}\n")))
    assert expected in str(info.value)


def test_long_values_in_problems_are_cut():
    text = BASE.replace("{name: mlp}", "{name: " + "m" * 5000 + "}")
    message = problems_of(text)
    assert "more characters" in message and len(message) < 3000
