"""NaN / inf in the loss or gradients: the run stops with the step named (default) and saves nothing after it,
or with on_nonfinite=rollback reloads the newest verified checkpoint and skips the step's batch. Faults: a
learning rate of 1e30 (Adam steps every weight by ~1e30, so step 2 overflows), and a transient fault
injected into the weights in memory before one step (a driver that wraps the torch engine's train_step)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import torch
from train_helpers import FAST, ROOT, losses, metrics, state, train

from nca_scale.train import checkpoint
from nca_scale.train.checkpoint import verify as checkpoint_verify

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
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err == ["nca-scale: error: step 2: loss nan, grad norm nan (non-finite); stopped without saving. Lower "
                   "optim.lr, check the data, or set on_nonfinite=rollback to skip such batches"], proc.stderr
    assert _finite_checkpoints(tmp_path) == [1] and checkpoint.latest_name(tmp_path) == "step_00000001"
    assert [m["step"] for m in metrics(tmp_path)] == [1]


def test_nan_on_a_two_rank_deepspeed_run_stops_every_rank(tmp_path):
    proc = train(tmp_path, *RUN, *EXPLODE, "backend=deepspeed", "deepspeed.zero=1", "parallel.nproc=2", check=False)
    assert proc.returncode == 1  # torchrun's status when its ranks fail (each rank exits 2 with its line)
    stops = [line for line in proc.stderr.splitlines() if line.startswith("nca-scale: error: step 2: loss nan")]
    assert len(stops) == 2, proc.stderr[-3000:]  # both ranks, same step, no hang
    assert (tmp_path / "checkpoints" / "step_00000001").is_dir() and checkpoint.latest_name(tmp_path) == "step_00000001"
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()


def test_rollback_gives_up_after_max_rollbacks(tmp_path):
    proc = train(tmp_path, *RUN, *EXPLODE, "on_nonfinite=rollback", "max_rollbacks=2", check=False)
    assert proc.returncode == 2
    assert proc.stdout.count("rolled back to step_00000001") == 2, proc.stdout
    assert "(non-finite) after 2 rollbacks (max_rollbacks); stopped without saving" in proc.stderr
    assert _finite_checkpoints(tmp_path) == [1]


DRIVER = """
import sys, torch
from nca_scale.cli import main
from nca_scale.train.backends.torch import TorchEngine

bad, train_step = int(sys.argv[1]), TorchEngine.train_step

def faulty(self, batch, step, lr):  # a transient fault: the weights in memory turn NaN once, before one step
    if step == bad and not getattr(TorchEngine, "fired", False):
        TorchEngine.fired = True
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))
    return train_step(self, batch, step, lr)

TorchEngine.train_step = faulty
sys.exit(main(sys.argv[2:]))
"""


def test_rollback_reloads_the_last_checkpoint_and_skips_the_bad_step(tmp_path):
    clean = tmp_path / "clean"
    train(clean, *RUN, "steps=8", "checkpoint.every=2")
    out = tmp_path / "faulty"
    cmd = [sys.executable, "-c", DRIVER, "4", "train", "configs/train/cpu-tiny.yaml", f"out={out}", *RUN, "steps=8",
           "checkpoint.every=2", "on_nonfinite=rollback"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 5: loss nan, grad norm nan (non-finite): rolled back to step_00000004; step 5 will be skipped" \
        in proc.stdout
    steps = [m["step"] for m in metrics(out) if "loss" in m]
    assert steps == [1, 2, 3, 4, 6, 7, 8] and all(math.isfinite(x) for x in losses(out))
    assert losses(out)[:4] == losses(clean)[:4]  # the same run up to the fault
    assert losses(out)[4:] != losses(clean)[5:]  # after it, a run that never trained on batch 5
    assert _finite_checkpoints(out) == [4, 6, 8]
    assert checkpoint.read_meta(checkpoint.step_dir(out, 8))["skipped_steps"] == [4]
