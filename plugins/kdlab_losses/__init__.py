"""kdlab's first-party distillation losses (KD methods). Each is a :class:`kdlab.Loss` registered through
``kdlab_register_losses``; the paper is named in each class docstring."""
