"""Plain PyTorch backend: the native Llama, DistributedDataParallel when there are several ranks.

The reference the parallel backends are checked against, and the fastest to start on a laptop. Checkpoints are
torch.distributed.checkpoint (DCP) directories, `dcp/`: model and FQN-keyed optimizer state
(torch.distributed.checkpoint.state_dict), each replicated tensor written once, by one of the DP ranks, which
share the writing; any DP size loads them. Checkpoints of earlier versions (rank 0's `state.pt`) still load.
With checkpoint.asynchronous (None: on with a GPU) a copy of the state is written by DCP's async_save in a thread, on
a gloo group of its own, while the steps go on.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.nn.parallel import DistributedDataParallel as DDP

from nca_scale.errors import UserError
from nca_scale.model.llama import Llama, masked_loss
from nca_scale.train import checkpoint
from nca_scale.train import dist as tdist
from nca_scale.train.backends.base import Simulation, Weights, Writing, freeze, torch_optimizer
from nca_scale.train.backends.torch.format import DCP, LEGACY
from nca_scale.train.config import TrainConfig
from nca_scale.train.data import Batch
from nca_scale.train.speed import StepPhases
from nca_scale.train.transfer import dcp_keys

log = logging.getLogger(__name__)


class TorchEngine:
    def __init__(self, cfg: TrainConfig, weights: Weights, frozen: set[str]):
        self.cfg, self.device = cfg, tdist.device()
        self.dp_rank, self.dp_size = dist.get_rank(), dist.get_world_size()
        self.model = Llama(cfg.model, cfg.seq_len, weights=weights).to(self.device)
        self.model.recompute = cfg.recompute
        trainable = freeze(self.model, frozen)
        # broadcast_buffers=False: the only buffers are RoPE's tables, computed alike on every rank; DDP would
        # broadcast them from rank 0 before every forward
        self.ddp = DDP(self.model, broadcast_buffers=False) if self.dp_size > 1 else None
        self.optimizer = torch_optimizer(cfg.optim, trainable, fused=self.device.type == "cuda")
        self.autocast = torch.autocast(self.device.type, torch.bfloat16, enabled=cfg.precision == "bf16")
        self.phases = StepPhases()
        self.asynchronous = cfg.checkpoint.asynchronous
        if self.asynchronous is None:
            self.asynchronous = self.device.type == "cuda"
        # the background save's collectives (plan, metadata) run in its thread, next to the training group's
        self.save_group = None
        if self.asynchronous:
            self._new_save_group()
        log.info(f"checkpoints: torch.distributed.checkpoint over dp={self.dp_size}, "
                 + ("written in the background (checkpoint.asynchronous)" if self.asynchronous else "written synchronously"))

    def _loss(self, x, y, m) -> torch.Tensor:
        # pinned by the Prefetcher on a GPU: asynchronous copies, queued before the forward that reads them
        x, y, m = (t.to(self.device, non_blocking=True) for t in (x, y, m))
        with self.autocast:
            logits = (self.ddp or self.model)(x)
        return masked_loss(logits, y, m)

    def train_step(self, batch: Batch, step: int, lr: float) -> tuple[float, float]:
        self.phases.start()
        torch.manual_seed(tdist.step_seed(self.cfg.seed, step, self.dp_rank))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n, total = len(batch.inputs), 0.0
        self.model.train()
        for i, mb in enumerate(zip(batch.inputs, batch.targets, batch.masks)):
            last = i == n - 1  # DDP all-reduces gradients only on the last micro-batch
            with self.ddp.no_sync() if self.ddp and not last else contextlib.nullcontext():
                loss = self._loss(*mb)
                (loss / n).backward()
            total += loss.item()
        clip = self.cfg.optim.clip_grad or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], clip).item()
        self.phases.mark("fwd_bwd_time")  # .item() above waited for every gradient
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean = tdist.mean_over(total / n)  # its .item() waits for the update
        self.phases.mark("optimizer_time")
        return mean, grad_norm

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> float:
        self.model.eval()
        losses = [self._loss(*mb).item() for mb in zip(batch.inputs, batch.targets, batch.masks)]
        return tdist.mean_over(sum(losses) / len(losses))

    def _new_save_group(self) -> None:
        """A gloo group for background saves (a collective: every rank makes it at the same point)."""
        self.save_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=self.cfg.rank0_timeout_s))

    def save(self, path: Path) -> BackgroundSave | None:
        if self.optimizer.state:
            model, optimizer = get_state_dict(self.model, self.optimizer)
            state = {"model": model, "optimizer": optimizer}
        else:  # a step-0 save: get_state_dict would make Adam's state by a zero step (step=1) that resumes count
            state = {"model": get_model_state_dict(self.model)}
        if not self.asynchronous:
            dcp.save(state, storage_writer=dcp.FileSystemWriter(path / DCP))  # returns once rank 0 wrote .metadata
            return None
        # async_save copies the state to new host memory before it returns; a thread writes the copy
        writer = _BackgroundWriter(path / DCP, path.name.removesuffix(checkpoint.STAGING))
        return BackgroundSave(dcp.async_save(state, storage_writer=writer, process_group=self.save_group), self.device,
                              self._new_save_group)

    def load(self, path: Path, optimizer: bool = True) -> None:
        if (path / LEGACY).is_file():
            return self._load_legacy(path, optimizer)
        saved_optimizer = any(k.startswith("optimizer.") for k in dcp_keys(path / DCP))
        if not (optimizer and saved_optimizer):
            model = get_model_state_dict(self.model)
            dcp.load({"model": model}, storage_reader=dcp.FileSystemReader(path / DCP))
            set_model_state_dict(self.model, model)
            if optimizer:  # saved before any optimizer state existed: start without state, as then
                self.optimizer.state.clear()
            return
        model, optim = get_state_dict(self.model, self.optimizer)  # the templates DCP loads into, in place
        state = {"model": model, "optimizer": optim}
        dcp.load(state, storage_reader=dcp.FileSystemReader(path / DCP))
        set_state_dict(self.model, self.optimizer, model_state_dict=model, optim_state_dict=optim)

    def _load_legacy(self, path: Path, optimizer: bool) -> None:
        state = torch.load(path / LEGACY, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        if optimizer:
            self.optimizer.load_state_dict(state["optimizer"])


class _BackgroundWriter(dcp.FileSystemWriter):
    """DCP's file writer, in the background save's thread: the chaos test's window opens once this rank's data
    files are written, before the save's .metadata (a kill there lands mid-save)."""

    def __init__(self, path: Path, name: str):
        super().__init__(path)
        self.name = name

    def write_data(self, plan, planner):
        # this rank's data files; rank 0's .metadata comes after
        return Writing.write_files(self.name, super().write_data, plan, planner)


class BackgroundSave(Writing):
    """A DCP save whose copy of the state is being written by a thread on each rank (callbacks.Checkpointer)."""

    def __init__(self, future: Future, device: torch.device, renew_group):
        self.future, self.device, self.renew_group = future, device, renew_group

    def poll(self) -> bool:
        """Whether every rank's save is done (then rank 0 has written .metadata); a collective on the training
        group: every rank calls it at the same step. A writer's error is raised here."""
        done = torch.tensor([int(self.future.done())], device=self.device)
        dist.all_reduce(done, op=dist.ReduceOp.MIN)
        if finished := bool(done.item()):  # one .item(): on a GPU each is a device sync on the step loop
            self.future.result()
        return finished

    def abandon(self, everywhere: bool) -> None:
        """Stop waiting for this rank's thread (a thread cannot be killed). Its save collectives still run on
        the save group: when every rank abandons the save, the engine makes the next save a new group, so that
        they never meet the next save's; on an error of this rank, they end when the other ranks' threads
        finish or their processes exit (gloo then fails them at once)."""
        if everywhere:
            self.renew_group()


class TorchSimulation(Simulation):
    def refuse(self, cfg: TrainConfig) -> None:
        raise UserError("simulate= builds megatron or DeepSpeed ranks; backend=torch replicates the whole model on "
                        "every rank (its memory is the planner's: nca-scale submit ... dry_run=true)")


SIMULATION = TorchSimulation()
