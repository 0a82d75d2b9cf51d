"""What a DeepSpeed rank holds (the planner's arithmetic, model/memory.py, for this backend).

ZeRO-3 (deepspeed/runtime/zero/stage3.py, 0.19): each parameter partitioned into ceil(n / dp) elements per rank
(bf16), an fp32 flat copy and Adam moments of those partitions, a bf16 gradient partition buffer and one bf16
reduce bucket; ZeRO's paper (Rajbhandari et al. 2020, Figure 1): 16 bytes per parameter over dp ranks, 1.9 GB per
GPU for 7.5B parameters on 64 GPUs. ZeRO 0-2: the replicated model in the compute dtype, gradients (stage 2) and
fp32 optimizer state (stage 1 and 2) split over DP. train/simulate.py checks ZeRO-3's bytes against the built
engine's.
"""

from __future__ import annotations

from nca_scale.model.config import ModelConfig, layer_params
from nca_scale.model.memory import Layout, dtype_bytes, moment_bytes, native_params


class DeepSpeedSharding:
    native = True
    model_parallel = False

    def settings(self, cfg) -> dict:
        """The Layout keys of this backend, from a TrainConfig."""
        return {"zero": cfg.deepspeed.zero}

    def describe(self, layout: Layout) -> str:
        return f"ZeRO-{layout.zero} x dp {layout.dp}"

    def states(self, cfg: ModelConfig, layout: Layout, stage: int, dp_rank: int) -> tuple[int, int, int, int, int]:
        if layout.zero == 3:
            return zero3_states(cfg, layout)
        n = sum(native_params(cfg))
        shard = layout.dp if layout.zero >= 1 else 1
        grad_shard = layout.dp if layout.zero >= 2 else 1
        return n, n * dtype_bytes(layout.precision), n * 4 // grad_shard, n * (4 + moment_bytes(layout.optimizer)) // shard, 0

    def dp_traffic(self, layout: Layout) -> str:
        return "gathered" if layout.zero == 3 else "sharded" if layout.zero >= 1 else "replicated"


def zero3_states(cfg: ModelConfig, layout: Layout) -> tuple[int, int, int, int, int]:
    """(parameters, weight, gradient, optimizer, transient bytes) of one ZeRO-3 rank: bf16 partitions of
    ceil(n / dp) per parameter, a gradient partition buffer and one reduce bucket of `bucket_size` elements (d_model^2
    by default, engine.zero_buckets), both in the model's dtype (DeepSpeed accumulates gradients in it unless
    data_types.grad_accum_dtype says otherwise), fp32 partitions and Adam moments; transient: the largest layer
    gathered in bf16 with its gradient (DeepSpeed's estimator's 4 x largest layer)."""
    numels = native_params(cfg)
    part = sum(-(-n // layout.dp) for n in numels)
    pb = dtype_bytes(layout.precision)
    bucket = layout.bucket_size or cfg.d_model ** 2
    largest = max(layer_params(cfg), max(numels))
    return sum(numels), part * pb, (part + bucket) * pb, part * (4 + moment_bytes(layout.optimizer)), 4 * largest


SHARDING = DeepSpeedSharding()
