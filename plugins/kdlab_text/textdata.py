"""What every text data source shares: the tokenizer, the inputs it gives models, the transfer split and the
metadata; and :func:`build_data`, which turns texts and labels into a :class:`kdlab.Data`.

Inputs (named, passed to models as keyword arguments):

* ``input_ids`` — int64 ``(N, L)``: the data tokenizer's ids, padded with ``metadata["pad_id"]``;
* ``attention_mask`` — int64 ``(N, L)``: 1 on tokens, 0 on padding;
* ``text`` — uint8 ``(N, B)``: the raw text as UTF-8 bytes (:func:`kdlab_text.decode_text`), for a model that
  tokenizes for itself; ``text_pair`` likewise for the second text of a pair task. Left out with ``raw_text: false``.

``L`` is the longest tokenized example of any split, at most ``max_length``; every split is padded to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

import kdlab

from .augment import TransferParams, augment
from .encoding import encode_text
from .tokenizing import TextTokenizer, TokenizerParams, make_tokenizer

#: the metadata keys a text data source sets (docs/text.md)
METADATA_KEYS = ("vocab_size", "pad_id", "max_length", "tokenizer", "tokenizer_dir", "class_names", "text_fields",
                 "mask_token")


class TextParams(BaseModel):
    """Params shared by the text data sources."""

    model_config = ConfigDict(extra="forbid")

    tokenizer: TokenizerParams = Field({"kind": "word"}, validate_default=True,
                                       description="the data's tokenizer (input_ids): {kind: word, wordpiece or "
                                                   "bpe} trained on the training split, or {kind: pretrained, name: "
                                                   "...}; default: word")
    max_length: int = Field(128, gt=0, description="longest token sequence; longer texts are cut")
    raw_text: bool = Field(True, description="also give models the raw text (input `text`, UTF-8 bytes), for models "
                                             "that tokenize for themselves (the hf model's `tokenizer` param)")
    max_text_bytes: int = Field(4096, gt=0, description="longest raw text in UTF-8 bytes; longer texts are cut")
    transfer: TransferParams | None = Field(None, description="an unlabeled transfer split made by augmenting the "
                                                              "training sentences (Tang et al. 2019): {size: N, "
                                                              "augment: [mask, replace, ngram], ...}")

    @field_validator("tokenizer")
    @classmethod
    def _library_installed(cls, tokenizer: TokenizerParams | None) -> TokenizerParams | None:
        return tokenizer.require_library() if tokenizer is not None else None


@dataclass
class Texts:
    """One split's texts (and the second texts of a pair task) and labels (``None``: unlabeled)."""

    texts: list[str]
    labels: list[int] | None = None
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: Sequence[int]) -> Texts:
        return Texts([self.texts[i] for i in idx], None if self.labels is None else [self.labels[i] for i in idx],
                     None if self.pairs is None else [self.pairs[i] for i in idx])


def carve(rows: Texts, n_out: int, seed: int) -> tuple[Texts, Texts]:
    """Split off ``n_out`` rows, stratified by label, with a seeded permutation: returns (rest, carved)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(rows.labels, dtype=torch.int64)
    perm = torch.randperm(len(rows), generator=g)
    classes = torch.unique(labels).tolist()
    take: list[torch.Tensor] = []
    for i, c in enumerate(classes):
        idx = perm[labels[perm] == c]
        share = round(n_out * len(idx) / len(rows)) if i < len(classes) - 1 else n_out - sum(len(t) for t in take)
        take.append(idx[: max(0, min(share, len(idx)))])
    carved = torch.cat(take) if take else torch.empty(0, dtype=torch.int64)
    keep = torch.ones(len(rows), dtype=torch.bool)
    keep[carved] = False
    rest = perm[keep[perm]]
    carved = carved[torch.randperm(len(carved), generator=g)]
    return rows.take(rest.tolist()), rows.take(carved.tolist())


def build_data(params: TextParams, *, train: Texts, val: Texts, test: Texts, class_names: list[str], seed: int,
               unlabeled: Texts | None = None, tokenizer: TextTokenizer | None = None,
               extra_metadata: dict[str, Any] | None = None) -> kdlab.Data:
    """Tokenize the splits (with ``tokenizer``, else the one ``params.tokenizer`` describes, trained on the training
    split), add the raw text, and make the transfer split: the ``unlabeled`` rows, then ``params.transfer.size``
    augmented training sentences."""
    num_classes = len(class_names)
    for name, split in (("train", train), ("val", val), ("test", test)):
        if not len(split):
            raise ValueError(f"the {name} split is empty")
        bad = sorted({y for y in split.labels if not 0 <= y < num_classes})
        if bad:
            raise ValueError(f"the {name} split has labels {bad[:5]} outside 0..{num_classes - 1}")
    if num_classes < 2:
        raise ValueError(f"text classification needs at least 2 classes, found {num_classes}: {class_names}")
    paired = train.pairs is not None
    if tokenizer is None:
        tokenizer = make_tokenizer(params.tokenizer, train.texts + (train.pairs or []))
    transfer = unlabeled
    if params.transfer is not None and params.transfer.size:
        texts, pairs = augment(train.texts, train.labels, params.transfer, mask_token=tokenizer.mask_token,
                               seed=seed, pairs=train.pairs)
        made = Texts(texts, None, pairs)
        transfer = made if transfer is None else Texts(transfer.texts + made.texts, None,
                                                       None if not paired else (transfer.pairs or []) + made.pairs)
    splits = {"train": train, "val": val, "test": test}
    if transfer is not None and len(transfer):
        splits["transfer"] = transfer
    ids = {k: tokenizer.encode(s.texts, s.pairs, params.max_length) for k, s in splits.items()}
    length = max([len(r) for rows in ids.values() for r in rows] + [1])
    width = {"text": 1, "text_pair": 1}
    raw: dict[str, dict[str, torch.Tensor]] = {k: {} for k in splits}
    if params.raw_text:
        for k, s in splits.items():
            raw[k]["text"] = encode_text(s.texts, params.max_text_bytes)
            if paired:
                raw[k]["text_pair"] = encode_text(s.pairs, params.max_text_bytes)
        for field in raw["train"]:
            width[field] = max(r[field].shape[1] for r in raw.values())

    def inputs(k: str) -> dict[str, torch.Tensor]:
        from .tokenizing import pad

        x = pad(ids[k], tokenizer.pad_id, length)
        for field, t in raw[k].items():  # every split as wide as the widest
            x[field] = torch.nn.functional.pad(t, (0, width[field] - t.shape[1]))
        return x

    def labelled(k: str) -> kdlab.Split:
        return kdlab.Split(inputs(k), torch.tensor(splits[k].labels, dtype=torch.int64))

    metadata = {
        "vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id, "max_length": length,
        "tokenizer": tokenizer, "tokenizer_dir": tokenizer.path, "class_names": list(class_names),
        "text_fields": ["text", "text_pair"] if paired else ["text"], "mask_token": tokenizer.mask_token,
        **(extra_metadata or {}),
    }
    return kdlab.Data(train=labelled("train"), val=labelled("val"), test=labelled("test"),
                      transfer=kdlab.Split(inputs("transfer")) if "transfer" in splits else None,
                      num_classes=num_classes, class_names=list(class_names), metadata=metadata)
