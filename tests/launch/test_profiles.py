"""Without a cluster: time formats, profile checks, Slurm -> torch.distributed variables, the local executor."""

from __future__ import annotations

import json

import pytest
from launch_helpers import FAST, NODELISTS, losses, nca

from nca_scale.errors import UserError
from nca_scale.launch import profile, rendezvous


@pytest.mark.parametrize("text, minutes", [("30", 30), ("1:30", 2), ("02:00:00", 120), ("1-00:00:00", 1440),
                                           ("2-12", 3600), ("0:00:30", 1)])
def test_slurm_time_formats(text, minutes):
    assert profile.parse_time(text) == minutes


@pytest.mark.parametrize("text", ["soon", "1:75:00", "", "1-25:00:00", "-5", "0"])
def test_malformed_times_are_errors(text):
    with pytest.raises(UserError, match="cluster.time"):
        profile.parse_time(text)


def test_profile_overrides_and_checks():
    prof, name = profile.load("local-slurm", [("nodes", "1"), ("time", "00:05:00")])
    assert name == "local-slurm" and prof.nodes == 1 and prof.minutes == 5 and prof.world == 1
    with pytest.raises(UserError, match="signal_lead_s"):
        profile.load("local-slurm", [("time", "1")])  # a 60 s lead does not fit a 1-minute job
    with pytest.raises(UserError, match="unknown cluster profile 'nope'"):
        profile.load("nope")
    with pytest.raises(UserError, match="unknown key 'partitoin'"):
        profile.load("local-slurm", [("partitoin", "x")])
    with pytest.raises(UserError, match="one task per GPU"):
        profile.load("launchers/gpu-example.yaml", [("tasks_per_node", "2")])
    assert profile._gpus("gpu:a100:8(S:0-1),shard:8") == 8 and profile._gpus("(null)") == 0


@pytest.mark.parametrize("nodelist", NODELISTS)
def test_nodelists_without_slurm_client(nodelist, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol: submitit's parser
    assert rendezvous.expand_nodelist(nodelist) == NODELISTS[nodelist]


def test_two_bracket_ranges_give_the_first_node_as_master(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "r[1-2]n[1-2]", "SLURM_JOB_ID": "7"}
    assert rendezvous.slurm_env(env)["MASTER_ADDR"] == "r1n1"
    with pytest.raises(UserError, match="not a Slurm host list"):
        rendezvous.expand_nodelist("gpu[1-")


def test_rendezvous_from_slurm_variables():
    env = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_NODEID": "2",
           "SLURM_TASKS_PER_NODE": "2(x3),2", "SLURM_JOB_NODELIST": "gpu[07-10]", "SLURM_JOB_ID": "1234"}
    got = rendezvous.slurm_env(env)
    assert got["RANK"] == "5" and got["LOCAL_RANK"] == "1" and got["WORLD_SIZE"] == "8"
    assert got["LOCAL_WORLD_SIZE"] == "2" and got["MASTER_ADDR"] == "gpu07"
    requeued = rendezvous.slurm_env({**env, "SLURM_RESTART_COUNT": "1"})
    assert requeued["MASTER_PORT"] != got["MASTER_PORT"]  # never the predecessor's store
    assert rendezvous.slurm_env({**env, "RANK": "0"}) == {}  # under torchrun nothing changes
    assert rendezvous.slurm_env({}) == {}


def test_local_executor_runs_a_training_job(env, tmp_path):
    out = tmp_path / "run"
    proc = nca(env, "submit", "configs/train/cpu-tiny.yaml", "steps=2", *FAST, f"out={out}")
    assert "done" in proc.stdout
    assert len(losses(out)) == 2
    rows = json.loads(nca(env, "status", str(out), "format=json").stdout)
    assert rows[0]["state"] == "COMPLETED" and rows[0]["step"] == 2


def test_submit_errors(env, tmp_path):
    proc = nca(env, "submit", "configs/train/cpu-tiny.yaml", "steps=2", "backend=megatron", "parallel.tp=3", f"out={tmp_path}",
               check=False)
    assert proc.returncode == 2 and "tp=3" in proc.stderr  # the command's config is checked before submitting
    proc = nca(env, "submit", "configs/train/cpu-tiny.yaml", "after=123", f"out={tmp_path}", check=False)
    assert proc.returncode == 2 and "after= needs a Slurm profile" in proc.stderr
    proc = nca(env, "status", str(tmp_path / "nothing"), check=False)
    assert proc.returncode == 2 and "is neither a run folder" in proc.stderr  # nor a directory of submitted jobs
