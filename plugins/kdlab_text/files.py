"""``text-files``: text classification data from local files — CSV/TSV, JSON Lines (or a JSON list of objects) or
parquet — with a text column (two for a pair task), a label column, and optionally an unlabeled file for the
transfer split."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

import kdlab

from ._extras import require
from .textdata import TextParams, Texts, build_data, carve

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".parquet": "parquet", ".pq": "parquet"}


class TextFilesParams(TextParams):
    train: str = Field(..., description="the training file: .csv, .tsv, .jsonl, .json or .parquet")
    val: str | None = Field(None, description="the validation file (default: val_fraction of train, stratified)")
    test: str | None = Field(None, description="the test file (default: test_fraction of train, stratified)")
    unlabeled: str | None = Field(None, description="a file of unlabeled texts (same text column(s)): the transfer "
                                                    "split, which only the teacher labels")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = Field(
        "auto", description="the files' format; auto: from each file's suffix")
    text_column: str | list[str] = Field("text", description="the text column, or two columns for a pair task "
                                                             "(e.g. [premise, hypothesis])")
    label_column: str = Field("label", description="the label column: class names, or integers 0..C-1")
    labels: list[str] | None = Field(None, description="the class names in label order (default: the sorted "
                                                       "distinct labels; integer labels name themselves)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of train held out for validation when there "
                                                             "is no val file")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="share of train held out for testing when there is "
                                                              "no test file")
    limit: int | None = Field(None, gt=0, description="read at most the first N rows of each file")

    @field_validator("text_column")
    @classmethod
    def _one_or_two(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= 2:
            raise ValueError(f"give one text column or two (a pair task), got {len(value)}")
        return value

    @model_validator(mode="after")
    def _readers(self) -> TextFilesParams:
        for path in (self.train, self.val, self.test, self.unlabeled):
            if path is not None and file_format(path, self.format) == "parquet":
                require("pyarrow", "reading parquet files")
        return self


def file_format(path: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: cannot tell the format from the suffix {suffix!r} (known: "
                         f"{', '.join(FORMATS)}); set format")
    return FORMATS[suffix]


def read_rows(path: str, fmt: str = "auto", limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of a CSV/TSV, JSON Lines, JSON or parquet file as dicts (the first ``limit``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    kind = file_format(path, fmt)
    rows: list[dict[str, Any]] = []
    if kind in ("csv", "tsv"):
        with open(file, newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f, delimiter="\t" if kind == "tsv" else ","):
                rows.append(row)
                if limit and len(rows) >= limit:
                    break
    elif kind == "jsonl":
        with open(file, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{file}, line {line_no}: not a JSON object ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{file}, line {line_no}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
                if limit and len(rows) >= limit:
                    break
    elif kind == "json":
        data = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{file}: expected a JSON list of objects (or use .jsonl, one object per line)")
        rows = data[:limit] if limit else data
    else:
        pq = require("pyarrow.parquet", "reading parquet files")
        table = pq.read_table(str(file))
        rows = table.slice(0, limit).to_pylist() if limit else table.to_pylist()
    return rows


def _columns(rows: list[dict[str, Any]], path: str, columns: list[str]) -> None:
    if not rows:
        raise ValueError(f"{path}: no rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(map(repr, missing))}{kdlab.did_you_mean(missing[0], rows[0])}"
                         f" (columns: {', '.join(map(str, rows[0]))})")


def _text(value: Any, path: str, row: int, column: str) -> str:
    if value is None:
        raise ValueError(f"{path}, row {row + 1}: column {column!r} is empty")
    return str(value)


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


class LabelMap:
    """Label values to class indices: by ``names`` when given, else integers as they are or sorted names."""

    def __init__(self, values: list[Any], names: list[str] | None) -> None:
        self.by_name = names is not None or not all(_is_int(v) for v in values)
        if names is None:
            names = sorted({str(v) for v in values}) if self.by_name else \
                [str(i) for i in range(max(int(v) for v in values) + 1)]
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}

    def __call__(self, value: Any, path: str, row: int) -> int:
        if value is None or value == "":
            raise ValueError(f"{path}, row {row + 1}: the label is empty")
        if str(value) in self.index:
            return self.index[str(value)]
        if _is_int(value) and 0 <= int(value) < len(self.names):  # integer labels index the class names
            return int(value)
        raise ValueError(f"{path}, row {row + 1}: label {value!r} is not one of the classes "
                         f"{', '.join(self.names)}{kdlab.did_you_mean(str(value), self.names)}")


def to_texts(rows: list[dict[str, Any]], path: str, params: TextFilesParams, labels: LabelMap | None) -> Texts:
    cols = [params.text_column] if isinstance(params.text_column, str) else list(params.text_column)
    _columns(rows, path, cols + ([params.label_column] if labels is not None else []))
    texts = [_text(r[cols[0]], path, i, cols[0]) for i, r in enumerate(rows)]
    pairs = [_text(r[cols[1]], path, i, cols[1]) for i, r in enumerate(rows)] if len(cols) == 2 else None
    ys = [labels(r[params.label_column], path, i) for i, r in enumerate(rows)] if labels is not None else None
    return Texts(texts, ys, pairs)


def make_text_files(params: TextFilesParams, *, seed: int) -> kdlab.Data:
    """Text classification from your CSV / JSON Lines / parquet files: text column(s), label column, optional
    val/test files (else seeded stratified shares of train) and an unlabeled file for the transfer split."""
    files = {k: v for k, v in (("train", params.train), ("val", params.val), ("test", params.test)) if v}
    rows = {k: read_rows(path, params.format, params.limit) for k, path in files.items()}
    for k, path in files.items():
        _columns(rows[k], path, [params.label_column])
    labels = LabelMap([r[params.label_column] for part in rows.values() for r in part
                       if r[params.label_column] not in (None, "")], params.labels)
    split = {k: to_texts(rows[k], files[k], params, labels) for k in files}
    train = split["train"]
    n = len(train)
    if "test" not in split:
        train, split["test"] = carve(train, max(1, round(params.test_fraction * n)), seed)
    if "val" not in split:
        train, split["val"] = carve(train, max(1, round(params.val_fraction * n)), seed + 1)
    if not len(train):
        raise ValueError(f"{params.train}: {n} rows are too few for a train, validation and test split")
    unlabeled = None
    if params.unlabeled:
        unlabeled = to_texts(read_rows(params.unlabeled, params.format, params.limit), params.unlabeled, params, None)
    return build_data(params, train=train, val=split["val"], test=split["test"], class_names=labels.names,
                      seed=seed, unlabeled=unlabeled)
