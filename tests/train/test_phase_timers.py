"""Per-phase timers in metrics.jsonl (docs/training.md, "Phase timers"): the torch backend's steps split into
data wait, forward/backward and optimizer, with the save's blocking time on the line after it
(train_helpers.assert_phase_timers; test_deepspeed.py and test_megatron.py check their backends on their own
bf16 fixtures); peak GPU memory is per logging interval on a GPU and absent on a CPU (never a fake 0)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.distributed as dist
from train_helpers import assert_phase_timers

from nca_scale.train.callbacks import SpeedMonitor
from nca_scale.train.config import from_args


def test_torch_steps_split_into_phases(reference_bf16):
    assert_phase_timers(reference_bf16, saved_at=5)  # its checkpoint_every (tests/train/conftest.py)


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
