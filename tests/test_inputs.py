"""Inputs that are not one float tensor: int64 token ids and several named tensors, through the conformance kit,
a run (teacher trained and its outputs cached, transfer split, feature capture), data metadata reaching model
factories, and a study with forked workers."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import kdlab
from kdlab import batch
from kdlab.modes import Session, run
from kdlab.testing import check_data, check_loss, check_model, components_of
from kdlab_test_helpers import load_config, set_dotted, tiny_digits_config

VOCAB, LENGTH, CLASSES = 12, 10, 3


class TokensParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    named: bool = Field(True, description="inputs as {input_ids, attention_mask} (false: one int64 tensor)")
    n: int = Field(600, gt=0)
    transfer: int = Field(0, ge=0)


def _tokens(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences of ids 1..VOCAB-1 padded with 0; the class is which of the tokens 1, 2, 3 comes first (word order
    matters, so an average of embeddings cannot tell every case apart)."""
    lengths = torch.randint(4, LENGTH + 1, (n,), generator=gen)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=gen)
    mask = torch.arange(LENGTH)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~mask, 0)
    first = torch.full((n,), LENGTH, dtype=torch.int64)
    label = torch.zeros(n, dtype=torch.int64)
    for c, token in enumerate((1, 2, 3)):
        pos = torch.where(ids == token, torch.arange(LENGTH), LENGTH).min(1).values
        better = pos < first
        first, label = torch.where(better, pos, first), torch.where(better, c, label)
    return ids, mask.long(), label


def make_tokens(params: TokensParams, *, seed: int) -> kdlab.Data:
    """Token-id sequences whose class depends on word order (a test data source)."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int, labelled: bool = True) -> kdlab.Split:
        ids, mask, y = _tokens(n, gen)
        x = {"input_ids": ids, "attention_mask": mask} if params.named else ids
        return kdlab.Split(x, y if labelled else None)

    return kdlab.Data(train=split(params.n), val=split(200), test=split(200), num_classes=CLASSES,
                      transfer=split(params.transfer, labelled=False) if params.transfer else None,
                      metadata={"vocab_size": VOCAB, "pad_id": 0})


class BagParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(16, gt=0)
    recurrent: bool = Field(False, description="a GRU over the sequence instead of a bag of words")


class TokenNet(nn.Module):
    """Embedding (vocabulary size from the data's metadata), a bag of words or a GRU, ``blocks.0`` and ``head``."""

    def __init__(self, params: BagParams, num_classes: int, metadata: dict):
        super().__init__()
        self.embed = nn.Embedding(metadata["vocab_size"], params.dim, padding_idx=metadata["pad_id"])
        self.gru = nn.GRU(params.dim, params.dim, batch_first=True) if params.recurrent else None
        self.blocks = nn.Sequential(nn.Sequential(nn.Linear(params.dim, params.dim), nn.ReLU()))
        self.head = nn.Linear(params.dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **unused: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != 0).float() if attention_mask is None else attention_mask.float()
        h = self.embed(input_ids)
        if self.gru is not None:
            h, _ = self.gru(h)
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return self.head(self.blocks(pooled))


def make_tokennet(params: BagParams, *, num_classes: int, metadata: dict) -> nn.Module:
    """A token classifier: embedding, bag of words or GRU, one hidden layer."""
    return TokenNet(params, num_classes, metadata)


class TokenPlugin:
    @kdlab.hookimpl
    def kdlab_register_data(self, register):
        register("tokens", make_tokens, TokensParams)

    @kdlab.hookimpl
    def kdlab_register_teachers(self, register):
        register("tokennet", make_tokennet, BagParams)

    @kdlab.hookimpl
    def kdlab_register_students(self, register):
        register("tokennet", make_tokennet, BagParams)


@pytest.fixture
def tokens(plugins):
    plugins.register(TokenPlugin(), "test-tokens")
    return plugins


def _config(**overrides) -> dict:
    cfg = tiny_digits_config(**{
        "data": {"name": "tokens", "params": {"named": True}},
        "teacher": {"name": "tokennet", "params": {"dim": 32, "recurrent": True},
                    "training": {"epochs": 12, "batch_size": 32, "optimizer": {"lr": 0.01}}},
        "student": {"name": "tokennet", "params": {"dim": 8}},
        "training.epochs": 6, "training.batch_size": 32, "training.threads": 1, "tracking.enabled": False})
    return set_dotted(cfg, overrides)


@pytest.mark.parametrize("named", [True, False], ids=["named", "ids"])
def test_conformance_kit_accepts_token_ids_and_named_inputs(named):
    comps = {c.kind + ":" + c.name: c for c in components_of(TokenPlugin(), "test-tokens")}
    data = check_data(comps["data:tokens"], {"named": named})
    assert isinstance(data.train.x, dict) == named
    model = check_model(comps["student:tokennet"], data=data)
    assert model.embed.num_embeddings == VOCAB  # the vocabulary came from the data's metadata
    from kdlab.plugins import Plugins

    losses = Plugins()
    import kdlab_losses.plugin

    losses.register(kdlab_losses.plugin, "kdlab-losses")
    for name in ("kd", "dkd", "fitnet"):
        check_loss(losses.registry.get("loss", name), data=data)


def test_conformance_kit_names_a_dtype_the_contract_does_not_take():
    from kdlab.testing import ConformanceError

    class Bad(TokenPlugin):
        @kdlab.hookimpl
        def kdlab_register_data(self, register):
            def make(params, *, seed):
                d = make_tokens(TokensParams(), seed=seed)
                d.train.x["input_ids"] = d.train.x["input_ids"].int()  # int32: not a dtype of the contract
                return d

            register("tokens", make)

    comp = next(c for c in components_of(Bad(), "test-bad") if c.kind == "data")
    with pytest.raises(ConformanceError, match=r"split 'train': x\['input_ids'\] must be a float32 .* or int64"):
        check_data(comp)


def test_conformance_kit_accepts_raw_bytes_beside_token_ids():
    """uint8 inputs (raw text as UTF-8 bytes, for models that tokenize for themselves) pass the data check, and the
    kit's stand-in networks embed them for the loss check."""

    class Bytes(TokenPlugin):
        @kdlab.hookimpl
        def kdlab_register_data(self, register):
            def make(params, *, seed):
                d = make_tokens(TokensParams(), seed=seed)
                for split in d.splits().values():
                    split.x["text"] = (split.x["input_ids"] + 96).to(torch.uint8)  # 'a', 'b', ... as bytes
                return d

            register("tokens", make)

    comps = {c.kind + ":" + c.name: c for c in components_of(Bytes(), "test-bytes")}
    data = check_data(comps["data:tokens"])
    assert data.train.x["text"].dtype == torch.uint8
    check_model(comps["student:tokennet"], data=data)  # a model that ignores the bytes
    from kdlab.plugins import Plugins

    losses = Plugins()
    import kdlab_losses.plugin

    losses.register(kdlab_losses.plugin, "kdlab-losses")
    check_loss(losses.registry.get("loss", "kd"), data=data)


def test_named_inputs_through_a_run_with_a_cached_teacher_and_a_transfer_split(tokens, write_config):
    cfg = _config(**{"data.params.transfer": 300})
    session = Session()
    result = run(load_config(write_config(cfg)), session=session)
    assert result.metrics["teacher_test_accuracy"] > 0.7  # the GRU reads word order
    assert result.metrics["test_accuracy"] > 0.5 and result.teacher.source == "trained"
    (outputs,) = session.outputs.values()
    assert set(outputs) == {"train", "val", "test", "transfer"} and outputs["transfer"].shape == (300, CLASSES)
    (rows,) = session.train_sets.values()  # train and transfer rows joined by name
    assert isinstance(rows.x, dict) and rows.x["input_ids"].shape == (900, LENGTH)
    again = run(load_config(write_config(cfg)))  # a new session: teacher and outputs from the disk cache
    assert again.teacher.source == "cache"
    assert again.metrics["test_accuracy"] == result.metrics["test_accuracy"]


def test_one_tensor_of_ids_and_feature_capture(tokens, write_config):
    cfg = _config(**{"data.params.named": False, "loss": {"name": "fitnet", "params": {
        "student_layer": "blocks.0", "teacher_layer": "blocks.0"}}})
    result = run(load_config(write_config(cfg)))
    assert result.fit.history[-1]["train_hint"] > 0 and result.metrics["test_accuracy"] > 0.4


def test_study_with_forked_workers_on_named_inputs(tokens, write_config, kdlab_home):
    from kdlab.study.runner import StudyOptions, run_study

    cfg = _config(**{"training.epochs": 2, "teacher.training.epochs": 2, "tracking.enabled": True,
                     "tracking.log_model": False})
    cfg["study"] = {"n_trials": 4, "workers": 2, "baseline": False, "log_best_model": False,
                    "search": {"loss.params.alpha": {"type": "float", "low": 0.1, "high": 0.9}},
                    "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}}
    summary = run_study(str(write_config(cfg, "tokens-study.yaml")), StudyOptions(quiet=True))
    assert summary["states"] == {"COMPLETE": 4} and summary["worker_start"] == "fork"


def test_batch_functions_treat_both_forms_alike():
    ids = torch.arange(12).reshape(4, 3)
    named = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for x in (ids, named):
        assert batch.rows(x) == 4
        part = batch.index(x, torch.tensor([3, 1]))
        assert batch.rows(part) == 2 and batch.tensors(part)[next(iter(batch.tensors(x)))][0, 0] == 9
        joined = batch.cat([x, part])
        assert batch.rows(joined) == 6 and batch.equal(batch.index(joined, slice(0, 4)), x)
    seen = {}

    class Echo(nn.Module):
        def forward(self, input_ids, attention_mask):
            seen.update(ids=input_ids, mask=attention_mask)
            return input_ids.float()

    batch.forward(Echo(), named)
    assert seen["ids"] is ids
