"""kdlab's first-party architectures: ``mlp``, ``cnn1d`` and ``cnn2d``, usable as teacher or student.

Module names are stable (``blocks.<i>``, ``head``) so feature-based losses can name layers by dotted path.
"""
