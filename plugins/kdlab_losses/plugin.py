"""Entry point ``kdlab-losses`` of the ``kdlab`` group. ``paper=`` is metadata for the generated method docs;
``search_space=`` declares the study dimensions of each loss's own params (keyed by param name, in the syntax of a
study file's ``study.search`` entries), for studies that search ``loss.name`` without spelling every param. Ranges
follow the papers' ablations where they give them."""

import kdlab

from .contrastive import CRD, CRDParams
from .feature_matching import NST, VID, ABParams, ActivationBoundaries, NSTParams, VIDParams
from .features import ATParams, AttentionTransfer, FitNet, FitNetParams
from .logits import (
    DKD,
    CEParams,
    CrossEntropy,
    DKDParams,
    HardKD,
    HardParams,
    HintonKD,
    KDParams,
    LabelSmoothing,
    LSParams,
)
from .multi import MultiParams, MultiTeacherKD
from .online import AuxiliaryCoTraining, AuxParams, DeepMutualLearning, DMLParams
from .relations import (
    PKT,
    RKD,
    CCParams,
    CorrelationCongruence,
    PKTParams,
    RKDParams,
    SimilarityPreserving,
    SPParams,
)
from .review import ReviewKD, ReviewKDParams
from .soft_targets import DIST, NKD, WSLD, DISTParams, NKDParams, TfKDRegularization, TfRegParams, WSLDParams
from .temperatures import CTKD, MLKD, CTKDParams, KDStandardized, KDStdParams, MLKDParams


def _float(low: float, high: float, log: bool = False) -> dict:
    return {"type": "float", "low": low, "high": high, **({"log": True} if log else {})}


def _int(low: int, high: int) -> dict:
    return {"type": "int", "low": low, "high": high}


def _choice(*choices) -> dict:
    return {"type": "categorical", "choices": list(choices)}


_T = _float(1, 10)  # a KD temperature
_ALPHA = _float(0.1, 1.0)  # the soft term's share against the labels


@kdlab.hookimpl
def kdlab_register_losses(register):
    register("ce", CrossEntropy, CEParams, "Cross-entropy on labels only: the no-distillation baseline",
             search_space={})
    register("kd", HintonKD, KDParams, "Hinton et al. 2015: soft targets at temperature T mixed with labels by alpha",
             paper="Hinton, Vinyals and Dean 2015, Distilling the Knowledge in a Neural Network",
             search_space={"temperature": _T, "alpha": _ALPHA})
    register("hard", HardKD, HardParams, "The teacher's argmax as pseudo-labels, mixed with the true labels",
             paper="Touvron et al. 2021 (DeiT), Training data-efficient image transformers & distillation through "
                   "attention", search_space={"alpha": _float(0.1, 0.9)})
    register("dkd", DKD, DKDParams, "Decoupled KD: target-class and non-target-class KL terms weighted apart",
             paper="Zhao et al. CVPR 2022, Decoupled Knowledge Distillation",
             search_space={"alpha": _float(0.5, 2.0), "beta": _float(1.0, 10.0), "temperature": _float(1, 8)})
    register("ls", LabelSmoothing, LSParams, "Label smoothing, no teacher: the regularisation-only baseline",
             paper="Szegedy et al. 2016, Rethinking the Inception Architecture for Computer Vision",
             search_space={"epsilon": _float(0.05, 0.3)})
    register("fitnet", FitNet, FitNetParams, "A student layer regressed onto a teacher layer through a learned "
             "adapter", paper="Romero et al. ICLR 2015, FitNets: Hints for Thin Deep Nets",
             search_space={"beta": _float(1, 1000, log=True)})
    register("at", AttentionTransfer, ATParams, "Student layers match the teacher's spatial attention maps",
             paper="Zagoruyko and Komodakis ICLR 2017, Paying More Attention to Attention",
             search_space={"beta": _float(100, 10000, log=True), "p": _choice(1.0, 2.0, 4.0)})
    register("rkd", RKD, RKDParams, "The student matches the teacher's pairwise distances and triplet angles",
             paper="Park et al. CVPR 2019, Relational Knowledge Distillation",
             search_space={"distance_weight": _float(1, 100, log=True), "angle_weight": _float(1, 100, log=True)})
    register("pkt", PKT, PKTParams, "The student matches the teacher's cosine-kernel neighbour probabilities",
             paper="Passalis and Tefas ECCV 2018, Learning Deep Representations with Probabilistic Knowledge "
                   "Transfer", search_space={"beta": _float(0.1, 100, log=True)})
    register("dml", DeepMutualLearning, DMLParams, "Online: the student and peer networks teach each other, no "
             "teacher", paper="Zhang et al. CVPR 2018, Deep Mutual Learning",
             search_space={"peers": _int(1, 4), "temperature": _float(1, 4)})
    register("aux", AuxiliaryCoTraining, AuxParams, "Online: a main and an auxiliary model co-trained with a joint "
             "loss and distillation between them",
             paper="Song and Chai NeurIPS 2018, Collaborative Learning for Deep Neural Networks",
             search_space={"aux_weight": _float(0.1, 2.0), "kd_weight": _float(0.1, 2.0),
                           "temperature": _float(1, 4), "mutual": _choice(True, False)})
    register("multi", MultiTeacherKD, MultiParams, "Soft targets of several teachers, averaged or weighted",
             paper="You et al. KDD 2017, Learning from Multiple Teacher Networks",
             search_space={"temperature": _T, "alpha": _ALPHA})
    # -- logit methods: reshaped or reweighted soft targets, other temperatures ----------------------------------
    register("dist", DIST, DISTParams, "Pearson correlations of the predictions, per row (inter-class) and per "
             "class over the batch (intra-class), instead of KL",
             paper="Huang et al. NeurIPS 2022, Knowledge Distillation from A Stronger Teacher",
             search_space={"beta": _float(0.5, 2.0), "gamma": _float(0.5, 2.0), "tau": _float(1, 4)})
    register("nkd", NKD, NKDParams, "Normalized KD: a target term and the non-target distribution renormalised "
             "without the target class",
             paper="Yang et al. ICCV 2023, From Knowledge Distillation to Self-Knowledge Distillation: A Unified "
                   "Approach with Normalized Loss and Customized Soft Labels",
             search_space={"temperature": _float(1, 4), "gamma": _float(0.5, 3.0)})
    register("kd_std", KDStandardized, KDStdParams, "KD on z-scored logits: an adaptive temperature per row",
             paper="Sun et al. CVPR 2024, Logit Standardization in Knowledge Distillation",
             search_space={"temperature": _float(1, 5), "kd_weight": _float(1, 10), "ce_weight": _float(0.1, 1.0)})
    register("ctkd", CTKD, CTKDParams, "KD with a learned temperature that ascends the KD loss through a gradient "
             "reversal, on an easy-to-hard cosine curriculum",
             paper="Li et al. AAAI 2023, Curriculum Temperature for Knowledge Distillation",
             search_space={"lambda_max": _float(0.1, 1.0), "curriculum_epochs": _int(1, 30), "alpha": _ALPHA})
    register("mlkd", MLKD, MLKDParams, "Instance-, batch- and class-level alignment of the predictions at several "
             "temperatures", paper="Jin et al. CVPR 2023, Multi-level Logit Distillation",
             search_space={"kd_weight": _float(0.1, 2.0), "ce_weight": _float(0.1, 1.0),
                           "temperatures": _choice([2.0, 3.0, 4.0, 5.0, 6.0], [2.0, 4.0, 6.0], [4.0])})
    register("wsld", WSLD, WSLDParams, "Soft labels weighted per row by the student's and teacher's label losses "
             "(bias-variance trade-off)",
             paper="Zhou et al. ICLR 2021, Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance "
                   "Tradeoff Perspective", search_space={"temperature": _float(1, 8), "alpha": _float(0.5, 4.0)})
    register("tf_reg", TfKDRegularization, TfRegParams, "Teacher-free KD: a hand-designed virtual teacher with "
             "probability a on the correct class, no teacher",
             paper="Yuan et al. CVPR 2020, Revisiting Knowledge Distillation via Label Smoothing Regularization",
             search_space={"a": _float(0.8, 0.99), "temperature": _float(1, 40), "alpha": _float(0.05, 0.95),
                           "weight": _float(0.1, 10, log=True)})
    # -- feature and relation methods ----------------------------------------------------------------------------
    register("sp", SimilarityPreserving, SPParams, "The student matches the teacher's batch similarity matrices "
             "of named layers", paper="Tung and Mori ICCV 2019, Similarity-Preserving Knowledge Distillation",
             search_space={"beta": _float(100, 10000, log=True)})
    register("cc", CorrelationCongruence, CCParams, "The student matches the teacher's correlation between "
             "instances (Gaussian-RBF kernel, Taylor approximation)",
             paper="Peng et al. ICCV 2019, Correlation Congruence for Knowledge Distillation",
             search_space={"gamma": _float(0.1, 1.0), "order": _int(1, 4), "beta": _float(0.01, 100, log=True)})
    register("vid", VID, VIDParams, "A Gaussian likelihood of teacher layers given student layers, learned mean "
             "and per-channel variance",
             paper="Ahn et al. CVPR 2019, Variational Information Distillation for Knowledge Transfer",
             search_space={"beta": _float(0.1, 10, log=True), "init_variance": _float(0.5, 10, log=True)})
    register("crd", CRD, CRDParams, "Contrastive: a row's student and teacher embeddings attract, other rows' "
             "(from a memory bank) repel",
             paper="Tian et al. ICLR 2020, Contrastive Representation Distillation",
             search_space={"beta": _float(0.1, 2.0), "nce_k": _choice(1024, 4096, 16384),
                           "nce_t": _float(0.02, 0.2, log=True), "feat_dim": _choice(64, 128, 256)})
    register("reviewkd", ReviewKD, ReviewKDParams, "Student stages fused from the deepest back (ABF) match the "
             "teacher's stages at several pyramid levels (HCL)",
             paper="Chen et al. CVPR 2021, Distilling Knowledge via Knowledge Review",
             search_space={"weight": _float(0.1, 10, log=True)})
    register("nst", NST, NSTParams, "The distribution of channel activation maps matched in MMD (polynomial "
             "kernel)", paper="Huang and Wang 2017, Like What You Like: Knowledge Distill via Neuron Selectivity "
                              "Transfer", search_space={"beta": _float(5, 500, log=True)})
    register("ab", ActivationBoundaries, ABParams, "Student pre-activations, through a learned connector, on the "
             "teacher's side of zero by a margin",
             paper="Heo et al. AAAI 2019, Knowledge Transfer via Distillation of Activation Boundaries Formed by "
                   "Hidden Neurons", search_space={"margin": _float(0.5, 2.0), "beta": _float(0.1, 10, log=True)})
