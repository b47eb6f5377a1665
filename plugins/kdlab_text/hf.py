"""The ``hf`` model: any Hugging Face ``AutoModelForSequenceClassification``, pretrained (a model name or a local
directory) or built from a small configuration given inline (tests, small students), as teacher or student.

A model tokenizes for itself or takes the data's ids:

* ``tokenizer`` unset: a pretrained model uses its own tokenizer (``AutoTokenizer`` of the same name or directory),
  a model from an inline ``config`` takes the data's ``input_ids`` (its ``vocab_size``, ``pad_token_id`` and
  ``max_position_embeddings`` come from the data's metadata);
* ``tokenizer: data``: the data's ``input_ids``, whatever the model;
* ``tokenizer: <name or directory>``: that tokenizer.

A model with a tokenizer of its own reads the raw text (the data's ``text`` input, UTF-8 bytes) and tokenizes it in
its ``forward``. As a teacher that costs once: its outputs are computed over every example once and cached by
example index. Such a model is not exportable with ``torch.export`` (tokenizing is Python, not a tensor program).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from ._extras import quiet_progress, require
from .encoding import decode_text
from .tokenizing import load_auto_tokenizer, pad_id_of

#: config keys kdlab sets itself
_RESERVED = {"num_labels": "comes from the data's number of classes", "id2label": "comes from the data",
             "label2id": "comes from the data"}


class HFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="a pretrained model: a Hugging Face model name (e.g. "
                                                "bert-base-uncased) or a local directory (save_pretrained)")
    config: dict[str, Any] | None = Field(None, description="without model: an inline configuration with its "
                                                            "model_type (e.g. {model_type: bert, hidden_size: 64, "
                                                            "num_hidden_layers: 2, num_attention_heads: 2, "
                                                            "intermediate_size: 128}); with model: overrides of the "
                                                            "pretrained configuration (e.g. dropout)")
    tokenizer: str | None = Field(None, description="data: the data's input_ids; a name or directory: that "
                                                    "tokenizer, applied to the raw text; default: a pretrained "
                                                    "model's own tokenizer, else the data's input_ids")
    max_length: int | None = Field(None, gt=0, description="with a tokenizer of its own: longest token sequence "
                                                           "(default: the tokenizer's limit, at most 512)")
    keep_head: bool = Field(False, description="require the pretrained classification head: an error when its "
                                               "width is not the data's number of classes; false: a head for the "
                                               "data's classes (the checkpoint's when it has that width, else new)")
    revision: str | None = Field(None, description="a Hub revision of the pretrained model (branch, tag or commit)")

    @model_validator(mode="after")
    def _consistent(self) -> HFParams:
        require("transformers", "the hf model")
        if self.model is None and self.config is None:
            raise ValueError("give model (a pretrained name or directory) or config (an inline configuration)")
        if self.model is None:
            if "model_type" not in (self.config or {}):
                raise ValueError("an inline config needs its model_type (e.g. bert, distilbert, roberta)")
            if self.keep_head:
                raise ValueError("keep_head keeps a pretrained head: give model")
        for key, why in _RESERVED.items():
            if key in (self.config or {}):
                raise ValueError(f"config.{key}: not allowed, it {why}")
        return self

    @property
    def uses_data_ids(self) -> bool:
        return self.tokenizer == "data" or (self.tokenizer is None and self.model is None)


class HFClassifier(nn.Module):
    """A Hugging Face sequence classifier (``.model``) returning its logits; with a ``tokenizer`` it tokenizes the
    raw ``text`` (and ``text_pair``) input itself, otherwise it takes ``input_ids`` and ``attention_mask``."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, max_length: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                text: Tensor | None = None, text_pair: Tensor | None = None, **unused: Tensor) -> Tensor:
        extra: dict[str, Tensor] = {}
        if self.tokenizer is not None:
            if text is None:
                raise ValueError("this hf model tokenizes for itself and needs the raw text: the data's `text` "
                                 "input (kdlab-text data sources give it unless raw_text is false)")
            device = text.device
            enc = self.tokenizer(decode_text(text), decode_text(text_pair) if text_pair is not None else None,
                                 padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            if "token_type_ids" in enc:
                extra["token_type_ids"] = enc["token_type_ids"].to(device)
        elif input_ids is None:
            raise ValueError("this hf model takes the data's token ids: the `input_ids` input")
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def _max_length(tok: Any, wanted: int | None) -> int:
    if wanted is not None:
        return wanted
    limit = getattr(tok, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit <= 512 else 512


def _load_pretrained(params: HFParams, num_classes: int) -> nn.Module:
    transformers = require("transformers", "the hf model")
    name = params.model
    where = "a local directory" if Path(name).expanduser().exists() else "a Hugging Face model name"
    try:
        config = transformers.AutoConfig.from_pretrained(name, revision=params.revision, **(params.config or {}))
        if not params.keep_head:
            config.num_labels = num_classes
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            name, config=config, revision=params.revision, ignore_mismatched_sizes=not params.keep_head)
    except Exception as exc:  # noqa: BLE001 - no such model, no network, a folder without a model
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ValueError(f"model = {name!r} ({where}): could not load it as a sequence classifier "
                         f"({type(exc).__name__}: {first})") from None
    if params.keep_head and model.config.num_labels != num_classes:
        raise ValueError(f"keep_head: the head of {name!r} has {model.config.num_labels} outputs but the data has "
                         f"{num_classes} classes; set keep_head: false to replace it")
    return model


def _from_config(params: HFParams, num_classes: int, vocab_size: int, pad_id: int, length: int) -> nn.Module:
    transformers = require("transformers", "the hf model")
    settings = dict(params.config or {})
    model_type = settings.pop("model_type")
    settings.setdefault("vocab_size", vocab_size)
    settings.setdefault("pad_token_id", pad_id)
    if settings["vocab_size"] < vocab_size:
        raise ValueError(f"config.vocab_size = {settings['vocab_size']} is smaller than the tokenizer's vocabulary "
                         f"({vocab_size}); leave it out to take the tokenizer's")
    try:
        config = transformers.AutoConfig.for_model(model_type, num_labels=num_classes, **settings)
    except Exception as exc:  # noqa: BLE001 - an unknown model_type or a bad setting
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ValueError(f"config: not a valid {model_type!r} configuration ({type(exc).__name__}: {first})") from None
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions < length:
        if "max_position_embeddings" in settings:
            raise ValueError(f"config.max_position_embeddings = {positions} is below the data's sequence length "
                             f"({length} tokens): raise it or lower the data's max_length")
        config.max_position_embeddings = length
    return transformers.AutoModelForSequenceClassification.from_config(config)


def make_hf(params: HFParams, *, num_classes: int, metadata: dict[str, Any]) -> nn.Module:
    """Any Hugging Face AutoModelForSequenceClassification: pretrained (name or directory) or from an inline
    config; tokenizes the raw text itself or takes the data's ids."""
    require("transformers", "the hf model")
    with quiet_progress():
        return _make_hf(params, num_classes, metadata or {})


def _make_hf(params: HFParams, num_classes: int, metadata: dict[str, Any]) -> nn.Module:
    tok = None
    if not params.uses_data_ids:
        tok = load_auto_tokenizer(params.tokenizer or params.model,
                                  "tokenizer" if params.tokenizer else "model (its tokenizer)")
    elif not isinstance(metadata.get("vocab_size"), int):
        raise ValueError("hf with the data's input_ids needs the data's metadata['vocab_size'] (kdlab-text's data "
                         "sources set it); or give the model a tokenizer of its own (tokenizer: NAME or DIRECTORY)")
    if params.model is not None:
        model = _load_pretrained(params, num_classes)
    elif tok is not None:
        model = _from_config(params, num_classes, len(tok), pad_id_of(tok), _max_length(tok, params.max_length))
    else:
        model = _from_config(params, num_classes, metadata["vocab_size"], int(metadata.get("pad_id") or 0),
                             int(metadata.get("max_length") or 512))
    if getattr(model.config, "pad_token_id", None) is None:  # e.g. GPT-2: needed to find each row's last token
        model.config.pad_token_id = pad_id_of(tok) if tok is not None else int(metadata.get("pad_id") or 0)
    return HFClassifier(model, tok, _max_length(tok, params.max_length) if tok is not None else None)

