"""Exceptions shared across the library.

An error that several modules raise and callers catch lives here, once, so
that ``except NotFittedError`` catches it whichever model raised it. Errors
that belong to one module (``FactorError``, ``RepurchaseStateError``,
``CorruptArtifactError``) stay with it.
"""

from __future__ import annotations

__all__ = ["NotFittedError", "TimingFitError", "TimingStateError"]


class NotFittedError(RuntimeError):
    """A method that needs learned state was called before ``fit``."""


class TimingFitError(RuntimeError):
    """A timing model could not be fitted; nothing from this fit may be published."""


class TimingStateError(ValueError):
    """A saved timing model state is malformed or from an unknown schema."""
