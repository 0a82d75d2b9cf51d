"""Per-phase timers in metrics.jsonl: every logged step of every backend splits its step time into data wait,
forward/backward and optimizer, and carries the time the loop was blocked in checkpoint saves since the previous
logged step; peak GPU memory is logged per logging interval on a GPU and absent on a CPU (never a fake 0).

The runs are the bf16 session fixtures of tests/train/conftest.py (they save mid-run), so in the whole suite
these checks cost no training of their own."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from train_helpers import metrics

from nca_scale.train.callbacks import SpeedMonitor
from nca_scale.train.config import from_args

PHASES = ("data_time", "fwd_bwd_time", "optimizer_time")
RUNS = {  # fixture -> the step of its mid-run save (checkpoint_every)
    "reference_bf16": 5,  # torch, one process
    "deepspeed_zero3_bf16": 5,  # DeepSpeed ZeRO-3, 2 ranks
    "megatron_tp2_bf16": 7,  # megatron TP=2, 2 ranks
}


@pytest.mark.parametrize("run", RUNS)
def test_phases_split_the_step_time(run, request):
    steps = [m for m in metrics(request.getfixturevalue(run)) if "loss" in m]
    assert len(steps) == 10
    for m in steps:
        assert all(m[k] >= 0 for k in (*PHASES, "checkpoint_time")), m
        assert m["fwd_bwd_time"] > 0 and m["optimizer_time"] > 0, m
        # the phases are disjoint parts of the step: together never more than it
        assert sum(m[k] for k in PHASES) <= m["step_time"] + 1e-6, m
        assert "peak_memory_gib" not in m  # no GPU: no figure, rather than a made-up 0
    # ... and they cover it: what they leave out is the step's bookkeeping (the LR, the dict of metrics) and
    # waits for the GIL while the prefetch thread makes the next batch
    unaccounted = statistics.median(1 - sum(m[k] for k in PHASES) / m["step_time"] for m in steps)
    assert unaccounted < 0.1, [(m["step_time"], [m[k] for k in PHASES]) for m in steps]


@pytest.mark.parametrize("run", RUNS)
def test_checkpoint_time_is_the_save_after_the_previous_line(run, request):
    """The save after step N blocks the loop before step N + 1, whose line reports it; the other lines report
    only the checkpointer's bookkeeping (microseconds)."""
    saved_at = RUNS[run]
    steps = {m["step"]: m["checkpoint_time"] for m in metrics(request.getfixturevalue(run)) if "loss" in m}
    others = [t for step, t in steps.items() if step != saved_at + 1]
    assert steps[1] == 0.0, steps  # the checkpointer runs after the first line is made
    assert steps[saved_at + 1] > max(0.001, 10 * statistics.median(others)), steps  # a save writes files
    assert max(others) < 0.05, steps


class FakeAllocator:
    """torch.cuda's peak-memory counters, as a caching allocator keeps them: a peak since the last reset."""

    def __init__(self):
        self.peak, self.resets = 0, 0

    def allocate(self, nbytes: int) -> None:
        self.peak = max(self.peak, nbytes)

    def reset(self, *device) -> None:
        self.peak, self.resets = 0, self.resets + 1


def test_peak_memory_is_per_logging_interval_on_a_gpu(monkeypatch):
    alloc = FakeAllocator()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: alloc.peak)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", alloc.reset)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 1)
    cfg = from_args(["configs/train/cpu-tiny.yaml", "log_every=2"]).resolved()
    trainer = SimpleNamespace(cfg=cfg, step=0, checkpoint_time=0.0, should_log=lambda: trainer.step % 2 == 0)
    monitor = SpeedMonitor()
    monitor.pre_train(trainer)
    logged = []
    for step, nbytes in enumerate([3 * 2**30, 1 * 2**30, 2 * 2**30, 2**29], start=1):
        trainer.step = step
        alloc.allocate(nbytes)
        m = {"step_time": 0.5}
        monitor.post_step(trainer, m)
        logged.append(m.get("peak_memory_gib"))
    # steps 2 and 4 are logged: the peaks of steps 1-2 and 3-4, the counter reset after each logged line
    assert logged == [None, 3.0, None, 2.0] and alloc.resets == 2
