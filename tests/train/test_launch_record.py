"""How a rank starts is decided once, in one launch record (nca_scale/train/launch_record.py), on every path:
`nca-scale train` in-process (parallel.nproc=1) and with the ranks it starts under torchrun (nproc=2), torchrun or
srun by hand (each rank `python -m nca_scale.train.worker`, or `nca-scale train` with RANK set), and the tasks of
a submitted Slurm job (launch/task.py TrainWork). Whatever the path, every rank of a job gets the same record,
the chosen checkpoint is verified once, one process takes the run folder's lease and rank 0 alone writes
OUT/config.yaml; on a run that is already finished nothing is written.

The in-process tests run each path's real entry code with the ranks played one after the other in this process
(rank 0 first): the process group is replaced by a broadcast of rank 0's choice, and the engine is never built.
The last test starts two real ranks by hand under torchrun."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from start_log import SITECUSTOMIZE
from train_helpers import FAST, ROOT

from nca_scale import procs
from nca_scale.cli import main
from nca_scale.launch.task import TrainWork
from nca_scale.train import backends, checkpoint, dist, entry, run_folder, worker
from nca_scale.train.checkpoint import commit as checkpoint_commit
from nca_scale.train.checkpoint import select as checkpoint_select
from nca_scale.train.config import from_args
from nca_scale.train.launch_record import (
    BY_HAND,
    IN_PROCESS,
    LAUNCH_ENV,
    LAUNCHER,
    RANK0,
    SLURM,
    TORCHRUN,
    Launch,
)

CONFIG = str(ROOT / "configs/train/cpu-tiny.yaml")


class Built(Exception):
    """The engine was about to be built: the start-up decisions are all made."""


def _committed(out: Path, step: int, *overrides: str) -> Path:
    """A committed checkpoint of a run of `overrides`, at `step` (no training)."""
    cfg = from_args([CONFIG, f"out={out}", *overrides]).resolved()
    staging = checkpoint_commit.begin(cfg.out, step)
    torch.save({"model": {}}, staging / "state.pt")
    return checkpoint_commit.commit(cfg, step, step * cfg.tokens_per_step)


@pytest.fixture
def seen(monkeypatch):
    """What each played rank and launcher did: the record each rank started with, checkpoints verified, leases
    taken and config.yaml writes, each with the RANK it happened on ("-" in a launcher)."""
    seen = {"records": [], "verified": [], "took": [], "wrote": []}
    where = lambda: os.environ.get("RANK", "-")  # noqa: E731
    rank, verify, take, write = entry.rank, checkpoint_select.verify, run_folder.take, run_folder.write_config
    monkeypatch.setattr(entry, "rank", lambda cfg, launch: seen["records"].append((where(), launch)) or rank(cfg, launch))
    monkeypatch.setattr(checkpoint_select, "verify", lambda path: seen["verified"].append(where()) or verify(path))
    monkeypatch.setattr(run_folder, "take", lambda cfg: seen["took"].append(where()) or take(cfg))
    monkeypatch.setattr(run_folder, "write_config", lambda cfg: seen["wrote"].append(where()) or write(cfg))
    chosen = {}

    def decided_by_rank0(decide):  # rank 0 decides and broadcasts; the played ranks run rank 0 first
        if where() == "0":
            chosen["value"] = decide()
        return chosen["value"]

    monkeypatch.setattr(dist, "init", lambda *a, **k: None)
    monkeypatch.setattr(dist, "decided_by_rank0", decided_by_rank0)
    monkeypatch.setattr(procs, "die_with_parent", lambda launcher=None: None)
    monkeypatch.setattr(backends, "build", lambda *a, **k: (_ for _ in ()).throw(Built()))
    monkeypatch.delenv(LAUNCH_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    return seen


def _as_rank(monkeypatch, r: int, start) -> object:
    """`start()` as global rank r of a 2-rank job an outside launcher (torchrun, srun, Slurm) started."""
    for k, v in {"RANK": r, "LOCAL_RANK": r, "WORLD_SIZE": 2, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29999}.items():
        monkeypatch.setenv(k, str(v))
    try:
        return start()
    finally:
        monkeypatch.delenv("RANK")


def _paths(monkeypatch, args: list[str]):
    """path name -> a callable that starts the training of `args` on that path, its ranks played in turn."""

    def by_hand(start):
        return lambda: [_as_rank(monkeypatch, r, start) for r in (0, 1)]

    def torchrun_from_cli():
        def launch(cmd, env):  # the ranks `nca-scale train` starts, each with the environment it hands them
            monkeypatch.setenv(LAUNCH_ENV, env[LAUNCH_ENV])
            by_hand(lambda: _raises(lambda: worker.main(cmd[cmd.index("nca_scale.train.worker") + 1:])))()
            return entry.Outcome(0)

        monkeypatch.setattr(entry, "_launch", launch)
        main(["train", *args, "parallel.nproc=2"])

    def slurm():
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        by_hand(lambda: _raises(TrainWork(tuple([*args, "parallel.nproc=2"]))))()

    return {
        "in-process": lambda: _raises(lambda: main(["train", *args])),
        "nca-scale torchrun": torchrun_from_cli,
        "torchrun/srun by hand": by_hand(lambda: _raises(lambda: worker.main([*args, "parallel.nproc=2"]))),
        "nca-scale train under torchrun/srun": by_hand(lambda: _raises(lambda: main(["train", *args, "parallel.nproc=2"]))),
        "slurm job": slurm,
    }


def _raises(start):
    """start() until the engine is built (a run to train), or to its end (a finished run: its exit status)."""
    try:
        return start()
    except Built:
        return "built"


EXPECTED = {  # (ranks, launcher, who verifies and holds the folder, where the lease is taken)
    "in-process": (["-"], IN_PROCESS, LAUNCHER, ["-"]),
    "nca-scale torchrun": (["0", "1"], TORCHRUN, LAUNCHER, ["-"]),
    "torchrun/srun by hand": (["0", "1"], BY_HAND, RANK0, ["0"]),
    "nca-scale train under torchrun/srun": (["0", "1"], BY_HAND, RANK0, ["0"]),
    "slurm job": (["0", "1"], SLURM, RANK0, ["0"]),
}


@pytest.mark.parametrize("path", list(EXPECTED))
def test_every_rank_starts_with_the_same_record_and_the_checkpoint_is_verified_once(path, seen, monkeypatch, tmp_path):
    out = tmp_path / "run"
    saved = _committed(out, 3, "steps=5", *FAST)
    _paths(monkeypatch, [CONFIG, f"out={out}", *FAST, "steps=5", "resume=auto"])[path]()
    ranks, launcher, decides, took = EXPECTED[path]
    records = seen["records"]
    assert [r for r, _ in records] == ranks and len({launch for _, launch in records}) == 1, records
    launch = records[0][1]
    assert (launch.launcher, launch.verifies, launch.folder) == (launcher, decides, decides)
    assert launch.resume_from == (saved if decides == LAUNCHER else None)
    assert (launch.launcher_pid == os.getpid()) == (launcher == TORCHRUN)
    assert seen["verified"] == (["-"] if decides == LAUNCHER else ["0"])  # once per job, by the launcher or rank 0
    assert seen["took"] == took  # the run folder's lease: one process per job
    assert seen["wrote"] == ["0" if ranks != ["-"] else "-"]  # config.yaml: rank 0 alone


@pytest.mark.parametrize("path", list(EXPECTED))
def test_a_finished_run_is_verified_once_says_so_and_writes_nothing_on_every_path(path, seen, monkeypatch, tmp_path,
                                                                                 caplog):
    out = tmp_path / "run"
    saved = _committed(out, 30, "steps=30", *FAST)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with caplog.at_level(logging.INFO, logger="nca_scale"):
        _paths(monkeypatch, [CONFIG, f"out={out}", *FAST, "steps=20", "resume=auto"])[path]()
    said = f"{saved} is at step 30 and this run ends at step 20: nothing to train, nothing written"
    assert said in caplog.text
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert seen["verified"] in (["-"], ["0"]) and seen["wrote"] == []
    ranks = [] if EXPECTED[path][2] == LAUNCHER else EXPECTED[path][0]  # a launcher that checks starts no rank
    assert [r for r, _ in seen["records"]] == ranks


def test_the_record_is_one_json_value_and_refuses_a_contradiction(monkeypatch):
    launch = Launch(TORCHRUN, LAUNCHER, LAUNCHER, checkpoint="/runs/r/checkpoints/step_00000002", launcher_pid=7)
    (name, value), = launch.env().items()
    monkeypatch.setenv(name, value)
    assert Launch.from_env() == launch and json.loads(value)["verifies"] == LAUNCHER
    with pytest.raises(ValueError, match="not a launch record"):
        Launch(BY_HAND, RANK0, RANK0, checkpoint="/runs/r/checkpoints/step_00000002")  # rank 0 chooses, not the launcher




def test_two_ranks_started_by_hand_verify_once_share_one_record_and_leave_a_finished_run_as_it_was(tmp_path):
    """torchrun by hand (as srun runs it on each node): rank 0 checksums the checkpoint for both, both start with
    the same record, and a finished run's folder is left byte for byte as it was (config.yaml included)."""
    out = tmp_path / "run"
    saved = _committed(out, 3, "steps=3", *FAST)
    (out / run_folder.CONFIG).write_text("# the run's own\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(hook), "START_LOG": str(tmp_path / "start.log")}
    env.pop(LAUNCH_ENV, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "nca_scale.train.worker", CONFIG, f"out={out}", *FAST, "parallel.nproc=2", "steps=3", "resume=auto"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{saved} is at step 3 and this run ends at step 3: nothing to train, nothing written" in proc.stdout
    lines = (tmp_path / "start.log").read_text().splitlines()
    records = sorted(line.split(" ", 2)[1:] for line in lines if line.startswith("rank "))
    assert [r for r, _ in records] == ["0", "1"] and records[0][1] == records[1][1], records
    assert Launch(**json.loads(records[0][1])) == Launch.by_ranks(BY_HAND)
    checksummed = [line.split()[1] for line in lines if line.startswith("sha256 ") and str(saved) in line]
    assert len(checksummed) == len(checkpoint.read_meta(saved)["files"]) and len(set(checksummed)) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
