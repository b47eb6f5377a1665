"""Tokenizers of text data: one trained on the training split with the ``tokenizers`` library (word-level,
WordPiece or BPE; cached by fingerprint under ``kdlab.cache_dir("tokenizers")``), a model's own (Hugging Face
``AutoTokenizer`` from a model name or a local directory), or a closed vocabulary given by a data source (the
bundled synthetic task's).

Whatever its kind, a data source's tokenizer reaches model factories as ``metadata["tokenizer"]``, a
:class:`TextTokenizer`: call it on a list of texts for padded ``input_ids`` and ``attention_mask``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

import kdlab

from ._extras import quiet_progress, require

PAD, UNK, MASK, SEP, CLS = "[PAD]", "[UNK]", "[MASK]", "[SEP]", "[CLS]"
#: the special tokens of a trained tokenizer, with these ids
SPECIAL_TOKENS = [PAD, UNK, MASK, SEP, CLS]
#: bumped when a trained tokenizer of the same settings and texts would come out differently
CACHE_VERSION = 1

TRAINED = ("word", "wordpiece", "bpe")


class TokenizerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["word", "wordpiece", "bpe", "pretrained"] = Field(
        "word", description="word: a word-level vocabulary, wordpiece or bpe: subwords, each trained on the training "
                            "split with the tokenizers library; pretrained: a model's own tokenizer (AutoTokenizer)")
    name: str | None = Field(None, description="pretrained only: a Hugging Face model name or a local directory "
                                               "holding its tokenizer files")
    vocab_size: int = Field(20000, ge=len(SPECIAL_TOKENS) + 1, description="trained kinds: the largest vocabulary, "
                                                                           "special tokens included")
    min_frequency: int = Field(1, ge=1, description="trained kinds: a token seen fewer times in the training split "
                                                    "is left out (it becomes [UNK])")
    lowercase: bool = Field(True, description="trained kinds: lowercase texts before tokenizing")

    @model_validator(mode="after")
    def _consistent(self) -> TokenizerParams:
        if self.kind == "pretrained":
            if not self.name:
                raise ValueError("kind: pretrained needs name: a Hugging Face model name or a local directory")
        elif self.name:
            raise ValueError(f"name is for kind: pretrained; a {self.kind} tokenizer is trained on the data")
        return self

    def require_library(self) -> TokenizerParams:
        """Itself, or a ``ValueError`` saying how to install the library it needs."""
        if self.kind == "pretrained":
            require("transformers", "a pretrained tokenizer")
        else:
            require("tokenizers", f"a trained {self.kind} tokenizer")
        return self


class TextTokenizer:
    """A data source's tokenizer, as ``metadata["tokenizer"]``.

    ``tokenizer(texts, pairs=None, max_length=None)`` returns ``{"input_ids", "attention_mask"}``: int64 tensors of
    shape ``(N, L)``, padded with ``pad_id`` to the longest row (cut at ``max_length`` tokens). ``vocab_size``,
    ``pad_id`` and ``mask_token`` (the text that masks a word, for augmentation) describe it; ``backend`` is the
    underlying object (a ``tokenizers.Tokenizer``, a ``transformers`` tokenizer, or ``None`` for a closed
    vocabulary), ``path`` a directory that ``transformers.AutoTokenizer.from_pretrained`` loads, when there is one.
    """

    def __init__(self, kind: str, encode: Callable[[Sequence[str], Sequence[str] | None, int | None], list[list[int]]],
                 *, vocab_size: int, pad_id: int, mask_token: str, backend: Any = None, path: str | None = None,
                 fingerprint: str = "") -> None:
        self.kind = kind
        self._encode = encode
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.mask_token = mask_token
        self.backend = backend
        self.path = path
        self.fingerprint = fingerprint

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
               max_length: int | None = None) -> list[list[int]]:
        """The token ids of each text (of each text and its pair), cut at ``max_length``."""
        return self._encode(list(texts), list(pairs) if pairs is not None else None, max_length)

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None, max_length: int | None = None,
                 length: int | None = None) -> dict[str, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` (``length``: pad every row to exactly this many tokens)."""
        return pad(self.encode(texts, pairs, max_length), self.pad_id, length)

    def __repr__(self) -> str:
        return f"TextTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id})"


def pad(ids: list[list[int]], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    width = length if length is not None else max([len(r) for r in ids] + [1])
    out = torch.full((len(ids), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(ids), width), dtype=torch.int64)
    for i, row in enumerate(ids):
        row = row[:width]
        out[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = 1
    return {"input_ids": out, "attention_mask": mask}


# ---------------------------------------------------------------------------------------------------------------
# A closed vocabulary (a data source that knows every word it can produce)
# ---------------------------------------------------------------------------------------------------------------

_WORDS = re.compile(r"\w+|[^\w\s]+")


def vocabulary_tokenizer(words: Sequence[str], lowercase: bool = True) -> TextTokenizer:
    """Word-level ids over a known vocabulary (the special tokens first, then ``words``); no library needed."""
    tokens = SPECIAL_TOKENS + [w for w in dict.fromkeys(words) if w not in SPECIAL_TOKENS]
    index = {t: i for i, t in enumerate(tokens)}
    unk, sep = index[UNK], index[SEP]

    def split(text: str) -> list[int]:
        out = []
        for word in text.split():
            if word in index:  # special tokens and known words as they are
                out.append(index[word])
                continue
            for piece in _WORDS.findall(word.lower() if lowercase else word):
                out.append(index.get(piece, unk))
        return out

    def encode(texts: list[str], pairs: list[str] | None, max_length: int | None) -> list[list[int]]:
        rows = [split(t) + ([sep] + split(p) if pairs is not None else []) for t, p in
                zip(texts, pairs if pairs is not None else texts)]
        return [r[:max_length] if max_length else r for r in rows]

    fp = hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:16]
    return TextTokenizer("vocabulary", encode, vocab_size=len(tokens), pad_id=index[PAD], mask_token=MASK,
                         fingerprint=fp)


# ---------------------------------------------------------------------------------------------------------------
# Trained on the training split (tokenizers)
# ---------------------------------------------------------------------------------------------------------------


def fingerprint(params: TokenizerParams, texts: Sequence[str]) -> str:
    tok = require("tokenizers", f"a trained {params.kind} tokenizer")
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "tokenizers": tok.__version__,
                                   **params.model_dump(mode="json")}, sort_keys=True).encode())
    for text in texts:
        h.update(text.encode("utf-8", errors="replace"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _train(params: TokenizerParams, texts: Sequence[str]) -> Any:
    tk = require("tokenizers", f"a trained {params.kind} tokenizer")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    common = {"vocab_size": params.vocab_size, "min_frequency": params.min_frequency,
              "special_tokens": SPECIAL_TOKENS, "show_progress": False}
    if params.kind == "word":
        tok, trainer = tk.Tokenizer(models.WordLevel(unk_token=UNK)), trainers.WordLevelTrainer(**common)
    elif params.kind == "wordpiece":
        tok, trainer = tk.Tokenizer(models.WordPiece(unk_token=UNK)), trainers.WordPieceTrainer(**common)
        tok.decoder = decoders.WordPiece()
    else:
        tok, trainer = tk.Tokenizer(models.BPE(unk_token=UNK)), trainers.BpeTrainer(**common)
    norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if params.lowercase else [])
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(texts), trainer=trainer)
    sep = tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(single="$A", pair=f"$A {SEP} $B:1", special_tokens=[(SEP, sep)])
    return tok


def _save_for_transformers(tok: Any, folder: Path) -> str | None:
    """Also save the trained tokenizer as a ``transformers`` tokenizer directory (for the ``hf`` model's
    ``tokenizer:`` param or your own code), when transformers is installed."""
    try:
        from transformers import PreTrainedTokenizerFast
    except Exception:  # noqa: BLE001 - transformers is optional here
        return None
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, mask_token=MASK,
                                   sep_token=SEP, cls_token=CLS)
    with quiet_progress():
        fast.save_pretrained(str(folder / "transformers"))
    return str(folder / "transformers")


def trained_tokenizer(params: TokenizerParams, texts: Sequence[str]) -> TextTokenizer:
    """A tokenizer of ``params.kind`` trained on ``texts`` (the training split), or the same one from the cache."""
    tk = require("tokenizers", f"a trained {params.kind} tokenizer")
    fp = fingerprint(params, texts)
    folder = kdlab.cache_dir("tokenizers") / f"{params.kind}-{fp}"
    file = folder / "tokenizer.json"
    if file.exists():
        tok = tk.Tokenizer.from_file(str(file))
    else:
        tok = _train(params, texts)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"tokenizer.json.{id(tok)}.tmp"
        tok.save(str(tmp))
        tmp.replace(file)
    path = folder / "transformers"
    path = str(path) if (path / "tokenizer.json").exists() else _save_for_transformers(tok, folder)

    def encode(texts: list[str], pairs: list[str] | None, max_length: int | None) -> list[list[int]]:
        inputs = list(zip(texts, pairs)) if pairs is not None else texts
        rows = [e.ids for e in tok.encode_batch(inputs)]
        return [r[:max_length] for r in rows] if max_length else rows

    return TextTokenizer(params.kind, encode, vocab_size=tok.get_vocab_size(), pad_id=tok.token_to_id(PAD),
                         mask_token=MASK, backend=tok, path=path, fingerprint=fp)


# ---------------------------------------------------------------------------------------------------------------
# A model's own (transformers)
# ---------------------------------------------------------------------------------------------------------------


def load_auto_tokenizer(name: str, key: str = "tokenizer.name") -> Any:
    """``transformers.AutoTokenizer.from_pretrained(name)`` with an error that names what failed."""
    transformers = require("transformers", "a pretrained tokenizer")
    try:
        with quiet_progress():
            return transformers.AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001 - no such model, no network, a folder without tokenizer files
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        where = "a local directory" if Path(name).expanduser().exists() else "a Hugging Face model name"
        raise ValueError(f"{key} = {name!r} ({where}): could not load its tokenizer "
                         f"({type(exc).__name__}: {first})") from None


def pad_id_of(tok: Any) -> int:
    """The tokenizer's padding id: its pad token, else its end-of-sequence token (GPT-2 has no pad token), else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, attr, None)
        if isinstance(value, int):
            return value
    return 0


def pretrained_tokenizer(params: TokenizerParams) -> TextTokenizer:
    tok = load_auto_tokenizer(params.name)
    pad_id = pad_id_of(tok)

    def encode(texts: list[str], pairs: list[str] | None, max_length: int | None) -> list[list[int]]:
        out = tok(texts, pairs, truncation=max_length is not None, max_length=max_length)
        return [list(r) for r in out["input_ids"]]

    mask = getattr(tok, "mask_token", None) or getattr(tok, "unk_token", None) or MASK
    fp = hashlib.sha256(json.dumps({"pretrained": params.name}).encode()).hexdigest()[:16]
    return TextTokenizer("pretrained", encode, vocab_size=len(tok), pad_id=pad_id, mask_token=str(mask),
                         backend=tok, path=params.name, fingerprint=fp)


def make_tokenizer(params: TokenizerParams, train_texts: Sequence[str]) -> TextTokenizer:
    if params.kind == "pretrained":
        return pretrained_tokenizer(params)
    return trained_tokenizer(params, train_texts)
