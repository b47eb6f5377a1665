"""Entry point ``kdlab-text`` of the ``kdlab`` group: text data sources, and text models that serve as teacher and
as student.

Importing this module imports neither transformers, tokenizers nor datasets: every component registers either
way, and validating the params of one that needs them says how to install them (``pip install 'kdlab[text]'``).
"""

import kdlab

from .files import TextFilesParams, make_text_files
from .hf import HFParams, make_hf
from .hub import HFDatasetParams, make_hf_dataset
from .models import (
    BiLSTMParams,
    EmbeddingMLPParams,
    TextCNNParams,
    make_bilstm,
    make_embedding_mlp,
    make_textcnn,
)
from .synthetic import SyntheticReviewsParams, make_synthetic_reviews

_ARCHITECTURES = [
    ("embedding_mlp", make_embedding_mlp, EmbeddingMLPParams),
    ("bilstm", make_bilstm, BiLSTMParams),
    ("textcnn", make_textcnn, TextCNNParams),
    ("hf", make_hf, HFParams),
]


@kdlab.hookimpl
def kdlab_register_data(register):
    register("synthetic-reviews", make_synthetic_reviews, SyntheticReviewsParams,
             "Synthetic movie reviews generated locally whose label depends on word order (negation, `but`)")
    register("text-files", make_text_files, TextFilesParams,
             "Text classification from your CSV / JSON Lines / parquet files (text and label columns)")
    register("hf-dataset", make_hf_dataset, HFDatasetParams,
             "A Hugging Face dataset by name or from a save_to_disk folder, optionally streamed")


@kdlab.hookimpl
def kdlab_register_teachers(register):
    for name, factory, params in _ARCHITECTURES:
        register(name, factory, params)


@kdlab.hookimpl
def kdlab_register_students(register):
    for name, factory, params in _ARCHITECTURES:
        register(name, factory, params)
