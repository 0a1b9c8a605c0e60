"""Fixtures shared by several test modules."""

import os

import pytest
from threadpoolctl import threadpool_limits

# A serving worker freezes the objects alive after each version loads (one full
# collection per load, ~30 ms there); in the test session, which loads versions
# hundreds of times in a far larger heap, that added ~20 s. tests/test_load.py
# turns it on where it is tested.
os.environ.setdefault("ENCORE_FREEZE_GC", "0")


@pytest.fixture(scope="module")
def thread_limits_restored():
    """``create_app`` pins BLAS and OpenMP threads for the whole process (right
    for a serving worker); give the rest of the test session its threads back."""
    with threadpool_limits(limits=None):
        yield
