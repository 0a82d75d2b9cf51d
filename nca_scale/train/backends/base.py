"""What every backend implements: the Engine the Trainer talks to, the Format of its checkpoints (read outside
the engine: resume checks, transfer, export, evaluation) and its Simulation (`train simulate=`); and the code
they share."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import torch

from nca_scale.model.config import ModelConfig
from nca_scale.train import dist as tdist
from nca_scale.train import faults
from nca_scale.train.config import OptimConfig, TrainConfig
from nca_scale.train.data import Batch
from nca_scale.train.speed import StepPhases
from nca_scale.train.transfer import Weights


class Writing:
    """A save whose files are still being written (checkpoint.asynchronous: megatron, torch); the Saver
    (train/checkpoint/saver.py) commits it once poll() or wait() says every rank's files are complete, and
    abandons it past its deadline. A backend implements poll and abandon; wait is the same for all."""

    @staticmethod
    def write_files(name: str, write, *args, **kwargs):
        """`write(*args, **kwargs)`: a backend's background writer of checkpoint `name`, in its thread or process.
        The one place the tests' hooks (train/faults.py) reach the backends: a fault before the files, and the
        chaos test's window once they are written (before the save completes)."""
        faults.hit("writer", name)
        written = write(*args, **kwargs)
        faults.pause_for_tests(name, "writing in the background")
        return written

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


class Format:
    """What a backend's checkpoints hold, for the readers outside its engine. The defaults fit a format whose
    files any layout loads and pickle nothing but tensors and plain data."""

    # config keys a resume must keep besides those that change the numbers (checkpoint/select.py): the settings
    # that shape the saved optimizer state, which the backend's loader cannot convert
    resume_keys: tuple[str, ...] = ()

    def safe_classes(self) -> list[type]:
        """Classes its files pickle besides tensors and plain data, allowed in weights-only loads."""
        return []

    def layout(self, cfg: TrainConfig) -> dict:
        """meta.json's `layout` (zero: the ZeRO stage, 0 where there is none; every manifest holds it)."""
        return {"world": cfg.world, "tp": cfg.parallel.tp, "pp": cfg.parallel.pp, "vpp": cfg.parallel.vpp,
                "dp": cfg.data_parallel, "zero": 0}

    def check_resumable(self, path: Path, cfg: TrainConfig, saved: dict, layout: dict) -> None:
        """Refuse (UserError) a checkpoint at `path` its engine cannot load into `cfg`'s layout; `saved`: its config
        in this release's sections, `layout`: its meta.json layout."""

    def read_weights(self, path: Path, meta: dict, model: ModelConfig) -> dict[str, torch.Tensor]:
        """Full fp32 weights under logical names, without the optimizer state where the files allow (called inside
        checkpoint.weights_only_loads)."""
        raise NotImplementedError

    def weight_reader(self, path: Path, meta: dict, model: ModelConfig) -> Weights:
        """logical name -> that tensor, read when asked for (default: every tensor at once, transfer.read_logical)."""
        from nca_scale.train.transfer import read_logical

        return read_logical(path, model).__getitem__

    def write_weights(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        """A checkpoint's files holding model weights alone, under logical names (`nca-scale import` writes the
        default backend's)."""
        raise NotImplementedError


class Simulation:
    """What `train simulate=` (train/simulate.py) needs of a backend to build its ranks on PyTorch's fake process
    group and the meta device, and to count what they hold."""

    meta_cpu = False  # allocations on the CPU go to the meta device too (else only the GPU's)

    def refuse(self, cfg: TrainConfig) -> None:
        """UserError for a config this backend's simulation does not model."""

    def prepare(self, cfg: TrainConfig, real: bool) -> TrainConfig:
        """Before the build: the config a meta build (real=False) or a real CPU build takes."""
        return cfg

    def roles(self, cfg: TrainConfig) -> list[int]:
        """The global ranks whose memory differs in kind."""
        return [0]

    def count(self, engine) -> tuple[str, int, int, tuple[int, int, int, int]]:
        """(role, pipeline stage, DP rank, (parameters, weight, gradient, optimizer bytes)) of a built engine."""
        raise NotImplementedError

    def teardown(self) -> None:
        """After the fake group is destroyed: forget the handles the backend kept on its groups."""


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
