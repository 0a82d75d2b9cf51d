"""Generate NCA sequences into a shard directory: plan, skip what is done, overlap generation and writing.

`generate(cfg, job)` is `nca-scale generate` as a library call: it checks the job and the location, tunes the
process and calls `write_shards`, which plans the shards, keeps the complete ones, hands the rest to a
producer (`data/producers.py`: in this process, or a forked pool of generating workers) and commits them in
order in a writer thread (`ShardCommitter`). A sequence's tokens depend only on its index (nca/stream.py), so
the shards are byte-identical for any number of workers. A bounded queue keeps at most two finished shards
waiting for the writer; only the manifest, written last, publishes the directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Literal

import numpy as np
from tqdm import tqdm

from nca_scale.data import manifest as mf
from nca_scale.data.producers import ShardJob, forget_pool, generator_pool, local_job, pooled_job
from nca_scale.data.shards import ShardSamples, sha256, shard_name
from nca_scale.data.urls import Location, parse_location
from nca_scale.errors import UserError
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.device import check_device
from nca_scale.nca.stream import NCAStream
from nca_scale.procs import keep_freed_memory, set_threads


@dataclass(frozen=True)
class GenerateJob:
    """What to generate and how (the job keys of `nca-scale generate`; the NCA config is separate)."""

    out: str = ""  # the shard directory: path, file://, s3:// or memory:// (required)
    tokens: int = 0  # sequences = ceil(tokens / (seq_len + 1)); every sequence counts seq_len + 1 tokens
    split: Literal["train", "val"] = "train"  # train or val (disjoint rule banks)
    start: int = 0  # first global sequence index
    sequences_per_shard: int = 8192  # sequences per WebDataset shard
    batch_size: int = 512  # sequences generated per batch
    workers: int = 0  # generating processes, one thread each; 0: one per core on CPU (1 on CUDA); 1: this process
    threads: int = 0  # intra-op threads when workers=1; 0: all cores
    device: str = "cpu"  # cpu | cuda | cuda:N
    endpoint_url: str = ""  # S3-compatible endpoint; default $AWS_ENDPOINT_URL
    verify: bool = True  # re-hash existing shards before skipping them
    progress: bool = True  # show a progress bar
    tar_workers: int = 1  # processes building tars when workers=1 (0: a thread); tar building is pure Python
    # and would hold the generator's GIL

    def validate(self) -> None:
        if not self.out.strip():
            raise UserError("out= is required: the shard directory (path, file://, s3:// or memory://)")
        if self.tokens <= 0:
            raise UserError(f"tokens={self.tokens} must be > 0 (how many tokens to generate, e.g. tokens=1e9)")
        if self.start < 0:
            raise UserError(f"start={self.start} must be >= 0 (the first global sequence index)")
        if self.sequences_per_shard < 1 or self.batch_size < 1:
            raise UserError("sequences_per_shard and batch_size must be >= 1")
        if self.tar_workers < 0:
            raise UserError(f"tar_workers={self.tar_workers} must be >= 0 (0 = build tars in a thread)")
        if self.workers < 0:
            raise UserError(f"workers={self.workers} must be >= 0 (0 = one process per core)")
        if self.threads < 0:
            raise UserError(f"threads={self.threads} must be >= 0 (0 = all cores)")
        if self.workers > 1 and self.device != "cpu":
            raise UserError(f"workers={self.workers} is for CPU generation; use workers=1 with device={self.device}")

    def resolved(self) -> GenerateJob:
        """workers and threads as numbers (0 means: as many as this machine has)."""
        cores = os.cpu_count() or 1
        return dataclasses.replace(self, workers=self.workers or (cores if self.device == "cpu" else 1),
                                   threads=self.threads or cores)


def generate(cfg: NCAConfig, job: GenerateJob) -> tuple[Location, WriteResult]:
    """`nca-scale generate`: everything is checked before anything is written (job keys, URL form, device,
    writability), then the shards and the manifest are written."""
    job.validate()
    loc = parse_location(job.out, job.endpoint_url or None)
    check_device(job.device)
    loc.check_writable()
    if job.workers == 1:
        set_threads(job.threads)  # 0: keep torch's default
    keep_freed_memory()  # this process generates (workers=1) or forks the workers that do
    return loc, write_shards(cfg, loc, job.resolved())


@dataclass(frozen=True)
class ShardPlan:
    number: int
    start: int  # first global index
    stop: int  # one past the last

    @property
    def count(self) -> int:
        return self.stop - self.start


def sequences_for(tokens: int, cfg: NCAConfig) -> int:
    """Sequences needed for at least `tokens` tokens, each sequence counting seq_len + 1 tokens."""
    return math.ceil(tokens / cfg.sequence_tokens)


def plan_shards(start: int, count: int, per_shard: int) -> list[ShardPlan]:
    return [
        ShardPlan(k, start + k * per_shard, min(start + (k + 1) * per_shard, start + count))
        for k in range(math.ceil(count / per_shard))
    ]


@dataclass
class WriteResult:
    manifest: dict
    written: int  # shards generated by this run
    skipped: int  # shards found complete and kept
    written_tokens: int
    seconds: float  # generation + writing, from the first generated batch to the last commit

    @property
    def tokens_per_second(self) -> float:
        return self.written_tokens / max(self.seconds, 1e-9)


def check_existing_manifest(loc: Location, cfg: NCAConfig, split: str, start: int, per_shard: int) -> None:
    """Refuse to mix two different datasets in one directory (a re-run may only resume or extend)."""
    try:
        raw = loc.read(mf.MANIFEST)  # a read, not exists(): listings may be cached, reads are not
    except FileNotFoundError:
        return
    m = mf.parse_manifest(raw, loc.url_of(mf.MANIFEST))
    if (m.get("fingerprint"), m["start"], m.get("sequences_per_shard")) != (mf.fingerprint(cfg, split), start, per_shard):
        raise UserError(
            f"out={loc.url} already holds a dataset with a different config, split, start or sequences_per_shard "
            f"(see its manifest.json); choose another out= or delete that directory"
        )


def completed_record(loc: Location, plan: ShardPlan, split: str, fp: str, verify: bool) -> dict | None:
    """The shard's record if the shard is complete and is the one this run would write, else None."""
    name = shard_name(split, plan.number)
    try:
        rec = json.loads(loc.read(mf.record_name(name)))
    except (FileNotFoundError, ValueError):
        return None
    if (rec.get("fingerprint"), rec.get("start"), rec.get("stop")) != (fp, plan.start, plan.stop):
        return None
    if loc.size(name) != rec.get("bytes"):
        return None
    if verify and sha256(loc.read(name)) != rec.get("sha256"):
        return None
    return rec


class ShardCommitter(threading.Thread):
    """Atomically commits shards, in order, handed over through a bounded queue (building them if needed)."""

    def __init__(self, loc: Location, fp: str):
        super().__init__(name="shard-writer", daemon=True)
        self.loc, self.fp = loc, fp
        self.jobs: queue.Queue = queue.Queue(maxsize=2)
        self.records: list[dict] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is not None:
                continue  # drain so the producer never blocks; the error is raised in the main thread
            try:
                self.records.append(self.commit(job))
            except BaseException as e:  # noqa: B036 - reported to, and re-raised by, the main thread
                self.error = e

    def commit(self, job: ShardJob) -> dict:
        data, digest = job.build()
        rec = {
            "fingerprint": self.fp, "name": job.name, "start": job.start, "stop": job.stop,
            "sequences": job.stop - job.start, "tokens": job.tokens, "bytes": len(data), "sha256": digest,
            "score_histogram": mf.score_histogram(job.scores),
        }
        self.loc.put_atomic(job.name, data)  # retried; a UserError after the last attempt
        # the record goes after the shard: a record always describes a complete shard
        self.loc.put_atomic(mf.record_name(job.name), json.dumps(rec).encode())
        return rec

    def submit(self, job: ShardJob) -> None:
        while True:  # never block forever on a dead writer
            if self.error is not None:
                raise self.error
            try:
                self.jobs.put(job, timeout=0.5)
                return
            except queue.Full:
                continue

    def abort(self) -> None:
        """Drop queued shards (never committed, so never visible) and stop after the one in progress."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            for f in job.futures if job is not None else ():
                f.cancel()
        self.jobs.put(None)
        self.join()

    def finish(self) -> list[dict]:
        self.jobs.put(None)
        self.join()
        if self.error is not None:
            raise self.error
        return self.records


def write_shards(cfg: NCAConfig, loc: Location, job: GenerateJob) -> WriteResult:
    """Write sequences [start, start + ceil(tokens / (seq_len+1))) of `job.split` under `loc`, then the manifest.

    Complete shards from an earlier run of the same dataset are kept; `job` is validated and resolved
    (`GenerateJob.resolved`) and `loc` checked writable by the caller (nothing here is written before
    generation starts). With job.tar_workers > 0 and workers = 1, call this under
    `if __name__ == "__main__":` in scripts (spawned workers re-import the main module).
    """
    split, workers, batch_size = job.split, job.workers, job.batch_size
    fp = mf.fingerprint(cfg, split)
    count = sequences_for(job.tokens, cfg)
    plans = plan_shards(job.start, count, job.sequences_per_shard)
    check_existing_manifest(loc, cfg, split, job.start, job.sequences_per_shard)
    loc.remove_stale_temps()
    present = loc.names()
    done = {
        p.number: completed_record(loc, p, split, fp, job.verify)
        if mf.record_name(shard_name(split, p.number)) in present else None
        for p in plans
    }
    todo = [p for p in plans if done[p.number] is None]
    # with fewer than 2 shards to write there is nothing to overlap a tar worker's start-up with
    tar_workers = job.tar_workers if len(todo) >= 2 else 0

    pool = generator_pool(workers) if workers > 1 and todo else None  # forked before our threads start
    stream = NCAStream(cfg, split, device=job.device, batch_size=batch_size, threads=job.threads,
                       progress=job.progress, pool=pool, in_flight=2 * workers)
    dtype = np.dtype(cfg.token_dtype)
    bar = tqdm(
        total=count * cfg.sequence_tokens, initial=(count - sum(p.count for p in todo)) * cfg.sequence_tokens,
        unit="tok", unit_scale=True, desc=f"generate {split}", disable=not job.progress, smoothing=0.1,
    )
    committer = ShardCommitter(loc, fp)
    committer.start()
    t_gen = time.perf_counter()
    try:
        for plan in todo:
            name = shard_name(split, plan.number)
            idx = np.arange(plan.start, plan.stop, dtype=np.int64)
            banks, rules, scores = stream.rules(idx)  # builds the bank on first use, before any shard is written
            if pool is not None:
                s = ShardSamples(idx, None, banks, rules, scores)
                committer.submit(pooled_job(pool, cfg, split, name, s, batch_size, bar))
                continue
            out = np.empty((plan.count, cfg.sequence_tokens), dtype=dtype)
            for lo in range(0, plan.count, batch_size):
                part = slice(lo, lo + batch_size)
                seqs = stream.generate(banks[part], rules[part], idx[part])
                out[part] = seqs.cpu().numpy()
                bar.update(seqs.numel())
            committer.submit(local_job(name, ShardSamples(idx, out, banks, rules, scores), tar_workers))
        new = committer.finish()
    except BrokenProcessPool:
        committer.abort()
        forget_pool("generate", workers)
        raise UserError(
            "a generating worker process died (killed, or out of memory); re-run the same command to resume "
            "(complete shards are kept), with fewer workers= or a smaller batch_size= if memory is short"
        ) from None
    except BaseException:
        committer.abort()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t_gen

    by_name = {r["name"]: r for r in new}
    records = [done[p.number] or by_name[shard_name(split, p.number)] for p in plans]
    m = mf.build_manifest(cfg, split, job.start, job.start + count, job.sequences_per_shard, job.tokens, records)
    loc.put_atomic(mf.MANIFEST, json.dumps(m, indent=1).encode())
    written_tokens = sum(p.count for p in todo) * cfg.sequence_tokens
    return WriteResult(m, len(todo), len(plans) - len(todo), written_tokens, seconds)
