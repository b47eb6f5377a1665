"""kdlab's first-party data sources: ``digits`` (scikit-learn's 8x8 digits) and ``mnist1d`` (Greydanus 2020).

Written only against kdlab's public API, as a third-party plugin would be.
"""
