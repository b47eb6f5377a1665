"""Entry point ``kdlab-losses`` of the ``kdlab`` group. ``paper=`` is metadata for the generated method docs."""

import kdlab

from .features import ATParams, AttentionTransfer, FitNet, FitNetParams
from .logits import (
    CEParams, CrossEntropy, DKD, DKDParams, HardKD, HardParams, HintonKD, KDParams, LabelSmoothing, LSParams,
)
from .multi import MultiParams, MultiTeacherKD
from .online import AuxiliaryCoTraining, AuxParams, DeepMutualLearning, DMLParams
from .relations import PKT, PKTParams, RKD, RKDParams


@kdlab.hookimpl
def kdlab_register_losses(register):
    register("ce", CrossEntropy, CEParams, "Cross-entropy on labels only: the no-distillation baseline")
    register("kd", HintonKD, KDParams, "Hinton et al. 2015: soft targets at temperature T mixed with labels by alpha",
             paper="Hinton, Vinyals and Dean 2015, Distilling the Knowledge in a Neural Network")
    register("hard", HardKD, HardParams, "The teacher's argmax as pseudo-labels, mixed with the true labels",
             paper="Touvron et al. 2021 (DeiT), Training data-efficient image transformers & distillation through "
                   "attention")
    register("dkd", DKD, DKDParams, "Decoupled KD: target-class and non-target-class KL terms weighted apart",
             paper="Zhao et al. CVPR 2022, Decoupled Knowledge Distillation")
    register("ls", LabelSmoothing, LSParams, "Label smoothing, no teacher: the regularisation-only baseline",
             paper="Szegedy et al. 2016, Rethinking the Inception Architecture for Computer Vision")
    register("fitnet", FitNet, FitNetParams, "A student layer regressed onto a teacher layer through a learned "
             "adapter", paper="Romero et al. ICLR 2015, FitNets: Hints for Thin Deep Nets")
    register("at", AttentionTransfer, ATParams, "Student layers match the teacher's spatial attention maps",
             paper="Zagoruyko and Komodakis ICLR 2017, Paying More Attention to Attention")
    register("rkd", RKD, RKDParams, "The student matches the teacher's pairwise distances and triplet angles",
             paper="Park et al. CVPR 2019, Relational Knowledge Distillation")
    register("pkt", PKT, PKTParams, "The student matches the teacher's cosine-kernel neighbour probabilities",
             paper="Passalis and Tefas ECCV 2018, Learning Deep Representations with Probabilistic Knowledge "
                   "Transfer")
    register("dml", DeepMutualLearning, DMLParams, "Online: the student and peer networks teach each other, no "
             "teacher", paper="Zhang et al. CVPR 2018, Deep Mutual Learning")
    register("aux", AuxiliaryCoTraining, AuxParams, "Online: a main and an auxiliary model co-trained with a joint "
             "loss and distillation between them",
             paper="Song and Chai NeurIPS 2018, Collaborative Learning for Deep Neural Networks")
    register("multi", MultiTeacherKD, MultiParams, "Soft targets of several teachers, averaged or weighted",
             paper="You et al. KDD 2017, Learning from Multiple Teacher Networks")
