"""Fixtures shared by the test modules (plain helpers live in tests/*_helpers.py, tests/data_paths.py
and tests/reporters.py, imported by name)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster, and on a busy shared CPU several threads are far slower.
    A module takes it for every test with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
