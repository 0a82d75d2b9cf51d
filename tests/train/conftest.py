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


@pytest.fixture(scope="session")
def megatron_tp2(tmp_path_factory) -> Path:
    """megatron TP=2 + sequence parallel over 2 ranks, 10 steps, evaluated at the end: a layout check and a
    transfer source."""
    out = tmp_path_factory.mktemp("megatron_tp2") / "run"
    train(out, "steps=10", "backend=megatron", "nproc=2", "tp=2", "sequence_parallel=true", "eval_every=10",
          "eval_batches=1")
    return out


@pytest.fixture(scope="session")
def deepspeed_zero3(tmp_path_factory) -> Path:
    """DeepSpeed ZeRO-3 over 2 ranks, 10 steps, evaluated at the end: a ZeRO check and a transfer source."""
    out = tmp_path_factory.mktemp("deepspeed_zero3") / "run"
    train(out, "steps=10", "backend=deepspeed", "nproc=2", "zero=3", "eval_every=10", "eval_batches=1")
    return out
