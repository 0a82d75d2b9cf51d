"""What a Slurm task does with its work's Outcome (nca_scale.launch.task): a preemption stop (75 after SIGUSR2)
requeues the job; a diverged run (EXIT_DIVERGED: a non-finite loss) fails it and is never requeued, since the
same loss would come back."""

from __future__ import annotations

import signal

import pytest

from nca_scale.launch import task
from nca_scale.train.entry import Outcome
from nca_scale.train.preemption import EXIT_DIVERGED, EXIT_PREEMPTED


@pytest.mark.parametrize("status, signum", [(EXIT_DIVERGED, None), (EXIT_PREEMPTED, signal.SIGUSR2)])
def test_a_preempted_job_is_requeued_and_a_diverged_one_fails(monkeypatch, status, signum):
    commands = []
    monkeypatch.setattr(task.subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    for name in ("RANK", "SLURM_PROCID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "42")

    def work() -> Outcome:
        return Outcome(status, signum)

    work.argv = ["train", "configs/train/cpu-tiny.yaml"]
    job = task.Task(work, {}, max_restarts=3, limit_min=60, lead_s=0)
    if status == EXIT_PREEMPTED:
        with pytest.raises(SystemExit) as stop:
            job()
        assert stop.value.code == EXIT_PREEMPTED and commands == [["scontrol", "requeue", "42"]]
    else:
        with pytest.raises(RuntimeError, match=r"exited with status 3 \(diverged: a non-finite loss; not requeued\)"):
            job()
        assert commands == []
