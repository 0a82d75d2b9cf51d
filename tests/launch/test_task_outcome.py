"""What the launchers make of a run's outcome: a Slurm task (nca_scale.launch.task) requeues the job after a
preemption stop (75 after SIGUSR2) and fails it, never requeued, after a divergence (EXIT_DIVERGED: a non-finite
loss, which would come back); `sweep status` shows such a run as DIVERGED."""

from __future__ import annotations

import signal
from pathlib import Path

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


def _diverged_run(tmp_path, monkeypatch):
    """A one-run sweep (spec, run) whose run's progress.json says it diverged at step 3."""
    import yaml

    from nca_scale.launch.sweep import plan as sweep_plan
    from nca_scale.launch.sweep import spec as sweep_spec
    from nca_scale.train import run_files

    monkeypatch.chdir(Path(__file__).parents[2])
    spec = {"train": "configs/train/cpu-tiny.yaml", "sizes": ["cpu-tiny"], "seeds": [0], "seq_len": 128,
            "nca": "configs/nca/tiny.yaml", "arms": [{"arm": "scratch"}],
            "domains": [{"domain": "web", "tokens": [80000]}], "data": {"tokenizer": "configs/data/tokenizer-cpu.yaml"},
            "out": str(tmp_path / "sweep")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    loaded = sweep_spec.load(str(tmp_path / "spec.yaml"))
    run = sweep_plan.plan(loaded)[0]
    Path(run.out).mkdir(parents=True)
    run_files.Progress(3, 3072, 0.0, 0.1, stopped="diverged").write(run.out)
    return loaded, run


def test_sweep_status_shows_a_diverged_run(tmp_path, monkeypatch):
    """A run whose progress.json says it diverged is DIVERGED in `sweep status`, not a failed or pending job."""
    from nca_scale.launch.sweep import status as sweep_status

    loaded, run = _diverged_run(tmp_path, monkeypatch)
    rows, _ = sweep_status.status_rows(loaded)
    assert {r["run"]: r["state"] for r in rows} == {run.name: "DIVERGED"}
    assert "# 1 diverged" in sweep_status.status_table(rows)


@pytest.mark.parametrize("retry", [False, True])
def test_sweep_launch_does_not_resubmit_a_diverged_run_unless_asked(tmp_path, monkeypatch, caplog, retry):
    """The same config and data would diverge at the same step again: `sweep launch` names the run and leaves
    it, and retry_diverged=true lists it as to submit (a dry run: nothing is submitted either way)."""
    from nca_scale.launch.sweep.launch import LaunchOptions, launch

    loaded, run = _diverged_run(tmp_path, monkeypatch)
    with caplog.at_level("INFO", logger="nca_scale"):
        assert launch(loaded, str(tmp_path / "spec.yaml"), LaunchOptions(dry_run=True, retry_diverged=retry)) == 0
    text = caplog.text
    warned = "1 runs diverged" in text and run.name in text and "retry_diverged=true submits them" in text
    assert warned != retry, text
    assert (f"#  {run.name}: nca-scale train" in text) == retry, text
    assert f"0 finished, 0 queued or running, {int(retry)} to submit" in text, text
