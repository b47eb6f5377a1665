"""kdlab-text's data: raw text as bytes, tokenizers (closed vocabulary, trained and cached, a model's own), the
bundled synthetic task, local files (CSV, JSON Lines, parquet), Hugging Face datasets saved to disk, and Tang et
al.'s transfer augmentation. Everything on files the tests write; nothing is downloaded."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

import kdlab_text.plugin
from kdlab import PluginError
from kdlab.testing import check_data, components_of
from kdlab_text import decode_text, encode_text
from kdlab_text.augment import TransferParams, augment
from kdlab_text.files import TextFilesParams, make_text_files
from kdlab_text.synthetic import SyntheticReviewsParams, make_synthetic_reviews, review
from kdlab_text.tokenizing import MASK, TokenizerParams, make_tokenizer

DATA = {c.name: c for c in components_of(kdlab_text.plugin, "kdlab-text") if c.kind == "data"}
SMALL = {"train_size": 120, "val_size": 40, "test_size": 40}

ROWS = [
    {"text": "a great and moving film", "label": "pos"},
    {"text": "dull, slow and far too long", "label": "neg"},
    {"text": "the acting was superb", "label": "pos"},
    {"text": "an awful script", "label": "neg"},
    {"text": "I loved every minute — très bien", "label": "pos"},
    {"text": "not good at all", "label": "neg"},
] * 5


def write_rows(folder: Path, rows: list[dict], fmt: str, name: str = "train") -> Path:
    path = folder / f"{name}.{fmt}"
    if fmt in ("csv", "tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if fmt == "tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path))
    return path


# -- raw text -------------------------------------------------------------------------------------------------------


def test_raw_text_round_trips_as_zero_padded_utf8_bytes():
    texts = ["héllo wörld", "", "a\0b", "日本語のテキスト"]
    x = encode_text(texts)
    assert x.dtype == torch.uint8 and x.shape == (4, len("日本語のテキスト".encode()))
    assert decode_text(x) == ["héllo wörld", "", "ab", "日本語のテキスト"]
    cut = encode_text(["日本語"], max_bytes=4)  # 3 bytes per character: the cut keeps whole characters
    assert decode_text(cut) == ["日"]
    with pytest.raises(ValueError, match="uint8"):
        decode_text(torch.zeros(2, 3, dtype=torch.int64))


# -- tokenizers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["word", "wordpiece", "bpe"])
def test_a_tokenizer_trained_on_a_tiny_corpus_is_cached_by_fingerprint(kind, kdlab_home):
    texts = [r["text"] for r in ROWS]
    params = TokenizerParams(kind=kind, vocab_size=80)
    tok = make_tokenizer(params, texts)
    assert tok.pad_id == 0 and tok.vocab_size <= 80
    out = tok(["a great film", "dull"], max_length=3)
    assert out["input_ids"].shape == (2, 3) and out["attention_mask"].tolist()[1][0] == 1
    assert out["input_ids"][1, -1] == tok.pad_id and out["attention_mask"][1, -1] == 0
    assert tok.encode([f"a {MASK} film"])[0][1] == tok.backend.token_to_id(MASK)  # the mask stays one token
    folder = kdlab_home / "cache" / "tokenizers" / f"{kind}-{tok.fingerprint}"
    assert (folder / "tokenizer.json").exists()
    again = make_tokenizer(params, texts)  # from the cache
    assert again.fingerprint == tok.fingerprint and again.encode(texts) == tok.encode(texts)
    other = make_tokenizer(TokenizerParams(kind=kind, vocab_size=80), texts[:-1])  # other texts: another one
    assert other.fingerprint != tok.fingerprint
    from transformers import AutoTokenizer  # saved as a transformers tokenizer too (for the hf model)

    assert AutoTokenizer.from_pretrained(tok.path)("a great film")["input_ids"] == tok.encode(["a great film"])[0]


def test_a_pretrained_tokenizer_from_a_local_directory(tmp_path):
    tok = make_tokenizer(TokenizerParams(kind="wordpiece", vocab_size=60), [r["text"] for r in ROWS])
    pretrained = make_tokenizer(TokenizerParams(kind="pretrained", name=tok.path), [])
    assert pretrained.pad_id == tok.pad_id and pretrained.mask_token == MASK
    assert pretrained.encode(["a great film"]) == tok.encode(["a great film"])
    with pytest.raises(ValueError, match="could not load its tokenizer"):
        make_tokenizer(TokenizerParams(kind="pretrained", name=str(tmp_path / "nothing-here")), [])


def test_tokenizer_params_are_checked():
    with pytest.raises(ValueError, match="needs name"):
        TokenizerParams(kind="pretrained")
    with pytest.raises(ValueError, match="name is for kind: pretrained"):
        TokenizerParams(kind="word", name="bert-base-uncased")


# -- the bundled task -------------------------------------------------------------------------------------------------


def _label(text: str) -> int:
    """The task's rule, written again from its documentation."""
    from kdlab_text.synthetic import NEGATIVE, POSITIVE

    score = 0
    for clause in text.replace(" and ", " | ").replace(" but ", " | but ").split(" | "):
        if clause.startswith("but"):
            score = 0
        words = clause.split()
        polarity = 1 if words[-1] in POSITIVE else -1 if words[-1] in NEGATIVE else 0
        score += -polarity if "not" in words else polarity
    return int(score > 0)


def test_the_synthetic_task_follows_its_rule_and_word_order_decides_some_labels():
    p = SyntheticReviewsParams(**SMALL)
    rng = random.Random(0)
    rows = [review(rng, p) for _ in range(2000)]
    assert all(_label(text) == y for text, y in rows)
    from kdlab_text.synthetic import NEGATIVE, POSITIVE

    def role(word: str) -> str:
        return "+" if word in POSITIVE else "-" if word in NEGATIVE else word if word in ("not", "but") else "."

    bags: dict[tuple, set[int]] = {}
    for text, y in rows:  # reviews alike in everything a bag of words can tell about their sentiment
        bags.setdefault(tuple(sorted(role(w) for w in text.split())), set()).add(y)
    both = sum(len(labels) == 2 for labels in bags.values())
    assert both > len(bags) / 4  # the same bags, both labels: order decides
    assert 0.4 < sum(y for _, y in rows) / len(rows) < 0.6


def test_the_synthetic_task_conforms_and_is_deterministic():
    data = check_data(DATA["synthetic-reviews"], {**SMALL, "transfer": {"size": 50}})
    assert set(data.train.x) == {"input_ids", "attention_mask", "text"} and data.train.x["text"].dtype == torch.uint8
    assert data.metadata["vocab_size"] == data.metadata["tokenizer"].vocab_size and data.metadata["pad_id"] == 0
    assert data.class_names == data.metadata["class_names"] == ["negative", "positive"]
    assert len(data.transfer) == 50 and data.transfer.y is None
    other = make_synthetic_reviews(SyntheticReviewsParams(**SMALL, generator_seed=1), seed=0)
    assert not torch.equal(other.train.x["input_ids"][:5], data.train.x["input_ids"][:5])
    ids = data.metadata["tokenizer"](decode_text(data.test.x["text"][:3]), length=data.metadata["max_length"])
    assert torch.equal(ids["input_ids"], data.test.x["input_ids"][:3])


def test_the_synthetic_task_with_a_trained_tokenizer():
    data = check_data(DATA["synthetic-reviews"], {**SMALL, "tokenizer": {"kind": "wordpiece", "vocab_size": 200},
                                                  "raw_text": False})
    assert set(data.train.x) == {"input_ids", "attention_mask"} and data.metadata["tokenizer"].kind == "wordpiece"


# -- files ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_text_files_read_the_same_data_from_every_format(fmt, tmp_path):
    train = write_rows(tmp_path, ROWS, fmt)
    test = write_rows(tmp_path, ROWS[:6], fmt, "test")
    unlabeled = write_rows(tmp_path, [{"text": r["text"] + " indeed"} for r in ROWS[:4]], fmt, "unlabeled")
    data = check_data(DATA["text-files"], {"train": str(train), "test": str(test), "unlabeled": str(unlabeled),
                                           "val_fraction": 0.2, "tokenizer": {"kind": "word"}})
    assert data.class_names == ["neg", "pos"] and len(data.test) == 6 and len(data.val) == 6
    assert len(data.train) == 24 and len(data.transfer) == 4
    assert decode_text(data.test.x["text"])[4] == "I loved every minute — très bien"
    assert data.test.y.tolist()[:2] == [1, 0]
    if fmt == "csv":
        reference = data
    else:
        reference = make_text_files(TextFilesParams(
            train=str(write_rows(tmp_path, ROWS, "csv")), test=str(write_rows(tmp_path, ROWS[:6], "csv", "test")),
            unlabeled=str(write_rows(tmp_path, [{"text": r["text"] + " indeed"} for r in ROWS[:4]], "csv",
                                     "unlabeled")),
            val_fraction=0.2, tokenizer={"kind": "word"}), seed=0)
    assert torch.equal(reference.train.x["input_ids"], data.train.x["input_ids"])


def test_text_files_pairs_integer_labels_and_augmented_transfer(tmp_path):
    rows = [{"premise": r["text"], "hypothesis": "it was good", "y": i % 3} for i, r in enumerate(ROWS)]
    path = write_rows(tmp_path, rows, "jsonl")
    data = check_data(DATA["text-files"], {
        "train": str(path), "text_column": ["premise", "hypothesis"], "label_column": "y",
        "labels": ["entailment", "neutral", "contradiction"], "tokenizer": {"kind": "word"},
        "transfer": {"size": 40, "augment": ["mask", "ngram"], "p_mask": 0.5}})
    assert data.num_classes == 3 and data.class_names[2] == "contradiction"
    assert set(data.train.x) == {"input_ids", "attention_mask", "text", "text_pair"}
    assert data.metadata["text_fields"] == ["text", "text_pair"] and len(data.transfer) == 40
    sep = data.metadata["tokenizer"].backend.token_to_id("[SEP]")
    assert (data.train.x["input_ids"] == sep).any(1).all()  # text [SEP] pair
    assert any(MASK in t for t in decode_text(data.transfer.x["text"]))


def test_text_files_errors_name_the_file_row_and_column(tmp_path):
    path = write_rows(tmp_path, ROWS, "csv")
    with pytest.raises(ValueError, match=r"no column 'txt'.*did you mean 'text'"):
        make_text_files(TextFilesParams(train=str(path), text_column="txt", tokenizer={"kind": "word"}), seed=0)
    with pytest.raises(ValueError, match=r"train.csv, row 1: label 'pos' is not one of the classes neg, neutral"):
        make_text_files(TextFilesParams(train=str(path), labels=["neg", "neutral"], tokenizer={"kind": "word"}),
                        seed=0)
    with pytest.raises(FileNotFoundError, match="no such file"):
        make_text_files(TextFilesParams(train=str(tmp_path / "missing.csv"), tokenizer={"kind": "word"}), seed=0)
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        make_text_files(TextFilesParams(train=str(tmp_path / "data.txt"), tokenizer={"kind": "word"}), seed=0)


# -- Hugging Face datasets ------------------------------------------------------------------------------------------


def test_a_dataset_saved_to_disk_with_class_label_names(tmp_path):
    import datasets

    from kdlab_text._extras import quiet_progress

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    rows = {"sentence": [r["text"] for r in ROWS], "label": [int(r["label"] == "pos") for r in ROWS]}
    test_rows = {"sentence": rows["sentence"][:6], "label": [-1] * 6}  # unlabelled, as GLUE's test splits are
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features),
                               "validation": datasets.Dataset.from_dict(rows, features=features).select(range(8)),
                               "test": datasets.Dataset.from_dict(test_rows)})
    with quiet_progress():  # no tqdm monitor thread left behind (a study in this process would spawn its workers)
        ds.save_to_disk(str(tmp_path / "sst"))
    params = {"path": str(tmp_path / "sst"), "text_column": "sentence", "tokenizer": {"kind": "word"}}
    with pytest.raises(PluginError, match="6 rows without a label.*test_split: null"):
        DATA["hf-dataset"].build(DATA["hf-dataset"].validate_params({**params}), seed=0)
    data = check_data(DATA["hf-dataset"], {**params, "test_split": None, "test_fraction": 0.2, "limit": 20})
    assert data.class_names == ["negative", "positive"] and len(data.val) == 8 and len(data.test) == 4
    with pytest.raises(PluginError, match="no split 'valdation'; did you mean 'validation'"):
        DATA["hf-dataset"].build(DATA["hf-dataset"].validate_params({**params, "val_split": "valdation"}), seed=0)
    with pytest.raises(PluginError, match="could not load the dataset"):
        DATA["hf-dataset"].build(DATA["hf-dataset"].validate_params(
            {**params, "path": str(tmp_path / "no-such-dataset")}), seed=0)


# -- transfer augmentation ----------------------------------------------------------------------------------------


def test_transfer_augmentation_is_seeded_and_does_what_tang_et_al_describe():
    texts = ["a b c d e f g h", "u v w x y z"]
    labels = [0, 1]
    params = TransferParams(size=200, p_mask=0.2, p_replace=0.3, p_ngram=0.5, max_ngram=3)
    out, _ = augment(texts, labels, params, mask_token="[M]", seed=0)
    assert out == augment(texts, labels, params, mask_token="[M]", seed=0)[0] and len(out) == 200
    assert out != augment(texts, labels, params, mask_token="[M]", seed=1)[0]
    class0, class1 = set(texts[0].split()), set(texts[1].split())
    for text in out:
        words = [w for w in text.split() if w != "[M]"]
        # replacements come from sentences of the same label, so no sentence mixes the two vocabularies
        assert set(words) <= class0 or set(words) <= class1
    lengths = [len(t.split()) for t in out]
    assert min(lengths) >= 1 and sum(n <= 3 for n in lengths) > 50  # cut to n-grams of 1..3 words
    masked = augment(texts, labels, TransferParams(size=4, augment=["mask"], p_mask=1.0), mask_token="[M]", seed=0)
    assert all(set(t.split()) == {"[M]"} for t in masked[0])
    with pytest.raises(ValueError, match="above 1"):
        TransferParams(p_mask=0.7, p_replace=0.6)


def test_a_dataset_streamed_from_a_folder_of_data_files(tmp_path):
    """`path` may be what datasets.load_dataset reads: here a local folder of JSON Lines files, streamed row by row
    (the first `limit` rows), as a large dataset on the Hub would be."""
    folder = tmp_path / "reviews"
    folder.mkdir()
    rows = [{"text": r["text"], "label": r["label"]} for r in ROWS]
    for split in ("train", "validation", "test"):
        write_rows(folder, rows, "jsonl", split)
    data = check_data(DATA["hf-dataset"], {"path": str(folder), "streaming": True, "limit": 20,
                                           "tokenizer": {"kind": "word"}})
    assert len(data.train) == len(data.val) == len(data.test) == 20 and data.class_names == ["neg", "pos"]
