"""What one GPU holds for a model under a parallel layout: bytes of weights, gradients, optimizer state and
activations, as arithmetic (no tensors). The launch layer's planner picks layouts with it (launch/planner.py);
train/simulate.py builds the same ranks for real (meta device, fake process group) and tests check that the
weight, gradient and optimizer bytes here equal those of the real tensors exactly.

What a backend keeps of the weights, gradients and optimizer state is the backend's own arithmetic, in its folder
(train/backends/<name>/memory.py, anchored there on its library's buffers): a Layout carries it as `backend` (a
`Sharding`), since this layer sits below train and cannot look a backend up by name. Here is what does not depend
on the backend (docs/gpu.md, "Memory and layout planner"):
- Activations: the tensors autograd keeps for the backward, counted per tensor for this project's layer (RMSNorm,
  fused QKV, RoPE, flash-style attention that stores no s x s scores, SwiGLU) as Korthikanti et al. (2022)
  count them for GPT; pipeline stages hold the micro-batches 1F1B keeps in flight (Megatron-LM's
  theoretical_memory_usage.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

from nca_scale.model.config import ModelConfig

GB = 1e9


class Sharding(Protocol):
    """A backend's part of the arithmetic: how it lays a model's states over the ranks (Layout.backend)."""

    native: bool  # its model is the native Llama (model/llama.py), not megatron-core's fused-QKV layer
    model_parallel: bool  # it splits the model over TP ranks and pipeline stages

    def settings(self, cfg) -> dict:
        """Its Layout keys (distributed_optimizer, zero, overlap_grad_reduce) from a TrainConfig."""

    def describe(self, layout: Layout) -> str:
        """The layout's parallelism, e.g. `tp 2 x pp 1 x dp 4`."""

    def states(self, cfg: ModelConfig, layout: Layout, stage: int, dp_rank: int) -> tuple[int, int, int, int, int]:
        """(parameters, weight, gradient, optimizer, transient bytes) of one rank: pipeline stage `stage`, DP rank
        `dp_rank`; transient: a state that exists only for a moment (ZeRO-3's gathered layer)."""

    def dp_traffic(self, layout: Layout) -> Literal["gathered", "sharded", "replicated"]:
        """What its DP group exchanges per step (launch/planner.py): the parameters gathered for every
        micro-batch and the gradients reduce-scattered (gathered), the gradients reduce-scattered and the updated
        parameters gathered once (sharded), or the gradients all-reduced (replicated)."""


@dataclass(frozen=True)
class Layout:
    """How one training run is spread over GPUs, and what each GPU computes at a time."""

    backend: Sharding
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
        par = self.backend.describe(self)
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


def dtype_bytes(precision: str) -> int:
    return 2 if precision == "bf16" else 4


def moment_bytes(optimizer: str) -> int:
    """Optimizer state per parameter: Adam's two fp32 moments, nothing for plain SGD."""
    return {"sgd": 0, "adam": 8, "adamw": 8}[optimizer]


# ---- the native Llama ---------------------------------------------------------------------------------------
def native_params(cfg: ModelConfig) -> list[int]:
    """Elements of each parameter of the native Llama (torch and DeepSpeed backends), in registration order."""
    from nca_scale.model.layout import logical_shapes

    return [math.prod(s) for s in logical_shapes(cfg).values()]


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
    ab = dtype_bytes(layout.precision)
    tp = layout.tp if layout.backend.model_parallel else 1
    sp = layout.sequence_parallel and tp > 1
    native = layout.backend.native
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
    tp = layout.tp if layout.backend.model_parallel else 1
    return int(layout.micro_batch * seq_len * cfg.vocab_size / tp * dtype_bytes(layout.precision))


def rank_memory(cfg: ModelConfig, seq_len: int, layout: Layout, stage: int = 0, dp_rank: int = 0) -> RankMemory:
    """Every byte class of one rank: pipeline stage `stage`, DP rank `dp_rank`."""
    acts, logits = activation_bytes(cfg, seq_len, layout, stage)
    params, w, g, o, transient = layout.backend.states(cfg, layout, stage, dp_rank)
    return RankMemory(params, w, g, o, acts, logits, transient + logits_transient(cfg, seq_len, layout, stage))


def step_flops(cfg: ModelConfig, seq_len: int, layout: Layout, tokens_per_step: int) -> float:
    """Training FLOPs of one rank per step (recompute adds a forward's share)."""
    from nca_scale.model.config import flops_per_token

    f = flops_per_token(cfg, seq_len)
    per_token = f["train"]
    if layout.recompute is True or layout.recompute == "full":
        per_token += f["forward"]
    return per_token * tokens_per_step / layout.world
