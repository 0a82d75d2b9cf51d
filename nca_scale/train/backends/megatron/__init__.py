"""The megatron-core backend: GPTModel with TP, PP, DP and the distributed optimizer (engine.py, its block spec in
spec.py, CPU patches in cpu_compat.py); torch_dist checkpoints (format.py); the `megatron` config section
(config.py)."""

from nca_scale.train.backends.backend import Backend
from nca_scale.train.backends.megatron.config import MegatronConfig, environment

BACKEND = Backend(
    name="megatron",
    engine="nca_scale.train.backends.megatron.engine:MegatronEngine",
    format="nca_scale.train.backends.megatron.format:FORMAT",
    memory="nca_scale.train.backends.megatron.memory:SHARDING",
    section=MegatronConfig,
    environment=environment,
    model_parallel=True,
    selective_recompute=True,
    simulation="nca_scale.train.backends.megatron.engine:SIMULATION",
)
