"""What one GPU holds for a model under a parallel layout: bytes of weights, gradients, optimizer state and
activations, as arithmetic (no tensors). The launch layer's planner picks layouts with it (launch/planner.py);
train/simulate.py builds the same ranks for real (meta device, fake process group) and tests check that the
weight, gradient and optimizer bytes here equal those of the real tensors exactly.

Anchors (docs/gpu.md, "Memory and layout planner"):
- megatron-core's DDP buffers and distributed optimizer (megatron/core/distributed/param_and_grad_buffer.py,
  optimizer/distrib_optimizer.py, 0.16): one contiguous buffer per model chunk, parameters laid out in reverse
  registration order, each start padded to 64 elements, buckets of max(4e7, 1e6 x dp) elements (overlapped
  reduce, first chunk of the first pipeline stage only) ending on a multiple of lcm(dp, 128); bf16 parameters
  and fp32 gradients (grad_reduce_in_fp32), and per DP rank fp32 main parameters and Adam moments of its share
  of every bucket. Per parameter that is 6 + 12/dp bytes, the figure of megatron-core's distributed optimizer
  documentation (bf16 parameters, fp32 gradients).
- DeepSpeed ZeRO-3 (deepspeed/runtime/zero/stage3.py, 0.19): each parameter partitioned into ceil(n / dp)
  elements per rank (bf16), an fp32 flat copy and Adam moments of those partitions, a bf16 gradient partition
  buffer and one bf16 reduce bucket; ZeRO's paper (Rajbhandari et al. 2020, Figure 1): 16 bytes per parameter
  over dp ranks, 1.9 GB per GPU for 7.5B parameters on 64 GPUs.
- Activations: the tensors autograd keeps for the backward, counted per tensor for this project's layer (RMSNorm,
  fused QKV, RoPE, flash-style attention that stores no s x s scores, SwiGLU) as Korthikanti et al. (2022)
  count them for GPT; pipeline stages hold the micro-batches 1F1B keeps in flight (Megatron-LM's
  theoretical_memory_usage.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nca_scale.model.config import ModelConfig, layer_params

GB = 1e9


@dataclass(frozen=True)
class Layout:
    """How one training run is spread over GPUs, and what each GPU computes at a time."""

    backend: str = "megatron"  # megatron | deepspeed | torch
    tp: int = 1
    pp: int = 1
    dp: int = 1
    vpp: int = 1
    micro_batch: int = 1
    grad_accum: int = 1
    precision: str = "bf16"  # bf16 | fp32
    distributed_optimizer: bool = True  # megatron: optimizer state sharded over DP
    zero: int = 0  # deepspeed: ZeRO stage
    recompute: bool | str = False  # False, True/"full", "selective"
    sequence_parallel: bool = False
    overlap_grad_reduce: bool = True  # megatron: bucketed (the GPU default)
    bucket_size: int | None = None  # megatron: elements per bucket (None: megatron-core's default); deepspeed: reduce bucket
    optimizer: str = "adam"  # adam | adamw | sgd

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    def describe(self) -> str:
        if self.backend == "deepspeed":
            par = f"ZeRO-{self.zero} x dp {self.dp}"
        elif self.backend == "megatron":
            par = f"tp {self.tp} x pp {self.pp}" + (f" (vpp {self.vpp})" if self.vpp > 1 else "") + f" x dp {self.dp}"
            par += ", distributed optimizer" if self.distributed_optimizer else ""
        else:
            par = f"DDP x dp {self.dp}"
        rec = "" if not self.recompute else f", recompute {'full' if self.recompute is True else self.recompute}"
        return f"{par}; micro-batch {self.micro_batch} x {self.grad_accum} accumulation{rec}"


@dataclass(frozen=True)
class RankMemory:
    """Bytes on one GPU. weights/grads/optimizer: the tensors the backend allocates (exact); activations: what
    autograd keeps for the in-flight micro-batches; logits: what the last stage keeps for the loss's backward;
    transient: what exists only for a moment (the compute-dtype logits next to their fp32 copy, ZeRO-3's gathered
    layer)."""

    params: int  # parameters this rank computes with (its TP / PP shard; all of them under ZeRO-3)
    weights: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    transient: int = 0

    @property
    def states(self) -> int:
        return self.weights + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.states + self.activations + self.logits + self.transient

    def describe(self) -> str:
        parts = [("weights", self.weights), ("grads", self.grads), ("optimizer", self.optimizer),
                 ("activations", self.activations), ("logits", self.logits), ("transient", self.transient)]
        return f"{self.total / GB:.1f} GB (" + ", ".join(f"{k} {v / GB:.2f}" for k, v in parts if v) + ")"


def _bytes(precision: str) -> int:
    return 2 if precision == "bf16" else 4


# ---- megatron-core ------------------------------------------------------------------------------------------
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
    pb = _bytes(layout.precision)
    params = weights = grads = optimizer = 0
    state = {"sgd": 0, "adam": 8, "adamw": 8}[layout.optimizer]
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


# ---- DeepSpeed ----------------------------------------------------------------------------------------------
def native_params(cfg: ModelConfig) -> list[int]:
    """Elements of each parameter of the native Llama (torch and DeepSpeed backends), in registration order."""
    from nca_scale.model.layout import logical_shapes

    return [math.prod(s) for s in logical_shapes(cfg).values()]


def deepspeed_states(cfg: ModelConfig, layout: Layout) -> tuple[int, int, int, int, int]:
    """(parameters, weight, gradient, optimizer, transient bytes) of one ZeRO-3 rank: bf16 partitions of
    ceil(n / dp) per parameter, a gradient partition buffer and one reduce bucket of `bucket_size` elements (d_model^2
    by default, backends/deepspeed.zero_buckets), both in the model's dtype (DeepSpeed accumulates gradients in it
    unless data_types.grad_accum_dtype says otherwise), fp32 partitions and Adam moments; transient:
    the largest layer gathered in bf16 with its gradient (DeepSpeed's estimator's 4 x largest layer)."""
    if layout.zero != 3:
        raise ValueError("deepspeed_states models ZeRO-3")
    numels = native_params(cfg)
    part = sum(-(-n // layout.dp) for n in numels)
    pb = _bytes(layout.precision)
    state = {"sgd": 0, "adam": 8, "adamw": 8}[layout.optimizer]
    bucket = layout.bucket_size or cfg.d_model ** 2
    largest = max(layer_params(cfg), max(numels))
    return sum(numels), part * pb, (part + bucket) * pb, part * (4 + state), 4 * largest


# ---- activations --------------------------------------------------------------------------------------------
def layer_activation_elements(cfg: ModelConfig, tp: int, sequence_parallel: bool, recompute,
                              native: bool = False) -> tuple[float, float]:
    """(elements in the compute dtype, fp32 elements) autograd keeps per token for one decoder layer.

    Per token, h = d_model, f = SwiGLU width, q = query width, k = key/value width, all split over t = tp. Counted
    on megatron-core's local-spec layer (tests/train/test_simulate.py measures it): five h-wide tensors for the
    residual stream and the two RMSNorms (their inputs, normalised values and outputs, shared with the next
    linear), the QKV output (q + 2k)/t (its value slice is the attention's input), the roped q/t and k/t, the
    attention output q/t and the projection's input q/t (a copy: the output is transposed back), five f/t for
    the MLP (fc1's gate and up 2f/t, SiLU's output, the product that is fc2's input, and the SiLU input's own copy)
    and the attention's log-sum-exp (heads/t, fp32); flash-style attention keeps no s x s scores. `native`: the
    torch/DeepSpeed Llama (model/llama.py), whose separate q, k, v projections leave no fused QKV output behind
    (v k/t instead of (q + 2k)/t) and whose SwiGLU keeps four f (gate, up, SiLU output, product). Sequence
    parallelism divides the h terms by t as well. Full recompute keeps only the layer input; selective recompute
    (the core attention) drops the attention's output and log-sum-exp."""
    h, f = cfg.d_model, cfg.ffn
    q, k = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    rows = h / tp if sequence_parallel else h
    if recompute is True or recompute == "full":
        return rows, 0.0
    attn_out, lse = q / tp, cfg.n_heads / tp
    if recompute == "selective":
        attn_out, lse = 0.0, 0.0
    qkv = k / tp if native else (q + 2 * k) / tp
    attention = qkv + (q + k) / tp + attn_out + q / tp
    return 5 * rows + attention + (4 if native else 5) * f / tp, lse


def logits_elements(cfg: ModelConfig, tp: int) -> tuple[float, float]:
    """(compute-dtype, fp32 elements) per token the last stage keeps for the backward beyond its layers: the
    final norm's input, normalised value and output (3h) and the cross-entropy's fp32 softmax (v/t)."""
    return 3 * cfg.d_model, cfg.vocab_size / tp


def in_flight(layout: Layout, stage: int) -> float:
    """Micro-batches whose activations a pipeline stage holds at its peak: 1F1B keeps pp - stage in flight
    (capped by the micro-batch count); the interleaved schedule adds Megatron-LM's penalty of
    1 + (pp - 1) / (pp x vpp)."""
    n = min(layout.grad_accum, layout.pp - stage)
    if layout.vpp > 1:
        n = min(layout.grad_accum, layout.pp) * (1 + (layout.pp - 1) / (layout.pp * layout.vpp))
    return max(1, n)


def activation_bytes(cfg: ModelConfig, seq_len: int, layout: Layout, stage: int = 0) -> tuple[int, int]:
    """(activation bytes of the layers, bytes of the logits and loss) on pipeline stage `stage` at its peak."""
    tokens = layout.micro_batch * seq_len
    ab = _bytes(layout.precision)
    tp = layout.tp if layout.backend == "megatron" else 1
    sp = layout.sequence_parallel and tp > 1
    native = layout.backend != "megatron"
    per_layer, per_layer32 = layer_activation_elements(cfg, tp, sp, layout.recompute, native)
    layers = cfg.n_layers // layout.pp
    acts = tokens * layers * (per_layer * ab + per_layer32 * 4) * in_flight(layout, stage)
    if layout.recompute is True or layout.recompute == "full":
        full, full32 = layer_activation_elements(cfg, tp, sp, False, native)
        acts += tokens * (full * ab + full32 * 4)  # the one layer recomputed in the backward
    logits = 0.0
    if stage == layout.pp - 1:
        lo, lo32 = logits_elements(cfg, tp)
        logits = tokens * (lo * ab + lo32 * 4)
    return int(acts), int(logits)


def logits_transient(cfg: ModelConfig, seq_len: int, layout: Layout, stage: int) -> int:
    """The last stage's logits in the compute dtype, alive next to their fp32 copy while the loss is computed
    (and the logits' gradient next to the fp32 one in the backward)."""
    if stage != layout.pp - 1:
        return 0
    tp = layout.tp if layout.backend == "megatron" else 1
    return int(layout.micro_batch * seq_len * cfg.vocab_size / tp * _bytes(layout.precision))


def rank_memory(cfg: ModelConfig, seq_len: int, layout: Layout, stage: int = 0, dp_rank: int = 0) -> RankMemory:
    """Every byte class of one rank: pipeline stage `stage` (megatron), DP rank `dp_rank`."""
    acts, logits = activation_bytes(cfg, seq_len, layout, stage)
    if layout.backend == "deepspeed" and layout.zero == 3:
        params, w, g, o, transient = deepspeed_states(cfg, layout)
        return RankMemory(params, w, g, o, acts, logits, transient + logits_transient(cfg, seq_len, layout, stage))
    if layout.backend == "megatron":
        params, w, g, o = megatron_states(cfg, layout, stage, dp_rank)
        return RankMemory(params, w, g, o, acts, logits, logits_transient(cfg, seq_len, layout, stage))
    # torch DDP / DeepSpeed ZeRO 0-2: replicated weights (fp32 master when bf16 autocasts: the weights are fp32)
    n = sum(native_params(cfg))
    state = {"sgd": 0, "adam": 8, "adamw": 8}[layout.optimizer]
    shard = layout.dp if layout.backend == "deepspeed" and layout.zero >= 1 else 1
    grad_shard = layout.dp if layout.backend == "deepspeed" and layout.zero >= 2 else 1
    pb = _bytes(layout.precision)
    extra = logits_transient(cfg, seq_len, layout, stage)
    if layout.backend == "deepspeed":
        return RankMemory(n, n * pb, n * 4 // grad_shard, n * (4 + state) // shard, acts, logits, extra)
    return RankMemory(n, n * 4, n * 4, n * state, acts, logits, extra)


def step_flops(cfg: ModelConfig, seq_len: int, layout: Layout, tokens_per_step: int) -> float:
    """Training FLOPs of one rank per step (recompute adds a forward's share)."""
    from nca_scale.model.config import flops_per_token

    f = flops_per_token(cfg, seq_len)
    per_token = f["train"]
    if layout.recompute is True or layout.recompute == "full":
        per_token += f["forward"]
    return per_token * tokens_per_step / layout.world
