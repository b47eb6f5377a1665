"""Contrastive Representation Distillation: embeddings of the same example in student and teacher attract, those of
other examples repel, the other examples drawn from a memory bank of every training row's embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import kdlab
from kdlab.functional import masked_cross_entropy

from .features import _probe


class CRDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_layer: str = Field("blocks.1", description="dotted module path of the student's embedding layer "
                                                       "(flattened; the paper's: the penultimate layer)")
    teacher_layer: str = Field("blocks.1", description="dotted module path of the teacher's embedding layer")
    feat_dim: int = Field(128, ge=1, description="dimension of the embedding heads (paper: 128)")
    nce_k: int = Field(16384, ge=1, description="negatives per row (paper: 16384; cost grows linearly with it)")
    nce_t: float = Field(0.07, gt=0, description="temperature of the critic exp(<u, v> / T) (paper: 0.07)")
    nce_m: float = Field(0.5, ge=0, lt=1, description="momentum of the memory bank's update (paper: 0.5)")
    beta: float = Field(0.8, ge=0, description="weight of the CRD term (paper: 0.8)")


class Embed(nn.Module):
    """CRD's embedding head: a linear map of the flattened feature, L2-normalised."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(f.flatten(1)), dim=1)


def nce_loss(pos: torch.Tensor, neg: torch.Tensor, n_data: int, eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE loss against noise of probability ``1 / n_data``, from the logs of the critic's scores
    ``P = exp(<u, v> / T) / Z`` of the positives ``pos`` ``(B,)`` and of the negatives ``neg`` ``(B, K)``, each
    already less ``log(c)``, ``c = K/n + eps``:
    ``-(sum_i log(P_i / (P_i + c)) + sum_ij log((K/n) / (P_ij + c))) / B``, which is
    ``(sum_i softplus(-pos_i) + sum_ij softplus(neg_ij) - B K log((K/n) / c)) / B``: one pass over the ``B x K``
    scores (and one back), where dividing, adding and taking logs would take several."""
    k = neg.shape[1]
    noise = k / n_data
    constant = len(neg) * k * math.log(noise / (noise + eps))
    return (F.softplus(-pos).sum() + F.softplus(neg).sum() - constant) / len(neg)


class CRD(kdlab.Loss):
    """Contrastive Representation Distillation (Tian, Krishnan and Isola, ICLR 2020, "Contrastive Representation
    Distillation"): embedding heads map the student's and the teacher's features to ``feat_dim`` unit vectors; a
    memory bank keeps a momentum average of each training row's student and teacher embeddings. Each row's
    student embedding is scored against the teacher memory of the row itself (positive) and of ``K`` other rows
    (negatives), and symmetrically the teacher embedding against the student memory, with the critic
    ``exp(<u, v> / T) / Z`` (``Z`` fixed on the first batch as in the authors' code) and NCE (:func:`nce_loss`):
    ``CE(y, s) + beta * (NCE_s + NCE_t)``. After scoring, the batch's memory rows move to
    ``normalize(m * memory + (1 - m) * embedding)``.

    Rows are identified by :attr:`kdlab.LossInputs.index` (their position in the training rows) and the memory has
    :attr:`kdlab.LossSetup.num_examples` rows. Negatives are drawn uniformly with replacement (the paper's
    ``relax`` sampling) and shared by the rows of a batch: a ``K x feat_dim`` gather and one matrix product instead
    of the authors' ``B x K x feat_dim`` per-row gather, with the same expected loss. Speed: each step scores
    ``2 x B x K`` pairs (two ``B x feat_dim x K`` matrix products forward and two back), 4.2 million at the paper's
    K = 16384 and batch 128, so an epoch of an MLP student takes about 60x ``kd``'s on a CPU
    (``benchmarks/results/loss_speed.md``). That is the method's cost, linear in ``nce_k``: the paper's ablation
    shows accuracy rising with K, so a smaller ``nce_k`` trades some of it for speed."""

    def __init__(self, params: CRDParams):
        super().__init__()
        self.p = params
        self.student_layers = (params.student_layer,)
        self.teacher_layers = (params.teacher_layer,)
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        self.n_data = 0

    def setup(self, ctx: kdlab.LossSetup) -> None:
        if ctx.num_examples <= 0:
            raise kdlab.KdlabError("loss 'crd' keeps a memory bank row per training example and needs their number "
                                   "(LossSetup.num_examples); this engine passed none")
        s, t = _probe(ctx, self.student_layers, self.teacher_layers)
        d = self.p.feat_dim
        self.embed_s = Embed(s[self.student_layers[0]][0].numel(), d).to(ctx.device)
        self.embed_t = Embed(t[self.teacher_layers[0]][0].numel(), d).to(ctx.device)
        self.n_data = ctx.num_examples
        stdv = 1 / math.sqrt(d / 3)
        self.register_buffer("memory_s", (torch.rand(self.n_data, d, device=ctx.device) * 2 - 1) * stdv)
        self.register_buffer("memory_t", (torch.rand(self.n_data, d, device=ctx.device) * 2 - 1) * stdv)
        # log of the normalisation constants Z of the student's and the teacher's scores, set on the first batch
        self.register_buffer("log_z", torch.zeros(2, device=ctx.device))
        self.z_set = False

    def negatives(self, device: torch.device) -> torch.Tensor:
        """``nce_k`` row indices drawn uniformly with replacement."""
        return torch.randint(self.n_data, (self.p.nce_k,), device=device)

    def log_scores(self, v: torch.Tensor, memory: torch.Tensor, index: torch.Tensor, neg: torch.Tensor,
                   shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``<v_i, memory[index_i]> / T - shift`` ``(B,)`` and ``<v_i, memory[neg_j]> / T - shift`` ``(B, K)``:
        the logs of the critic's scores, less ``shift`` (one fused matrix product for the negatives)."""
        pos = (v * memory[index]).sum(1) / self.p.nce_t - shift
        return pos, torch.addmm(-shift, v, memory[neg].T, alpha=1 / self.p.nce_t)

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        if inputs.index is None:
            raise kdlab.KdlabError("loss 'crd' needs each row's position in the training rows (LossInputs.index) "
                                   "to read and update its memory bank; this caller passed index=None")
        index = inputs.index
        v_s = self.embed_s(inputs.student_features[self.student_layers[0]].float())
        v_t = self.embed_t(inputs.teacher_features[self.teacher_layers[0]].float())
        neg = self.negatives(v_s.device)
        sides = ((v_s, self.memory_t), (v_t, self.memory_s))
        if not self.z_set:  # a Python flag, not a read of log_z: no host sync per step
            with torch.no_grad():  # Z = mean(exp(<u, v> / T)) * n on the first batch, as the authors' code sets it
                for side, (v, memory) in enumerate(sides):
                    pos, negs = self.log_scores(v, memory, index, neg, v.new_zeros(()))
                    scores = torch.cat([pos.unsqueeze(1), negs], 1)
                    self.log_z[side] = scores.logsumexp((0, 1)) - math.log(scores.numel()) + math.log(self.n_data)
            self.z_set = True
        log_c = math.log(self.p.nce_k / self.n_data + 1e-7)
        crd = sum(nce_loss(*self.log_scores(v, memory, index, neg, self.log_z[side] + log_c), self.n_data)
                  for side, (v, memory) in enumerate(sides))
        if self.training:
            with torch.no_grad():
                m = self.p.nce_m
                self.memory_s[index] = F.normalize(self.memory_s[index] * m + v_s * (1 - m), dim=1)
                self.memory_t[index] = F.normalize(self.memory_t[index] * m + v_t * (1 - m), dim=1)
        ce = masked_cross_entropy(inputs.student_logits, inputs.labels)
        return kdlab.LossOutput(total=ce + self.p.beta * crd, terms={"ce": ce, "crd": crd})
