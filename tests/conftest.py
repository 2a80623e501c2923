import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread, restored afterwards: on a shared 2-core machine, two OpenMP threads
    that wait for each other under load made the big-model tests up to 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
