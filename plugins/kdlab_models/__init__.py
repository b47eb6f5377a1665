"""kdlab's first-party architectures: ``mlp``, ``cnn1d``, ``cnn2d`` and ``resnet1d``, usable as teacher or student.

Module names are stable (``blocks.<i>``, ``head``; ``resnet1d``: ``layer<i>``, ``fc``) so feature-based losses can
name layers by dotted path.
"""
