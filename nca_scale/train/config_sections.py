"""The sections of TrainConfig that are not components: the parallel layout and checkpointing (a backend's own
keys are in its folder, train/backends/<name>/config.py). Each section checks what it can alone and with what the
backend reads (backends.Backend); checks that need another section (the model's shapes, the world size) are in
TrainConfig.validate. The previous release's flat names: config_versions.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from nca_scale.errors import UserError
from nca_scale.train.backends import Backend


@dataclass(frozen=True)
class ParallelConfig:
    nproc: int = 1  # local processes the CLI launches; under an external launcher, the world size
    tp: int = 1  # megatron: tensor-parallel ranks
    pp: int = 1  # megatron: pipeline stages
    vpp: int = 1  # virtual pipeline stages per rank; > 1 selects the interleaved 1F1B schedule
    dp: int | None = None  # derived as nproc / (tp * pp); if given it must agree
    sequence_parallel: bool = False  # megatron: shard activations along the sequence over tp
    bucket_size: int | None = None  # elements per gradient bucket; null: megatron-core's, DeepSpeed d_model^2

    def validate(self, backend: Backend) -> None:
        for name in ("nproc", "tp", "pp", "vpp"):
            if getattr(self, name) < 1:
                raise UserError(f"parallel.{name}={getattr(self, name)} must be >= 1")
        if not backend.model_parallel and (self.tp > 1 or self.pp > 1 or self.vpp > 1 or self.sequence_parallel):
            raise UserError(f"parallel.tp/pp/vpp/sequence_parallel need backend=megatron (backend={backend.name})")
        if self.vpp > 1 and self.pp < 2:
            raise UserError("parallel.vpp > 1 (interleaved schedule) needs parallel.pp >= 2")
        if self.sequence_parallel and self.tp < 2:
            raise UserError("parallel.sequence_parallel needs parallel.tp >= 2")
        if self.bucket_size is not None and (not backend.buckets or self.bucket_size < 1):
            raise UserError(f"parallel.bucket_size={self.bucket_size}: a positive number of elements, for "
                            "backend=megatron or deepspeed (torch DDP keeps its own buckets)")


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 0  # steps between checkpoints; 0 = only at the end of the run (and every_minutes)
    # also save once this many minutes of training passed since the last save, so that a crash loses at most that
    # much work (0 = off); all ranks save at one step, when any rank's clock says so
    every_minutes: float = 30.0
    keep_last: int = 3  # committed checkpoints kept (the one `latest` names is never removed)
    url: str | None = None  # also publish checkpoints here (file://, s3://, memory://); resume fetches
    # megatron, torch: write a checkpoint's files in the background while the steps go on, commit them once written;
    # None = on with a GPU, off on a CPU (docs/training.md, "Asynchronous saves")
    asynchronous: bool | None = None
    # seconds a background write may take before its save is abandoned (the previous checkpoint stays `latest`,
    # the next save retries; the last save of a run fails it); None = from the checkpoint's size at 50 MB/s, >= 600
    write_timeout_s: float | None = None

    def validate(self, backend: Backend) -> None:
        if self.every < 0:
            raise UserError(f"checkpoint.every={self.every} must be >= 0")
        if self.keep_last < 1:
            raise UserError(f"checkpoint.keep_last={self.keep_last} must be >= 1")
        if self.write_timeout_s is not None and self.write_timeout_s <= 0:
            raise UserError(f"checkpoint.write_timeout_s={self.write_timeout_s} must be > 0 (seconds)")
        if self.asynchronous and not backend.background_saves:
            raise UserError("checkpoint.asynchronous=true needs backend=megatron or torch (backend=deepspeed saves "
                            "synchronously)")
        if self.url:
            from nca_scale.data.urls import parse_location

            parse_location(self.url, what="checkpoint.url")

