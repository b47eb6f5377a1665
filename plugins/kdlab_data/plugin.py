"""Entry point ``kdlab-data`` of the ``kdlab`` group."""

import kdlab

from .cifar import Cifar10Params, Cifar100Params, make_cifar10, make_cifar100
from .digits import DigitsParams, make_digits
from .imagefolder import ImageFolderParams, make_imagefolder
from .mnist1d import Mnist1dParams, make_mnist1d


@kdlab.hookimpl
def kdlab_register_data(register):
    register("digits", make_digits, DigitsParams)
    register("mnist1d", make_mnist1d, Mnist1dParams)
    register("cifar10", make_cifar10, Cifar10Params,
             "CIFAR-10 from the official python-version files you download (32x32 colour images, 10 classes)")
    register("cifar100", make_cifar100, Cifar100Params,
             "CIFAR-100 from the official python-version files you download (32x32 colour images, 100 classes)")
    register("imagefolder", make_imagefolder, ImageFolderParams,
             "Your own images in root/<class>/<image> folders (PNG, JPEG), resized, with seeded splits")
