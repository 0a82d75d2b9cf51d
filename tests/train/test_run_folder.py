"""The run folder's lease (issue 25): a second training into a live run folder is refused naming the holder,
resume=auto and overwrite=true included, in under 2 s and without touching the first run, whose files end as a
run alone's would; a stale lease (no heartbeat, process gone, a requeued attempt of its Slurm job) is taken
over with a logged line."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time

import pytest
from train_helpers import CLI, FAST, ROOT

from nca_scale.errors import UserError
from nca_scale.train import checkpoint, faults, lease

ARGS = ["configs/train/cpu-tiny.yaml", *FAST, "prefetch=false", "checkpoint.every=4"]


def _run(out, *extra: str, step_time: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", **{faults.STEP_TIME_ENV: str(step_time)})
    return subprocess.Popen([str(CLI), "train", *ARGS, f"out={out}", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoint_files(out) -> dict:
    """Every committed checkpoint's file table (size + sha256 of each file): the bytes a run left, but for DCP's
    .metadata, which holds its own path and a random save id."""
    return {p.name: {name: f for name, f in json.loads((p / checkpoint.META).read_text())["files"].items()
                     if not name.endswith(".metadata")} for p in checkpoint.complete_checkpoints(out)}


def _losses(out) -> list:
    return [(m["step"], m["loss"]) for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in m]


def test_a_second_training_into_a_live_run_folder_is_refused_fast_and_changes_nothing(tmp_path):
    alone, out = tmp_path / "alone", tmp_path / "run"
    first = _run(out, "steps=8", step_time=0.25)
    reference = _run(alone, "steps=8")
    deadline = time.time() + 120
    while not (out / "progress.json").exists():  # training, and so holding its lease
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.1)
    holder = json.loads((out / lease.NAME).read_text())
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), first.pid)
    for extra in ("resume=auto", "overwrite=true", "steps=3"):
        t0 = time.monotonic()
        second = _run(out, extra)
        err = second.communicate(timeout=60)[1]
        took = time.monotonic() - t0
        assert second.returncode == 2, err
        assert f"out={out} is in use by another training (host {socket.gethostname()}, pid {first.pid}" in err, err
        assert took < 2.0, (extra, took)
    assert first.communicate(timeout=300)[0] is not None and first.returncode == 0
    assert reference.communicate(timeout=300)[0] is not None and reference.returncode == 0
    assert not (out / lease.NAME).exists()  # released at the end
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("run.old")] == []  # nothing moved aside
    assert _checkpoint_files(out) == _checkpoint_files(alone) and len(_checkpoint_files(out)) == 2
    assert _losses(out) == _losses(alone) and len(_losses(out)) == 8


def _plant(out, **fields) -> lease.Holder:
    now = time.time()
    holder = lease.Holder(**{"host": "node-elsewhere", "pid": 4242, "started": now, "heartbeat": now,
                             "token": "theirs", **fields})
    out.mkdir(parents=True, exist_ok=True)
    (out / lease.NAME).write_text(json.dumps(holder.__dict__))
    return holder


def test_a_live_lease_on_another_host_is_refused_naming_it(tmp_path):
    _plant(tmp_path, slurm_job="777")
    with pytest.raises(UserError, match=r"in use by another training \(host node-elsewhere, pid 4242, Slurm job 777"):
        lease.Lease(tmp_path).acquire()
    assert json.loads((tmp_path / lease.NAME).read_text())["token"] == "theirs"


@pytest.mark.parametrize("fields, reason", [
    ({"heartbeat": time.time() - 2 * lease.STALE_S}, "no heartbeat for"),
    ({"host": socket.gethostname(), "pid": 2**22 + 7}, "its process is gone"),
    ({"slurm_job": "555", "restart": 0}, "a requeued attempt (restart 1) of its Slurm job 555"),
])
def test_a_stale_lease_is_taken_over_with_a_logged_line(tmp_path, monkeypatch, caplog, fields, reason):
    monkeypatch.setenv("SLURM_JOB_ID", "555")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _plant(tmp_path, **fields)
    with caplog.at_level(logging.WARNING, logger="nca_scale.train.lease"), lease.Lease(tmp_path).acquire() as held:
        mine = json.loads((tmp_path / lease.NAME).read_text())
        assert (mine["pid"], mine["token"]) == (os.getpid(), held.holder.token)
    assert f"taking over the lease of {tmp_path} from host" in caplog.text and reason in caplog.text, caplog.text
    assert not (tmp_path / lease.NAME).exists()


def test_the_heartbeat_moves_while_held(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    with lease.Lease(tmp_path).acquire():
        first = lease.read(tmp_path).heartbeat
        time.sleep(0.5)
        assert lease.read(tmp_path).heartbeat > first


def test_the_ranks_of_one_job_share_its_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    _plant(tmp_path, job="torchrun:job-a")  # rank 0 of this job, on another node
    lease.check(tmp_path)
    with lease.Lease(tmp_path).acquire() as held:
        assert held.holder is None  # rank 0 holds it (and releases it)
    assert (tmp_path / lease.NAME).exists()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    with pytest.raises(UserError, match="in use by another training"):
        lease.check(tmp_path)


def test_ranks_of_a_torchrun_without_a_run_id_share_the_lease_by_their_rendezvous(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --standalone or --rdzv-id
    monkeypatch.setenv("MASTER_ADDR", "node-a")
    monkeypatch.setenv("MASTER_PORT", "29500")
    _plant(tmp_path, job="rendezvous:node-a:29500")
    lease.check(tmp_path)
    monkeypatch.setenv("MASTER_PORT", "29501")
    with pytest.raises(UserError, match="in use by another training"):
        lease.check(tmp_path)
