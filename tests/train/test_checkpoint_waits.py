"""Rank-0 work never trips the process group's timeout: while global rank 0 chooses and verifies a checkpoint
(minutes at 7B), the other ranks wait on a gloo side group bounded by rank0_timeout_s, not on the training
group, whose dist_timeout_s (NCCL's watchdog on GPUs) can stay short (docs/training.md, "Waits and their
bounds"). And the settings of waits and asynchronous saves are checked before anything starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from train_helpers import FAST, ROOT

from nca_scale.cli import main
from nca_scale.train import checkpoint
from nca_scale.train.launch_record import LAUNCH_ENV

# Imported by every Python process of the job (PYTHONPATH): rank 0 takes DELAY_S longer to choose a checkpoint.
SITECUSTOMIZE = """
import os, time
if os.environ.get("RANK") == "0":
    from nca_scale.train.checkpoint import select as checkpoint_select
    _inner = checkpoint_select.latest_verified
    def _slow(*args, **kwargs):
        time.sleep(float(os.environ["RANK0_DELAY_S"]))
        return _inner(*args, **kwargs)
    checkpoint_select.latest_verified = _slow
"""
TIMEOUT_S, DELAY_S = 4, 10


def test_a_slow_checkpoint_choice_on_rank_0_outlasts_the_group_timeout(reference, tmp_path):
    """Two ranks started by torchrun (as srun would: rank 0 chooses the checkpoint for all) resume the
    reference run with dist_timeout_s=4 while rank 0 takes 10 s longer to choose: the job resumes and
    finishes (with the wait on the training group, rank 1 failed after 4 s)."""
    out = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", checkpoint.root(out))
    saved = checkpoint.step_dir(out, 10)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(hook), "RANK0_DELAY_S": str(DELAY_S)}
    env.pop(LAUNCH_ENV, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "nca_scale.train.worker", "configs/train/cpu-tiny.yaml", f"out={out}", *FAST, "parallel.nproc=2", "steps=11",
           "resume=auto", f"dist_timeout_s={TIMEOUT_S}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"process group: timeout {TIMEOUT_S} s (dist_timeout_s)" in proc.stdout, proc.stdout
    assert f"resumed from {saved} at step 10" in proc.stdout, proc.stdout
    assert checkpoint.latest_name(out) == checkpoint.step_dir(out, 11).name


@pytest.mark.parametrize("overrides, message", [
    (["dist_timeout_s=0"], "dist_timeout_s=0.0 must be > 0 (seconds)"),
    (["rank0_timeout_s=-1"], "rank0_timeout_s=-1.0 must be > 0 (seconds)"),
    (["checkpoint.asynchronous=true", "backend=deepspeed"],
     "checkpoint.asynchronous=true needs backend=megatron or torch (backend=deepspeed saves synchronously)"),
    (["deepspeed.zero_init=false"], "zero_init=false is a DeepSpeed ZeRO-3 setting (backend=torch, zero=0); drop it"),
], ids=["dist-timeout", "rank0-timeout", "async-deepspeed", "zero-init-torch"])
def test_bad_wait_and_async_settings_are_one_line_errors(overrides, message, tmp_path, capsys):
    assert main(["train", "configs/train/cpu-tiny.yaml", f"out={tmp_path / 'run'}", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
