"""Entry point ``kdlab-data`` of the ``kdlab`` group."""

import kdlab

from .digits import DigitsParams, make_digits
from .mnist1d import Mnist1dParams, make_mnist1d


@kdlab.hookimpl
def kdlab_register_data(register):
    register("digits", make_digits, DigitsParams)
    register("mnist1d", make_mnist1d, Mnist1dParams)
