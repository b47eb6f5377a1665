"""kdlab's own lifecycle observers: plugins on the same hooks a third party implements (``kdlab.hookspecs``), so
the training loop knows none of them by name. :mod:`~kdlab.observers.tracking` records a run in MLflow,
:mod:`~kdlab.observers.progress` draws its progress bar; a study's pruner is in :mod:`kdlab.study.pruning`."""
