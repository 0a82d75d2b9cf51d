"""A preemption signal outside Slurm: `nca-scale train` (one process) gets SIGUSR2 mid-run, saves the step it
stops at, records how it stopped and exits with EXIT_PREEMPTED (75); the resumed run records the restart
(the Slurm tests in tests/launch/test_slurm.py cover the same path under srun, for every backend)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from train_helpers import CLI, FAST, ROOT, metrics, train

from nca_scale.train import checkpoint


def test_usr2_saves_the_step_it_stops_at_exits_75_and_the_resume_counts_a_restart(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={out}", *FAST, "steps=2000",
           "checkpoint.every=1000", "min_step_time=0.05"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "progress.json").exists():  # after its first step the handler is in place
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR2)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 75, text[-3000:]
    progress = json.loads((out / "progress.json").read_text())
    step = progress["step"]
    assert progress["stopped"] == "SIGUSR2" and 0 < step < 1000, progress
    assert checkpoint.latest_name(out) == checkpoint.step_dir(out, step).name
    assert "caught SIGUSR2 on rank 0: saving at the end of this step" in text, text[-3000:]
    assert f"stopping at step {step} after SIGUSR2; exit status 75" in text, text[-3000:]

    resumed = train(out, f"steps={step + 1}", "resume=auto")
    assert f"resumed from {checkpoint.step_dir(out, step)} at step {step}" in resumed.stdout, resumed.stdout
    restarts = [m for m in metrics(out) if "restart" in m]
    assert [(m["restart"], m["lost_steps"], m["reason"]) for m in restarts] == [(1, 0, "SIGUSR2")], restarts
