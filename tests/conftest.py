"""Shared test setup."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs torch on one thread (restored afterwards).

    The tensors in unit tests are small, so one thread is as fast, and it is immune to CPU
    oversubscription: on 2 cores, two OpenMP threads beside another busy process stall
    each other (20–50× slower). Tests that run a whole config may set `training.threads`.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
