"""On the real local Slurm cluster (tools/local_slurm.sh up: nodes n1 and n2 in network namespaces of their own,
each with its own address): 2-node jobs of every backend (megatron TP=2, DeepSpeed ZeRO-2 and torch DDP data
parallel), preemption by `scancel --signal=USR2` (every backend) and by `scontrol requeue` (megatron; the
requeue path is the same code for every backend) with bit-identical resume, the rendezvous over the nodes' real
addresses, a job array, a dependency chain, bad profiles, time limits.

The 2-node jobs are submitted together (held, then released at once) and run side by side; each is signalled
once it has logged a few steps. Every step lasts at least PAD seconds (NCA_SCALE_TEST_STEP_TIME, train/faults.py;
the jobs inherit it from the submitting environment, as Slurm exports it), so a signal lands mid-run
however fast the machine is. The uninterrupted references are plain `nca-scale train nproc=2` runs on this host,
started alongside.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from launch_helpers import (
    CLI,
    FAST,
    NODELISTS,
    ROOT,
    final_weights,
    job_ids,
    logged_steps,
    losses,
    metrics,
    nca,
    state,
    wait_for,
)

from nca_scale.launch import rendezvous
from nca_scale.train.faults import STEP_TIME_ENV

pytestmark = pytest.mark.usefixtures("slurm")

STEPS = 30
PAD = {STEP_TIME_ENV: "0.2"}  # >= 6 s of training per run
BACKENDS = {
    "megatron": ["backend=megatron", "parallel.tp=2"],  # tensor parallel across the two nodes
    "deepspeed": ["backend=deepspeed", "deepspeed.zero=2"],  # data parallel, optimizer state partitioned over the nodes
    "torch": ["backend=torch"],  # data parallel (DDP)
}
SIGNALS = {"usr2": ["scancel", "--signal=USR2"], "requeue": ["scontrol", "requeue"]}
INTERRUPTED = [*((b, "usr2") for b in BACKENDS), ("megatron", "requeue")]
FINAL = f"checkpoints/step_{STEPS:08d}"


def train_args(backend: str) -> list[str]:
    return ["configs/train/cpu-tiny.yaml", f"steps={STEPS}", *BACKENDS[backend], *FAST]


@pytest.fixture(scope="module")
def two_node_runs(env, tmp_path_factory):
    """(backend, kind) -> (run dir, job id) for the 2-node jobs interrupted mid-run by `kind`;
    (backend, 'local') -> (run dir, process) for the uninterrupted local 2-process references."""
    base = tmp_path_factory.mktemp("two_node")
    env = {**env, **PAD}
    runs = {}
    for backend, kind in INTERRUPTED:  # held until all are queued: none may finish before the loop below watches it
        out = base / f"{backend}-{kind}"
        nca(env, "submit", *train_args(backend), "cluster=local-slurm", "cluster.sbatch={hold: true}", f"out={out}",
            f"name={backend}-{kind}")
        runs[backend, kind] = (out, job_ids(out)[0])
    subprocess.run(["scontrol", "release", ",".join(job for _, job in runs.values())], check=True)
    for backend in BACKENDS:
        out = base / f"{backend}-local"
        proc = subprocess.Popen([str(CLI), "train", *train_args(backend), "parallel.nproc=2", f"out={out}"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        runs[backend, "local"] = (out, proc)
    t0 = time.time()
    pending = list(INTERRUPTED)
    while pending:
        for key in list(pending):
            out, job = runs[key]
            if logged_steps(out) >= 3:
                subprocess.run([*SIGNALS[key[1]], job], check=True)
                pending.remove(key)
                assert logged_steps(out) < STEPS, f"{key}: the job finished before it could be interrupted"
        assert time.time() - t0 < 900, f"jobs did not start logging steps: {[(k, state(runs[k][1])) for k in pending]}"
        time.sleep(0.3)
    return runs


def reference(runs, backend: str) -> Path:
    """The uninterrupted local 2-process run of `backend`."""
    out, proc = runs[backend, "local"]
    if proc.returncode is None:
        log = proc.communicate(timeout=900)[0]
        assert proc.returncode == 0, log[-3000:]
    assert proc.returncode == 0
    return out


def node_addresses() -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "node", "n1,n2"], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"NodeName=(\S+).*?NodeAddr=(\S+)", out, flags=re.S))


RENDEZVOUS = re.compile(r"rendezvous: rank (\d+) of 2 on (\S+) \(([\d.]+)\) -> MASTER_ADDR=(\S+) \(([\d.]+)\)")


def test_two_node_tp2_meets_at_the_master_nodes_address_and_matches_a_local_run(two_node_runs):
    out, job = two_node_runs["megatron", "usr2"]
    assert wait_for(job) == "COMPLETED", (out / "launch" / job / f"{job}_0_log.out").read_text()[-3000:]
    # one task on each node, each in its node's network namespace, meeting at n1's own address
    addr = node_addresses()
    assert len(set(addr.values())) == 2 and "127.0.0.1" not in addr.values()
    seen = {}
    for rank in (0, 1):
        text = (out / "launch" / job / f"{job}_{rank}_log.out").read_text()
        m = RENDEZVOUS.search(text)
        assert m, text[-3000:]
        seen[int(m.group(1))] = m.groups()[1:]
    assert seen == {0: ("n1", addr["n1"], "n1", addr["n1"]), 1: ("n2", addr["n2"], "n1", addr["n1"])}
    assert len(losses(out)) == STEPS
    assert losses(out) == losses(reference(two_node_runs, "megatron"))


@pytest.mark.parametrize("backend, kind", INTERRUPTED, ids=[f"{b}-{k}" for b, k in INTERRUPTED])
def test_preempted_job_resumes_to_identical_weights(backend, kind, two_node_runs, tmp_path):
    out, job = two_node_runs[backend, kind]
    log = out / "launch" / job / f"{job}_0_log.out"
    assert wait_for(job) == "COMPLETED", log.read_text()[-3000:]
    plain = reference(two_node_runs, backend)
    text = log.read_text()
    signal = {"usr2": "SIGUSR2", "requeue": "SIGTERM"}[kind]
    assert "stopping at step" in text and f"after {signal}" in text, text[-3000:]
    assert "resumed from" in text
    if kind == "usr2":
        assert "requeueing job" in text  # rank 0 asked Slurm for it
    restarts = [m for m in metrics(out) if "restart" in m]
    assert len(restarts) == 1 and restarts[0]["restart"] == 1 and restarts[0]["reason"] == signal
    assert restarts[0]["lost_steps"] == 0  # the preemption save lost nothing
    assert [m["step"] for m in metrics(out) if "loss" in m] == list(range(1, STEPS + 1))  # each step once
    assert losses(out) == losses(plain)
    a = final_weights(backend, plain / FINAL, tmp_path / "a")
    b = final_weights(backend, out / FINAL, tmp_path / "b")
    assert a and a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


@pytest.mark.parametrize("nodelist", NODELISTS)
def test_slurm_expands_node_lists_as_the_fallback_parser_does(nodelist):
    slurm = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    assert slurm.stdout.split() == NODELISTS[nodelist] == rendezvous.expand_nodelist(nodelist)


def test_status_reports_state_step_loss_restarts(two_node_runs, env):
    out, job = two_node_runs["megatron", "usr2"]
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
    """A 2-minute job whose training cannot fit one attempt on any machine: every step lasts >= 0.5 s (200 steps,
    >= 100 s) and the USR2 warning comes at most 95 s after the task starts (signal_lead_s=25: rank 0 counts it
    from its start; Slurm sends it too, up to a minute early, which only shortens an attempt). The warning makes
    the job save and requeue itself, on every attempt, until it finishes."""
    out = tmp_path / "run"
    steps = 200
    nca({**env, STEP_TIME_ENV: "0.5"}, "submit", "configs/train/cpu-tiny.yaml", "cluster=local-slurm",
        "cluster.nodes=1", "cluster.time=2", "cluster.signal_lead_s=25", "cluster.max_restarts=10", f"steps={steps}",
        *FAST, f"out={out}")
    job = job_ids(out)[0]
    assert wait_for(job, timeout=1500) == "COMPLETED", (out / "launch" / job / f"{job}_0_log.out").read_text()[-3000:]
    restarts = [m for m in metrics(out) if "restart" in m]
    assert restarts and all(r["reason"] == "SIGUSR2" and r["lost_steps"] == 0 for r in restarts)
    assert [m["step"] for m in metrics(out) if "loss" in m] == list(range(1, steps + 1))


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
