"""A fake Engine (nca_scale.train.backends.base.Engine) for in-process tests of the loop: the real Trainer,
callbacks, Saver, commit protocol and run files, around a "model" that is one number.

The weights are a digest of every batch trained on (in order), and the loss a function of them, so a run that
skipped or replayed a batch ends with other weights, and a resumed run ends with the uninterrupted one's. Losses
and faults are scripted: `nonfinite={step: times}` returns NaN at that step `times` times (a transient fault;
ALWAYS for every time: a deterministic one). `save` writes a small real file (so the Saver checksums, commits
and prunes real directories) and `load` reads it back; with `background=True` it returns a FakeWriting that
finishes after `polls` polls, as megatron's and torch's asynchronous saves do. `save_s` makes each save block
the loop that long (a slow filesystem); `clock` (a list of one float) is advanced by `step_s` at every step,
for tests that replace time.monotonic.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from nca_scale.train.backends.base import Writing
from nca_scale.train.data import Batch
from nca_scale.train.speed import StepPhases

ALWAYS = -1
STATE = "fake.json"
MOD = 1_000_003


class FakeWriting(Writing):
    """A background save: its file appears at the `polls`-th poll (every rank's files written)."""

    def __init__(self, path: Path, state: dict, polls: int):
        self.path, self.state, self.left = path, state, polls
        self.abandoned: bool | None = None

    def poll(self) -> bool:
        self.left -= 1
        if self.left > 0:
            return False
        (self.path / STATE).write_text(json.dumps(self.state))
        return True

    def abandon(self, everywhere: bool) -> None:
        self.abandoned = everywhere


class FakeEngine:
    dp_rank, dp_size = 0, 1

    def __init__(self, nonfinite: dict[int, int] | None = None, background: bool = False, polls: int = 2,
                 save_s: float = 0.0, clock: list[float] | None = None, step_s: float = 0.0, on_step=None):
        self.phases = StepPhases()
        self.weights = 0
        self.trained: list[int] = []  # the steps whose batch the weights hold, in order
        self.calls: list[int] = []  # every train_step's step, NaN ones included
        self.saves: list[str] = []  # the directories saved into (staging names)
        self.loads: list[str] = []
        self.nonfinite = dict(nonfinite or {})
        self.asynchronous, self.polls, self.save_s = background, polls, save_s
        self.clock, self.step_s, self.on_step = clock, step_s, on_step

    def loss(self) -> float:
        return 1.0 + self.weights / MOD

    def train_step(self, batch: Batch, step: int, lr: float) -> tuple[float, float]:
        self.phases.start()
        self.calls.append(step)
        if self.clock is not None:
            self.clock[0] += self.step_s
        if self.on_step is not None:
            self.on_step(step)
        left = self.nonfinite.get(step, 0)
        self.phases.mark("fwd_bwd_time")
        if left:
            if left != ALWAYS:
                self.nonfinite[step] = left - 1
            return float("nan"), float("nan")
        digest = sum(int(t.sum()) for t in batch.inputs)
        self.weights = (self.weights * 31 + digest + step + 1) % MOD
        self.trained.append(step)
        self.phases.mark("optimizer_time")
        return self.loss(), 0.5

    def eval_loss(self, batch: Batch) -> float:
        return self.loss() + sum(int(t.sum()) for t in batch.inputs) % 7 / 100

    def state(self) -> dict:
        return {"weights": self.weights, "trained": list(self.trained)}

    def save(self, path: Path) -> FakeWriting | None:
        self.saves.append(path.name)
        if self.save_s:
            time.sleep(self.save_s)
        if self.asynchronous:
            return FakeWriting(path, self.state(), self.polls)
        (path / STATE).write_text(json.dumps(self.state()))
        return None

    def load(self, path: Path, optimizer: bool = True) -> None:
        self.loads.append(path.name)
        state = json.loads((path / STATE).read_text())
        self.weights, self.trained = state["weights"], state["trained"]
