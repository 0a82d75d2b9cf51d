"""Re-runs keep complete shards; interrupted runs never leave a partial shard or a manifest visible."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from nca_scale.data import ShardReader
from nca_scale.data import urls as urls_mod
from nca_scale.data.shards import parse_shard
from nca_scale.data.urls import parse_location

SEQ_TOKENS = 129  # tiny.yaml: seq_len 128 + 1
N = 100  # 4 shards of 32, 32, 32, 4
ARGS = ("sequences_per_shard=32",)


@pytest.fixture
def commits(monkeypatch):
    """Names passed to Location.put_atomic, in order (every object a run publishes goes through it)."""
    names: list[str] = []
    original = urls_mod.Location.put_atomic

    def counting(self, name, data):
        names.append(name)
        return original(self, name, data)

    monkeypatch.setattr(urls_mod.Location, "put_atomic", counting)
    return names


def tars(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob("*.tar"))


def assert_complete_and_correct(d: Path, name: str, reference, cfg=None):
    """A visible shard must hold exactly the generator's sequences for its range, nothing partial."""
    rec = json.loads((d / f"{name}.json").read_text())
    shard = parse_shard((d / name).read_bytes(), name, "uint16", range(rec["start"], rec["stop"]))
    want = reference(range(rec["start"], rec["stop"]), cfg=cfg)[0]
    np.testing.assert_array_equal(shard.tokens.astype(np.int64), want)


def child_processes(parent_pid: int, spawned: bool) -> list[int]:
    """Pids of the processes whose parent is `parent_pid` (Linux /proc): spawned multiprocessing workers
    (tar builders) or forked ones (generators, which share the parent's command line)."""
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent_pid and (b"spawn_main" in (d / "cmdline").read_bytes()) == spawned:
                pids.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def assert_exit_soon(pids: list[int], timeout: float = 15.0):
    """Workers of a SIGKILLed generator must exit too (they poll their parent, see shards.py)."""
    deadline = time.monotonic() + timeout
    while alive := [p for p in pids if Path(f"/proc/{p}").exists()]:
        assert time.monotonic() < deadline, f"workers {alive} outlived their killed parent"
        time.sleep(0.2)


def test_rerun_skips_complete_shards(tmp_path, generate, commits, reference):
    out = tmp_path / "d"
    assert generate(str(out), N * SEQ_TOKENS, *ARGS) == 0
    assert len([c for c in commits if c.endswith(".tar")]) == 4
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    before = json.loads((out / "manifest.json").read_text())

    commits.clear()
    assert generate(str(out), N * SEQ_TOKENS, *ARGS) == 0
    assert commits == ["manifest.json"]  # no shard rewritten
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.tar")} == mtimes
    after = json.loads((out / "manifest.json").read_text())
    assert after["shards"] == before["shards"]


@pytest.mark.parametrize("kind", ["memory", pytest.param("s3", marks=pytest.mark.s3)])
def test_rerun_skips_and_repairs_on_object_stores(kind, request, generate, commits, reference):
    """The same resume logic through fsspec listings, sizes and reads of memory:// and a real S3 endpoint."""
    if kind == "s3":
        endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket")
        url, extra = f"s3://{bucket}/resume", [f"endpoint_url={endpoint}"]
    else:
        endpoint, url, extra = None, f"memory://resume-{uuid.uuid4().hex[:8]}", []
    assert generate(url, N * SEQ_TOKENS, *ARGS, *extra) == 0
    commits.clear()
    assert generate(url, N * SEQ_TOKENS, *ARGS, *extra) == 0
    assert commits == ["manifest.json"]

    loc = parse_location(url, endpoint)
    loc.fs.rm_file(loc.path("train-000001.tar"))  # lost shard: its record alone must not count
    commits.clear()
    assert generate(url, N * SEQ_TOKENS, *ARGS, *extra) == 0
    assert [c for c in commits if c.endswith(".tar")] == ["train-000001.tar"]
    reader = ShardReader(url, endpoint_url=endpoint)
    np.testing.assert_array_equal(reader.sequences(range(N)).astype(np.int64), reference(range(N))[0])


def test_rerun_repairs_missing_or_damaged_shards(tmp_path, generate, commits, reference):
    out = tmp_path / "d"
    assert generate(str(out), N * SEQ_TOKENS, *ARGS) == 0
    shas = [s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]]
    (out / "train-000001.tar").unlink()
    damaged = bytearray((out / "train-000002.tar").read_bytes())
    damaged[5000] ^= 0xFF  # same size, different content: only the sha256 check can notice
    (out / "train-000002.tar").write_bytes(bytes(damaged))

    commits.clear()
    assert generate(str(out), N * SEQ_TOKENS, *ARGS) == 0
    assert [c for c in commits if c.endswith(".tar")] == ["train-000001.tar", "train-000002.tar"]
    assert [s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]] == shas
    reader = ShardReader(str(out))
    np.testing.assert_array_equal(reader.sequences(range(N)).astype(np.int64), reference(range(N))[0])


def test_extending_a_run_keeps_its_full_shards(tmp_path, generate, commits, reference):
    out = tmp_path / "d"
    assert generate(str(out), 65 * SEQ_TOKENS, *ARGS) == 0  # shards of 32, 32, 1
    commits.clear()
    assert generate(str(out), N * SEQ_TOKENS, *ARGS) == 0
    # the short last shard covers a different range now, so it is rewritten; full shards are kept
    assert [c for c in commits if c.endswith(".tar")] == ["train-000002.tar", "train-000003.tar"]
    reader = ShardReader(str(out))
    assert len(reader) == N
    np.testing.assert_array_equal(reader.sequences(range(N)).astype(np.int64), reference(range(N))[0])


def test_a_different_dataset_is_refused(tmp_path, generate, capsys):
    out = tmp_path / "d"
    assert generate(str(out), 32 * SEQ_TOKENS, *ARGS) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert generate(str(out), 64 * SEQ_TOKENS, *ARGS, "seed=1") == 2
    err = capsys.readouterr().err
    assert "different config" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_failed_commit_leaves_no_partial_shard(tmp_path, generate, monkeypatch, capsys, reference):
    """A write that fails mid-commit (disk full, crash) publishes nothing under the shard's name."""
    out = tmp_path / "d"
    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src, dst):
        calls["n"] += 1
        if str(dst).endswith("train-000002.tar"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(urls_mod.os, "replace", failing_replace)
    assert generate(str(out), N * SEQ_TOKENS, *ARGS) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train-000002.tar" in err and "No space left" in err
    assert not (out / "manifest.json").exists()
    assert tars(out) == ["train-000000.tar", "train-000001.tar"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # temp file removed
    for name in tars(out):
        assert_complete_and_correct(out, name, reference)

    monkeypatch.setattr(urls_mod.os, "replace", real_replace)
    assert generate(str(out), N * SEQ_TOKENS, *ARGS) == 0
    assert len(ShardReader(str(out)).shards) == 4


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_killed_run_leaves_only_complete_shards(tmp_path, tiny_yaml, tiny_cfg, reference, generate, commits, workers):
    """SIGKILL a real `nca-scale generate` mid-run: every visible shard is whole, no manifest is published,
    its worker processes exit, and the next run keeps those shards and finishes the job. workers=1: one
    generating process and a spawned tar builder; workers=2: two forked generating processes."""
    out = tmp_path / "d"
    per_shard, n = 16, 16 * 200  # far more shards than get written before the kill
    # no complexity band: the subprocess skips scoring a rule bank (seconds), and unscored rules are covered
    unbanded = dataclasses.replace(tiny_cfg, complexity=dataclasses.replace(tiny_cfg.complexity, lo=None))
    cmd = [str(Path(sys.executable).parent / "nca-scale"), "generate", tiny_yaml, f"out={out}",
           f"tokens={n * SEQ_TOKENS}", f"sequences_per_shard={per_shard}", "batch_size=16", "progress=false",
           "complexity.lo=null", f"workers={workers}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*.tar.json"))) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no shard written in 120 s"
            time.sleep(0.01)
        # workers=1: the tar-building process (tar_workers=1, the default); 2: the generating processes
        children = child_processes(proc.pid, spawned=workers == 1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(children) == workers
    assert_exit_soon(children)
    assert not (out / "manifest.json").exists()
    visible = tars(out)
    assert 2 <= len(visible) < n // per_shard
    for name in visible:
        if (out / f"{name}.json").exists():
            assert_complete_and_correct(out, name, reference, unbanded)
        else:  # killed between the shard and its record: the shard is still whole
            assert len(parse_shard((out / name).read_bytes(), name, "uint16", range(
                int(name[6:12]) * per_shard, (int(name[6:12]) + 1) * per_shard)).indices) == per_shard

    # resume the same job for fewer tokens (keeps the test short): the kept shards are not rewritten
    done = [p.name[: -len(".json")] for p in out.glob("*.tar.json")]
    m = len(done) + 2
    assert generate(str(out), m * per_shard * SEQ_TOKENS, f"sequences_per_shard={per_shard}", "complexity.lo=null") == 0
    assert not set(done) & {c for c in commits if c.endswith(".tar")}
    reader = ShardReader(str(out))
    assert reader.config == unbanded
    np.testing.assert_array_equal(
        reader.sequences(range(m * per_shard)).astype(np.int64), reference(range(m * per_shard), cfg=unbanded)[0]
    )
    samples = list(reader.samples())
    assert all(np.isnan(s["score"]) for s in samples)  # unscored rules: null in meta.json, NaN when read
    hist = reader.manifest["complexity_histogram"]
    assert (sum(hist["counts"]), hist["unscored"]) == (0, m * per_shard)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # a killed writer's temp files are cleaned up
