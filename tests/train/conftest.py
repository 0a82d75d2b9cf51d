"""Fixtures shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import train


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Path:
    """One single-process torch-backend run of 10 steps, the baseline for the parallel layouts."""
    out = tmp_path_factory.mktemp("ref") / "run"
    # the one test run that also exercises wandb (offline) and evaluation
    train(out, "steps=10", "wandb=offline", "eval_every=5", "eval_batches=1")
    return out
