"""What a megatron rank holds (the planner's arithmetic, model/memory.py, for this backend).

megatron-core's DDP buffers and distributed optimizer (megatron/core/distributed/param_and_grad_buffer.py,
optimizer/distrib_optimizer.py, 0.16): one contiguous buffer per model chunk, parameters laid out in reverse
registration order, each start padded to 64 elements, buckets of max(4e7, 1e6 x dp) elements (overlapped reduce,
first chunk of the first pipeline stage only) ending on a multiple of lcm(dp, 128); bf16 parameters and fp32
gradients (grad_reduce_in_fp32), and per DP rank fp32 main parameters and Adam moments of its share of every
bucket. Per parameter that is 6 + 12/dp bytes, the figure of megatron-core's distributed optimizer documentation
(bf16 parameters, fp32 gradients). train/simulate.py checks these bytes against the built engine's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nca_scale.model.config import ModelConfig
from nca_scale.model.memory import Layout, dtype_bytes, moment_bytes


class MegatronSharding:
    native = False
    model_parallel = True

    def settings(self, cfg) -> dict:
        """The Layout keys of this backend, from a TrainConfig."""
        return {"distributed_optimizer": cfg.megatron.distributed_optimizer,
                "overlap_grad_reduce": bool(cfg.megatron.overlap_grad_reduce)}

    def describe(self, layout: Layout) -> str:
        par = f"tp {layout.tp} x pp {layout.pp}" + (f" (vpp {layout.vpp})" if layout.vpp > 1 else "") + f" x dp {layout.dp}"
        return par + (", distributed optimizer" if layout.distributed_optimizer else "")

    def states(self, cfg: ModelConfig, layout: Layout, stage: int, dp_rank: int) -> tuple[int, int, int, int, int]:
        return (*megatron_states(cfg, layout, stage, dp_rank), 0)

    def dp_traffic(self, layout: Layout) -> str:
        return "sharded" if layout.distributed_optimizer else "replicated"


def megatron_chunk_params(cfg: ModelConfig, tp: int, pp: int, stage: int, vpp: int = 1,
                          chunk: int = 0) -> list[tuple[int, bool]]:
    """(elements, shared_embedding) of each parameter of model chunk `chunk` on pipeline stage `stage`, one TP
    rank, in GPTModel's registration order (local spec: embedding, per layer input norm, linear_proj, linear_qkv,
    pre-MLP norm, fc1, fc2; final norm; output layer)."""
    d, v = cfg.d_model, cfg.vocab_size
    first = stage == 0 and chunk == 0
    last = stage == pp - 1 and chunk == vpp - 1
    tied = cfg.tie_embeddings
    out: list[tuple[int, bool]] = []
    if first:
        out.append((v // tp * d, tied and not last))
    qkv = (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim // tp * d
    for _ in range(cfg.n_layers // (pp * vpp)):
        out += [(d, False), (d * cfg.n_heads * cfg.head_dim // tp, False), (qkv, False), (d, False),
                (2 * cfg.ffn // tp * d, False), (cfg.ffn // tp * d, False)]
    if last:
        out.append((d, False))
        if not tied or not first:
            out.append((v // tp * d, tied))
    return out


@dataclass(frozen=True)
class Buffer:
    """megatron-core's _ParamAndGradBuffer layout: total padded elements, each parameter's [start, end), and the
    buckets' [start, end)."""

    numel: int
    params: list[tuple[int, int]]
    buckets: list[tuple[int, int]]


def megatron_buffer(params: list[tuple[int, bool]], dp: int, bucket_size: int | None,
                    distributed_optimizer: bool) -> Buffer:
    """The layout of one chunk's buffer, as _ParamAndGradBuffer.__init__ computes it (reverse order, 64-element
    aligned starts and lcm(dp, 128)-aligned bucket ends with the distributed optimizer)."""
    def pad(n: int, k: int) -> int:
        return -(-n // k) * k

    end_pad = math.lcm(dp, 128) if distributed_optimizer else 1
    start_pad = 64 if distributed_optimizer else 1
    starts: list[tuple[int, int]] = []
    buckets: list[tuple[int, int]] = []
    pos = bucket_start = 0
    in_bucket = 0
    end = 0
    for numel, shared in params[::-1]:
        pos = pad(pos, start_pad)
        if shared and distributed_optimizer and in_bucket:
            buckets.append((bucket_start, pad(pos, end_pad)))
            pos = bucket_start = buckets[-1][1]
            in_bucket = 0
        end = pos + numel
        starts.append((pos, end))
        in_bucket += 1
        if (bucket_size is not None and end - bucket_start >= bucket_size) or (shared and distributed_optimizer):
            buckets.append((bucket_start, pad(end, end_pad)))
            pos = bucket_start = buckets[-1][1]
            in_bucket = 0
        else:
            pos = end
    if in_bucket:
        buckets.append((bucket_start, pad(end, end_pad)))
    return Buffer(buckets[-1][1] if buckets else 0, starts, buckets)


def megatron_bucket_size(layout: Layout, stage: int, chunk: int) -> int | None:
    """Elements per gradient bucket of a chunk: megatron-core buckets only the first chunk of the first stage,
    and only with an overlapped reduce."""
    if not layout.overlap_grad_reduce or stage > 0 or chunk > 0:
        return None
    return layout.bucket_size or max(40_000_000, 1_000_000 * layout.dp)


def megatron_shard_elements(buf: Buffer, dp: int, dp_rank: int) -> tuple[int, int]:
    """(elements, parameters) of the buffer that DP rank `dp_rank`'s distributed optimizer owns: its 1/dp of every
    bucket, intersected with the parameters (padding holds no optimizer state)."""
    elements = count = 0
    for b0, b1 in buf.buckets:
        share = (b1 - b0) // dp
        r0, r1 = b0 + dp_rank * share, b0 + (dp_rank + 1) * share
        for p0, p1 in buf.params:
            n = min(p1, r1) - max(p0, r0)
            if n > 0:
                elements += n
                count += 1
    return elements, count


def megatron_states(cfg: ModelConfig, layout: Layout, stage: int, dp_rank: int = 0) -> tuple[int, int, int, int]:
    """(parameters, weight bytes, gradient bytes, optimizer bytes) of one megatron rank: weights are the bf16
    parameter buffer with the distributed optimizer (else the parameters), gradients the fp32 grad buffer,
    optimizer = fp32 main parameters (bf16 runs) + Adam moments of the rank's share (Adam's per-parameter step
    scalars are not counted)."""
    pb = dtype_bytes(layout.precision)
    params = weights = grads = optimizer = 0
    state = moment_bytes(layout.optimizer)
    main = 4 if layout.precision == "bf16" else 0
    for chunk in range(layout.vpp):
        plist = megatron_chunk_params(cfg, layout.tp, layout.pp, stage, layout.vpp, chunk)
        n = sum(p for p, _ in plist)
        params += n
        buf = megatron_buffer(plist, layout.dp, megatron_bucket_size(layout, stage, chunk), layout.distributed_optimizer)
        grads += buf.numel * 4
        if layout.distributed_optimizer:
            weights += buf.numel * pb
            owned, _ = megatron_shard_elements(buf, layout.dp, dp_rank)
            optimizer += owned * (main + state)
        else:
            weights += n * pb
            optimizer += n * (main + state)
    return params, weights, grads, optimizer


SHARDING = MegatronSharding()
