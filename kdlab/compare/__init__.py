"""``kdlab compare FILE``: every method at its tuned best — a study per method, the best setting retrained with
several seeds beside the ``ce`` baseline on the same seeds, and a table of the gains with confidence intervals."""
