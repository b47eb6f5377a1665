"""Transfer-set augmentation for text, after Tang et al. 2019 ("Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks", section 3.3): new unlabeled sentences made from the training sentences, which only the
teacher labels, so that the student sees the teacher on many more inputs than the labelled set.

For each word of a sentence, drawn once ``u ~ U(0, 1)``: ``u < p_mask`` masks it (the tokenizer's mask token);
``p_mask <= u < p_mask + p_replace`` replaces it. Then, with probability ``p_ngram``, the sentence is cut to a
random window of ``n`` words, ``n`` uniform in ``1..max_ngram``.

One deviation: Tang et al. replace a word with another of the same part of speech (drawn from the unigram
distribution of words with that tag); kdlab has no tagger, so a word is replaced by one drawn from the unigram
distribution of the training sentences of the *same label* as the sentence being augmented. Sentences are split
into words on whitespace. Everything is seeded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Op = Literal["mask", "replace", "ngram"]


class TransferParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(0, ge=0, description="augmented unlabeled sentences to make from the training split (0: "
                                           "none; with `unlabeled` rows of a file, they come after them)")
    augment: list[Op] = Field(["mask", "replace", "ngram"], description="the operations of Tang et al. 2019 to "
                                                                        "apply: mask, replace, ngram")
    p_mask: float = Field(0.1, ge=0, le=1, description="probability that a word is masked")
    p_replace: float = Field(0.1, ge=0, le=1, description="probability that a word is replaced by a word of a "
                                                          "training sentence with the same label")
    p_ngram: float = Field(0.25, ge=0, le=1, description="probability that the sentence is cut to a random n-gram")
    max_ngram: int = Field(5, ge=1, description="the n-gram's length is uniform in 1..max_ngram")
    seed: int | None = Field(None, description="seed of the augmentation (default: the data's seed)")

    @model_validator(mode="after")
    def _probabilities(self) -> TransferParams:
        if "mask" in self.augment and "replace" in self.augment and self.p_mask + self.p_replace > 1:
            raise ValueError(f"p_mask + p_replace = {self.p_mask + self.p_replace} is above 1")
        return self


def augment(texts: Sequence[str], labels: Sequence[int], params: TransferParams, *, mask_token: str, seed: int,
            pairs: Sequence[str] | None = None) -> tuple[list[str], list[str] | None]:
    """``params.size`` augmented sentences (and their augmented pairs), made from the training sentences in a
    seeded random order, cycling through them."""
    rng = random.Random(params.seed if params.seed is not None else seed)
    if not texts or not params.size:
        return [], ([] if pairs is not None else None)
    by_label: dict[int, list[str]] = {}
    for i, (text, label) in enumerate(zip(texts, labels)):
        words = by_label.setdefault(int(label), [])
        words += text.split()
        if pairs is not None:
            words += pairs[i].split()
    ops = set(params.augment)
    order = list(range(len(texts)))
    out, out_pairs = [], []
    for k in range(params.size):
        if k % len(order) == 0:
            rng.shuffle(order)
        i = order[k % len(order)]
        pool = by_label.get(int(labels[i])) or [""]
        out.append(_one(texts[i], pool, ops, params, mask_token, rng))
        if pairs is not None:
            out_pairs.append(_one(pairs[i], pool, ops, params, mask_token, rng))
    return out, (out_pairs if pairs is not None else None)


def _one(text: str, pool: list[str], ops: set[str], p: TransferParams, mask_token: str, rng: random.Random) -> str:
    words = text.split()
    p_mask = p.p_mask if "mask" in ops else 0.0
    p_replace = p.p_replace if "replace" in ops else 0.0
    if p_mask or p_replace:
        new = []
        for word in words:
            u = rng.random()
            if u < p_mask:
                new.append(mask_token)
            elif u < p_mask + p_replace:
                new.append(rng.choice(pool))
            else:
                new.append(word)
        words = new
    if "ngram" in ops and words and rng.random() < p.p_ngram:
        n = rng.randint(1, p.max_ngram)
        if n < len(words):
            start = rng.randrange(len(words) - n + 1)
            words = words[start: start + n]
    return " ".join(words)
