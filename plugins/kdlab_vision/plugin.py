"""Entry point ``kdlab-vision`` of the ``kdlab`` group: each architecture serves as teacher and as student.

Importing this module imports neither torchvision nor timm: their components register either way, and validating
their params says how to install what is missing.
"""

import kdlab

from .cifar import CIFAR_NETS
from .timm_models import TimmParams, make_timm
from .torchvision_models import TorchvisionParams, make_torchvision

_ARCHITECTURES = [
    ("torchvision", make_torchvision, TorchvisionParams),
    ("timm", make_timm, TimmParams),
    *((name, factory, None) for name, (factory, _) in CIFAR_NETS.items()),
]


@kdlab.hookimpl
def kdlab_register_teachers(register):
    for name, factory, params in _ARCHITECTURES:
        register(name, factory, params)


@kdlab.hookimpl
def kdlab_register_students(register):
    for name, factory, params in _ARCHITECTURES:
        register(name, factory, params)
