"""kdlab's model zoo: ``torchvision`` and ``timm`` architectures by name (optionally pretrained), and the CIFAR-style
networks of the knowledge-distillation literature (``resnet20`` .. ``resnet110``, ``resnet8x4``, ``resnet32x4``,
``wrn_16_2``, ``wrn_40_2``, ``vgg8``, ``vgg13``), each usable as teacher or student. See docs/models.md.

The CIFAR networks need only torch; ``torchvision`` and ``timm`` need the ``vision`` extra
(``pip install 'kdlab[vision]'``). Written only against kdlab's public API, as a third-party plugin would be.
"""
