"""Shared setup for the NCA generator tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# golden_numpy.py (the independent reference implementation) is imported by name, whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def single_torch_thread():
    """These tests run many small tensor ops; on a loaded 2-core machine torch's intra-op thread pool makes
    each one wait for busy cores (20x slower than one thread). Results do not depend on the thread count.
    Per test, not per "package": a package-scoped fixture of a folder without __init__.py lives until the end
    of the run, so it would also set the thread count of every test collected after this folder."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
