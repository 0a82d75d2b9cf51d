"""nca-scale generate CONFIG.yaml out=URL tokens=N [job keys] [config overrides]

Writes NCA sequences [start, start + ceil(N / (seq_len + 1))) as WebDataset shards plus manifest.json
(docs/data.md). URL: a local path, file:///dir, s3://bucket/prefix or memory://name.
Job keys: out, tokens, split (train|val), start, sequences_per_shard, batch_size, workers (generating
processes, one thread each; 0 = one per core on CPU, 1 on CUDA; 1 = this process only), threads (intra-op
threads when workers=1; 0 = all cores), device (cpu|cuda|cuda:N), endpoint_url (S3-compatible endpoint;
default $AWS_ENDPOINT_URL), verify (re-hash existing shards before skipping them), progress, tar_workers
(processes building tars when workers=1; 0 = a thread). Any other key=value overrides CONFIG.
Re-running the same command skips complete shards; only the manifest publishes a directory.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Literal

from nca_scale.cli.common import parse_job
from nca_scale.errors import UserError
from nca_scale.nca.config import NCAConfig


@dataclass(frozen=True)
class GenerateJob:
    out: str = ""
    tokens: int = 0  # sequences = ceil(tokens / (seq_len + 1)); every sequence counts seq_len + 1 tokens
    split: Literal["train", "val"] = "train"
    start: int = 0  # first global sequence index
    sequences_per_shard: int = 8192
    batch_size: int = 512
    workers: int = 0  # 0: one process per core on CPU (1 on CUDA)
    threads: int = 0
    device: str = "cpu"
    endpoint_url: str = ""
    verify: bool = True
    progress: bool = True
    tar_workers: int = 1  # a process: tar building is pure Python and would hold the generator's GIL

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


def check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"device={device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device} but CUDA is not available here; use device=cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device={device}: only cpu and cuda are supported")


def main(args: list[str]) -> int:
    from nca_scale.data.urls import parse_location
    from nca_scale.data.writer import keep_freed_memory, set_threads, write_shards

    # Everything is validated before anything is written: config, job keys, URL form, device, writability.
    job, cfg, _ = parse_job(GenerateJob, NCAConfig, args, config_required=True)
    loc = parse_location(job.out, job.endpoint_url or None)
    cpu = job.device == "cpu"
    if job.workers > 1 and not cpu:
        raise UserError(f"workers={job.workers} is for CPU generation; use workers=1 with device={job.device}")
    check_device(job.device)
    loc.check_writable()
    workers = job.workers or ((os.cpu_count() or 1) if cpu else 1)
    threads = job.threads or os.cpu_count() or 1
    if workers == 1:
        set_threads(job.threads)  # 0: keep torch's default
    keep_freed_memory()  # this process generates (workers=1) or forks the workers that do
    result = write_shards(
        cfg, loc, tokens=job.tokens, split=job.split, start=job.start, per_shard=job.sequences_per_shard,
        batch_size=job.batch_size, threads=threads, device=job.device, verify=job.verify, progress=job.progress,
        tar_workers=job.tar_workers, workers=workers,
    )
    m = result.manifest
    print(
        f"{loc.url_of('manifest.json')}: {m['sequences']} sequences ({m['tokens']} tokens) in {len(m['shards'])} "
        f"shards; wrote {result.written}, kept {result.skipped}; {result.tokens_per_second:,.0f} tokens/s",
        file=sys.stdout,
    )
    return 0


main.__doc__ = __doc__  # what `nca-scale generate --help` prints
