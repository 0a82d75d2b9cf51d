"""A preemption signal outside Slurm: `nca-scale train` (one process) gets SIGUSR2 mid-run, saves the step it
stops at, records how it stopped and exits with EXIT_PREEMPTED (75); the resumed run records the restart
(the Slurm tests in tests/launch/test_slurm.py cover the same path under srun, for every backend)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from train_helpers import CLI, FAST, ROOT, metrics, train

from nca_scale.train import checkpoint
from nca_scale.train.faults import STEP_TIME_ENV


def test_usr2_saves_the_step_it_stops_at_exits_75_and_the_resume_counts_a_restart(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", **{STEP_TIME_ENV: "0.05"})
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={out}", *FAST, "steps=2000",
           "checkpoint.every=1000"]
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


def _start(out, *extra: str, step_time: float = 0.0) -> subprocess.Popen:
    """`nca-scale train` in the background; `step_time`: every step padded to at least that (faults.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", **{STEP_TIME_ENV: str(step_time)})
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={out}", *FAST, "prefetch=false", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_training(proc: subprocess.Popen, out) -> None:
    deadline = time.time() + 120
    while not (out / "progress.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)


def _data_files(path) -> dict:
    """A checkpoint's file table but DCP's .metadata (its own path and a random save id)."""
    files = json.loads((path / checkpoint.META).read_text())["files"]
    return {name: f for name, f in files.items() if not name.endswith(".metadata")}


@pytest.mark.slow
def test_ctrl_c_at_a_random_step_saves_exits_130_and_resume_auto_ends_bit_identical(tmp_path):
    """Ctrl-C (SIGINT) stops like SIGTERM: the step is finished and saved, exit status 130 with the step named;
    resume=auto then ends with the uninterrupted run's checkpoint bytes and losses. The interrupted run also saves
    on the wall-clock cadence (checkpoint.every_minutes), which changes nothing in the numbers."""
    import random

    steps = 16
    reference = _start(tmp_path / "alone", f"steps={steps}")
    out = tmp_path / "run"
    proc = _start(out, f"steps={steps}", "checkpoint.every_minutes=0.005", step_time=0.15)
    _wait_for_training(proc, out)
    time.sleep(random.uniform(0.2, 1.2))
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, text[-3000:]
    step = json.loads((out / "progress.json").read_text())["step"]
    assert 0 < step < steps and f"interrupted: saved step {step}; `resume=auto` continues" in text, text[-3000:]
    assert checkpoint.latest_name(out) == checkpoint.step_dir(out, step).name
    assert "min since the last save (checkpoint.every_minutes)" in text, text[-3000:]
    resumed = train(out, f"steps={steps}", "prefetch=false", "resume=auto")
    assert f"resumed from {checkpoint.step_dir(out, step)} at step {step}" in resumed.stdout
    assert reference.communicate(timeout=300) and reference.returncode == 0
    final = checkpoint.step_dir(out, steps)
    assert _data_files(final) == _data_files(checkpoint.step_dir(tmp_path / "alone", steps))
    assert [m["loss"] for m in metrics(out) if "loss" in m] == [m["loss"] for m in metrics(tmp_path / "alone")
                                                                 if "loss" in m]


def test_a_second_ctrl_c_aborts_at_once_without_saving(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "steps=400", step_time=30)  # the abort comes long before step 1 would end
    lines = []
    while not (lines and lines[-1].startswith("[nca-scale] backend torch:")):  # the line before the loop starts
        lines.append(proc.stdout.readline())
        assert lines[-1], "".join(lines)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and time.monotonic() - t0 < 10, text[-3000:]
    assert "press Ctrl-C again to abort without saving" in text and "nca-scale: interrupted" in text, text[-3000:]
    assert checkpoint.complete_checkpoints(out) == [] and not (out / "lease.json").exists()


@pytest.mark.slow
def test_ctrl_c_with_two_processes_saves_every_rank_and_exits_130(tmp_path):
    """The launcher passes one Ctrl-C to each rank (torchrun, in a session of its own, never sees it)."""
    out = tmp_path / "run"
    proc = _start(out, "steps=400", "parallel.nproc=2", step_time=0.1)
    _wait_for_training(proc, out)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, text[-3000:]
    step = json.loads((out / "progress.json").read_text())["step"]
    assert "caught SIGINT on rank 1" in text and f"interrupted: saved step {step}" in text, text[-3000:]
    assert checkpoint.latest_name(out) == checkpoint.step_dir(out, step).name and "ChildFailedError" not in text


def test_ranks_read_the_flags_about_once_a_second_and_stop_at_one_step(monkeypatch):
    """Issue 23: the flag all-reduce and its host read (a device sync on a GPU) no longer run every step; two
    ranks with different step times agree on the check interval, and a signal on one rank stops both at the same
    step. A wall-clock save due on one rank's clock is made by both at one step."""
    import threading
    from types import SimpleNamespace

    import torch

    from nca_scale.train import preemption

    barrier, board = threading.Barrier(2), [None, None]
    reads = [0, 0]

    def all_reduce(tensor, op):  # MAX over the two "ranks", each a thread
        rank = int(threading.current_thread().name)
        board[rank] = tensor.clone()
        barrier.wait()
        tensor.copy_(torch.maximum(board[0], board[1]))
        reads[rank] += 1
        barrier.wait()

    monkeypatch.setattr(preemption.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(preemption.time, "monotonic", lambda: clock[0])
    clock = [0.0]
    outcome = [None, None]

    def rank(r: int, step_time: float) -> None:
        saves = []
        cfg = SimpleNamespace(checkpoint=SimpleNamespace(every=0, every_minutes=0.1), total_steps=5000)
        trainer = SimpleNamespace(step=0, cfg=cfg, stop_signal=None, saved_at=clock[0])

        def save_checkpoint() -> None:
            saves.append(trainer.step)
            trainer.saved_at = clock[0]

        trainer.save_checkpoint = save_checkpoint
        trainer.request_stop = lambda s: setattr(trainer, "stop_signal", s)
        cb = preemption.Preemption()
        cb.pre_train(trainer)
        while trainer.stop_signal is None and trainer.step < cfg.total_steps:
            trainer.step += 1
            if r == 0:
                clock[0] += 0.01  # rank 0 keeps the clock: 100 steps a second
            if r == 1 and trainer.step == 1500:
                cb.flag = signal.SIGTERM  # the signal reaches rank 1 only
            cb.post_step(trainer, {"step_time": step_time})
        outcome[r] = (trainer.step, trainer.stop_signal, saves)

    threads = [threading.Thread(target=rank, args=(r, t), name=str(r)) for r, t in ((0, 0.01), (1, 0.012))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    (step0, sig0, saves0), (step1, sig1, saves1) = outcome
    assert step0 == step1 and sig0 == sig1 == signal.SIGTERM and 1500 <= step0 <= 1600, outcome
    assert reads[0] == reads[1] <= 20, reads  # ~ every 100 steps, not 1500 reads
    assert saves0 == saves1 and len(saves0) == 2, outcome  # 15 s of steps, a save due every 6 s
