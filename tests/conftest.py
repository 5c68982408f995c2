"""Shared test settings."""

import numba
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's torch and numba code on one thread: the 2 cores are shared with the
    workers some tests spawn, and thread contention only slows small problems down."""
    threads, nb_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    numba.set_num_threads(nb_threads)
