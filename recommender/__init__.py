"""Encore's library: data contract, models, metrics and the artifact format.

Nothing in this package knows about HTTP or the command line; ``training`` and
``serving`` both build on it, and the bundle format in
:mod:`recommender.store.bundle` is the only contract between them.
"""

__version__ = "0.1.0"
