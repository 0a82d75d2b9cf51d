"""Plain PyTorch backend: the native Llama, DistributedDataParallel when there are several ranks.

The reference the parallel backends are checked against, and the fastest to start on a laptop.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nca_scale.model.llama import Llama, masked_loss
from nca_scale.train import dist as tdist
from nca_scale.train.backends.base import freeze, torch_optimizer
from nca_scale.train.config import TrainConfig
from nca_scale.train.data import Batch
from nca_scale.train.speed import StepPhases
from nca_scale.train.transfer import Weights


class TorchEngine:
    def __init__(self, cfg: TrainConfig, weights: Weights, frozen: set[str]):
        tdist.init(cfg.dist_timeout_s, cfg.rank0_timeout_s)
        self.cfg, self.device = cfg, tdist.device()
        self.dp_rank, self.dp_size = dist.get_rank(), dist.get_world_size()
        self.model = Llama(cfg.model, cfg.seq_len, weights=weights).to(self.device)
        self.model.recompute = cfg.recompute
        trainable = freeze(self.model, frozen)
        self.ddp = DDP(self.model) if self.dp_size > 1 else None
        self.optimizer = torch_optimizer(cfg.optim, trainable)
        self.autocast = torch.autocast(self.device.type, torch.bfloat16, enabled=cfg.precision == "bf16")
        self.phases = StepPhases()

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

    def save(self, path: Path) -> None:
        if dist.get_rank() == 0:  # replicated state: one copy
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}, path / "state.pt")

    def load(self, path: Path, optimizer: bool = True) -> None:
        state = torch.load(path / "state.pt", map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        if optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
