import pytest

from swalp.experiments.convex._runner import one_thread as _one_thread


@pytest.fixture
def one_thread():
    """One torch thread, restored afterwards: on a shared 2-core machine, two OpenMP threads
    that wait for each other under load slow the big-model tests down several times."""
    with _one_thread():
        yield
