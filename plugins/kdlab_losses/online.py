"""Online losses: several networks learn together in one run, with no fixed, pre-trained teacher.

The extra networks (peers, the auxiliary model) are built in :meth:`kdlab.Loss.setup` with ``ctx.build_model`` and
held as submodules of the loss, so the engine's optimizer trains them with the student. Only the student is
evaluated and kept at the end.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import kdlab
from kdlab.functional import masked_cross_entropy, soft_kl


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a registered student architecture, e.g. mlp")
    params: dict[str, Any] = Field(default_factory=dict, description="its params")


def _build(ctx: kdlab.LossSetup, spec: ModelSpec | None) -> nn.Module:
    if spec is not None:
        return ctx.build_model("student", spec.name, spec.params)
    if "name" in ctx.student_config:  # the student's own architecture and params, freshly initialised
        return ctx.build_model("student", ctx.student_config["name"], ctx.student_config.get("params") or {})
    # no config to build from: a copy of the student, re-initialised (identical peers would stay identical)
    peer = copy.deepcopy(ctx.student)
    for module in peer.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return peer


class DMLParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    peers: int = Field(1, ge=1, description="networks trained alongside the student (the paper's main setting: 1, "
                                            "i.e. two networks)")
    peer: ModelSpec | None = Field(None, description="architecture of the peers (default: the student's)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the mimicry term (paper: 1, plain "
                                                      "softmax)")


class DeepMutualLearning(kdlab.Loss):
    """Deep Mutual Learning (Zhang et al. CVPR 2018): K networks trained together from scratch, each with
    ``CE(y, p_k) + 1/(K-1) * sum_{l != k} KL(p_l || p_k)``, the other networks' predictions held fixed in each
    network's term. The student is network 0; the peers are parameters of this loss. Unlabeled rows get the
    mimicry terms only."""

    uses_teacher = False
    live_teacher = True

    def __init__(self, params: DMLParams):
        super().__init__()
        self.p = params
        self.peers = nn.ModuleList()

    def setup(self, ctx: kdlab.LossSetup) -> None:
        self.peers = nn.ModuleList(_build(ctx, self.p.peer) for _ in range(self.p.peers)).to(ctx.device)

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        logits = [inputs.student_logits] + [kdlab.batch.forward(peer, inputs.x).float() for peer in self.peers]
        k, t = len(logits), self.p.temperature
        ces = [masked_cross_entropy(z, inputs.labels) for z in logits]
        kls = [sum(soft_kl(z, other.detach(), t) for j, other in enumerate(logits) if j != i) / (k - 1)
               for i, z in enumerate(logits)]
        total = sum(ces) + sum(kls)
        terms = {"ce": ces[0], "mimicry": kls[0], "peer_ce": torch.stack(ces[1:]).mean(),
                 "peer_mimicry": torch.stack(kls[1:]).mean()}
        return kdlab.LossOutput(total=total, terms=terms)


class AuxParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    aux: ModelSpec | None = Field(None, description="architecture of the auxiliary model (default: the student's)")
    aux_weight: float = Field(1.0, ge=0, description="lambda, the weight of the auxiliary model's CE")
    kd_weight: float = Field(1.0, ge=0, description="weight of the distillation term between the two models")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the distillation term")
    mutual: bool = Field(True, description="distil both ways (true) or only from the auxiliary model into the "
                                           "main one (false)")


class AuxiliaryCoTraining(kdlab.Loss):
    """Auxiliary co-training, in the spirit of collaborative learning (Song and Chai, NeurIPS 2018,
    "Collaborative Learning for Deep Neural Networks"): the student (main) and an auxiliary model are trained
    together with ``CE(y, main) + lambda * CE(y, aux) + kd_weight * T^2 * KL(aux || main)`` (plus
    ``KL(main || aux)`` when ``mutual``), the target side detached. The auxiliary model may be larger than the
    student, acting as an online teacher; it is a parameter of this loss and is discarded after training."""

    uses_teacher = False
    live_teacher = True

    def __init__(self, params: AuxParams):
        super().__init__()
        self.p = params
        self.aux: nn.Module | None = None

    def setup(self, ctx: kdlab.LossSetup) -> None:
        self.aux = _build(ctx, self.p.aux).to(ctx.device)

    def forward(self, inputs: kdlab.LossInputs) -> kdlab.LossOutput:
        main, aux = inputs.student_logits, kdlab.batch.forward(self.aux, inputs.x).float()
        ce = masked_cross_entropy(main, inputs.labels)
        aux_ce = masked_cross_entropy(aux, inputs.labels)
        kd = soft_kl(main, aux.detach(), self.p.temperature)
        total = ce + self.p.aux_weight * aux_ce + self.p.kd_weight * kd
        terms = {"ce": ce, "aux_ce": aux_ce, "kd": kd}
        if self.p.mutual:
            kd_aux = soft_kl(aux, main.detach(), self.p.temperature)
            total = total + self.p.kd_weight * kd_aux
            terms["aux_kd"] = kd_aux
        return kdlab.LossOutput(total=total, terms=terms)
