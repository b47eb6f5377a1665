"""Text classifiers on the data's token ids, each usable as teacher or student: ``embedding_mlp`` (a bag of words:
embedding, pooling, dense layers), ``bilstm`` (Tang et al. 2019's student) and ``textcnn`` (Kim 2014).

They read the vocabulary size and padding id from the data's metadata (``metadata["vocab_size"]``,
``metadata["pad_id"]``) and take ``input_ids`` (and ``attention_mask``) as keyword arguments, or one int64 tensor of
ids; other named inputs (the raw ``text``) are ignored. Modules are named ``embed``, then the model's own
(``lstm.<i>``, ``convs.<i>``), then ``blocks.<i>`` (the dense layers) and ``head``, for feature-based losses.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


def vocabulary(metadata: dict[str, Any] | None, model: str) -> tuple[int, int]:
    """``(vocab_size, pad_id)`` from the data's metadata, or a ``ValueError`` saying what is missing."""
    metadata = metadata or {}
    if not isinstance(metadata.get("vocab_size"), int):
        raise ValueError(f"{model} embeds token ids: it needs the data's metadata['vocab_size'] (kdlab-text's data "
                         "sources set it; a data source of your own sets it in kdlab.Data(metadata=...))")
    pad_id = metadata.get("pad_id", 0)
    return metadata["vocab_size"], int(pad_id if isinstance(pad_id, int) else 0)


def token_mask(input_ids: Tensor, attention_mask: Tensor | None, pad_id: int) -> Tensor:
    """Boolean ``(N, L)``: the tokens (never empty: a row without tokens keeps its first position)."""
    mask = (input_ids != pad_id) if attention_mask is None else attention_mask.bool()
    first = torch.zeros_like(mask)
    first[:, 0] = True
    return mask | first


def pool(h: Tensor, mask: Tensor, how: str) -> Tensor:
    """Pool ``(N, L, D)`` over the tokens of ``mask``: mean, max or sum."""
    m = mask.unsqueeze(-1)
    if how == "max":
        return h.masked_fill(~m, float("-inf")).amax(1)
    total = (h * m).sum(1)
    return total if how == "sum" else total / m.sum(1).clamp_min(1)


def dense(width: int, hidden: list[int], dropout: float) -> tuple[nn.Sequential, int]:
    blocks = []
    for h in hidden:
        layers: list[nn.Module] = [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        blocks.append(nn.Sequential(*layers))
        width = h
    return nn.Sequential(*blocks), width


class TextModel(nn.Module):
    """Embedding of the ids, an encoder of the subclass, ``blocks`` and ``head``."""

    pad_id: int = 0

    def features(self, input_ids: Tensor, mask: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **unused: Tensor) -> Tensor:
        mask = token_mask(input_ids, attention_mask, self.pad_id)
        return self.head(self.blocks(self.features(input_ids, mask)))


# ---------------------------------------------------------------------------------------------------------------


class EmbeddingMLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embed_dim: int = Field(64, gt=0, description="width of the word embeddings")
    pooling: Literal["mean", "max", "sum"] = Field("mean", description="how the embeddings of a text are pooled "
                                                                       "(word order is lost)")
    hidden: list[int] = Field([64], description="widths of the ReLU dense layers after pooling")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each dense layer")


class EmbeddingMLP(TextModel):
    def __init__(self, p: EmbeddingMLPParams, vocab_size: int, pad_id: int, num_classes: int) -> None:
        super().__init__()
        self.pad_id, self.pooling = pad_id, p.pooling
        self.embed = nn.Embedding(vocab_size, p.embed_dim, padding_idx=pad_id)
        self.blocks, width = dense(p.embed_dim, p.hidden, p.dropout)
        self.head = nn.Linear(width, num_classes)

    def features(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        return pool(self.embed(input_ids), mask, self.pooling)


def make_embedding_mlp(params: EmbeddingMLPParams, *, num_classes: int, metadata: dict[str, Any]) -> nn.Module:
    """A bag of words: word embeddings pooled over the text (mean, max or sum), then ReLU dense layers."""
    return EmbeddingMLP(params, *vocabulary(metadata, "embedding_mlp"), num_classes)


# ---------------------------------------------------------------------------------------------------------------


class BiLSTMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embed_dim: int = Field(128, gt=0, description="width of the word embeddings")
    hidden: int = Field(128, gt=0, description="LSTM units per direction")
    layers: int = Field(1, ge=1, description="stacked bidirectional LSTM layers")
    pooling: Literal["last", "max", "mean"] = Field("last", description="last: the last state of each direction "
                                                                        "(Tang et al.); max or mean over the tokens")
    mlp: list[int] = Field([128], description="widths of the ReLU dense layers before the head")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the embeddings and after each dense layer")


def reverse_tokens(x: Tensor, lengths: Tensor) -> Tensor:
    """Each row's first ``length`` positions in reverse order (padding stays at the end): what a backward LSTM
    reads, without packing sequences (so the model stays traceable and never reads padding)."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    idx = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


class BiLSTMLayer(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fwd = nn.LSTM(width, hidden, batch_first=True)
        self.bwd = nn.LSTM(width, hidden, batch_first=True)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        f, _ = self.fwd(x)
        b, _ = self.bwd(reverse_tokens(x, lengths))
        return torch.cat([f, reverse_tokens(b, lengths)], -1)


class BiLSTM(TextModel):
    def __init__(self, p: BiLSTMParams, vocab_size: int, pad_id: int, num_classes: int) -> None:
        super().__init__()
        self.pad_id, self.pooling = pad_id, p.pooling
        self.embed = nn.Embedding(vocab_size, p.embed_dim, padding_idx=pad_id)
        self.drop = nn.Dropout(p.dropout)
        self.lstm = nn.ModuleList(BiLSTMLayer(p.embed_dim if i == 0 else 2 * p.hidden, p.hidden)
                                  for i in range(p.layers))
        self.blocks, width = dense(2 * p.hidden, p.mlp, p.dropout)
        self.head = nn.Linear(width, num_classes)
        self.hidden = p.hidden

    def features(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.long().sum(1)
        h = self.drop(self.embed(input_ids))
        for layer in self.lstm:
            h = layer(h, lengths)
        if self.pooling != "last":
            return pool(h, mask, self.pooling)
        last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, self.hidden)
        forward_last = h[..., : self.hidden].gather(1, last).squeeze(1)  # the forward LSTM after the last token
        backward_last = h[:, 0, self.hidden:]  # the backward LSTM after reading back to the first token
        return torch.cat([forward_last, backward_last], -1)


def make_bilstm(params: BiLSTMParams, *, num_classes: int, metadata: dict[str, Any]) -> nn.Module:
    """A bidirectional LSTM over word embeddings, its last states (or max/mean pooling), ReLU dense layers: the
    student of Tang et al. 2019."""
    return BiLSTM(params, *vocabulary(metadata, "bilstm"), num_classes)


# ---------------------------------------------------------------------------------------------------------------


class TextCNNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embed_dim: int = Field(128, gt=0, description="width of the word embeddings")
    kernel_sizes: list[int] = Field([3, 4, 5], min_length=1, description="widths of the convolutions, in tokens")
    channels: int = Field(100, gt=0, description="filters per kernel size")
    hidden: list[int] = Field([], description="widths of ReLU dense layers between pooling and head (Kim: none)")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout on the pooled features (and after dense layers)")


class TextCNN(TextModel):
    def __init__(self, p: TextCNNParams, vocab_size: int, pad_id: int, num_classes: int) -> None:
        super().__init__()
        if any(k < 1 for k in p.kernel_sizes):
            raise ValueError(f"kernel_sizes must be positive, got {p.kernel_sizes}")
        self.pad_id, self.kernel_sizes = pad_id, list(p.kernel_sizes)
        self.embed = nn.Embedding(vocab_size, p.embed_dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(p.embed_dim, p.channels, k) for k in p.kernel_sizes)
        self.drop = nn.Dropout(p.dropout)
        self.blocks, width = dense(p.channels * len(p.kernel_sizes), p.hidden, p.dropout)
        self.head = nn.Linear(width, num_classes)

    def features(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        h = self.embed(input_ids).transpose(1, 2)  # (N, D, L); padding embeds to zeros
        pooled = []
        for k, conv in zip(self.kernel_sizes, self.convs):
            # a window starts at every token (zeros past the end), so texts shorter than k still have one
            out = torch.relu(conv(nn.functional.pad(h, (0, k - 1))))
            pooled.append(out.masked_fill(~mask.unsqueeze(1), float("-inf")).amax(2))
        return self.drop(torch.cat(pooled, 1))


def make_textcnn(params: TextCNNParams, *, num_classes: int, metadata: dict[str, Any]) -> nn.Module:
    """Convolutions of several widths over word embeddings, max-pooled over the text (Kim 2014)."""
    return TextCNN(params, *vocabulary(metadata, "textcnn"), num_classes)
