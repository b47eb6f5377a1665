"""``synthetic-reviews``: a bundled text classification task, generated locally and deterministically (as MNIST-1D
is for signals), on which a bag-of-words model cannot match a model that reads word order.

It is **synthetic**: short "movie reviews" written by a small grammar, not real language. Each review is an
optional opener and one to three clauses joined by ``and`` or ``but``; a clause is ``the <aspect> <verb> [not]
[<intensifier>] <adjective>``. A clause's polarity is its adjective's (positive or negative), flipped by ``not``. The
label is the sign of the summed polarities of the clauses after the last ``but`` (all clauses when there is none);
reviews whose sum is 0 are drawn again. So:

* ``the plot was good but the acting was bad`` is negative and ``the plot was bad but the acting was good``
  positive: the same bag of words;
* ``the plot was not good and the acting was bad`` is negative and ``the plot was good and the acting was not
  bad`` positive: the same bag of words again.

What it tests: whether a student that pools word embeddings without their order (``embedding_mlp``) can learn from
a teacher that reads order (``textcnn``, ``bilstm``, a small ``hf`` transformer) more than from the labels alone,
and how large the gap to the teacher stays. Word order decides a share of the examples set by ``p_negation`` and
``p_but``; everything else is decided by the words alone.
"""

from __future__ import annotations

import random

from pydantic import Field

import kdlab

from .textdata import TextParams, Texts, build_data
from .tokenizing import TokenizerParams, vocabulary_tokenizer

ASPECTS = ["movie", "film", "plot", "story", "acting", "cast", "script", "ending", "music", "dialogue", "director",
           "soundtrack", "pacing", "camera", "characters", "humour"]
POSITIVE = ["good", "great", "excellent", "wonderful", "brilliant", "superb", "charming", "moving", "clever",
            "delightful", "funny", "gripping", "beautiful", "fresh", "witty", "touching", "stunning", "engaging",
            "elegant", "powerful", "memorable", "smart", "lovely", "thrilling", "inventive", "tender", "vivid",
            "graceful", "haunting", "sharp"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "weak", "poor", "clumsy", "tedious", "bland", "messy",
            "lifeless", "ugly", "stale", "silly", "flat", "shallow", "predictable", "forgettable", "lazy", "cheap",
            "tiresome", "muddled", "sluggish", "hollow", "grating", "awkward", "pointless", "dreary", "sloppy"]
VERBS = ["was", "is", "felt", "seemed"]
INTENSIFIERS = ["very", "really", "truly", "quite"]
OPENERS = ["honestly", "overall", "i think", "in short", "to be fair", "frankly"]
NEGATORS = ["not"]
CONNECTORS = ["and", "but"]
CLASS_NAMES = ["negative", "positive"]


def vocabulary() -> list[str]:
    words = ASPECTS + POSITIVE + NEGATIVE + VERBS + INTENSIFIERS + NEGATORS + CONNECTORS + ["the"]
    words += [w for opener in OPENERS for w in opener.split()]
    return list(dict.fromkeys(words))


class SyntheticReviewsParams(TextParams):
    tokenizer: TokenizerParams | None = Field(None, description="the data's tokenizer; default: the task's own "
                                                                "closed word vocabulary (no library needed)")
    max_length: int = Field(48, gt=0, description="longest token sequence (reviews have at most 23 words)")
    train_size: int = Field(1000, gt=0, description="labelled training reviews")
    val_size: int = Field(500, gt=0, description="validation reviews")
    test_size: int = Field(2000, gt=0, description="test reviews")
    generator_seed: int = Field(0, description="seed of the generator: the same seed, the same reviews (the data's "
                                               "`seed` seeds only the transfer augmentation)")
    p_negation: float = Field(0.3, ge=0, le=1, description="probability that a clause is negated with `not`")
    p_but: float = Field(0.5, ge=0, le=1, description="probability that a connector is `but` rather than `and`")
    p_intensifier: float = Field(0.3, ge=0, le=1, description="probability that a clause has an intensifier")
    p_opener: float = Field(0.3, ge=0, le=1, description="probability that a review starts with an opener")
    max_clauses: int = Field(3, ge=1, le=5, description="clauses per review: uniform in 1..max_clauses")
    adjectives: int = Field(30, ge=1, le=len(POSITIVE), description="adjectives of each polarity in use")


def review(rng: random.Random, p: SyntheticReviewsParams) -> tuple[str, int]:
    """One review and its label (1 positive, 0 negative)."""
    while True:
        words: list[str] = []
        if rng.random() < p.p_opener:
            words += rng.choice(OPENERS).split()
        score = 0
        for k in range(rng.randint(1, p.max_clauses)):
            if k:
                connector = "but" if rng.random() < p.p_but else "and"
                words.append(connector)
                if connector == "but":
                    score = 0  # what follows the last `but` decides
            positive = rng.random() < 0.5
            negated = rng.random() < p.p_negation
            words += ["the", rng.choice(ASPECTS), rng.choice(VERBS)]
            if negated:
                words.append("not")
            if rng.random() < p.p_intensifier:
                words.append(rng.choice(INTENSIFIERS))
            words.append(rng.choice((POSITIVE if positive else NEGATIVE)[: p.adjectives]))
            score += (1 if positive else -1) * (-1 if negated else 1)
        if score:
            return " ".join(words), int(score > 0)


def generate(n: int, rng: random.Random, p: SyntheticReviewsParams) -> Texts:
    rows = [review(rng, p) for _ in range(n)]
    return Texts([t for t, _ in rows], [y for _, y in rows])


def make_synthetic_reviews(params: SyntheticReviewsParams, *, seed: int) -> kdlab.Data:
    """Synthetic movie reviews generated locally (1,000 train / 500 val / 2,000 test, 2 classes) whose label
    depends on word order (negation, `but`); an optional augmented transfer split."""
    rng = random.Random(params.generator_seed)
    train = generate(params.train_size, rng, params)
    val = generate(params.val_size, rng, params)
    test = generate(params.test_size, rng, params)
    tokenizer = vocabulary_tokenizer(vocabulary()) if params.tokenizer is None else None
    return build_data(params, train=train, val=val, test=test, class_names=CLASS_NAMES, seed=seed,
                      tokenizer=tokenizer)
