"""Storage faults through fsspec: writes that fail a few times are retried with backoff and succeed; writes
that keep failing (a flaky store that never recovers, a full disk) end in one clear error; in every case
nothing is half-published: no shard, record, manifest, checkpoint file or `latest` pointer appears under its
final name unless it is complete. The faults come from two fsspec filesystems wrapped around the in-memory
one: FlakyFS fails its first N writes, FullFS refuses to hold more than a byte budget (ENOSPC)."""

from __future__ import annotations

import errno
import json
import uuid

import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from nca_scale.data import urls
from nca_scale.data.urls import Location
from nca_scale.data.writer import GenerateJob, write_shards
from nca_scale.errors import UserError
from nca_scale.train import checkpoint
from nca_scale.train.checkpoint import commit as checkpoint_commit
from nca_scale.train.checkpoint import mirror
from nca_scale.train.checkpoint import verify as checkpoint_verify
from nca_scale.train.config import TrainConfig


class FlakyFS(MemoryFileSystem):
    """Fails the first `failures` writes with a transient error, then behaves."""

    def __init__(self, failures: int):
        super().__init__(skip_instance_cache=True)
        self.failures, self.attempts = failures, 0

    def pipe_file(self, path, value, **kwargs):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError(f"injected failure {self.attempts} writing {path}")
        return super().pipe_file(path, value, **kwargs)


class FullFS(MemoryFileSystem):
    """A disk of `capacity` bytes: a write that would exceed it fails with ENOSPC (and leaves nothing)."""

    def __init__(self, capacity: int):
        super().__init__(skip_instance_cache=True)
        self.capacity = capacity

    def used(self) -> int:
        return sum(len(f.getbuffer()) for p, f in self.store.items() if p.startswith(self.prefix))

    def pipe_file(self, path, value, **kwargs):
        if self.used() + len(value) > self.capacity:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return super().pipe_file(path, value, **kwargs)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    sleeps = []
    monkeypatch.setattr(urls, "BACKOFF_S", 0.001)
    monkeypatch.setattr(urls.time, "sleep", sleeps.append)
    return sleeps


# three shards of 4 sequences, generated in this process (write_shards' caller resolves workers and threads)
SMALL = GenerateJob(out="memory://faults", tokens=4 * 1025 * 3, sequences_per_shard=4, progress=False, workers=1,
                    threads=1, tar_workers=0)


def _location(fs: MemoryFileSystem) -> Location:
    root = f"/faults-{uuid.uuid4().hex[:8]}"
    fs.prefix = root
    return Location(url=f"memory:/{root}", scheme="memory", fs=fs, root=root)


def _names(loc: Location) -> set[str]:
    return {p[len(loc.root) + 1:] for p in loc.fs.find(loc.root)}


def test_transient_write_failures_are_retried_with_backoff(fast_backoff):
    loc = _location(FlakyFS(failures=3))
    loc.put_atomic("a.bin", b"x" * 100)
    assert loc.read("a.bin") == b"x" * 100 and _names(loc) == {"a.bin"}
    assert loc.fs.attempts == 4 and fast_backoff == [0.001, 0.002, 0.004]  # exponential


def test_persistent_failure_is_one_clear_error_and_publishes_nothing():
    loc = _location(FlakyFS(failures=100))
    with pytest.raises(UserError, match=r"writing memory://.*/a.bin failed 4 times \(injected failure 4 .*\); "
                                         "nothing was published"):
        loc.put_atomic("a.bin", b"x")
    assert _names(loc) == set()


def test_full_disk_is_one_clear_error_and_publishes_nothing():
    loc = _location(FullFS(capacity=150))
    loc.put_atomic("a.bin", b"x" * 100)
    with pytest.raises(UserError, match="b.bin failed 4 times .*No space left on device"):
        loc.put_atomic("b.bin", b"y" * 100)
    assert _names(loc) == {"a.bin"}


@pytest.mark.parametrize("fs", [FlakyFS(failures=100), FullFS(capacity=20_000)], ids=["flaky", "full"])
def test_shards_on_a_failing_store_publish_no_manifest(fs, tiny_cfg):
    loc = _location(fs)
    with pytest.raises(UserError, match="failed 4 times"):
        write_shards(tiny_cfg, loc, SMALL)
    names = _names(loc)
    assert "manifest.json" not in names and not [n for n in names if urls.TEMP_MARK in n]
    for name in names:  # whatever did land is complete: each shard before its record
        if name.endswith(".json"):
            assert json.loads(loc.read(name))["name"] in names


def test_shards_survive_transient_failures(tiny_cfg):
    loc = _location(FlakyFS(failures=2))
    write_shards(tiny_cfg, loc, SMALL)
    assert "manifest.json" in _names(loc)


def _local_checkpoint(tmp_path, step: int):
    cfg = TrainConfig(out=str(tmp_path / "run"))
    checkpoint_commit.begin(cfg.out, step)
    torch.save({"model": {"w": torch.full((256,), float(step))}}, checkpoint.staging_dir(cfg.out, step) / "state.pt")
    return checkpoint_commit.commit(cfg, step, step * 10)


def test_checkpoint_mirror_on_a_flaky_store(tmp_path, monkeypatch):
    fs = FlakyFS(failures=2)
    loc = _location(fs)
    monkeypatch.setattr(mirror, "_location", lambda url: loc)
    mirror.publish(_local_checkpoint(tmp_path, 2), loc.url, keep=3)
    assert loc.read("latest").decode().strip() == "step_00000002"
    fetched = mirror.fetch_latest(loc.url, tmp_path / "elsewhere")
    assert fetched is not None and checkpoint_verify.verify(fetched) is None
    assert torch.load(fetched / "state.pt", weights_only=True)["model"]["w"][0] == 2.0


def test_checkpoint_mirror_on_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch):
    loc = _location(FullFS(capacity=10**6))
    monkeypatch.setattr(mirror, "_location", lambda url: loc)
    mirror.publish(_local_checkpoint(tmp_path, 2), loc.url, keep=3)
    newer = _local_checkpoint(tmp_path, 4)
    loc.fs.capacity = loc.fs.used() + (newer / "state.pt").stat().st_size + 100  # room for the weights only
    with pytest.raises(UserError, match="No space left on device"):
        mirror.publish(newer, loc.url, keep=3)
    assert loc.read("latest").decode().strip() == "step_00000002"  # the pointer never moved
    assert loc.sub("step_00000004").size("meta.json") is None  # the interrupted upload is not committed
    fetched = mirror.fetch_latest(loc.url, tmp_path / "elsewhere")
    assert fetched.name == "step_00000002" and checkpoint_verify.verify(fetched) is None
