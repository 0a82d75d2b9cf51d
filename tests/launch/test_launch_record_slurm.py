"""The launch record on the real local Slurm cluster (tools/local_slurm.sh up): the two tasks of a submitted job
start with the same record (launcher slurm, rank 0 verifies and holds the run folder), the checkpoint is
checksummed once for the job, and resuming a finished run leaves its folder as it was. The other paths are in
tests/train/test_launch_record.py."""

from __future__ import annotations

import json

import pytest
import torch
from launch_helpers import FAST, ROOT, job_ids, nca, wait_for
from start_log import SITECUSTOMIZE

from nca_scale.train import checkpoint
from nca_scale.train.checkpoint import commit as checkpoint_commit
from nca_scale.train.config import from_args
from nca_scale.train.launch_record import SLURM, Launch

pytestmark = pytest.mark.usefixtures("slurm")
CONFIG = str(ROOT / "configs/train/cpu-tiny.yaml")



@pytest.mark.slow
def test_the_tasks_of_a_job_share_one_record_and_verify_a_finished_run_once(env, tmp_path):
    out = tmp_path / "run"
    cfg = from_args([CONFIG, f"out={out}", "steps=3", "parallel.nproc=2", *FAST]).resolved()
    staging = checkpoint_commit.begin(cfg.out, 3)
    torch.save({"model": {}}, staging / "state.pt")
    saved = checkpoint_commit.commit(cfg, 3, 3 * cfg.tokens_per_step)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "start.log"
    nca({**env, "PYTHONPATH": str(hook), "START_LOG": str(log)}, "submit", CONFIG, "cluster=local-slurm",
        f"out={out}", *FAST, "steps=3", "resume=auto")
    job = job_ids(out)[0]
    assert wait_for(job) == "COMPLETED"
    for rank in (0, 1):  # each task says so in its own log
        said = (out / "launch" / job / f"{job}_{rank}_log.out").read_text()
        assert f"{saved} is at step 3 and this run ends at step 3: nothing to train, nothing written" in said, said
    lines = log.read_text().splitlines()
    records = sorted(line.split(" ", 2)[1:] for line in lines if line.startswith("rank "))
    assert [r for r, _ in records] == ["0", "1"] and records[0][1] == records[1][1], records
    assert Launch(**json.loads(records[0][1])) == Launch.by_ranks(SLURM)
    checksummed = [line.split()[1] for line in lines if line.startswith("sha256 ") and str(saved) in line]
    assert len(checksummed) == len(checkpoint.read_meta(saved)["files"]) and len(set(checksummed)) == 1
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "launch" not in p.relative_to(out).parts}
    assert after == before
