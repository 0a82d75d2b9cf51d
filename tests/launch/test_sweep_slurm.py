"""`nca-scale sweep launch` on the real local Slurm cluster (tools/local_slurm.sh up): stage 1 as a job array,
the stage-2 runs of a pre-pre-trained arm as an array that waits for it (afterok), scratch without dependencies;
each job appends its record; a relaunch submits nothing."""

from __future__ import annotations

import json

import pytest
import yaml
from launch_helpers import nca
from test_sweep_launch import check_record, results, tiny_spec

pytestmark = pytest.mark.usefixtures("slurm")
S1 = "s1-cpu-tiny-nca-b50-t2k-s0"
NCA = "s2-code-cpu-tiny-nca-b50-t2k-d4k-s0"
SCRATCH = "s2-code-cpu-tiny-scratch-d4k-s0"


def test_sweep_on_slurm_arrays_dependencies_records(tmp_path, env):
    spec = tiny_spec(tmp_path)
    doc = yaml.safe_load(spec.read_text())
    doc.update(arms=[{"arm": "scratch"}, {"arm": "nca", "band": "50+", "tokens": 2000}], cluster="local-slurm",
               cluster_keys={"nodes": 1, "time": "00:10:00"})
    spec.write_text(yaml.safe_dump(doc))
    sweep = tmp_path / "sweep"
    nca(env, "sweep", "launch", str(spec), "wait=true", timeout=900)
    jobs = {j["cell"]["run"]: j for j in map(json.loads, (sweep / "launch" / "jobs.jsonl").read_text().splitlines())}
    assert sorted(jobs) == sorted([S1, NCA, SCRATCH]) and {j["executor"] for j in jobs.values()} == {"slurm"}
    assert jobs[NCA]["after"] == [jobs[S1]["job_id"]] and jobs[SCRATCH]["after"] == jobs[S1]["after"] == []
    plan = {r["name"]: r for r in json.loads((sweep / "plan.json").read_text())["runs"]}
    assert "parallel.nproc=1" in plan[NCA]["train_args"]  # one rank per task of the profile
    recs = results(sweep)
    assert sorted(recs) == sorted(plan)
    check_record(recs[S1], plan[S1], None)
    check_record(recs[NCA], plan[NCA], recs[S1]["flops"])
    check_record(recs[SCRATCH], plan[SCRATCH], None)
    proc = nca(env, "sweep", "launch", str(spec))
    assert "3 finished, 0 queued or running, 0 to submit" in proc.stdout
    status = json.loads(nca(env, "sweep", "status", str(spec), "format=json").stdout)
    assert {r["state"] for r in status} == {"FINISHED"}
