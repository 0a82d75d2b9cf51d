"""Partial failures (issue 22): one rank's writer, commit or checksum failing, a writer stalled past its deadline,
a flaky mirror, ranks whose filesystems disagree, a rewind to an older checkpoint, and resumes that could not
continue the same run. Every case ends in bounded time with a stated outcome (docs/reliability.md).

The faults are planted through nca_scale/train/faults.py (NCA_SCALE_TEST_FAULT), in real 2-rank runs of
megatron (background writer processes) and torch (DCP's background thread)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import CLI, FAST, ROOT, metrics, state, train

from nca_scale.cli import main
from nca_scale.train import checkpoint
from nca_scale.train.checkpoint import commit as checkpoint_commit
from nca_scale.train.config import from_args

CONFIG = str(ROOT / "configs/train/cpu-tiny.yaml")
ASYNC = {"megatron": ["backend=megatron", "checkpoint.asynchronous=true"],
         "torch": ["checkpoint.asynchronous=true"]}
# Imported by every Python process of the run (PYTHONPATH): rank 1's filesystem view says every checkpoint is
# already complete, as a stale attribute cache would.
STALE_VIEW = """
import os
if os.environ.get("RANK") == "1":
    from nca_scale.train import checkpoint
    checkpoint.is_complete = lambda path: True
"""


def _run(out: Path, backend: str, fault: str, *overrides: str, hook: Path | None = None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", NCA_SCALE_TEST_FAULT=fault)
    if hook is not None:
        env["PYTHONPATH"] = str(hook)
    cmd = [str(CLI), "train", CONFIG, f"out={out}", *FAST, "parallel.nproc=2", *ASYNC[backend], *overrides]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["megatron", "torch"])
def test_a_dead_writer_a_stalled_writer_a_flaky_mirror_and_a_stale_view_cost_two_saves_not_the_run(backend, tmp_path):
    """(a) rank 1's writer dies mid-write of step 4 (megatron: its process is SIGKILLed; torch: DCP's thread
    raises), (b) rank 0's writer of step 8 stalls past checkpoint.write_timeout_s=3, (d) the mirror fails 3 times
    then recovers, (e) rank 1 sees every step as already saved: both saves are abandoned with a warning, the run
    goes on, and step 18 (not a multiple of checkpoint.every) is committed on every rank and mirrored."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALE_VIEW)
    url = f"file://{tmp_path / 'mirror'}"
    dies = "kill" if backend == "megatron" else "raise"
    fault = f"writer@step_00000004:1:{dies},writer@step_00000008:0:stall=12,mirror:0:raise:3"
    out = tmp_path / "run"
    proc, took = _run(out, backend, fault, "steps=18", "checkpoint.every=4", "checkpoint.write_timeout_s=3",
                      f"checkpoint.url={url}", hook=hook)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "the checkpoint of step 4 was abandoned (writing step 4 failed on rank" in log, log[-6000:]
    assert "the checkpoint of step 8 was abandoned (its files were not written within 3 s" in log, log[-6000:]
    assert log.count("publishing step_00000012 failed (OSError: test fault at mirror step_00000012)") == 3, log[-6000:]
    assert [p.name for p in checkpoint.complete_checkpoints(out)] == ["step_00000012", "step_00000016", "step_00000018"]
    assert checkpoint.latest_name(out) == "step_00000018"
    assert (tmp_path / "mirror" / "latest").read_text().strip() == "step_00000018"
    assert took < 150, took


@pytest.mark.slow
@pytest.mark.parametrize("backend, point", [("megatron", "commit"), ("megatron", "verify"), ("torch", "commit"),
                                            ("torch", "verify")])
def test_an_error_on_rank_0_alone_ends_every_rank_within_seconds(backend, point, tmp_path):
    """An exception on rank 0 only, inside the commit or inside checksumming: every rank exits non-zero naming
    rank 0 and its error (not after rank0_timeout_s), and `latest` stays where it was."""
    out = tmp_path / "run"
    proc, took = _run(out, backend, f"{point}@step_00000002:0:raise", "steps=3", "checkpoint.every=1")
    assert proc.returncode != 0
    line = (f"nca-scale: error: committing step 2 failed on rank 0: OSError: test fault at {point} "
            "step_00000002")
    assert proc.stderr.count(line) == 2, proc.stderr[-4000:]  # both ranks, each naming rank 0
    assert checkpoint.latest_name(out) == "step_00000001"
    assert took < 120, took


# ---- rewind ----------------------------------------------------------------------------------------------
REWIND = ["model.n_layers=2", "checkpoint.every=10", "schedule.total=40"]


@pytest.mark.slow
def test_a_rewind_starts_a_new_lineage_and_sets_the_old_one_aside(tmp_path):
    """Run to 30 saving every 10; resume=step_10 with another learning rate up to step 25: `latest` is
    step 25 of the new lineage with the weights of a straight run from step 10 under the new settings, the old
    steps 20 and 30 lie under abandoned-*, and resume=auto continues the new lineage."""
    out, straight = tmp_path / "run", tmp_path / "straight"
    train(out, *REWIND, "steps=30")
    first = checkpoint.step_dir(out, 10)
    shutil.copytree(first, checkpoint.step_dir(straight, 10))
    proc = train(out, *REWIND, "steps=25", "resume=step_10", "optim.lr=1e-3")  # this run's own step_00000010
    assert "starts a new lineage: step_00000020, step_00000030 of the previous trajectory moved to" in proc.stdout
    assert checkpoint.latest_name(out) == "step_00000025"
    aside = [p for p in checkpoint.root(out).iterdir() if p.name.startswith("abandoned-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["step_00000020", "step_00000030"]
    lineage = checkpoint.read_meta(checkpoint.step_dir(out, 25))["lineage"]
    assert lineage == [{"resumed_from": str(first), "step": 10, "abandoned": aside[0].name,
                        "steps": ["step_00000020", "step_00000030"]}]
    train(straight, *REWIND, "steps=25", f"resume={checkpoint.step_dir(straight, 10)}", "optim.lr=1e-3")
    ours, theirs = state(checkpoint.step_dir(out, 25)), state(checkpoint.step_dir(straight, 25))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    proc = train(out, *REWIND, "steps=27", "optim.lr=1e-3", "resume=auto")
    assert f"resumed from {checkpoint.step_dir(out, 25)} at step 25" in proc.stdout, proc.stdout
    assert checkpoint.latest_name(out) == "step_00000027"
    assert checkpoint.read_meta(checkpoint.step_dir(out, 27))["lineage"] == lineage


# ---- resume compatibility --------------------------------------------------------------------------------
def _committed(tmp_path: Path, step: int, *overrides: str) -> Path:
    """A committed checkpoint of a run with `overrides`, at `step` (no training)."""
    cfg = from_args([CONFIG, f"out={tmp_path / 'run'}", *overrides]).resolved()
    staging = checkpoint_commit.begin(cfg.out, step)
    torch.save({"model": {}}, staging / "state.pt")
    return checkpoint_commit.commit(cfg, step, step * cfg.tokens_per_step)


@pytest.mark.parametrize("saved, now, message", [
    (["precision=fp32"], ["precision=bf16"],
     "precision is fp32 in the checkpoint but bf16 here; resume with precision=fp32"),
    (["backend=deepspeed", "deepspeed.zero=2"], ["backend=deepspeed", "deepspeed.zero=1"],
     "deepspeed.zero is 2 in the checkpoint but 1 here; resume with deepspeed.zero=2"),
    (["backend=megatron", "megatron.distributed_optimizer=true"], ["backend=megatron", "megatron.distributed_optimizer=false"],
     "megatron.distributed_optimizer is true in the checkpoint but false here; resume with megatron.distributed_optimizer=true"),
    (["model.d_model=64", "seed=1"], ["model.d_model=32", "seed=2"],
     "model.d_model is 64 in the checkpoint but 32 here; seed is 1 in the checkpoint but 2 here; resume with "
     "model.d_model=64 seed=1"),
], ids=["precision", "zero-stage", "distributed-optimizer", "two-fields"])
def test_a_resume_that_would_change_the_numbers_is_refused_naming_each_field(saved, now, message, tmp_path, capsys):
    path = _committed(tmp_path, 3, *saved)
    assert main(["train", CONFIG, f"out={tmp_path / 'run'}", *now, f"resume={path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_resuming_a_finished_run_says_so_and_writes_nothing(tmp_path, capsys):
    """resume=auto steps=20 on a run that finished at step 30: exit 0, one line, no process, no file touched
    (before, the run evaluated again and appended a second evaluation row)."""
    path = _committed(tmp_path, 30, "steps=30")
    out = tmp_path / "run"
    (out / "metrics.jsonl").write_text(json.dumps({"v": 1, "kind": "eval", "step": 30}) + "\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["train", CONFIG, f"out={out}", "steps=20", "resume=auto"]) == 0
    assert f"{path} is at step 30 and this run ends at step 20: nothing to train, nothing written" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert len(metrics(out)) == 1


def test_a_slurm_step_ends_when_one_task_fails(tmp_path, capsys, monkeypatch):
    """srun --kill-on-bad-exit=1: a rank that exits non-zero ends its job step, so no rank waits for a dead one
    until a collective times out (the dry run prints the batch script; no Slurm client needed)."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))
    assert main(["submit", CONFIG, "cluster=launchers/gpu-example.yaml", "cluster.nodes=1", "batch_size=64",
                 "dry_run=true", f"out={tmp_path / 'run'}"]) == 0
    srun = [line for line in capsys.readouterr().out.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and "--kill-on-bad-exit=1" in srun[0].split(), srun


# ---- data side -------------------------------------------------------------------------------------------
def test_a_dropped_prefetch_is_waited_for_before_the_source_is_used_again():
    """After a rollback (or a skipped step) the trainer asks for another step than the one made ahead: the batch
    being made in the background is waited for, not left running beside the foreground's (the data sources are
    not thread-safe). Before, both used the source at once."""
    import threading

    from nca_scale.train.data import BatchLoader, Prefetcher

    class Source:
        inside, most = 0, 0
        lock = threading.Lock()

        def sequences(self, indices):
            with self.lock:
                self.inside += 1
                self.most = max(self.most, self.inside)
            time.sleep(0.2)
            with self.lock:
                self.inside -= 1
            return torch.zeros(len(indices), 9, dtype=torch.int32)

    source = Source()
    prefetch = Prefetcher(BatchLoader(source, torch.ones(8), 2, 1, 0, 1))
    try:
        prefetch.batch(0, 1)  # step 1 is being made in the background
        time.sleep(0.05)
        prefetch.batch(5, None)  # a rollback: step 5 asked instead
    finally:
        prefetch.close()
    assert source.most == 1


# ---- start-up ----------------------------------------------------------------------------------------------
def test_gloo_gets_the_interface_that_reaches_the_master(monkeypatch):
    """GLOO_SOCKET_IFNAME unset: gloo would bind to whatever this host's name resolves to (often a network the
    other nodes cannot reach: a hang until a timeout). The side group's interface is NCCL's when
    NCCL_SOCKET_IFNAME names one (as a prefix), else the one whose route reaches MASTER_ADDR; a set value wins."""
    from nca_scale.train import dist

    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.delenv("NCCL_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    assert dist.gloo_interface() == ("lo", "the route to MASTER_ADDR=localhost (127.0.0.1)")
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "l")
    assert dist.gloo_interface() == ("lo", "NCCL_SOCKET_IFNAME=l")
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "^docker,lo")  # an exclusion names no interface: the route decides
    assert dist.gloo_interface()[0] == "lo"
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")
    assert dist.gloo_interface() is None


def test_the_side_group_connects_within_the_start_up_bound_and_waits_rank0_timeout_s():
    """The side group is created (its connections made) under dist_timeout_s, like the main group, and only then
    given rank0_timeout_s for its waits: a peer that cannot be reached fails start-up in minutes, not in hours."""
    code = ("import torch; from nca_scale.train import dist; from unittest import mock\n"
            "made = []\n"
            "inner = torch.distributed.new_group\n"
            "def new_group(*a, **k): made.append(k['timeout'].total_seconds()); return inner(*a, **k)\n"
            "with mock.patch.object(torch.distributed, 'new_group', new_group): dist.init(5.0, 100.0)\n"
            "print(made, dist.side_group()._get_backend(torch.device('cpu')).options._timeout.total_seconds())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == "[5.0] 100.0", proc.stdout


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.mark.slow
def test_megatrons_results_manager_dies_with_its_rank(tmp_path):
    """megatron-core's writers report to a queue served by a Manager process the rank spawns at its first save:
    a one-process run (as a rank started by srun) killed with kill -9 takes it along (before, it stayed)."""
    from nca_scale import procs

    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(CLI), "train", CONFIG, f"out={out}", *FAST, "model.n_layers=2", "backend=megatron", "steps=500",
           "checkpoint.every=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while checkpoint.latest_name(out) is None:  # a save made the Manager
            assert proc.poll() is None and time.monotonic() < deadline, "no save"
            time.sleep(0.1)
        managers = [pid for pid in procs.children_of(proc.pid)
                    if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert managers, procs.children_of(proc.pid)
        os.kill(proc.pid, 9)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in managers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in managers if _alive(pid)], managers
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)


def test_a_mirror_that_keeps_failing_is_skipped_and_status_shows_the_lag(tmp_path, monkeypatch):
    """4 failed tries of one checkpoint: a warning, no error (the local commit is the truth), and
    `nca-scale status` shows the mirror lagging; the next successful publish clears it."""
    from nca_scale.train import run_state
    from nca_scale.train.checkpoint import mirror, saver

    cfg = from_args([CONFIG, f"out={tmp_path / 'run'}", f"checkpoint.url=file://{tmp_path / 'mirror'}"]).resolved()
    first, second = _committed(tmp_path, 2), _committed(tmp_path, 4)
    monkeypatch.setattr(saver, "MIRROR_BACKOFF_S", 0.0)
    calls, real = [], mirror.publish

    def flaky(path, url, keep):
        calls.append(path.name)
        if path == second:
            raise OSError("the store is down")
        real(path, url, keep)

    monkeypatch.setattr(mirror, "publish", flaky)
    uploads = saver._Mirror(cfg)
    uploads.submit(first)
    uploads.close(10)
    uploads.submit(second)
    uploads.close(10)
    assert calls == ["step_00000002"] + ["step_00000004"] * saver.MIRROR_ATTEMPTS
    assert (tmp_path / "mirror" / "latest").read_text().strip() == "step_00000002"
    line = run_state.read(cfg.out).line()
    assert (f"checkpoint step_00000004; mirror file://{tmp_path / 'mirror'} lags: it holds step_00000002, "
            "step_00000004 not published (OSError: the store is down)") in line, line
    monkeypatch.setattr(mirror, "publish", real)
    uploads.submit(second)
    uploads.close(10)
    assert "lags" not in run_state.read(cfg.out).line()
