"""Fixtures shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import SGD, train


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
    train(out, "steps=10", "backend=megatron", "parallel.nproc=2", "parallel.tp=2", "parallel.sequence_parallel=true", "eval_every=10",
          "eval_batches=1")
    return out


@pytest.fixture(scope="session")
def deepspeed_zero3(tmp_path_factory) -> Path:
    """DeepSpeed ZeRO-3 over 2 ranks, 10 steps, evaluated at the end: a ZeRO check and a transfer source."""
    out = tmp_path_factory.mktemp("deepspeed_zero3") / "run"
    proc = train(out, "steps=10", "backend=deepspeed", "parallel.nproc=2", "deepspeed.zero=3", "eval_every=10", "eval_batches=1")
    (out.parent / "train.log").write_text(proc.stdout)  # what the run says it did (test_deepspeed.py reads it)
    return out


@pytest.fixture(scope="session")
def reference_bf16(tmp_path_factory) -> Path:
    """The single-process torch-backend run in bf16 (autocast, fp32 weights), 10 steps: the baseline for the
    bf16 layouts; its step-5 checkpoint is a bf16 resume source."""
    out = tmp_path_factory.mktemp("ref-bf16") / "run"
    train(out, "steps=10", "precision=bf16", "checkpoint.every=5")
    return out


@pytest.fixture(scope="session")
def reference_sgd(tmp_path_factory) -> Path:
    """The single-process run with plain SGD and no clipping, 10 steps: the update is lr x gradient, so a
    layout that scales gradients by a constant moves the weights by that factor (the scale-sensitive check)."""
    out = tmp_path_factory.mktemp("ref-sgd") / "run"
    train(out, "steps=10", *SGD)
    return out


@pytest.fixture(scope="session")
def deepspeed_zero3_bf16(tmp_path_factory) -> Path:
    """DeepSpeed ZeRO-3 in bf16 (bf16 weights, fp32 master weights and moments) over 2 ranks, 10 steps,
    checkpointed at step 5 and 10: the bf16 layout check and a bf16 resume source."""
    out = tmp_path_factory.mktemp("deepspeed_zero3_bf16") / "run"
    train(out, "steps=10", "precision=bf16", "backend=deepspeed", "parallel.nproc=2", "deepspeed.zero=3", "checkpoint.every=5")
    return out


@pytest.fixture(scope="session")
def megatron_tp2_bf16(tmp_path_factory) -> Path:
    """megatron TP=2 in bf16 (Float16Module, fp32 main params in the distributed optimizer) over 2 ranks,
    10 steps, checkpointed at step 7 and 10: a bf16 layout check and a bf16 resume source."""
    out = tmp_path_factory.mktemp("megatron_tp2_bf16") / "run"
    train(out, "steps=10", "precision=bf16", "backend=megatron", "parallel.nproc=2", "parallel.tp=2", "checkpoint.every=7")
    return out
