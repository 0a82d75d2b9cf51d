"""The torch backend: metrics, DDP equivalence, exact resume, and resume on a different DP size."""

import torch
from train_helpers import assert_close, losses, metrics, state, train


def test_metrics_lines(reference):
    lines = metrics(reference)
    steps = [m for m in lines if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 11))
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        assert all(key in m for m in steps), key
    assert steps[-1]["tokens"] == 10 * 8 * 128
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert (reference / "checkpoints" / "step_00000010" / "meta.json").is_file()
    assert list((reference / "wandb").glob("offline-run-*/run-*.wandb"))


def test_eval_lines(reference):
    evals = [m for m in metrics(reference) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [5, 10]
    assert all(abs(m["eval_ppl"] - torch.tensor(m["eval_loss"]).exp().item()) < 1e-3 * m["eval_ppl"] for m in evals)


def test_ddp_two_processes_match_one(reference, tmp_path):
    out = tmp_path / "dp2"
    train(out, "steps=10", "nproc=2")
    assert_close(losses(out), losses(reference))


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
    train(wider, "steps=6", f"resume={split}/checkpoints/step_00000003", "nproc=2", *common)
    assert_close(losses(wider), losses(full)[3:])
