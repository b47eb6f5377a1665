"""docs/config.md is generated from the config models: it must match the generator, and its example must validate."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from kdlab.config import RunConfig, Source
from kdlab.schema import describe
from kdlab_test_helpers import load_config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "config.md"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_doc", ROOT / "scripts" / "gen_config_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_doc_matches_the_generator():
    assert DOC.read_text() == _generator().render(), (
        "docs/config.md is out of date: run `python scripts/gen_config_doc.py` and commit it")


def test_every_config_key_is_documented_with_a_meaning():
    text = DOC.read_text()
    gen = _generator()
    for f in describe(RunConfig):
        assert f"### `{f.name}`" in text
        for row in gen.rows(f.children, f"{f.name}."):
            assert row[0] in text
            assert row[3], f"{row[0]} has no meaning: add a description to its field or a note to the generator"


def test_metric_names_are_documented():
    from kdlab.metrics import FINAL

    text = DOC.read_text()
    for name in (*FINAL, "train_loss", "val_accuracy", "val_loss", "lr", "epoch_time_s"):
        assert f"| `{name}` |" in text, name


def test_the_example_validates(tmp_path):
    example = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S).group(1)
    loaded = load_config(Source("config.md example", example))
    assert loaded.config.loss.name == "kd" and loaded.params["loss"].temperature == 4.0
    assert yaml.safe_load(example)["data"]["name"] == "digits"


def test_check_mode(capsys):
    assert _generator().main(["--check"]) == 0
