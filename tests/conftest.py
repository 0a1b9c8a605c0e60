"""Fixtures shared by several test modules."""

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(scope="module")
def thread_limits_restored():
    """``create_app`` pins BLAS and OpenMP threads for the whole process (right
    for a serving worker); give the rest of the test session its threads back."""
    with threadpool_limits(limits=None):
        yield
