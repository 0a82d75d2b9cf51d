"""A full-scale dry run without the cluster: one rank of a NODES x GPUS layout built in this process, at the
model's real shapes, against PyTorch's fake process group (`fake` backend with FakeStore, as torchtitan's dry
runs), by the same backend code a real rank runs (megatron-core's parallel state, GPTModel, DDP buffers and
distributed optimizer; DeepSpeed's engine and ZeRO partitions).

By default the model is built on the meta device (no memory, no values), so a 7B layout builds on a laptop in
seconds; every divisibility, shape, stage-split or refusal error of the layout shows here. With real=True the rank
is built on the CPU with random weights and runs one training step on random tokens (collectives of the
fake group return without communicating, so the loss is this rank's own, not the job's).

Each simulated rank reports its parameter count and the bytes of its weights, gradients and optimizer state,
counted from the real objects (the backend's Simulation.count), next to the planner's arithmetic for the same rank
(model/memory.py and the backend's memory.py), which must agree exactly, and the planner's activation estimate.

`nca-scale train CONFIG simulate=NODESxGPUS` runs this instead of training (cli/train.py)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from nca_scale.errors import UserError
from nca_scale.model.layout import logical_shapes
from nca_scale.model.memory import GB, Layout, RankMemory, rank_memory
from nca_scale.train import backends
from nca_scale.train import dist as tdist
from nca_scale.train.config import TrainConfig
from nca_scale.train.data import Batch

tdist.quiet_upstream_warnings()
log = logging.getLogger(__name__)
_META = torch.device("meta")


@dataclass(frozen=True)
class RankReport:
    rank: int
    role: str  # "tp 0 pp 1 dp 0"
    params: int  # parameters this rank holds (its shard; all of them under ZeRO-3)
    weights: int  # bytes, counted on the built objects
    grads: int
    optimizer: int
    planned: RankMemory  # the planner's arithmetic for this rank
    seconds: float  # build (and step) time
    stepped: bool = False  # real=True: one training step ran
    loss: float | None = None  # its loss (last pipeline stage; random weights and tokens)

    def describe(self) -> str:
        p = self.planned
        step = "" if not self.stepped else ", one step" + ("" if self.loss is None else f": loss {self.loss:.4f}")
        return (f"rank {self.rank} ({self.role}): {self.params:,} parameters; weights {self.weights / GB:.3f} GB, "
                f"gradients {self.grads / GB:.3f} GB, optimizer {self.optimizer / GB:.3f} GB (built); planner: "
                f"activations {p.activations / GB:.2f} GB + logits {p.logits / GB:.2f} GB"
                + (f" + transient {p.transient / GB:.2f} GB" if p.transient else "")
                + f" -> {p.total / GB:.1f} GB per GPU; {self.seconds:.1f} s{step}")


def parse_shape(text: str) -> tuple[int, int]:
    """'2x8' -> (nodes, GPUs per node)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise UserError(f"simulate={text!r}: give NODESxGPUS, e.g. simulate=2x8")
    return int(m.group(1)), int(m.group(2))


def gpu_settings(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with what a GPU rank would choose (precision=auto -> bf16, the backend's device keys: megatron's
    overlaps on); checkpoint writes synchronous (nothing is written here). Reads no data."""
    precision = "bf16" if cfg.precision == "auto" else cfg.precision
    return replace(cfg, precision=precision, checkpoint=replace(cfg.checkpoint, asynchronous=False)).on_device(gpu=True)


def gpu_config(cfg: TrainConfig) -> TrainConfig:
    """gpu_settings, resolved for the config's world size (the vocabulary from the data, the micro-batch)."""
    return gpu_settings(cfg).resolved()


def layout_of(cfg: TrainConfig) -> Layout:
    """The planner's Layout of a TrainConfig (resolved or not: the micro-batch its world size runs)."""
    sharding = backends.get(cfg.backend).load_memory()
    return Layout(backend=sharding, tp=cfg.parallel.tp, pp=cfg.parallel.pp, dp=cfg.data_parallel,
                  vpp=cfg.parallel.vpp, micro_batch=cfg.chosen_micro_batch(), grad_accum=cfg.grad_accum,
                  precision=cfg.precision, recompute=cfg.recompute, sequence_parallel=cfg.parallel.sequence_parallel,
                  bucket_size=cfg.parallel.bucket_size, optimizer=cfg.optim.name, **sharding.settings(cfg))


def _simulation(cfg: TrainConfig):
    """The backend's Simulation (backends/base.py)."""
    return backends.get(cfg.backend).load_simulation()


def roles(cfg: TrainConfig) -> list[int]:
    """The global ranks whose memory differs in kind (megatron: TP rank 0, DP rank 0 of the first and of the last
    pipeline stage)."""
    return _simulation(cfg).roles(cfg)


def simulate(cfg: TrainConfig, ranks: list[int] | None = None, real: bool = False) -> list[RankReport]:
    """Build `ranks` (default: `roles`) of `cfg`'s layout (cfg validated for its world size, parallel.nproc) one
    after another in this process; real=True builds on the CPU and runs one step."""
    _simulation(cfg).refuse(cfg)
    if dist.is_initialized():
        raise UserError("simulate= runs in a process without a process group (not under torchrun/srun)")
    cfg = gpu_config(cfg)
    world = cfg.world
    for r in ranks if ranks is not None else roles(cfg):
        if not 0 <= r < world:
            raise UserError(f"rank {r} is outside the layout's {world} ranks")
    return [_one(cfg, r, real) for r in (ranks if ranks is not None else roles(cfg))]


@contextlib.contextmanager
def _fake_group(rank: int, world: int, teardown):
    """The fake process group as rank `rank` of `world`; gloo side groups (megatron's) become fake groups too;
    `teardown()` after it is destroyed."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0"}
    saved = {k: os.environ.get(k) for k in env}
    new_group = dist.new_group

    def fake_new_group(*args, **kwargs):
        if kwargs.get("backend") == "gloo":
            kwargs["backend"] = None  # the default backend: fake
        return new_group(*args, **kwargs)

    os.environ.update(env)
    dist.new_group = fake_new_group
    hook = sys.excepthook  # init_process_group prefixes tracebacks with this rank: not the next rank's
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        sys.excepthook = hook
        dist.new_group = new_group
        dist.destroy_process_group()
        teardown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _OnMeta(TorchFunctionMode):
    """Allocations the backends place on the GPU (device='cuda', torch.cuda.current_device()) go to the meta
    device, and with `cpu` those on the CPU too (DeepSpeed allocates its partitions on its accelerator, the CPU
    here; megatron's object collectives need real CPU tensors); moving a meta tensor anywhere keeps it there;
    copying a meta tensor into a real one copies nothing; type strings read as the CUDA types megatron-core
    asserts."""

    def __init__(self, cpu: bool):
        super().__init__()
        self.devices = ("cuda", "cpu") if cpu else ("cuda",)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if (isinstance(device, str) and device.split(":")[0] in self.devices) or \
                getattr(device, "type", None) in self.devices:
            kwargs["device"] = _META
        name = getattr(func, "__name__", "")
        if name == "to" and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            args = tuple(_META if isinstance(a, (str, torch.device)) else a for a in args)
        if name == "copy_" and len(args) > 1 and getattr(args[1], "is_meta", False) and not args[0].is_meta:
            return args[0]
        out = func(*args, **kwargs)
        if name == "type" and isinstance(out, str):
            out = out.replace("meta.", "")
        return out


@contextlib.contextmanager
def _on_meta(cpu: bool):
    current = torch.cuda.current_device
    torch.cuda.current_device = lambda: _META  # megatron's buffers (torch.cuda.current_device())
    try:
        with _OnMeta(cpu), torch.device("meta"):
            yield
    finally:
        torch.cuda.current_device = current


@contextlib.contextmanager
def built(cfg: TrainConfig, rank: int, real: bool = False):
    """The engine of global rank `rank` of `cfg` (resolved, validated for its world size) on the fake process
    group, on the meta device unless `real`; the group is torn down on exit."""
    sim = _simulation(cfg)
    cfg = sim.prepare(cfg, real)
    shapes = logical_shapes(cfg.model)
    if real:
        weights = lambda name: _random(shapes[name], name, cfg)  # noqa: E731
    else:
        weights = lambda name: torch.empty(shapes[name], device=_META)  # noqa: E731
    with _fake_group(rank, cfg.world, sim.teardown):
        with contextlib.nullcontext() if real else _on_meta(cpu=sim.meta_cpu):
            engine = backends.build(cfg, weights, set())
        yield engine


def _random(shape: tuple[int, ...], name: str, cfg: TrainConfig) -> torch.Tensor:
    """Random weights for a real build, cheap at full scale: a block of up to 2^20 N(0, init_std) values repeated
    (the run's own initial weights, init_tensor, cost a full logical tensor of random numbers per parameter shard:
    minutes for one rank of a 1.6B model on a CPU); norms 1."""
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    n = math.prod(shape)
    gen = torch.Generator().manual_seed(cfg.seed + zlib.crc32(name.encode()))
    block = torch.randn(min(n, 1 << 20), generator=gen) * cfg.model.init_std
    return block.repeat(-(-n // block.numel()))[:n].view(shape)


def _one(cfg: TrainConfig, rank: int, real: bool) -> RankReport:
    t0 = time.perf_counter()
    with built(cfg, rank, real) as engine:
        role, stage, dp_rank, (params, w, g, o) = _simulation(cfg).count(engine)
        loss = step(cfg, engine) if real else None
    if stage != cfg.parallel.pp - 1:
        loss = None  # the loss exists on the last pipeline stage only
    planned = rank_memory(cfg.model, cfg.seq_len, layout_of(cfg), stage, dp_rank)
    report = RankReport(rank, role, params, w, g, o, planned, time.perf_counter() - t0, real, loss)
    log.info(report.describe())
    return report


class _EmptyAsZeros(TorchFunctionMode):
    """torch.empty as torch.zeros: the fake group's receives (pipeline activations and gradients) leave their
    buffers as allocated, and uninitialised memory would make the step's numbers garbage."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.empty:
            return torch.zeros(*args, **kwargs)
        return func(*args, **kwargs)


def step(cfg: TrainConfig, engine) -> float:
    """One training step on random tokens for this rank's micro-batches."""
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.micro_batch, cfg.seq_len)
    vocab = cfg.model.vocab_size
    inputs = [torch.randint(0, vocab, shape, generator=gen) for _ in range(cfg.grad_accum)]
    batch = Batch(inputs, [torch.roll(x, -1, 1) for x in inputs], [torch.ones(shape, dtype=torch.bool)] * cfg.grad_accum)
    with _EmptyAsZeros():
        loss, _ = engine.train_step(batch, step=0, lr=cfg.optim.lr)
    return loss
