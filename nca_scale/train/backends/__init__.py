"""Training backends: one folder each (torch/, megatron/, deepspeed/), registered in REGISTRY below. Nothing
outside this package names a backend (tests/test_layers.py): the rest of nca_scale asks the registry for the
backend a config's `backend:` names and talks to its Engine, Format and Simulation (base.py, with the code they
share) and its memory terms (model.memory.Sharding). docs/architecture.md, "Backends", says what a new one takes.
This package does not import train.config (which imports it for the sections): a TrainConfig is `cfg` here."""

from __future__ import annotations

import os

from nca_scale.errors import UserError
from nca_scale.train import dist
from nca_scale.train.backends import deepspeed, megatron
from nca_scale.train.backends import torch as torch_backend
from nca_scale.train.backends.backend import Backend
from nca_scale.train.backends.deepspeed.config import DeepSpeedConfig
from nca_scale.train.backends.megatron.config import MegatronConfig

REGISTRY: dict[str, Backend] = {b.name: b for b in (torch_backend.BACKEND, megatron.BACKEND, deepspeed.BACKEND)}
DEFAULT = torch_backend.BACKEND.name  # TrainConfig's `backend:` when none is given
__all__ = ["REGISTRY", "DEFAULT", "Backend", "MegatronConfig", "DeepSpeedConfig", "get", "sections", "format_of",
           "prepare_process", "build"]


def get(name: str) -> Backend:
    if name not in REGISTRY:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def sections() -> list[Backend]:
    """The backends with a config section of their own (TrainConfig's field of that name), in registry order."""
    return [b for b in REGISTRY.values() if b.section is not None]


def format_of(name: str):
    """The checkpoint format (base.Format) of the backend `name` (a checkpoint's meta.json `backend`)."""
    return get(name).load_format()


def prepare_process(cfg) -> None:
    """Set the environment variables the TrainConfig's backend needs in this process (Backend.environment) where
    the user has not; before the process creates its CUDA context."""
    backend = get(cfg.backend)
    for name, value in (backend.environment(cfg) if backend.environment else {}).items():
        os.environ.setdefault(name, value)


def build(cfg, weights, frozen: set[str]):
    """This rank's process group, then the engine (base.Engine) of the TrainConfig's backend, its model initialised
    from `weights(logical name)`; the logical tensors in `frozen` are not trained."""
    dist.init(cfg.dist_timeout_s, cfg.rank0_timeout_s)
    return get(cfg.backend).load_engine()(cfg, weights, frozen)
