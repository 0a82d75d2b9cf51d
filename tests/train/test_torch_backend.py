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


def test_resume_is_bit_identical(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    train(full, "steps=6", "model.attn_dropout=0.1")
    train(split, "steps=3", "model.attn_dropout=0.1")
    train(split, "steps=6", "model.attn_dropout=0.1", "resume=auto")
    assert losses(split) == losses(full)  # dropout active: the per-step RNG is restored too
    a, b = state(full / "checkpoints/step_00000006"), state(split / "checkpoints/step_00000006")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_on_a_different_dp_size_sees_the_same_batches(tmp_path, reference):
    out = tmp_path / "run"
    train(out, "steps=5")
    train(out, "steps=10", "resume=auto", "nproc=2")  # DDP over 2 ranks from the 1-rank checkpoint
    assert_close(losses(out), losses(reference))
