"""Training backends. Each exposes the same small Engine interface (nca_scale.train.backends.base)."""

from __future__ import annotations

from nca_scale.train.config import TrainConfig
from nca_scale.train.transfer import Weights


def build(cfg: TrainConfig, weights: Weights, frozen: set[str]):
    """The engine of cfg.backend, its model initialised from `weights(logical name)`; the logical tensors in
    `frozen` are not trained."""
    if cfg.backend == "megatron":
        from nca_scale.train.backends.megatron import MegatronEngine as Engine
    elif cfg.backend == "deepspeed":
        from nca_scale.train.backends.deepspeed import DeepSpeedEngine as Engine
    else:
        from nca_scale.train.backends.torch import TorchEngine as Engine
    return Engine(cfg, weights, frozen)
