"""An example kdlab plugin. The hook implementations live in :mod:`kdlab_example.plugin`."""

__version__ = "0.1.0"
