"""kdlab-text's models through the conformance kit on real text data (named inputs with raw text bytes), their
padding invariance, and the hf model from an inline config, from a local directory, and with a tokenizer of its
own. Nothing is downloaded: pretrained models and tokenizers are written by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import kdlab_losses.plugin
import kdlab_text.plugin
from kdlab import PluginError
from kdlab.plugins import Plugins
from kdlab.testing import check_data, check_loss, check_model, components_of
from kdlab_text import decode_text
from kdlab_text._extras import quiet_progress
from kdlab_text.models import reverse_tokens

COMPONENTS = {f"{c.kind}:{c.name}": c for c in components_of(kdlab_text.plugin, "kdlab-text")}
TINY_BERT = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32}
#: params that keep each model small
SMALL = {"embedding_mlp": {"embed_dim": 8, "hidden": [8]}, "bilstm": {"embed_dim": 8, "hidden": 8, "mlp": [8]},
         "textcnn": {"embed_dim": 8, "channels": 4, "kernel_sizes": [2, 5]}, "hf": {"config": TINY_BERT}}


@pytest.fixture(scope="module")
def data():
    return check_data(COMPONENTS["data:synthetic-reviews"], {"train_size": 40, "val_size": 20, "test_size": 20,
                                                             "transfer": {"size": 10}})


def save_pretrained_model(folder: Path, texts: list[str], num_labels: int = 2) -> Path:
    """A small BERT sequence classifier and its own WordPiece tokenizer, saved as a pretrained model is."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=120, show_progress=False, special_tokens=[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(fast), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=num_labels, pad_token_id=0)
    torch.manual_seed(0)
    with quiet_progress():  # no tqdm monitor thread left behind (a study in this process would spawn its workers)
        fast.save_pretrained(str(folder))
        BertForSequenceClassification(config).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("name", ["embedding_mlp", "bilstm", "textcnn", "hf"])
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_text_models_conform_on_text_data(kind, name, data):
    model = check_model(COMPONENTS[f"{kind}:{name}"], SMALL[name], data=data)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", ["embedding_mlp", "bilstm", "textcnn"])
def test_logits_do_not_depend_on_padding(name, data):
    model = COMPONENTS[f"student:{name}"].build(COMPONENTS[f"student:{name}"].validate_params(SMALL[name]),
                                                num_classes=2, metadata=data.metadata).eval()
    x = {k: v[:6] for k, v in data.test.x.items()}
    padded = {"input_ids": torch.nn.functional.pad(x["input_ids"], (0, 7)),
              "attention_mask": torch.nn.functional.pad(x["attention_mask"], (0, 7))}
    with torch.no_grad():
        assert torch.allclose(model(**x), model(**padded), atol=1e-5)
        assert torch.allclose(model(x["input_ids"]), model(**x), atol=1e-5)  # one tensor of ids, mask from pad_id


def test_reverse_tokens_reverses_each_row_within_its_length():
    x = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]]).unsqueeze(-1)
    out = reverse_tokens(x, torch.tensor([3, 5])).squeeze(-1)
    assert out.tolist() == [[3, 2, 1, 0, 0], [8, 7, 6, 5, 4]]


def test_models_say_what_metadata_they_need():
    comp = COMPONENTS["student:bilstm"]
    with pytest.raises(PluginError, match=r"metadata\['vocab_size'\]"):
        comp.build(comp.validate_params({}), num_classes=2, metadata={})


def test_losses_conform_on_text_data(data):
    losses = Plugins()
    losses.register(kdlab_losses.plugin, "kdlab-losses")
    for name in ("kd", "aux", "fitnet"):
        check_loss(losses.registry.get("loss", name), data=data)


def test_hf_from_an_inline_config_takes_the_data_vocabulary(data):
    model = check_model(COMPONENTS["student:hf"], {"config": {**TINY_BERT, "max_position_embeddings": 64}}, data=data)
    assert model.tokenizer is None and model.model.config.vocab_size == data.metadata["vocab_size"]
    assert model.model.config.num_labels == 2 and model.model.config.pad_token_id == data.metadata["pad_id"]
    comp = COMPONENTS["student:hf"]
    with pytest.raises(PluginError, match="max_position_embeddings = 4 is below"):
        comp.build(comp.validate_params({"config": {**TINY_BERT, "max_position_embeddings": 4}}), num_classes=2,
                   metadata=data.metadata)


def test_hf_params_are_checked():
    comp = COMPONENTS["student:hf"]
    for params, message in [({}, "give model"), ({"config": {"hidden_size": 8}}, "needs its model_type"),
                            ({"config": {**TINY_BERT, "num_labels": 3}}, "num_labels: not allowed"),
                            ({"config": TINY_BERT, "keep_head": True}, "keep_head keeps a pretrained head")]:
        with pytest.raises(ValueError, match=message):
            comp.validate_params(params)


def test_hf_pretrained_from_a_directory_tokenizes_the_raw_text_itself(data, tmp_path):
    folder = save_pretrained_model(tmp_path / "tiny-bert", decode_text(data.train.x["text"]))
    model = check_model(COMPONENTS["teacher:hf"], {"model": str(folder)}, data=data)
    assert model.tokenizer is not None and model.model.config.num_labels == 2
    x = {k: v[:4] for k, v in data.test.x.items()}
    own = model.tokenizer(decode_text(x["text"]), padding=True, return_tensors="pt")
    with torch.no_grad():
        model.eval()
        expected = model.model(input_ids=own["input_ids"], attention_mask=own["attention_mask"]).logits
        # the data's ids are ignored: the model reads the text
        assert torch.allclose(model(**{**x, "input_ids": torch.zeros_like(x["input_ids"])}), expected, atol=1e-5)
    with pytest.raises(ValueError, match="needs the raw text"):
        model(input_ids=x["input_ids"])
    kept = COMPONENTS["teacher:hf"].build(COMPONENTS["teacher:hf"].validate_params(
        {"model": str(folder), "keep_head": True}), num_classes=2, metadata=data.metadata)
    from transformers import AutoModelForSequenceClassification

    with quiet_progress():
        saved = AutoModelForSequenceClassification.from_pretrained(str(folder))
    assert torch.equal(kept.model.classifier.weight, saved.classifier.weight)  # the pretrained head, kept
    with pytest.raises(PluginError, match="has 2 outputs but the data has 3 classes"):
        COMPONENTS["teacher:hf"].build(COMPONENTS["teacher:hf"].validate_params(
            {"model": str(folder), "keep_head": True}), num_classes=3, metadata=data.metadata)
    data_ids = COMPONENTS["teacher:hf"].build(COMPONENTS["teacher:hf"].validate_params(
        {"model": str(folder), "tokenizer": "data"}), num_classes=2, metadata=data.metadata)
    assert data_ids.tokenizer is None
    with pytest.raises(PluginError, match="could not load it as a sequence classifier"):
        COMPONENTS["teacher:hf"].build(COMPONENTS["teacher:hf"].validate_params(
            {"model": str(tmp_path), "tokenizer": "data"}), num_classes=2, metadata=data.metadata)
