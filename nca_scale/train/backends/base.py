"""The interface every backend implements; the Trainer talks only to this."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import torch

from nca_scale.train import dist as tdist
from nca_scale.train.config import OptimConfig
from nca_scale.train.data import Batch
from nca_scale.train.speed import StepPhases


class Writing:
    """A save whose files are still being written (checkpoint.asynchronous: megatron, torch); the Saver
    (train/checkpoint/saver.py) commits it once poll() or wait() says every rank's files are complete, and
    abandons it past its deadline. A backend implements poll and abandon; wait is the same for all."""

    def poll(self) -> bool:
        """Whether every rank has written its files; a collective (every rank calls it at the same step). A
        writer's failure is raised here."""
        raise NotImplementedError

    def wait(self, deadline: float) -> bool:
        """Block until every rank has written its files (True), or until any rank's clock passes `deadline`
        (time.monotonic(); False, on every rank alike). Polls in a loop, so that no single collective waits for
        a slow writer on another rank (it would run into dist_timeout_s), and a writer that died or stalls
        cannot hold the ranks past the deadline."""
        while not self.poll():
            if tdist.any_rank(time.monotonic() > deadline):
                return False
            time.sleep(0.05)
        return True

    def abandon(self, everywhere: bool) -> None:
        """Stop this rank's writer without waiting for the other ranks; its files stay uncommitted. `everywhere`:
        every rank abandons this save at this point (a deadline or a writer error they agreed on), so the
        backend may make collectives to prepare the next save; otherwise (an error ends this rank) it must not."""
        raise NotImplementedError


class Engine(Protocol):
    dp_rank: int
    dp_size: int
    phases: StepPhases  # filled by train_step: seconds in forward/backward and in the optimizer

    def train_step(self, batch: Batch, step: int, lr: float) -> tuple[float, float]:
        """One optimizer step over this rank's micro-batches; returns (global mean loss, grad norm before
        clipping), identical on every rank."""

    def eval_loss(self, batch: Batch) -> float:
        """Global mean loss of a batch without updating anything."""

    def save(self, path: Path) -> Writing | None:
        """Write model and optimizer state under `path` (called on every rank; the directory exists). Returns
        None once the files are written, or a Writing while they are still being written in the background."""

    def load(self, path: Path, optimizer: bool = True) -> None:
        """Restore what `save` wrote (model only when optimizer=False)."""


def freeze(model: torch.nn.Module, frozen: set[str]) -> list[torch.nn.Parameter]:
    """Stop training the named (logical) parameters of a native model; returns the trainable ones."""
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    return [p for p in model.parameters() if p.requires_grad]


def torch_optimizer(cfg: OptimConfig, params, fused: bool = False) -> torch.optim.Optimizer:
    """torch Adam/AdamW (weight decay applies to every tensor, as in the paper's recipes) or plain SGD. `fused`:
    Adam's single-kernel update for parameters on a GPU (torch's default there is the multi-tensor foreach one)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    decay = cfg.weight_decay if cfg.name == "adamw" else 0.0
    return cls(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=decay, fused=fused or None)
