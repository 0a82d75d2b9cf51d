"""The sections of TrainConfig that are not components: the parallel layout, checkpointing and the two backends'
own keys. Each section checks what it can alone; checks that need another section (the model's shapes, the
backend, the world size) are in TrainConfig.validate. The previous release's flat names: config_versions.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from nca_scale.errors import UserError


@dataclass(frozen=True)
class ParallelConfig:
    nproc: int = 1  # local processes the CLI launches; under an external launcher, the world size
    tp: int = 1  # megatron: tensor-parallel ranks
    pp: int = 1  # megatron: pipeline stages
    vpp: int = 1  # virtual pipeline stages per rank; > 1 selects the interleaved 1F1B schedule
    dp: int | None = None  # derived as nproc / (tp * pp); if given it must agree
    sequence_parallel: bool = False  # megatron: shard activations along the sequence over tp
    bucket_size: int | None = None  # elements per gradient bucket; null: megatron-core's, DeepSpeed d_model^2

    def validate(self, backend: str) -> None:
        for name in ("nproc", "tp", "pp", "vpp"):
            if getattr(self, name) < 1:
                raise UserError(f"parallel.{name}={getattr(self, name)} must be >= 1")
        if backend != "megatron" and (self.tp > 1 or self.pp > 1 or self.vpp > 1 or self.sequence_parallel):
            raise UserError(f"parallel.tp/pp/vpp/sequence_parallel need backend=megatron (backend={backend})")
        if self.vpp > 1 and self.pp < 2:
            raise UserError("parallel.vpp > 1 (interleaved schedule) needs parallel.pp >= 2")
        if self.sequence_parallel and self.tp < 2:
            raise UserError("parallel.sequence_parallel needs parallel.tp >= 2")
        if self.bucket_size is not None and (backend == "torch" or self.bucket_size < 1):
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

    def validate(self, backend: str) -> None:
        if self.every < 0:
            raise UserError(f"checkpoint.every={self.every} must be >= 0")
        if self.keep_last < 1:
            raise UserError(f"checkpoint.keep_last={self.keep_last} must be >= 1")
        if self.write_timeout_s is not None and self.write_timeout_s <= 0:
            raise UserError(f"checkpoint.write_timeout_s={self.write_timeout_s} must be > 0 (seconds)")
        if self.asynchronous and backend == "deepspeed":
            raise UserError("checkpoint.asynchronous=true needs backend=megatron or torch (backend=deepspeed saves "
                            "synchronously)")
        if self.url:
            from nca_scale.data.urls import parse_location

            parse_location(self.url, what="checkpoint.url")


# Overlapped communication and fused kernels (docs/training.md, "Overlap and fusion"). null = this device's default:
# on with a GPU; off on a CPU, where gloo's collectives run on the cores the compute uses and the fusions are
# compiled kernels (or TransformerEngine/Apex ones) that buy nothing. A fusion this machine lacks is turned off with
# a logged line when null, refused when set to true.
@dataclass(frozen=True)
class MegatronConfig:
    distributed_optimizer: bool = True  # shard optimizer state over DP (ZeRO-1)
    overlap_grad_reduce: bool | None = None  # reduce gradient buckets during the backward
    overlap_param_gather: bool | None = None  # distributed optimizer: gather parameters in the forward
    grad_accum_fusion: bool | None = None  # weight-gradient GEMMs add into the fp32 grad buffer (Apex)
    bias_swiglu_fusion: bool | None = None  # fused SwiGLU (megatron-core's torch.compile'd kernel)
    rope_fusion: bool | None = None  # TransformerEngine's fused RoPE
    cross_entropy_fusion: bool | None = None  # fused vocab-parallel cross-entropy
    # grad_reduce_in_fp32: gradients accumulated and reduced over DP in fp32 (megatron DDP grad_reduce_in_fp32);
    # false: in the parameters' dtype (bf16 runs: half the reduce traffic and gradient memory, bf16 sums).
    # Megatron-LM's default for bf16 (--accumulate-allreduce-grads-in-fp32 is switched on for bf16)
    grad_reduce_in_fp32: bool = True
    # the distributed optimizer's checkpoint layout (megatron-core distrib_optim_sharding_type): dp_reshardable
    # (flat per-DP-rank buffers, written in parallel without gathering; resumes under another DP size only) or
    # fully_reshardable (gathered over DP at each save into per-parameter tensors; resumes under any TP/PP/DP).
    # null: fully_reshardable where a layout has TP or PP, which a re-planned or requeued run may change,
    # dp_reshardable for pure DP (docs/training.md, "Resume")
    optimizer_layout: str | None = None

    def optimizer_sharding(self, tp: int, pp: int) -> str:
        """The distrib_optim_sharding_type a run with this section and tp x pp writes."""
        return self.optimizer_layout or ("fully_reshardable" if tp * pp > 1 else "dp_reshardable")

    def validate(self, backend: str, optim: str) -> None:
        """Overlap and fusion keys another backend does not read are refused, not ignored."""
        if self.optimizer_layout not in (None, "dp_reshardable", "fully_reshardable"):
            also = (" (megatron-core 0.16 deprecates fully_sharded_model_space and cannot save it: 'flattened_range "
                    "is not supported')") if self.optimizer_layout == "fully_sharded_model_space" else ""
            raise UserError(f"megatron.optimizer_layout={self.optimizer_layout}: dp_reshardable or fully_reshardable"
                            f"{also}")
        if self.optimizer_layout and not self.distributed_optimizer:
            raise UserError("megatron.optimizer_layout is the distributed optimizer's checkpoint layout; with "
                            "megatron.distributed_optimizer=false the optimizer reshards with the model: drop it")
        if backend != "megatron" and (self.optimizer_layout or not self.grad_reduce_in_fp32):
            name = "optimizer_layout" if self.optimizer_layout else "grad_reduce_in_fp32"
            raise UserError(f"megatron.{name} is a megatron setting and backend={backend} does not read it; drop it")
        for name in ("overlap_grad_reduce", "overlap_param_gather", "grad_accum_fusion", "bias_swiglu_fusion",
                     "rope_fusion", "cross_entropy_fusion"):
            if backend != "megatron" and getattr(self, name) is not None:
                also = "; DeepSpeed's is deepspeed.overlap_comm" if name == "overlap_grad_reduce" and \
                    backend == "deepspeed" else ""
                raise UserError(f"megatron.{name} is a megatron setting and backend={backend} does not read it; "
                                f"drop it{also}")
        if backend == "megatron" and self.distributed_optimizer and optim == "sgd":
            raise UserError("megatron-core's distributed optimizer supports Adam only; with optim.name=sgd set "
                            "megatron.distributed_optimizer=false")
        if self.overlap_param_gather and not self.distributed_optimizer:
            raise UserError("megatron.overlap_param_gather=true gathers what the distributed optimizer updated; set "
                            "megatron.distributed_optimizer=true, or drop megatron.overlap_param_gather")
        if self.overlap_param_gather and self.overlap_grad_reduce is False:
            raise UserError("megatron.overlap_param_gather=true needs megatron.overlap_grad_reduce (megatron-core's "
                            "schedule starts the parameter gathers where the gradient reduce ends); drop "
                            "megatron.overlap_grad_reduce=false")


@dataclass(frozen=True)
class DeepSpeedConfig:
    zero: int = 0  # ZeRO stage: 0, 1, 2 or 3
    offload: bool = False  # optimizer state on the CPU
    zero_init: bool = True  # ZeRO-3: build the model already partitioned (deepspeed.zero.Init)
    overlap_comm: bool = True  # ZeRO: reduce gradients during the backward (on a CPU: in order, no streams)
    contiguous_gradients: bool = True  # ZeRO: gradients copied into one buffer as they are reduced

    def validate(self, backend: str, optim: str) -> None:
        if self.zero not in (0, 1, 2, 3):
            raise UserError(f"deepspeed.zero={self.zero}: DeepSpeed ZeRO stages are 0, 1, 2, 3")
        if backend != "deepspeed" and (self.zero or self.offload):
            raise UserError(f"deepspeed.zero/offload need backend=deepspeed (backend={backend})")
        if not self.zero_init and (backend != "deepspeed" or self.zero != 3):
            raise UserError(f"deepspeed.zero_init=false is a DeepSpeed ZeRO-3 setting (backend={backend}, "
                            f"zero={self.zero}); drop it")
        for name in ("overlap_comm", "contiguous_gradients"):
            if backend != "deepspeed" and not getattr(self, name):
                raise UserError(f"deepspeed.{name}=false is a DeepSpeed ZeRO setting and backend={backend} does not "
                                "read it; drop it")
        if self.offload and optim == "sgd":
            raise UserError("deepspeed.offload=true runs DeepSpeed's CPU Adam, not SGD; use optim.name=adam|adamw or "
                            "deepspeed.offload=false")

