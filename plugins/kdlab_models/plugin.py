"""Entry point ``kdlab-models`` of the ``kdlab`` group: each architecture serves as teacher and as student."""

import kdlab

from .nets import CNN1DParams, CNN2DParams, MLPParams, make_cnn1d, make_cnn2d, make_mlp
from .resnet1d import ResNet1DParams, make_resnet1d

_ARCHITECTURES = [("mlp", make_mlp, MLPParams), ("cnn1d", make_cnn1d, CNN1DParams), ("cnn2d", make_cnn2d, CNN2DParams),
                  ("resnet1d", make_resnet1d, ResNet1DParams)]


@kdlab.hookimpl
def kdlab_register_teachers(register):
    for name, factory, params in _ARCHITECTURES:
        register(name, factory, params)


@kdlab.hookimpl
def kdlab_register_students(register):
    # stackable: trials of these students can train as one batched model (kdlab.stacking); BatchNorm keeps its
    # running statistics per member (stacked buffers updated under vmap), dropout draws per member
    for name, factory, params in _ARCHITECTURES:
        register(name, factory, params, stackable=True)
