"""The megatron section of TrainConfig (`megatron.*` keys): the distributed optimizer, overlap and fusions."""

from __future__ import annotations

from dataclasses import dataclass, replace

from nca_scale.errors import UserError


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

    def on_device(self, gpu: bool) -> MegatronConfig:
        """The overlap keys made concrete for a device (null: on with a GPU). Parameters are gathered in the
        forward only with the distributed optimizer and the gradient reduce overlapped (megatron-core's schedule
        needs both)."""
        grad = gpu if self.overlap_grad_reduce is None else self.overlap_grad_reduce
        param = self.overlap_param_gather
        if param is None:
            param = gpu and grad and self.distributed_optimizer
        return replace(self, overlap_grad_reduce=grad, overlap_param_gather=param)

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


def environment(cfg) -> dict[str, str]:
    """With TP, one hardware queue per GPU, so that megatron's TP communication overlaps the compute in issue
    order; CUDA reads it when the process creates its context."""
    return {"CUDA_DEVICE_MAX_CONNECTIONS": "1"} if cfg.parallel.tp > 1 else {}
