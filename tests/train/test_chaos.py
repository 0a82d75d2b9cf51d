"""Chaos: kill -9 a training run at random moments (during start-up and resume, between steps, inside each
window of the checkpoint commit), restart it with resume=auto each time, and check that

* exactly the planned number of kills was made (a run that finishes first fails the test);
* every checkpoint directory ever left under OUT/checkpoints/step_N verifies against its manifest and holds
  exactly the uninterrupted run's files at step N (model and optimizer state, byte for byte), and `latest`
  names a good one;
* the final checkpoint equals the uninterrupted run's and metrics.jsonl holds its losses.

The same holds for megatron's `dist/` and DeepSpeed's `ds/` checkpoints, which are also damaged on disk (a
byte flipped, a file truncated or deleted, in every file of the format): the newest one is reported and the
previous one used; a restart past a corrupted newest checkpoint ends with the uninterrupted run's losses and files.

`make test` runs a short version (3 kills of one torch process; 2 kills of a 2-process DDP run, one as soon as
torchrun has started the ranks and one inside a save; 1 kill inside the commit of the last checkpoint of
2-process megatron (TP=2) and DeepSpeed (ZeRO-2) runs; 1 kill inside the background write of 2-process
asynchronous megatron and torch saves, once the writers have written their data files); `make chaos` (NCA_SCALE_CHAOS=1) kills one torch process 20 times, a 2-process DDP run 6 times,
2-process megatron (TP=2) and DeepSpeed (ZeRO-2) runs 5 times each, and 2-process asynchronous megatron and
torch runs in each of their 3 background writes.
NCA_SCALE_TEST_SAVE_PAUSE widens the windows between the commit's steps (faults.pause_for_tests) so
kills land inside them; the test reads the pause lines from the run's output to know which window it is in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_checkpoint_safety import SITECUSTOMIZE
from train_helpers import CLI, FAST, ROOT, metrics, train

from nca_scale.train import checkpoint
from nca_scale.train.checkpoint import select as checkpoint_select
from nca_scale.train.checkpoint import verify as checkpoint_verify

FULL = os.environ.get("NCA_SCALE_CHAOS") == "1"
PAUSE_S = 0.3
EVERY = 2  # checkpoint.every
# Where a kill inside a save lands: while the backend writes its files, then the three windows of
# checkpoint_commit.commit (after the files' fsync, after the manifest, after the rename and before `latest` moves).
WINDOWS = ("writing", "files written", "manifest written", "renamed")


@dataclasses.dataclass
class Chaos:
    steps: int
    extra: list[str]

    @property
    def nproc(self) -> int:
        return int(next((e.split("=")[1] for e in self.extra if e.startswith("parallel.nproc=")), 1))

    def run(self) -> list[str]:
        return [*FAST, "model.n_layers=2", f"steps={self.steps}", f"checkpoint.every={EVERY}", *self.extra]


def _start(out: Path, log, chaos: Chaos) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", NCA_SCALE_TEST_SAVE_PAUSE=str(PAUSE_S))
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={out}", *chaos.run(), "checkpoint.keep_last=3", "resume=auto"]
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


def _saving_since(out: Path, step: int, t0: float) -> bool:
    """Whether a save of `step` by this attempt has begun (its staging directory is newer than t0)."""
    try:
        return checkpoint.staging_dir(out, step).stat().st_mtime >= t0
    except FileNotFoundError:
        return False


def _pauses(log: Path, offset: int, name: str) -> list[str]:
    """The windows of the commit of checkpoint `name` entered so far, from the pause lines
    (checkpoint_commit.pause_for_tests) in the run's output after `offset`."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    mark = f"test pause: {name}: "
    return [line.split(mark, 1)[1].strip() for line in text.splitlines() if mark in line]


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


def _describe(pid: int) -> str:
    """pid, parent and command line, for the report of an orphan."""
    try:
        parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        return f"{pid} (parent {parent}): " + Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200]
    except (OSError, IndexError):
        return f"{pid} (gone)"


def _kill(proc: subprocess.Popen) -> float:
    """SIGKILL the launcher's process group only; the ranks must die with it (procs.die_with_parent; a rank
    killed before it got there dies when it does, after its imports), and so must the processes they fork
    (megatron's checkpoint writers). Returns the time by which every process of the tree was gone: a writer
    inside a write() when the kill reached it finishes that call, so a file's mtime may pass the kill itself."""
    tree = _tree(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while alive := {pid for pid in tree - {proc.pid} if _running(pid)}:
        assert time.monotonic() < deadline, f"orphan processes outlived the kill: {[_describe(p) for p in alive]}"
        time.sleep(0.05)
    return time.time()


@dataclasses.dataclass
class Plan:
    """One attempt's kill, drawn before the attempt starts (the same seed and kinds give the same plans).

    spawn: as soon as torchrun has started its ranks (`target` processes in the launcher's tree), before they
    can watch their launcher; startup: at `delay` seconds after the start (importing, building, resuming) or
    at the attempt's first step, whichever comes first; step: `lag` after the attempt reports step `target`; save: in the save of
    step `target`, in window `window`, `lag` after it opens. Targets never reach the end of the run (the step
    target stops one short, a kill in the last save is made before its rename unless it is the last kill), so
    every planned kill finds a running process."""

    mode: str
    target: int
    window: str
    delay: float
    lag: float
    killed_at: float = 0.0  # set by wait_and_kill: when the killed tree was gone

    @classmethod
    def draw(cls, rng: random.Random, mode: str, chaos: Chaos, committed: int, last: bool) -> Plan:
        ahead, saves_ahead, steps = rng.randint(1, 3), rng.randint(2, 3), chaos.steps
        window, delay, lag = rng.choice(WINDOWS), rng.uniform(0.5, 4.0), rng.uniform(0.0, 0.5 * PAUSE_S)
        if mode == "spawn":
            return cls(mode, chaos.nproc + 2, "", delay, 0.0)  # nca-scale train, torchrun, the ranks
        if mode == "step":
            return cls(mode, min(committed + ahead, steps - 1), "", delay, lag / 8)
        target = min(committed + EVERY * saves_ahead, steps)  # at least one save of this attempt commits first
        if target == steps and window == "renamed" and not last:  # that kill would leave nothing to kill
            window = "manifest written"
        return cls(mode, target, window, delay, lag if window != "writing" else lag / 8)

    def wait_and_kill(self, proc: subprocess.Popen, out: Path, log: Path) -> str | None:
        """Kill at the planned moment; what it was, or None if the run finished first."""
        t0, start, name = time.time(), log.stat().st_size, checkpoint.step_dir(out, self.target).name
        while proc.poll() is None:
            if self.mode == "spawn" and len(tree := _tree(proc.pid)) >= self.target:
                _kill(proc)
                assert _step_since(out, t0) == -1, "ranks killed right after their start trained on as orphans"
                return f"spawn ({len(tree)} processes)"
            if self.mode == "startup" and (time.time() - t0 > self.delay or _step_since(out, t0) >= 0):
                reached = _step_since(out, t0)
                _kill(proc)
                return f"startup ({time.time() - t0:.1f} s, " + (f"at step {reached})" if reached >= 0 else "no step)")
            if self.mode == "step" and _step_since(out, t0) >= self.target:
                time.sleep(self.lag)
                _kill(proc)
                return f"step (after step {_step_since(out, t0)})"
            if self.mode == "save":
                entered = _pauses(log, start, name)
                if self.window in entered or self.window == "writing" and _saving_since(out, self.target, t0):
                    time.sleep(self.lag)
                    self.killed_at = _kill(proc)
                    entered = _pauses(log, start, name)
                    return f"save of step {self.target} ({entered[-1] if entered else 'writing'})"
            time.sleep(0.01)
        return None


def _dcp_metadata(path: Path):
    """torch DCP's .metadata without its storage_meta (the save's own path and a random save id)."""
    with path.open("rb") as f:
        return dataclasses.replace(pickle.load(f), storage_meta=None)  # a file this test's run wrote


def _same_files(path: Path, reference: Path) -> bool:
    """The two checkpoints hold the same bytes (both verified: their manifests describe their files)."""
    mine, theirs = checkpoint.read_meta(path)["files"], checkpoint.read_meta(reference)["files"]
    if mine.keys() != theirs.keys():
        return False
    for name, entry in mine.items():
        if name.endswith(".metadata"):
            if _dcp_metadata(path / name) != _dcp_metadata(reference / name):
                return False
        elif entry != theirs[name]:
            return False
    return True


def _audit(out: Path, reference: Path, moment: str) -> None:
    """No checkpoint that would load wrongly: each committed one verifies and equals the reference's."""
    for path in checkpoint.complete_checkpoints(out):
        assert checkpoint_verify.verify(path) is None, (moment, path)
        assert _same_files(path, reference / "checkpoints" / path.name), (moment, path)
    complete = [p.name for p in checkpoint.complete_checkpoints(out)]
    latest = checkpoint.latest_name(out)
    # `latest` moves after a commit, so it can be missing only while the first commit has not finished, and it
    # names a committed checkpoint, the newest or (killed between the rename and its move) the one before
    if latest is None:
        assert len(complete) <= 1, (moment, complete)
    else:
        assert latest in complete[-2:], (moment, latest, complete)


def _losses(out: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(out) if "loss" in m}


def _reference(out: Path, chaos: Chaos) -> Path:
    train(out, *chaos.run(), "checkpoint.keep_last=100")  # uninterrupted; keeps every checkpoint for the audit
    return out


def _kill_repeatedly(out: Path, log: Path, reference: Path, chaos: Chaos, kills: int, seed: int,
                     modes: list[str]) -> list[str]:
    """Start, kill at a planned moment and audit, `kills` times; the run must not finish before any of them."""
    rng, moments = random.Random(seed), []
    with log.open("a") as sink:
        while len(moments) < kills:
            mode = modes[len(moments) % len(modes)]  # each kind in turn
            plan = Plan.draw(rng, mode, chaos, _committed_step(out), last=len(moments) == kills - 1)
            moments.append(_kill_once(_start(out, sink, chaos), plan, out, log))
            _audit(out, reference, moments[-1])
    return moments


def _kill_once(proc: subprocess.Popen, plan: Plan, out: Path, log: Path) -> str:
    moment = plan.wait_and_kill(proc, out, log)
    assert moment is not None, f"the run finished before its planned kill ({plan}):\n{log.read_text()[-3000:]}"
    return moment


def _finish(out: Path, reference: Path, chaos: Chaos, log: Path) -> None:
    """Restart to the end: every checkpoint, the final one and the losses are the uninterrupted run's."""
    with log.open("a") as sink:
        assert _start(out, sink, chaos).wait(timeout=600) == 0, log.read_text()[-3000:]
    _audit(out, reference, "end")
    final = checkpoint.step_dir(out, chaos.steps)
    assert _same_files(final, reference / "checkpoints" / final.name)
    assert _losses(out) == _losses(reference) and len(_losses(out)) == chaos.steps


def _chaos(tmp_path: Path, reference: Path, chaos: Chaos, kills: int, seed: int, modes: list[str]) -> None:
    out, log = tmp_path / "chaos", tmp_path / "chaos.log"
    moments = _kill_repeatedly(out, log, reference, chaos, kills, seed, modes)
    _finish(out, reference, chaos, log)
    assert len(moments) == kills
    print(f"{len(moments)} kills: {moments}")


TORCH = Chaos(60 if FULL else 12, [])  # long enough for every kill to land after some progress


def test_kill_nine_during_training_and_saves_loses_nothing(tmp_path):
    reference = _reference(tmp_path / "reference", TORCH)
    _chaos(tmp_path, reference, TORCH, 20 if FULL else 3, seed=1, modes=["startup", "step", "save", "save"])


def test_kill_nine_of_a_two_process_run_loses_nothing(tmp_path):
    two = Chaos(TORCH.steps, ["parallel.nproc=2"])
    reference = _reference(tmp_path / "reference", two)
    _chaos(tmp_path, reference, two, 6 if FULL else 2, seed=2, modes=["spawn", "save", "step", "save"])


# ---- megatron's dist/ and DeepSpeed's ds/ checkpoints ------------------------------------------------
BACKENDS = {  # two processes; make test: 6 steps (checkpoints at 2, 4, 6); make chaos: 12 steps
    "megatron": ["backend=megatron", "parallel.nproc=2", "parallel.tp=2"],
    "deepspeed": ["backend=deepspeed", "deepspeed.zero=2", "parallel.nproc=2"],
}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _every_file_is_guarded(out: Path) -> None:
    """Each file of the newest checkpoint, flipped, truncated or deleted, makes it unusable with one line naming
    the file, and the previous one is used (the damage is undone after each case)."""
    *_, older, newest = checkpoint.complete_checkpoints(out)
    files = sorted(checkpoint.read_meta(newest)["files"])
    for name in files:
        for damage, problem in ((_flip_byte, f"({name} does not match its sha256 in meta.json)"),
                                (_truncate, f"({name} has "), (Path.unlink, f"({name} is missing)")):
            original = (newest / name).read_bytes()
            damage(newest / name)
            lines = []
            assert checkpoint_select.latest_verified(out, lines.append) == older, (name, damage)
            assert len(lines) == 1 and lines[0].startswith(f"checkpoint {newest} is unusable {problem}") \
                and lines[0].endswith("; falling back to the previous one"), (name, lines)
            (newest / name).write_bytes(original)
    assert checkpoint_verify.verify(newest) is None


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_megatron_and_deepspeed_checkpoints_survive_kills_and_corruption(backend, tmp_path):
    """Kill -9 inside the commit of the last checkpoint (make chaos: 5 kills anywhere, then the run is
    finished), then flip a byte of the newest committed checkpoint's biggest file: the restart reports it,
    resumes from the one before and ends with the uninterrupted run's losses and checkpoint files."""
    chaos = Chaos(12 if FULL else 6, BACKENDS[backend])
    reference = _reference(tmp_path / "reference", chaos)
    files = checkpoint.read_meta(checkpoint.step_dir(reference, chaos.steps))["files"]
    assert any(f.startswith({"megatron": "dist/", "deepspeed": "ds/"}[backend]) for f in files), files
    _every_file_is_guarded(reference)
    out, log = tmp_path / "chaos", tmp_path / "chaos.log"
    if FULL:
        moments = _kill_repeatedly(out, log, reference, chaos, 5, seed=3,
                                   modes=["spawn", "startup", "step", "save", "save"])
        _finish(out, reference, chaos, log)
    else:
        # before the rename (megatron: the restart resumes from step 4) or after it (DeepSpeed: step 6 is
        # committed but `latest` still names step 4, so step 6 is the newest and is the one corrupted)
        window = {"megatron": "manifest written", "deepspeed": "renamed"}[backend]
        with log.open("w") as sink:
            moments = [_kill_once(_start(out, sink, chaos), Plan("save", chaos.steps, window, 0.0, PAUSE_S / 4), out, log)]
        _audit(out, reference, moments[0])
        # (a machine stalled past the window moves the kill to a later one: still inside the commit)
        assert moments[0] in [f"save of step {chaos.steps} ({w})" for w in WINDOWS[WINDOWS.index(window):]], moments
    *_, previous, newest = checkpoint.complete_checkpoints(out)
    biggest = max(checkpoint.read_meta(newest)["files"], key=lambda f: (newest / f).stat().st_size)
    _flip_byte(newest / biggest)
    proc = train(out, *chaos.run(), "checkpoint.keep_last=3", "resume=auto")
    assert (f"checkpoint {newest} is unusable ({biggest} does not match its sha256 in meta.json); falling back to "
            "the previous one") in proc.stdout, proc.stdout
    assert f"resumed from {previous} at step {checkpoint.read_meta(previous)['step']}" in proc.stdout, proc.stdout
    _audit(out, reference, "after the corrupt checkpoint")
    final = checkpoint.step_dir(out, chaos.steps)
    assert _same_files(final, reference / "checkpoints" / final.name)
    assert _losses(out) == _losses(reference) and len(_losses(out)) == chaos.steps
    print(f"{backend}: {len(moments)} kills: {moments}; then {newest.name}/{biggest} corrupted")


# ---- megatron's asynchronous saves (checkpoint.asynchronous) ------------------------------------------------
# two ranks at dp=2, so the fully parallel save splits the DP-replicated tensors between them
ASYNC = {"megatron": Chaos(12 if FULL else 6, ["backend=megatron", "parallel.nproc=2"]),
         "torch": Chaos(12 if FULL else 6, ["parallel.nproc=2"])}
# the window of megatron's _write_in_background and torch's _BackgroundWriter: each rank's data files written,
# the save's .metadata not yet (megatron's finalization, DCP's rank 0 after the gather)
BACKGROUND = "writing in the background"
DATA_FILES = {"megatron": "dist/*.distcp", "torch": "dcp/*.distcp"}


@pytest.mark.parametrize("backend", ["megatron", "torch"])
def test_kill_nine_inside_an_asynchronous_save_loses_nothing(backend, tmp_path, monkeypatch):
    """checkpoint.asynchronous=true: each rank writes the save's files in the background while the steps go on
    (megatron: a forked process; torch: DCP's async_save thread), and rank 0 commits them once every rank's are
    written. Against the synchronous run (the reference): every
    committed checkpoint holds its bytes; a kill -9 while the writers of a save are still writing leaves the
    previous checkpoint as `latest`, and no writer outlives its rank to write into the abandoned directory; the
    restart ends with the reference's losses and files. make chaos: a kill in each save's background write.
    The reference's synchronous saves are checksummed by both ranks, each file once."""
    hook, sha_log = tmp_path / "hook", tmp_path / "sha.log"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)  # logs every checksummed file with its process id
    with monkeypatch.context() as env:
        env.setenv("PYTHONPATH", str(hook))
        env.setenv("SHA_LOG", str(sha_log))
        reference = _reference(tmp_path / "reference", ASYNC[backend])  # checkpoint.asynchronous unset: synchronous on a CPU
    for path in checkpoint.complete_checkpoints(reference):
        hashed = [line.split() for line in sha_log.read_text().splitlines() if f"{path.name}.tmp/" in line]
        assert sorted(f for _, f in hashed) == sorted(str(checkpoint.staging_dir(reference, int(path.name[5:])) / f)
                                                       for f in checkpoint.read_meta(path)["files"]), path
        assert len({pid for pid, _ in hashed}) == 2, (path, hashed)  # both ranks took a share
    chaos = Chaos(ASYNC[backend].steps, [*ASYNC[backend].extra, "checkpoint.asynchronous=true"])
    out, log = tmp_path / "chaos", tmp_path / "chaos.log"
    targets = range(2 * EVERY, chaos.steps + 1, 2 * EVERY) if FULL else [2 * EVERY]
    with log.open("w") as sink:
        for target in targets:
            plan = Plan("save", target, BACKGROUND, 0.0, PAUSE_S / 4)
            moment = _kill_once(_start(out, sink, chaos), plan, out, log)
            assert moment == f"save of step {target} ({BACKGROUND})", moment
            staging = checkpoint.staging_dir(out, target)
            written = sorted(p.name for p in staging.glob(DATA_FILES[backend]))  # killed mid-save, not before it
            assert written and not list(staging.rglob(".metadata")), sorted(staging.rglob("*"))
            _audit(out, reference, moment)
            assert checkpoint.latest_name(out) == checkpoint.step_dir(out, target - EVERY).name
            time.sleep(2 * PAUSE_S)  # a writer that outlived its rank would have woken from its pause and written
            late = [p.name for p in staging.rglob("*") if p.stat().st_mtime > plan.killed_at]
            assert not late, f"written into {staging} after the kill: {late}"
    assert f"saving step {EVERY} in the background" in log.read_text()  # the asynchronous path ran
    _finish(out, reference, chaos, log)
    print(f"{backend} async: {len(targets)} kills in the background write, then finished")
