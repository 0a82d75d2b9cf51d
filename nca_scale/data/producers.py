"""Producers of shard contents for `data/writer.py`: each returns a `ShardJob` whose `build()` gives the tar
bytes and their sha256, in this process or in worker processes.

- in-process (`local_job`, workers = 1): the caller generated the tokens; the tar is built (and hashed) in a
  spawned tar-building process, or in the writer thread with tar_workers=0. Why processes: building a tar is
  per-sample pure Python (tarfile), and in a thread it holds the GIL that the generator needs between its many
  small torch calls. "spawn", not fork: the parent has torch/OpenMP and fsspec threads whose locks a forked
  child could inherit held.
- forked pool (`pooled_job`, workers > 1): single-threaded processes, forked from this one, generate batches
  of sequences and return them as ready-made tar members; the job only joins them in index order. Why fork
  here: a spawned process re-imports torch (~2.5 CPU-seconds each on our CI machine, more than the bank
  scoring of a whole 8M-token run); a forked one starts at once. The pool is forked before any thread of the
  writer starts, and each worker sets one intra-op thread before any torch work, as torch's DataLoader does.

Pools are created once per process and reused by later runs (tests and notebooks run many); a pool broken by
a killed worker (Ctrl-C, out of memory) is replaced.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from nca_scale.data.shards import ShardSamples, build_and_hash, sha256, tar_from_members, tar_members
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.stream import NCAStream
from nca_scale.procs import exit_with_parent, keep_freed_memory


@dataclass
class ShardJob:
    """A shard for the committer: `build()` returns its tar bytes and sha256 (waiting for workers)."""

    name: str
    start: int
    stop: int
    tokens: int
    scores: np.ndarray
    build: Callable[[], tuple[bytes, str]]
    futures: list[Future] = field(default_factory=list)  # cancelled when the run is aborted


_POOLS: dict[tuple[str, int], ProcessPoolExecutor] = {}  # (kind, workers) -> the live pool of this process


def _pool(kind: str, workers: int) -> ProcessPoolExecutor:
    """The process's `kind` pool: "tar" (spawned tar builders, started lazily, so the first shard's generation
    overlaps their start-up) or "generate" (forked generators, all at once and before any writer thread:
    Python forks a whole pool on its first task), replaced if a worker died since the last run."""
    pool = _POOLS.get((kind, workers))
    if pool is not None and kind == "generate":
        try:
            pool.submit(os.getpid).result()
        except BrokenProcessPool:
            pool = None
    if pool is None:
        context, initializer = ("spawn", exit_with_parent) if kind == "tar" else ("fork", _init_generator)
        pool = _POOLS[kind, workers] = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context(context), initializer=initializer,
            initargs=(os.getpid(),))
        if kind == "generate":
            pool.submit(os.getpid).result()
    return pool


def forget_pool(kind: str, workers: int) -> None:
    """Drop a pool whose worker died mid-run, so the next run starts a fresh one."""
    _POOLS.pop((kind, workers), None)


def local_job(name: str, s: ShardSamples, tar_workers: int) -> ShardJob:
    """A shard generated in this process; its tar is built in a tar worker (tar_workers > 0) or by `build()`."""
    built = None
    for _ in range(2 if tar_workers > 0 else 0):  # a pool broken by a killed worker is replaced once
        try:
            built = _pool("tar", tar_workers).submit(build_and_hash, s)
            break
        except BrokenProcessPool:
            forget_pool("tar", tar_workers)

    def build() -> tuple[bytes, str]:
        if built is not None:
            try:
                return built.result()
            except BrokenProcessPool:  # the worker died (killed, out of memory): build here rather than fail
                forget_pool("tar", tar_workers)
        return build_and_hash(s)

    start, stop = int(s.indices[0]), int(s.indices[-1]) + 1
    return ShardJob(name, start, stop, int(s.tokens.size), s.scores, build, [built] if built is not None else [])


# ---- the generating pool (workers > 1) -------------------------------------------------------------------
_WORKER_STREAMS: dict[tuple[NCAConfig, str], NCAStream] = {}


def _init_generator(parent_pid: int) -> None:
    torch.set_num_threads(1)  # before any torch work in the child
    keep_freed_memory()
    exit_with_parent(parent_pid)


def generator_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` single-threaded generating processes, forked once per process and reused by later runs."""
    return _pool("generate", workers)


def _generate_members(cfg: NCAConfig, split: str, s: ShardSamples) -> bytes:
    """Worker task: the sequences of `s` (its rules given) as tar members."""
    key = (cfg, split)
    if key not in _WORKER_STREAMS:
        _WORKER_STREAMS.clear()  # one config at a time: a worker's memory stays small
        _WORKER_STREAMS[key] = NCAStream(cfg, split)
    tokens = _WORKER_STREAMS[key].generate(s.banks, s.rules, s.indices).numpy()
    return tar_members(ShardSamples(s.indices, tokens.astype(cfg.token_dtype), s.banks, s.rules, s.scores))


def pooled_job(pool: ProcessPoolExecutor, cfg: NCAConfig, split: str, name: str, s: ShardSamples,
               batch_size: int, bar: tqdm) -> ShardJob:
    """Submit the shard's batches (rules given, tokens not yet) to the pool; the job joins their members."""
    futures = []
    for lo in range(0, len(s.indices), batch_size):
        part = slice(lo, lo + batch_size)
        f = pool.submit(_generate_members, cfg, split,
                        ShardSamples(s.indices[part], None, s.banks[part], s.rules[part], s.scores[part]))
        rows = len(s.indices[part])
        f.add_done_callback(lambda f, rows=rows: f.cancelled() or bar.update(rows * cfg.sequence_tokens))
        futures.append(f)

    def build() -> tuple[bytes, str]:
        data = tar_from_members([f.result() for f in futures])
        return data, sha256(data)

    start, stop = int(s.indices[0]), int(s.indices[-1]) + 1
    return ShardJob(name, start, stop, len(s.indices) * cfg.sequence_tokens, s.scores, build, futures)
