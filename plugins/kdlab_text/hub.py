"""``hf-dataset``: text classification data from the Hugging Face ``datasets`` library — a dataset by name (read
from the Hub, or from the local ``datasets`` cache), or a folder written by ``Dataset(Dict).save_to_disk``.

With ``streaming: true`` the rows are read one by one (``load_dataset(..., streaming=True)``) instead of
downloading and converting the whole dataset first: with ``limit`` this takes the first rows of a large dataset
cheaply. The rows read are then held as tensors like any other kdlab data."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

import kdlab

from ._extras import quiet_progress, require
from .files import LabelMap
from .textdata import TextParams, Texts, build_data, carve


class HFDatasetParams(TextParams):
    path: str = Field(..., description="a dataset name on the Hugging Face Hub (e.g. stanfordnlp/sst2, glue, imdb) "
                                       "or a folder written by save_to_disk")
    name: str | None = Field(None, description="the dataset's configuration (e.g. sst2 for glue)")
    revision: str | None = Field(None, description="a Hub revision (branch, tag or commit)")
    train_split: str = Field("train", description="the split to train on")
    val_split: str | None = Field("validation", description="the validation split (null: val_fraction of train)")
    test_split: str | None = Field("test", description="the test split (null: test_fraction of train); it must be "
                                                       "labelled (GLUE's test splits are not: use null)")
    unlabeled_split: str | None = Field(None, description="a split of unlabeled texts for the transfer split (e.g. "
                                                          "imdb's unsupervised)")
    text_column: str | list[str] = Field("text", description="the text column, or two for a pair task")
    label_column: str = Field("label", description="the label column (a ClassLabel gives the class names)")
    labels: list[str] | None = Field(None, description="the class names in label order (default: the ClassLabel's "
                                                       "names, or the sorted distinct labels)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of train held out for validation when "
                                                             "val_split is null")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="share of train held out for testing when "
                                                              "test_split is null")
    streaming: bool = Field(False, description="read the rows one by one (datasets' streaming) instead of "
                                               "downloading the whole dataset first")
    limit: int | None = Field(None, gt=0, description="read at most the first N rows of each split")

    @model_validator(mode="after")
    def _installed(self) -> HFDatasetParams:
        require("datasets", "the hf-dataset data source")
        if isinstance(self.text_column, list) and not 1 <= len(self.text_column) <= 2:
            raise ValueError(f"give one text column or two (a pair task), got {len(self.text_column)}")
        return self


def _saved(path: str) -> bool:
    folder = Path(path).expanduser()
    return folder.is_dir() and ((folder / "dataset_dict.json").exists() or (folder / "state.json").exists())


def open_dataset(params: HFDatasetParams) -> Any:
    """The dataset (a ``DatasetDict`` or an ``IterableDatasetDict``)."""
    datasets = require("datasets", "the hf-dataset data source")
    try:
        if _saved(params.path):
            ds = datasets.load_from_disk(str(Path(params.path).expanduser()))
            if isinstance(ds, datasets.Dataset):
                ds = datasets.DatasetDict({"train": ds})
            return ds
        return datasets.load_dataset(params.path, params.name, revision=params.revision, streaming=params.streaming)
    except Exception as exc:  # noqa: BLE001 - no such dataset, no network, a bad folder: name the culprit
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ValueError(f"path = {params.path!r}{f', name = {params.name!r}' if params.name else ''}: could not "
                         f"load the dataset ({type(exc).__name__}: {first})") from None


def _rows(ds: Any, split: str, params: HFDatasetParams) -> list[dict[str, Any]]:
    if split not in ds:
        raise ValueError(f"{params.path}: no split {split!r}{kdlab.did_you_mean(split, list(ds))} "
                         f"(splits: {', '.join(ds)})")
    part = ds[split]
    if hasattr(part, "select") and params.limit:  # a map-style Dataset
        part = part.select(range(min(params.limit, len(part))))
    return list(islice(iter(part), params.limit)) if params.limit else list(part)


def _class_names(ds: Any, split: str, column: str) -> list[str] | None:
    feature = getattr(ds[split], "features", None) or {}
    names = getattr(feature.get(column), "names", None) if hasattr(feature, "get") else None
    return list(names) if names else None


def make_hf_dataset(params: HFDatasetParams, *, seed: int) -> kdlab.Data:
    """A Hugging Face dataset by name or from a save_to_disk folder (optionally streamed): text column(s), label
    column, its splits or seeded stratified shares of train, an unlabeled split for the transfer split."""
    require("datasets", "the hf-dataset data source")
    with quiet_progress():
        return _make(params, seed)


def _make(params: HFDatasetParams, seed: int) -> kdlab.Data:
    ds = open_dataset(params)
    cols = [params.text_column] if isinstance(params.text_column, str) else list(params.text_column)
    named = {"train": params.train_split, "val": params.val_split, "test": params.test_split}
    rows = {k: _rows(ds, split, params) for k, split in named.items() if split}
    for k, part in rows.items():
        if not part:
            raise ValueError(f"{params.path}: split {named[k]!r} is empty")
        missing = [c for c in cols + [params.label_column] if c not in part[0]]
        if missing:
            raise ValueError(f"{params.path}: split {named[k]!r} has no column {missing[0]!r}"
                             f"{kdlab.did_you_mean(missing[0], part[0])} (columns: {', '.join(part[0])})")
        unlabelled = sum(1 for r in part if r[params.label_column] in (None, -1))
        if unlabelled:
            raise ValueError(f"{params.path}: split {named[k]!r} has {unlabelled} rows without a label (-1 or "
                             f"empty); GLUE's test splits are unlabelled: set {k}_split: null to hold out a share "
                             "of train instead")
    names = params.labels or _class_names(ds, params.train_split, params.label_column)
    labels = LabelMap([r[params.label_column] for part in rows.values() for r in part], names)

    def texts(part: list[dict[str, Any]], split: str, labelled: bool = True) -> Texts:
        where = f"{params.path} split {split!r}"
        return Texts([str(r[cols[0]]) for r in part],
                     [labels(r[params.label_column], where, i) for i, r in enumerate(part)] if labelled else None,
                     [str(r[cols[1]]) for r in part] if len(cols) == 2 else None)

    split = {k: texts(part, named[k]) for k, part in rows.items()}
    train = split["train"]
    n = len(train)
    if "test" not in split:
        train, split["test"] = carve(train, max(1, round(params.test_fraction * n)), seed)
    if "val" not in split:
        train, split["val"] = carve(train, max(1, round(params.val_fraction * n)), seed + 1)
    unlabeled = None
    if params.unlabeled_split:
        unlabeled = texts(_rows(ds, params.unlabeled_split, params), params.unlabeled_split, labelled=False)
    return build_data(params, train=train, val=split["val"], test=split["test"], class_names=labels.names,
                      seed=seed, unlabeled=unlabeled)
