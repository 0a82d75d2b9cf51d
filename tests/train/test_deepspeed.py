"""The DeepSpeed backend on CPU/gloo with 2 processes: ZeRO 1/2/3 (and offload) reproduce the single process's
losses, grad norms, gathered weights and Adam moments, with plain SGD too; bf16 ZeRO-3 matches the bf16 single
process; resume is bit-exact in fp32 and bf16. (Nothing is JIT-compiled but DeepSpeedCPUAdam for offload, ~90 s
on a fresh machine: cpu_compat keeps DeepSpeed from building its inference-only shm_comm op.)"""

import pytest
import torch
from train_helpers import (
    BF16,
    FP32,
    SGD,
    assert_phase_timers,
    assert_same_training,
    deepspeed_state,
    final_checkpoint,
    grad_norms,
    losses,
    run_state,
    train,
)

DEEPSPEED = ("backend=deepspeed", "parallel.nproc=2")


@pytest.mark.parametrize("zero", [1, 2])
def test_zero_matches_single_process(zero, reference, tmp_path):
    out = tmp_path / "run"
    train(out, "steps=10", *DEEPSPEED, f"deepspeed.zero={zero}")
    assert_same_training(out, reference, FP32)


def test_zero3_matches_single_process(deepspeed_zero3, reference):
    assert_same_training(deepspeed_zero3, reference, FP32)


def test_zero2_matches_single_process_with_plain_sgd(reference_sgd, tmp_path):
    """The scale-sensitive check: SGD without clipping moves the weights by lr x gradient, so gradients
    summed over DP ranks instead of averaged would double the update."""
    out = tmp_path / "sgd"
    train(out, "steps=10", *DEEPSPEED, "deepspeed.zero=2", *SGD)
    assert_same_training(out, reference_sgd, FP32)


def test_bf16_zero3_matches_single_process(deepspeed_zero3_bf16, reference_bf16):
    """bf16 weights (fp32 master weights and moments) against torch autocast bf16: bf16 rounding, not the
    layout, sets the tolerance (BF16; docs/training.md)."""
    assert_same_training(deepspeed_zero3_bf16, reference_bf16, BF16)


def test_phase_timers_split_each_step(deepspeed_zero3_bf16):
    assert_phase_timers(deepspeed_zero3_bf16, saved_at=5)  # its checkpoint_every


def test_bf16_resume_is_bit_identical(deepspeed_zero3_bf16, tmp_path):
    rest = tmp_path / "rest"
    train(rest, "steps=10", *DEEPSPEED, "deepspeed.zero=3", "precision=bf16",
          f"resume={deepspeed_zero3_bf16}/checkpoints/step_00000005")
    assert losses(rest) == losses(deepspeed_zero3_bf16)[5:]
    (w, m), (ref_w, ref_m) = (run_state(r / "checkpoints/step_00000010") for r in (rest, deepspeed_zero3_bf16))
    assert ref_m["exp_avg"] and all(torch.equal(w[k], ref_w[k]) for k in ref_w)
    assert all(torch.equal(m[k][n], ref_m[k][n]) for k in ref_m for n in ref_m[k])


def test_resume_is_bit_identical(tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    full, split = tmp_path / "full", tmp_path / "split"
    common = (*DEEPSPEED, "deepspeed.zero=3", "model.attn_dropout=0.1", "schedule.total=6")
    train(full, "steps=6", *common)
    train(split, "steps=3", *common)
    train(split, "steps=6", "resume=auto", *common)
    assert losses(split) == losses(full)
    a, b = (get_fp32_state_dict_from_zero_checkpoint(str(r / "checkpoints/step_00000006"), tag="ds") for r in (full, split))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(1500)  # three runs after a cold JIT build of DeepSpeedCPUAdam
def test_cpu_offload_matches_and_resumes_exactly(reference, tmp_path):
    """offload=true: ZeRO-2 with the optimizer state and step on the CPU (DeepSpeedCPUAdam, JIT-built once,
    ~90 s). fp32 resume is exact with it (in bf16 it is not: docs/training.md)."""
    full, split = tmp_path / "full", tmp_path / "split"
    common = (*DEEPSPEED, "deepspeed.zero=2", "deepspeed.offload=true", "schedule.total=10")
    train(full, "steps=10", *common, timeout=600)
    assert_same_training(full, reference, FP32)
    train(split, "steps=5", *common)
    train(split, "steps=10", "resume=auto", *common)
    assert losses(split) == losses(full)


# deepspeed.zero.Init (zero_init=true, the default): ZeRO-3 builds the model already partitioned, so no rank holds
# the whole model; the initial weights are written into the partitions afterwards. It must train exactly as the
# model built whole on every rank first (zero_init=false).
def test_zero3_built_partitioned_trains_like_the_model_built_whole(deepspeed_zero3, tmp_path):
    """deepspeed_zero3 (2 ranks, ZeRO-3, 10 steps; zero_init by default) against the same run with zero_init=false:
    losses, gradient norms, final fp32 weights and Adam moments bit for bit."""
    out = tmp_path / "whole"
    proc = train(out, "steps=10", "backend=deepspeed", "parallel.nproc=2", "deepspeed.zero=3", "eval_every=10", "eval_batches=1",
                 "deepspeed.zero_init=false")
    assert "built partitioned" not in proc.stdout
    assert losses(out) == losses(deepspeed_zero3) and grad_norms(out) == grad_norms(deepspeed_zero3)
    (weights, moments), (ref_weights, ref_moments) = (deepspeed_state(final_checkpoint(r)) for r in (out, deepspeed_zero3))
    assert weights.keys() == ref_weights.keys() and all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    for k, saved in moments.items():
        assert saved.keys() == ref_moments[k].keys() and all(torch.equal(saved[n], ref_moments[k][n]) for n in saved)


def test_zero3_partitioned_build_says_so(tmp_path):
    """The start-up line of a ZeRO-3 run names the partitioned build (one step, one rank)."""
    proc = train(tmp_path / "run", "steps=1", "backend=deepspeed", "deepspeed.zero=3")
    assert "ZeRO-3: the model is built partitioned over dp=1 (deepspeed.zero.Init)" in proc.stdout, proc.stdout
