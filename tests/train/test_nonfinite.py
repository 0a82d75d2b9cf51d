"""NaN / inf in the loss or gradients, end to end through `nca-scale train` with real backends: the run stops
with the step named, saves nothing after it and exits EXIT_DIVERGED (3), on one process and on every rank of a
2-rank DeepSpeed run (whose torchrun exits 1: `nca-scale train` reads the divergence from progress.json). The
fault: a learning rate of 1e30 (Adam steps every weight by ~1e30, so step 2 overflows). Rollback, max_rollbacks,
skipped steps across a resume and the loop's other non-finite paths are tested in-process (test_loop.py)."""

from __future__ import annotations

import torch
from train_helpers import FAST, metrics, state, train

from nca_scale.train import checkpoint, run_state
from nca_scale.train.checkpoint import verify as checkpoint_verify
from nca_scale.train.preemption import EXIT_DIVERGED

RUN = [*FAST, "model.n_layers=2", "checkpoint.every=1", "schedule.warmup=0"]
EXPLODE = ["optim.lr=1e30", "steps=4"]


def _finite_checkpoints(out) -> list[int]:
    steps = []
    for path in checkpoint.complete_checkpoints(out):
        assert checkpoint_verify.verify(path) is None
        steps.append(checkpoint.read_meta(path)["step"])
        if checkpoint.read_meta(path)["backend"] == "torch":
            assert all(torch.isfinite(t).all() for t in state(path).values()), path
    return steps


def test_nan_stops_the_run_naming_the_step_and_saves_nothing_poisoned(tmp_path):
    proc = train(tmp_path, *RUN, *EXPLODE, check=False)
    assert proc.returncode == EXIT_DIVERGED == 3, proc.stderr[-3000:]
    assert "[nca-scale] diverged: step 2: loss nan, grad norm nan (non-finite); stopped without saving. Lower " \
           "optim.lr, check the data, or set on_nonfinite=rollback to skip such batches (exit status 3)" \
           in proc.stdout, proc.stdout[-3000:]
    assert "Traceback" not in proc.stderr and "nca-scale: error" not in proc.stderr, proc.stderr[-3000:]
    assert _finite_checkpoints(tmp_path) == [1] and checkpoint.latest_name(tmp_path) == "step_00000001"
    assert [m["step"] for m in metrics(tmp_path)] == [1]
    assert run_state.read(tmp_path).state == "diverged"


def test_nan_on_a_two_rank_deepspeed_run_stops_every_rank(tmp_path):
    proc = train(tmp_path, *RUN, *EXPLODE, "backend=deepspeed", "deepspeed.zero=1", "parallel.nproc=2", check=False)
    assert proc.returncode == EXIT_DIVERGED, proc.stderr[-3000:]  # torchrun's 1, read back as the ranks' 3
    stops = [line for line in proc.stdout.splitlines() if line.startswith("[nca-scale] diverged: step 2: loss nan")]
    assert len(stops) == 2, proc.stdout[-3000:]  # both ranks, same step, no hang
    assert (tmp_path / "checkpoints" / "step_00000001").is_dir() and checkpoint.latest_name(tmp_path) == "step_00000001"
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
