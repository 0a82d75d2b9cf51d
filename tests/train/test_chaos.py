"""Chaos: kill -9 a training run at random moments (during start-up and resume, between steps, inside the
checkpoint commit), restart it with resume=auto each time, and check that

* every checkpoint directory ever left under OUT/checkpoints/step_N verifies against its manifest and holds
  exactly the uninterrupted run's model and optimizer state at step N, and `latest` names a good one;
* the final weights and optimizer state equal the uninterrupted run's bit for bit, and metrics.jsonl holds its
  losses.

`make test` runs a short version (3 kills of one process, 1 kill inside a save of a 2-process DDP run); `make chaos`
(NCA_SCALE_CHAOS=1) kills one process 20 times and a 2-process run 6 times. NCA_SCALE_TEST_SAVE_PAUSE widens the windows between the commit's
steps (checkpoint._pause_for_tests) so kills land inside them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import torch
from train_helpers import CLI, FAST, ROOT, metrics, train

from nca_scale.train import checkpoint

FULL = os.environ.get("NCA_SCALE_CHAOS") == "1"
PAUSE_S = 0.3
STEPS = 60 if FULL else 12  # long enough for every kill to land after some progress
RUN = [*FAST, "model.n_layers=2", f"steps={STEPS}", "checkpoint_every=2"]


def _start(out: Path, log, extra: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", NCA_SCALE_TEST_SAVE_PAUSE=str(PAUSE_S))
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={out}", *RUN, "keep_last=3", "resume=auto", *extra]
    # a process group of its own (the CLI and torchrun), which _kill SIGKILLs
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _committed_step(out: Path) -> int:
    done = checkpoint.complete_checkpoints(out)
    return checkpoint.read_meta(done[-1])["step"] if done else 0


def _step_since(out: Path, t0: float) -> int:
    """The step this attempt has reached (progress.json written after t0), -1 before its first step."""
    path = out / "progress.json"
    try:
        return json.loads(path.read_text())["step"] if path.stat().st_mtime >= t0 else -1
    except (FileNotFoundError, ValueError):
        return -1


def _saving_since(out: Path, t0: float) -> str | None:
    """The staging directory a save of this attempt is writing, if any."""
    base = checkpoint.root(out)
    for p in base.iterdir() if base.is_dir() else []:
        try:
            if p.name.endswith(checkpoint.STAGING) and p.stat().st_mtime >= t0:
                return p.name
        except FileNotFoundError:  # renamed into place meanwhile
            continue
    return None


def _tree(root: int) -> set[int]:
    """`root` and its descendants (torchrun puts each rank in a session of its own)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # not a zombie
    except (OSError, IndexError):
        return False


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group only; the ranks must die with it (preemption.die_with_parent)."""
    tree = _tree(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while alive := {pid for pid in tree - {proc.pid} if _running(pid)}:
        assert time.monotonic() < deadline, f"orphan processes outlived the kill: {alive}"
        time.sleep(0.05)


def _kill_at_random(proc: subprocess.Popen, out: Path, rng: random.Random, modes: list[str]) -> str | None:
    """Wait for a random moment of a chosen kind, then SIGKILL the whole process group; None if the run
    finished first. startup: while importing, building or resuming; step: after 1-3 steps past the resumed
    one; save: inside a checkpoint commit of this attempt, 0-3 commit windows in."""
    t0 = time.time()
    mode, delay, target = rng.choice(modes), rng.uniform(0, 3.2 * PAUSE_S), _committed_step(out) + rng.randint(1, 3)
    while proc.poll() is None:
        startup = mode == "startup" and time.time() - t0 > 1 + 4 * delay
        step = mode == "step" and _step_since(out, t0) >= target
        saving = mode == "save" and _saving_since(out, t0)
        if startup or step or saving:
            time.sleep(delay if saving else delay / 8)
            _kill(proc)
            if startup:
                return f"startup ({time.time() - t0:.1f} s)"
            return f"{mode} ({saving or 'step ' + str(_step_since(out, t0))})"
        time.sleep(0.01)
    return None


def _state(path: Path) -> dict:
    return torch.load(path / "state.pt", weights_only=True)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _audit(out: Path, reference: Path, moment: str) -> None:
    """No checkpoint that would load wrongly: each committed one verifies and equals the reference's."""
    for path in checkpoint.complete_checkpoints(out):
        assert checkpoint.verify(path) is None, (moment, path)
        assert _same(_state(path), _state(reference / "checkpoints" / path.name)), (moment, path)
    latest = checkpoint.latest_name(out)
    if latest is not None:
        assert checkpoint.verify(checkpoint.root(out) / latest) is None, (moment, latest)


def _losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(out) if "loss" in m}


def _chaos(tmp_path: Path, kills: int, extra: list[str], seed: int, modes: list[str]) -> None:
    reference = tmp_path / "reference"
    train(reference, *RUN, "keep_last=100", *extra)  # uninterrupted; keeps every checkpoint for the audit
    out, rng, moments = tmp_path / "chaos", random.Random(seed), []
    with (tmp_path / "chaos.log").open("w") as log:
        while len(moments) < kills:
            proc = _start(out, log, extra)
            moment = _kill_at_random(proc, out, rng, modes)
            if moment is None:  # finished before the kill: the run is complete
                assert proc.returncode == 0, (tmp_path / "chaos.log").read_text()[-3000:]
                break
            moments.append(moment)
            _audit(out, reference, moment)
        proc = _start(out, log, extra)
        assert proc.wait(timeout=600) == 0, (tmp_path / "chaos.log").read_text()[-3000:]
    _audit(out, reference, "end")
    final = checkpoint.step_dir(out, STEPS)
    assert _same(_state(final), _state(reference / "checkpoints" / final.name))
    assert _losses(out) == _losses(reference)
    print(f"{len(moments)} kills: {moments}")


def test_kill_nine_during_training_and_saves_loses_nothing(tmp_path):
    _chaos(tmp_path, 20 if FULL else 3, [], seed=1, modes=["startup", "step", "save", "save"])


def test_kill_nine_of_a_two_process_run_loses_nothing(tmp_path):
    _chaos(tmp_path, 6 if FULL else 1, ["nproc=2"], seed=2, modes=["step", "save", "save"] if FULL else ["save"])
