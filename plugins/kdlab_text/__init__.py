"""kdlab's text classification plugin: data sources (local CSV / JSONL / parquet files, Hugging Face datasets, and
a bundled synthetic task generated locally), tokenizers (a model's own, or one trained on the training split),
text models (``embedding_mlp``, ``bilstm``, ``textcnn``, and ``hf``: any Hugging Face sequence classifier) and
Tang et al. (2019)'s transfer-set augmentation. See docs/text.md.

Text data is given to models as named inputs: ``input_ids`` and ``attention_mask`` from the data's tokenizer, and
``text`` (the raw UTF-8 bytes, uint8, zero-padded) so that a model with a tokenizer of its own (a BERT teacher
beside a BiLSTM student) tokenizes for itself. Models take ``**kwargs`` and ignore the inputs they do not use.

The ``embedding_mlp``, ``bilstm`` and ``textcnn`` models and the bundled task need only torch; the ``hf`` model,
trained or pretrained tokenizers, data files and Hugging Face datasets need the ``text`` extra
(``pip install 'kdlab[text]'``). Written only against kdlab's public API, as a third-party plugin would be.
"""

from .encoding import decode_text, encode_text

__all__ = ["decode_text", "encode_text"]
