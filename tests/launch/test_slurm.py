"""On the real local Slurm cluster (tools/local_slurm.sh up): a 2-node megatron TP=2 job, preemption by
`scancel --signal=USR2` and by `scontrol requeue`, a job array, a dependency chain, bad profiles.

The three 2-node jobs (uninterrupted, USR2, requeue) are submitted together and run side by side; the two
interrupted ones are signalled once they have logged a few steps.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from launch_helpers import (
    FAST,
    NODELISTS,
    job_ids,
    logged_steps,
    losses,
    megatron_weights,
    metrics,
    nca,
    state,
    wait_for,
)

from nca_scale.launch import rendezvous

pytestmark = pytest.mark.usefixtures("slurm")

STEPS = 30
STEPS_LONG = 450  # the time-limit test: more than one 2-minute attempt of training
TP2 = ["configs/train/cpu-tiny.yaml", "cluster=local-slurm", f"steps={STEPS}", "backend=megatron", "tp=2", *FAST]
FINAL = f"checkpoints/step_{STEPS:08d}"


@pytest.fixture(scope="module")
def two_node_runs(env, tmp_path_factory):
    """{'plain', 'usr2', 'requeue'} -> (run dir, job id); the last two interrupted mid-run."""
    base = tmp_path_factory.mktemp("tp2")
    runs = {}
    for kind in ("plain", "usr2", "requeue"):
        out = base / kind
        nca(env, "submit", *TP2, f"out={out}", f"name=tp2-{kind}")
        runs[kind] = (out, job_ids(out)[0])
    t0 = time.time()
    pending = {"usr2": ["scancel", "--signal=USR2"], "requeue": ["scontrol", "requeue"]}
    while pending:
        for kind in list(pending):
            out, job = runs[kind]
            if logged_steps(out) >= 3:
                subprocess.run([*pending.pop(kind), job], check=True)
                assert logged_steps(out) < STEPS, f"{kind}: the job finished before it could be interrupted"
        assert time.time() - t0 < 240, f"jobs did not start logging steps: {[state(runs[k][1]) for k in pending]}"
        time.sleep(0.3)
    return runs


def test_two_node_tp2_matches_local_run(two_node_runs, env, tmp_path):
    out, job = two_node_runs["plain"]
    assert wait_for(job) == "COMPLETED", (out / "launch" / job / f"{job}_0_log.out").read_text()[-3000:]
    hosts = {line.split("node=")[1][:1] for p in (out / "launch" / job).glob("*_log.out")
             for line in p.read_text().splitlines() if "Starting with JobEnvironment" in line}
    assert hosts == {"0", "1"}  # one task on each of the two nodes
    local = tmp_path / "local"
    nca(env, "train", *[a for a in TP2 if not a.startswith("cluster=")], "nproc=2", f"out={local}")
    assert len(losses(out)) == STEPS
    assert losses(out) == losses(local)


@pytest.mark.parametrize("kind", ["usr2", "requeue"])
def test_preempted_job_resumes_to_identical_weights(kind, two_node_runs, tmp_path):
    plain, plain_job = two_node_runs["plain"]
    out, job = two_node_runs[kind]
    log = out / "launch" / job / f"{job}_0_log.out"
    assert wait_for(job) == "COMPLETED", log.read_text()[-3000:]
    assert wait_for(plain_job) == "COMPLETED"
    text = log.read_text()
    signal = {"usr2": "SIGUSR2", "requeue": "SIGTERM"}[kind]
    assert "stopping at step" in text and f"after {signal}" in text, text[-3000:]
    assert "resumed from" in text
    restarts = [m for m in metrics(out) if "restart" in m]
    assert len(restarts) == 1 and restarts[0]["restart"] == 1 and restarts[0]["reason"] == signal
    assert restarts[0]["lost_steps"] == 0  # the preemption save lost nothing
    assert losses(out) == losses(plain)
    a = megatron_weights(plain / FINAL, tmp_path / "a")
    b = megatron_weights(out / FINAL, tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("nodelist", NODELISTS)
def test_slurm_expands_node_lists_as_the_fallback_parser_does(nodelist):
    slurm = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    assert slurm.stdout.split() == NODELISTS[nodelist] == rendezvous.expand_nodelist(nodelist)


def test_status_reports_state_step_loss_restarts(two_node_runs, env):
    out, job = two_node_runs["usr2"]
    wait_for(job)
    rows = json.loads(nca(env, "status", str(out), "format=json").stdout)
    assert len(rows) == 1
    row = rows[0]
    assert row["job_id"] == job and row["state"] == "COMPLETED" and row["step"] == STEPS
    assert row["loss"] == losses(out)[-1] and row["restarts"] == 1
    assert Path(row["logs"]).is_file()
    table = nca(env, "status", str(out)).stdout
    assert job in table and "COMPLETED" in table


def test_job_array_of_sweep_cells(env, tmp_path):
    sweep = tmp_path / "sweep"
    nca(env, "submit", "configs/train/cpu-tiny.yaml", "cluster=local-slurm", "cluster.nodes=1", "steps=2", *FAST,
        "sweep.seed=0,1,2", f"out={sweep}", "wait=true")
    ids = job_ids(sweep)
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 1  # one array job, three tasks
    assert [wait_for(i) for i in ids] == ["COMPLETED"] * 3
    cells = sorted(sweep.glob("cell_*"))
    assert [len(losses(c)) for c in cells] == [2, 2, 2]
    assert len({losses(c)[0] for c in cells}) == 3  # the seeds differ
    rows = json.loads(nca(env, "status", str(sweep), "format=json").stdout)
    assert sorted(r["cell"]["seed"] for r in rows) == ["0", "1", "2"]


def test_dependency_chain_runs_stage_two_after_stage_one(env, tmp_path):
    one, two = tmp_path / "stage1", tmp_path / "stage2"
    common = ["configs/train/cpu-tiny.yaml", "cluster=local-slurm", "cluster.nodes=1", *FAST]
    nca(env, "submit", *common, "steps=3", f"out={one}")
    nca(env, "submit", *common, "steps=2", f"out={two}", f"after={one}",
        f"init_from={one}/checkpoints/step_00000003")
    first, second = job_ids(one)[0], job_ids(two)[0]
    assert wait_for(second) == "COMPLETED", (two / "launch" / second / f"{second}_0_log.out").read_text()[-2000:]
    assert wait_for(first) == "COMPLETED"
    times = subprocess.run(["sacct", "-X", "-n", "-P", "-j", f"{first},{second}", "-o", "JobID,Start,End"],
                           capture_output=True, text=True, check=True).stdout.split()
    t = {line.split("|")[0]: line.split("|")[1:] for line in times}
    assert t[second][0] >= t[first][1]  # stage 2 started after stage 1 ended
    assert len(losses(two)) == 2


def test_dependency_on_failed_job_never_runs(env, tmp_path):
    one, two = tmp_path / "fails", tmp_path / "never"
    common = ["configs/train/cpu-tiny.yaml", "cluster=local-slurm", "cluster.nodes=1", *FAST, "steps=2"]
    nca(env, "submit", *common, f"out={one}", "cluster.setup=[exit 3]")
    nca(env, "submit", *common, f"out={two}", f"after={one}")
    first, second = job_ids(one)[0], job_ids(two)[0]
    assert wait_for(first) == "FAILED"
    assert wait_for(second, timeout=120) == "CANCELLED"
    assert not (two / "metrics.jsonl").exists()


@pytest.mark.parametrize("bad, message", [
    ("cluster.partition=nope", "unknown partition 'nope'"),
    ("cluster.nodes=3", "cluster.nodes=3 but partition 'debug' has 2 nodes"),
    ("cluster.gpus_per_node=1", "cluster.gpus_per_node=1 but nodes of partition 'debug' have 0 GPUs"),
    ("cluster.time=1:75:00", "cluster.time='1:75:00' is not a Slurm time"),
    ("cluster.time=soon", "cluster.time='soon' is not a Slurm time"),
], ids=["partition", "nodes", "gpus", "time-range", "time-word"])
def test_bad_profile_is_an_error_at_submit_time(bad, message, env, tmp_path):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    proc = nca(env, "submit", "configs/train/cpu-tiny.yaml", "cluster=local-slurm", "steps=2", *FAST,
               f"out={tmp_path / 'run'}", bad, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    assert set(after.split()) <= set(before.split())  # nothing queued
    assert not (tmp_path / "run" / "launch").exists()


@pytest.mark.slow
def test_time_limit_is_requeued_and_resumed(env, tmp_path):
    """A 2-minute job whose training needs longer: the USR2 warning (signal_lead_s before the limit; Slurm may
    send it up to a minute early) makes it save and requeue itself, on every attempt, until it finishes.
    450 steps take ~2.5 min on an idle 2-core machine (150 finished inside one attempt there)."""
    out = tmp_path / "run"
    nca(env, "submit", "configs/train/cpu-tiny.yaml", "cluster=local-slurm", "cluster.nodes=1", "cluster.time=2",
        "cluster.signal_lead_s=30", "cluster.max_restarts=8", f"steps={STEPS_LONG}", *FAST, f"out={out}")
    job = job_ids(out)[0]
    assert wait_for(job, timeout=900) == "COMPLETED", (out / "launch" / job / f"{job}_0_log.out").read_text()[-3000:]
    restarts = [m for m in metrics(out) if "restart" in m]
    assert restarts and all(r["reason"] == "SIGUSR2" and r["lost_steps"] == 0 for r in restarts)
    assert [m["step"] for m in metrics(out) if "loss" in m] == list(range(1, STEPS_LONG + 1))


def test_max_restarts_stops_requeueing(env, tmp_path):
    out = tmp_path / "run"
    nca(env, "submit", "configs/train/cpu-tiny.yaml", "cluster=local-slurm", "cluster.nodes=1",
        "cluster.max_restarts=0", "steps=400", *FAST, f"out={out}")
    job = job_ids(out)[0]
    t0 = time.time()
    while logged_steps(out) < 3:
        assert time.time() - t0 < 120, state(job)
        time.sleep(0.3)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    assert wait_for(job) == "FAILED"
    log = (out / "launch" / job / f"{job}_0_log.out").read_text()
    assert "not requeued" in log and "max_restarts=0" in log
    saved = sorted((out / "checkpoints").glob("step_*"))
    assert saved and (saved[-1] / "meta.json").is_file()  # it saved before giving up: resume=auto continues it
