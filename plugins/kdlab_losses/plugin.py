"""Entry point ``kdlab-losses`` of the ``kdlab`` group."""

import kdlab

from .logits import CEParams, CrossEntropy, HintonKD, KDParams


@kdlab.hookimpl
def kdlab_register_losses(register):
    register("ce", CrossEntropy, CEParams, "Cross-entropy on labels only: the no-distillation baseline")
    register("kd", HintonKD, KDParams, "Hinton et al. 2015: soft targets at temperature T mixed with labels by alpha")
