"""The memory and layout planner: for a training config on a cluster profile (nodes, GPUs per node, and the
profile's `hardware`: GPU memory, peak FLOP/s, intra- and inter-node bandwidth), the bytes each GPU holds
(model/memory.py) and a step-time estimate from FLOPs and communication volume, for the run's own layout and for
the candidates it could use instead (TP within a node, PP, DP, micro-batch, recompute, fewer nodes).

`nca-scale submit ... dry_run=true` and `sweep plan` print the chosen layout, memory per GPU and the estimate;
submit refuses a layout that cannot fit, or re-plans it when the config lets the micro-batch follow the GPU count
(auto_micro_batch: micro_batch is then an upper bound), and names a faster layout when one exists
(docs/gpu.md, "Memory and layout planner").

The step-time model (documented with its figures in docs/performance.md):
  compute  = training FLOPs of the rank / (peak x compute_efficiency)
  bubble   = compute x (pp - 1) / (micro-batches x vpp)                  (1F1B's idle share)
  tp       = 4 all-reduces of micro x seq x d_model activations per layer and micro-batch, within a node
  dp       = megatron distributed optimizer: reduce-scatter of the fp32 gradient buffer + all-gather of the bf16
             parameters; otherwise an all-reduce of the gradients; ZeRO-3: two all-gathers and a reduce-scatter of
             the bf16 parameters per micro-batch. Over NVLink when the DP group fits in a node, else over the
             inter-node network. The gradient reduce hides behind the last micro-batch's backward, the parameter
             gather behind the first one's forward (ZeRO-3 prefetches behind all of the compute); the rest is exposed.
  step     = compute + bubble + tp + exposed dp
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

from nca_scale.errors import UserError
from nca_scale.model.config import flops_per_token
from nca_scale.model.memory import GB, Layout, RankMemory, rank_memory, step_flops


@dataclass(frozen=True)
class Hardware:
    """One GPU of a cluster profile (`hardware:` in the profile; defaults: H100 SXM 80 GB with NVLink 4 and one
    400 Gb/s NDR InfiniBand port per GPU). Bandwidths are achievable collective bus bandwidths per GPU (what
    nccl-tests reports as busbw), not link rates."""

    gpu: str = "H100"  # the GPU's name, as the planner's messages give it (the numbers below are what counts)
    memory_gb: float = 80.0  # per GPU
    reserve_gb: float = 4.0  # CUDA context, NCCL buffers, allocator fragmentation: not available to tensors
    peak_flops: float = 989.0e12  # dense bf16
    compute_efficiency: float = 0.45  # share of the peak the matmuls reach (the compute term of the step)
    intra_node_GBps: float = 360.0  # NVLink bus bandwidth per GPU
    inter_node_GBps: float = 45.0  # network bus bandwidth per GPU

    @property
    def usable(self) -> float:
        return (self.memory_gb - self.reserve_gb) * GB

    def validate(self) -> None:
        for name in ("memory_gb", "peak_flops", "compute_efficiency", "intra_node_GBps", "inter_node_GBps"):
            if not getattr(self, name) > 0:
                raise UserError(f"cluster.hardware.{name}={getattr(self, name)} must be > 0")
        if not 0 <= self.reserve_gb < self.memory_gb:
            raise UserError(f"cluster.hardware.reserve_gb={self.reserve_gb} must be in [0, memory_gb)")
        if self.compute_efficiency > 1:
            raise UserError(f"cluster.hardware.compute_efficiency={self.compute_efficiency} must be <= 1")


@dataclass(frozen=True)
class StepTime:
    compute: float
    bubble: float
    tp: float
    dp: float  # exposed
    dp_total: float  # before overlap
    mfu: float

    @property
    def total(self) -> float:
        return self.compute + self.bubble + self.tp + self.dp

    def describe(self) -> str:
        return (f"~{self.total * 1e3:.0f} ms/step (compute {self.compute * 1e3:.0f}, pipeline bubble "
                f"{self.bubble * 1e3:.0f}, tp {self.tp * 1e3:.0f}, dp {self.dp * 1e3:.0f} exposed of "
                f"{self.dp_total * 1e3:.0f}); MFU {self.mfu:.0%}")


@dataclass(frozen=True)
class Estimate:
    """One layout on `nodes` x `gpus_per_node` GPUs: the peak memory over its pipeline stages and its step time."""

    layout: Layout
    nodes: int
    gpus_per_node: int
    memory: RankMemory
    step: StepTime
    fits: bool

    def describe(self) -> str:
        return (f"{self.nodes} node(s) x {self.gpus_per_node} GPU(s), {self.layout.describe()}: "
                f"{self.memory.total / GB:.1f} GB per GPU, {self.step.describe()}")


def stage_memory(model, seq_len: int, layout: Layout) -> RankMemory:
    """The pipeline stage with the most bytes (the first holds the most micro-batches in flight, the last the
    logits); DP rank 0."""
    stages = {0, layout.pp - 1}
    return max((rank_memory(model, seq_len, layout, s) for s in stages), key=lambda m: m.total)


def step_time(model, seq_len: int, layout: Layout, hw: Hardware, gpus_per_node: int, batch: int,
              memory: RankMemory) -> StepTime:
    tokens = batch * seq_len
    flops = step_flops(model, seq_len, layout, tokens)
    compute = flops / (hw.peak_flops * hw.compute_efficiency)
    bubble = compute * (layout.pp - 1) / (layout.grad_accum * layout.vpp) if layout.pp > 1 else 0.0
    ab = 2 if layout.precision == "bf16" else 4
    intra, inter = hw.intra_node_GBps * 1e9, hw.inter_node_GBps * 1e9
    tp = 0.0
    if layout.tp > 1:
        volume = layout.micro_batch * seq_len * model.d_model * ab
        per_layer = 4 * 2 * (layout.tp - 1) / layout.tp * volume
        tp = per_layer * model.n_layers / layout.pp * layout.grad_accum / intra
    dp = layout.dp
    share = (dp - 1) / dp
    bw = intra if layout.tp * dp <= gpus_per_node else inter
    per_micro = compute / layout.grad_accum
    if dp == 1:
        reduce = gather = 0.0
        hide_reduce = hide_gather = 0.0
    elif (traffic := layout.backend.dp_traffic(layout)) == "gathered":
        reduce = layout.grad_accum * share * memory.params * ab / bw
        gather = 2 * layout.grad_accum * share * memory.params * ab / bw
        hide_reduce, hide_gather = 2 / 3 * compute, 1 / 3 * compute
    elif traffic == "sharded":
        reduce, gather = share * memory.grads / bw, share * memory.weights / bw
        hide_reduce, hide_gather = 2 / 3 * per_micro, 1 / 3 * per_micro
    else:
        reduce, gather = 2 * share * memory.grads / bw, 0.0
        hide_reduce, hide_gather = 2 / 3 * per_micro, 0.0
    exposed = max(0.0, reduce - hide_reduce) + max(0.0, gather - hide_gather)
    total = compute + bubble + tp + exposed
    model_flops = flops_per_token(model, seq_len)["train"] * tokens / layout.world
    return StepTime(compute, bubble, tp, exposed, reduce + gather, model_flops / (total * hw.peak_flops))


def estimate(model, seq_len: int, batch: int, layout: Layout, hw: Hardware, nodes: int,
             gpus_per_node: int) -> Estimate:
    memory = stage_memory(model, seq_len, layout)
    step = step_time(model, seq_len, layout, hw, gpus_per_node, batch, memory)
    return Estimate(layout, nodes, gpus_per_node, memory, step, memory.total <= hw.usable)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(model, seq_len: int, batch: int, base: Layout, micro_cap: int, hw: Hardware, nodes: int,
               gpus_per_node: int) -> list[Estimate]:
    """Every layout of the same backend on 1..nodes nodes (one node: also fewer GPUs), sorted fastest first:
    megatron TP within a node (dividing heads, kv heads, vocabulary and SwiGLU width), PP dividing the layers, DP
    dividing the batch, the largest micro-batch <= micro_cap dividing each rank's share or any smaller one,
    recompute off / selective / full; DeepSpeed and torch DP only."""
    out = []
    shapes = [(n, gpus_per_node) for n in range(1, nodes + 1)]
    shapes += [(1, g) for g in _divisors(gpus_per_node) if g < gpus_per_node]
    split = base.backend.model_parallel  # TP and PP layouts
    for n, g in shapes:
        world = n * g
        tps = [t for t in _divisors(g) if split and not (model.n_heads % t or model.kv_heads % t
                                                            or model.vocab_size % t or model.ffn % t)] or [1]
        for tp in tps:
            pps = [p for p in _divisors(model.n_layers) if split and (world // tp) % p == 0] or [1]
            for pp in pps:
                if world % (tp * pp):
                    continue
                dp = world // (tp * pp)
                if batch % dp:
                    continue
                share = batch // dp
                for micro in [m for m in _divisors(share) if m <= micro_cap]:
                    for rec in ((False, "selective", "full") if split else (base.recompute,)):
                        layout = replace(base, tp=tp, pp=pp, dp=dp, vpp=1, micro_batch=micro,
                                         grad_accum=share // micro, recompute=rec,
                                         sequence_parallel=base.sequence_parallel and tp > 1)
                        out.append(estimate(model, seq_len, batch, layout, hw, n, g))
    return sorted(out, key=lambda e: (e.step.total, -e.layout.micro_batch))


@dataclass(frozen=True)
class Assessment:
    """The planner's verdict on a training config for a profile: its own layout's estimate; `replanned` (the
    overrides that make it fit, with the reason) when the config lets the micro-batch follow the GPU count;
    `faster`: the fastest fitting layout when it beats the run's by more than 10 %; `fewer_nodes`: the fastest
    fitting one on fewer nodes when it also beats the run's (a run whose communication costs more than the
    nodes it adds bring)."""

    own: Estimate
    hardware: Hardware
    replanned: Estimate | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)
    faster: Estimate | None = None
    fewer_nodes: Estimate | None = None

    @property
    def chosen(self) -> Estimate:
        return self.replanned or self.own

    def lines(self) -> list[str]:
        """What a dry run prints: the chosen layout's memory and step time, then why it was re-planned, whether
        communication dominates, and a faster layout."""
        hw, chosen = self.hardware, self.chosen
        out = [f"memory per GPU: {chosen.memory.describe()} of {hw.memory_gb:g} GB ({hw.gpu}; "
               f"{hw.usable / GB:.0f} GB usable)",
               f"estimate: {chosen.step.describe()}"]
        if self.replanned is not None:
            own = self.own
            out.append(f"re-planned ({' '.join(f'{k}={v}' for k, v in self.overrides)}): {own.layout.describe()} "
                       f"would need {own.memory.describe()} per GPU, more than the {hw.usable / GB:.0f} GB usable "
                       f"on {hw.gpu}")
        step = chosen.step
        if step.dp + step.tp > step.compute:
            out.append(f"communication-bound: {(step.dp + step.tp) * 1e3:.0f} ms of exposed communication against "
                       f"{step.compute * 1e3:.0f} ms of compute per step")
        for label, e in (("faster", self.faster), ("on fewer nodes", self.fewer_nodes)):
            if e is not None:
                out.append(f"{label}: {e.describe()} ({_overrides_for(chosen, e)})")
        return out


def _overrides_for(own: Estimate, other: Estimate) -> str:
    o, n = own.layout, other.layout
    keys = []
    if (other.nodes, other.gpus_per_node) != (own.nodes, own.gpus_per_node):
        keys += [f"cluster.nodes={other.nodes}"]
        if other.gpus_per_node != own.gpus_per_node:
            keys += [f"cluster.gpus_per_node={other.gpus_per_node}"]
    for key, a, b in (("parallel.tp", o.tp, n.tp), ("parallel.pp", o.pp, n.pp)):
        if a != b:
            keys.append(f"{key}={b}")
    keys.append(f"micro_batch={n.micro_batch}")  # always: auto_micro_batch would pick its own for the new dp
    if o.recompute != n.recompute:
        keys.append(f"recompute={n.recompute if isinstance(n.recompute, str) else str(n.recompute).lower()}")
    return " ".join(keys)


def assess(cfg, hw: Hardware, nodes: int, gpus_per_node: int) -> Assessment:
    """The verdict on TrainConfig `cfg` (validated for nodes x gpus_per_node ranks) on that many GPUs of `hw`.
    Raises a UserError with the numbers when the layout cannot fit and cannot be re-planned."""
    from nca_scale.train.simulate import gpu_config, layout_of

    run = gpu_config(cfg)
    model, seq, batch = run.model, run.seq_len, run.batch_size
    base = layout_of(run)
    own = estimate(model, seq, batch, base, hw, nodes, gpus_per_node)
    replanned, overrides = None, []
    if not own.fits:
        fitting = _smaller_micro_batches(model, seq, batch, base, hw, nodes, gpus_per_node)
        if cfg.auto_micro_batch and fitting:
            replanned = fitting[0]
            overrides = [("micro_batch", str(replanned.layout.micro_batch))]
        else:
            best = next((e for e in candidates(model, seq, batch, base, cfg.micro_batch, hw, nodes, gpus_per_node)
                         if e.fits), None)
            fix = (f"; fits: {best.describe()} ({_overrides_for(own, best)})" if best else
                   "; no layout of this backend on this profile fits: add nodes, or lower batch_size")
            raise UserError(f"{own.layout.describe()} needs {own.memory.describe()} per GPU, more than the "
                            f"{hw.usable / GB:.0f} GB usable of {hw.gpu} {hw.memory_gb:g} GB{fix}")
    chosen = replanned or own
    fitting = [e for e in candidates(model, seq, batch, base, cfg.micro_batch, hw, nodes, gpus_per_node) if e.fits]
    quicker = [e for e in fitting if e.step.total < 0.9 * chosen.step.total]
    fewer = [e for e in quicker if e.nodes < nodes]
    faster = quicker[0] if quicker else None
    return Assessment(own, hw, replanned, overrides, faster, fewer[0] if fewer and fewer[0] is not faster else None)


def _smaller_micro_batches(model, seq: int, batch: int, base: Layout, hw: Hardware, nodes: int,
                           gpus_per_node: int) -> list[Estimate]:
    """The same layout with each smaller micro-batch that divides the rank's share, largest first, that fits."""
    share = base.micro_batch * base.grad_accum
    out = []
    for micro in sorted((m for m in _divisors(share) if m < base.micro_batch), reverse=True):
        e = estimate(model, seq, batch, replace(base, micro_batch=micro, grad_accum=share // micro), hw, nodes,
                     gpus_per_node)
        if e.fits:
            out.append(e)
    return out


@functools.cache
def _cached(model, seq: int, batch: int, layout: Layout, hw: Hardware, nodes: int, gpus_per_node: int) -> Estimate:
    return estimate(model, seq, batch, layout, hw, nodes, gpus_per_node)


COLUMNS = f"{'LAYOUT':>17} {'GB/GPU':>7} {'STEP-S':>7} {'MFU':>4}"  # the columns of Estimate.columns


def run_estimate(cfg, vocab_size: int, seq_len: int, hw: Hardware, nodes: int, gpus_per_node: int) -> Estimate:
    """The estimate of TrainConfig `cfg`'s own layout (validated or not: nothing read from its data, so a sweep's
    text runs are planned before their shards exist), memoised: a sweep's runs share a few layouts."""
    from nca_scale.train.simulate import gpu_settings, layout_of

    run = gpu_settings(cfg)
    return _cached(run.model.with_vocab(vocab_size), seq_len, run.batch_size, layout_of(run), hw, nodes,
                   gpus_per_node)


def columns(e: Estimate) -> str:
    """`tp x pp x dp mMICROxACCUM`, memory per GPU (! when it does not fit), step seconds, MFU: under COLUMNS."""
    lay = e.layout
    where = f"{lay.tp}x{lay.pp}x{lay.dp} m{lay.micro_batch}x{lay.grad_accum}"
    mem = f"{e.memory.total / GB:.1f}" + ("" if e.fits else "!")
    return f"{where:>17} {mem:>7} {e.step.total:>7.3f} {e.step.mfu:>4.0%}"
