"""DeepSpeed ZeRO-3 builds the model already partitioned (deepspeed.zero.Init, zero_init=true, the default), so
no rank holds the whole model; the initial weights are written into the partitions afterwards. It trains
exactly as the model built whole on every rank first (zero_init=false)."""

from __future__ import annotations

import torch
from train_helpers import deepspeed_state, final_checkpoint, grad_norms, losses, train


def test_zero3_built_partitioned_trains_like_the_model_built_whole(deepspeed_zero3, tmp_path):
    """deepspeed_zero3 (2 ranks, ZeRO-3, 10 steps; zero_init by default) against the same run with zero_init=false:
    losses, gradient norms, final fp32 weights and Adam moments bit for bit."""
    out = tmp_path / "whole"
    proc = train(out, "steps=10", "backend=deepspeed", "nproc=2", "zero=3", "eval_every=10", "eval_batches=1",
                 "zero_init=false")
    assert "built partitioned" not in proc.stdout
    assert losses(out) == losses(deepspeed_zero3) and grad_norms(out) == grad_norms(deepspeed_zero3)
    (weights, moments), (ref_weights, ref_moments) = (deepspeed_state(final_checkpoint(r)) for r in (out, deepspeed_zero3))
    assert weights.keys() == ref_weights.keys() and all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    for k, saved in moments.items():
        assert saved.keys() == ref_moments[k].keys() and all(torch.equal(saved[n], ref_moments[k][n]) for n in saved)


def test_zero3_partitioned_build_says_so(tmp_path):
    """The start-up line of a ZeRO-3 run names the partitioned build (one step, one rank)."""
    proc = train(tmp_path / "run", "steps=1", "backend=deepspeed", "zero=3")
    assert "ZeRO-3: the model is built partitioned over dp=1 (deepspeed.zero.Init)" in proc.stdout, proc.stdout
