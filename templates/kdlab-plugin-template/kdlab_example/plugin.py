"""Entry point ``example`` of the ``kdlab`` group: the hook implementations. Each one calls ``register`` once per
component; kdlab owns the registry, the names and the error messages."""

import kdlab

from .components import (
    BlobsParams,
    LinearParams,
    LogitMSE,
    LogitMSEParams,
    WideParams,
    make_blobs,
    make_linear,
    make_wide,
)


@kdlab.hookimpl
def kdlab_register_data(register):
    register("example-blobs", make_blobs, BlobsParams)  # description: the factory docstring's first line


@kdlab.hookimpl
def kdlab_register_teachers(register):
    register("example-wide", make_wide, WideParams)


@kdlab.hookimpl
def kdlab_register_students(register):
    register("example-linear", make_linear, LinearParams)


@kdlab.hookimpl
def kdlab_register_losses(register):
    register("example-logit-mse", LogitMSE, LogitMSEParams, "Ba & Caruana 2014: regress the teacher's logits (MSE)")
