"""Training backends. Each exposes the same small Engine interface (nca_scale.train.backends.base)."""

from __future__ import annotations

from nca_scale.train.config import TrainConfig


def build(cfg: TrainConfig):
    if cfg.backend == "megatron":
        from nca_scale.train.backends.megatron import MegatronEngine as Engine
    elif cfg.backend == "deepspeed":
        from nca_scale.train.backends.deepspeed import DeepSpeedEngine as Engine
    else:
        from nca_scale.train.backends.torch import TorchEngine as Engine
    return Engine(cfg)
