"""The torch backend: metrics, DDP equivalence (losses, grad norms, weights, moments; fp32 with Adam and with
plain SGD), exact resume in fp32 and bf16, resume on a different DP size (DCP checkpoints saved at dp=2 and at
dp=1), asynchronous saves, the precision default."""

import dataclasses
import json

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader
from train_helpers import (
    FP32,
    ROOT,
    SGD,
    assert_close,
    assert_same_training,
    final_checkpoint,
    grad_norms,
    losses,
    metrics,
    run_state,
    state,
    train,
    update_error,
)

from nca_scale.train import dist as tdist
from nca_scale.train.backends.torch.format import DCP
from nca_scale.train.config import from_args


def test_metrics_lines(reference):
    lines = metrics(reference)
    steps = [m for m in lines if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 11))
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        assert all(key in m for m in steps), key
    assert steps[-1]["tokens"] == 10 * 8 * 128
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert (reference / "checkpoints" / "step_00000010" / "meta.json").is_file()
    # wandb 0.31 (Go core) has no Python reader for its offline log; its records hold each value's JSON text
    # uncompressed, so every logged loss and grad norm must appear there byte for byte
    (run,) = (reference / "wandb").glob("offline-run-*/run-*.wandb")
    logged = run.read_bytes()
    for m in steps:
        for key in ("loss", "grad_norm"):
            assert json.dumps(m[key]).encode() in logged, (key, m["step"])


def test_eval_lines(reference):
    evals = [m for m in metrics(reference) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [5, 10]
    assert all(abs(m["eval_ppl"] - torch.tensor(m["eval_loss"]).exp().item()) < 1e-3 * m["eval_ppl"] for m in evals)


@pytest.fixture(scope="module")
def ddp2(tmp_path_factory):
    """DDP over 2 ranks, 10 steps, checkpointed at step 5 and 10."""
    out = tmp_path_factory.mktemp("ddp2") / "run"
    train(out, "steps=10", "parallel.nproc=2", "checkpoint.every=5")
    return out


def test_ddp_two_processes_match_one(ddp2, reference):
    assert_same_training(ddp2, reference, FP32)


def test_a_dp2_checkpoint_continues_exactly_at_dp2_and_closely_at_dp1(ddp2, reference, tmp_path):
    """The DCP checkpoint saved at dp=2: both ranks wrote a share of one copy of the state (DCP dedups what DDP
    replicates). Resumed at dp=2 it repeats the uninterrupted run bit for bit (losses, grad norms, weights, Adam
    moments); resumed at dp=1 (read by one rank) it continues like the uninterrupted single-process run within
    the FP32 layout tolerances (the global batches are the same; only the order of floating-point sums differs)."""
    ckpt = ddp2 / "checkpoints/step_00000005"
    shares = {p.name: p.stat().st_size for p in (ckpt / DCP).iterdir() if p.suffix == ".distcp"}
    weights, moments = run_state(ckpt)
    one_copy = 4 * sum(t.numel() for t in [*weights.values(), *moments["exp_avg"].values(), *moments["exp_avg_sq"].values()])
    assert shares.keys() == {"__0_0.distcp", "__1_0.distcp"} and min(shares.values()) > one_copy / 4, shares
    assert sum(shares.values()) < 1.1 * one_copy, (shares, one_copy)

    same = tmp_path / "dp2"
    train(same, "steps=10", "parallel.nproc=2", f"resume={ckpt}")
    assert losses(same) == losses(ddp2)[5:] and grad_norms(same) == grad_norms(ddp2)[5:]
    (w, m), (ref_w, ref_m) = (run_state(r / "checkpoints/step_00000010") for r in (same, ddp2))
    assert all(torch.equal(w[k], ref_w[k]) for k in ref_w)
    assert all(torch.equal(m[k][n], ref_m[k][n]) for k in ref_m for n in ref_m[k])

    one = tmp_path / "dp1"
    train(one, "steps=10", f"resume={ckpt}")
    assert_close(grad_norms(one), grad_norms(reference)[5:], FP32["grad_norm"])
    assert_close(losses(one), losses(reference)[5:], FP32["loss"])
    err = update_error(run_state(final_checkpoint(one))[0], run_state(final_checkpoint(reference))[0], weights)
    assert err[0] <= FP32["weights"], err


def test_ddp_matches_one_process_with_plain_sgd(reference_sgd, tmp_path):
    """The scale-sensitive check: SGD without clipping moves the weights by lr x gradient, so DP gradients
    summed instead of averaged (or counted twice) would double the update. Also: precision=auto resolves to
    fp32 here, and the start-up line says so."""
    out = tmp_path / "dp2-sgd"
    proc = train(out, "steps=10", "parallel.nproc=2", "precision=auto", *SGD)
    assert "precision fp32 (precision=auto without a GPU" in proc.stdout
    assert_same_training(out, reference_sgd, FP32)


def test_bf16_trains_and_resumes_bit_identically(reference_bf16, tmp_path):
    """autocast bf16: the loss falls, and the step-5 checkpoint continued to step 10 repeats the uninterrupted
    run bit for bit (losses, weights, Adam moments)."""
    rest = tmp_path / "rest"
    proc = train(rest, "steps=10", "precision=bf16", f"resume={reference_bf16}/checkpoints/step_00000005")
    assert "precision bf16 (precision=bf16 in the config)" in proc.stdout
    full = losses(reference_bf16)
    assert full[-1] < full[0] - 0.3, full
    assert losses(rest) == full[5:]
    (w, m), (ref_w, ref_m) = (run_state(r / "checkpoints/step_00000010") for r in (rest, reference_bf16))
    assert ref_m["exp_avg"] and all(torch.equal(w[k], ref_w[k]) for k in ref_w)
    assert all(torch.equal(m[k][n], ref_m[k][n]) for k in ref_m for n in ref_m[k])


def test_asynchronous_saves_write_the_synchronous_files(ddp2, tmp_path):
    """checkpoint_async=true at dp=2: the steps go on while a thread per rank writes a copy of the state (DCP
    async_save), rank 0 commits once all are done; the same losses and the same checkpoint files as the
    synchronous run (.metadata but its own path and random save id)."""
    out = tmp_path / "async"
    proc = train(out, "steps=10", "parallel.nproc=2", "checkpoint.every=5", "checkpoint.asynchronous=true")
    assert "saving step 5 in the background" in proc.stdout and "written in the background" in proc.stdout
    assert losses(out) == losses(ddp2)
    for step in (5, 10):
        mine, theirs = (r / f"checkpoints/step_{step:08d}" for r in (out, ddp2))
        files, reference = (json.loads((c / "meta.json").read_text())["files"] for c in (mine, theirs))
        assert files.keys() == reference.keys()
        assert all(files[f] == reference[f] for f in files if not f.endswith(".metadata")), step
        assert _metadata(mine / DCP) == _metadata(theirs / DCP)


def _metadata(path):
    """A DCP directory's metadata without storage_meta (the save's own path and random id)."""
    return dataclasses.replace(FileSystemReader(str(path)).read_metadata(), storage_meta=None)


@pytest.mark.parametrize(("cuda", "pinned", "want"), [
    (False, "auto", "fp32"), (True, "auto", "bf16"), (True, "fp32", "fp32"), (False, "bf16", "bf16")])
def test_precision_auto_is_bf16_on_a_gpu_and_fp32_on_a_cpu(cuda, pinned, want, monkeypatch):
    """precision=auto is the default and follows the one device helper (the GPU is mocked: none here); a
    precision the config sets is kept."""
    monkeypatch.setattr(tdist, "device", lambda: torch.device("cuda" if cuda else "cpu"))
    monkeypatch.chdir(ROOT)  # the config names its model and NCA files relative to the repository
    cfg = from_args(["configs/train/cpu-tiny.yaml", f"precision={pinned}"])
    assert cfg.resolved().precision == want
    assert type(cfg)().precision == "auto"


def test_resume_is_bit_identical_and_may_change_the_dp_size(tmp_path):
    full, split, wider = tmp_path / "full", tmp_path / "split", tmp_path / "wider"
    common = ("schedule.total=6",)  # the split run's schedule is the full run's (megatron/DeepSpeed test dropout)
    train(full, "steps=6", *common)
    train(split, "steps=3", *common)
    train(split, "steps=6", "resume=auto", *common)
    assert losses(split) == losses(full)
    a, b = state(full / "checkpoints/step_00000006"), state(split / "checkpoints/step_00000006")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same checkpoint continued by DDP over 2 ranks: the same global batches, so the same losses up to
    # the order of floating-point reductions
    train(wider, "steps=6", f"resume={split}/checkpoints/step_00000003", "parallel.nproc=2", *common)
    assert_close(losses(wider), losses(full)[3:])
