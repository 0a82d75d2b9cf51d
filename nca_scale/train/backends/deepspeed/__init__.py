"""The DeepSpeed backend: the native Llama under ZeRO stage 0-3 (engine.py); DeepSpeed's checkpoint directories
(format.py); the `deepspeed` config section (config.py)."""

from nca_scale.train.backends.backend import Backend
from nca_scale.train.backends.deepspeed.config import DeepSpeedConfig, check

BACKEND = Backend(
    name="deepspeed",
    engine="nca_scale.train.backends.deepspeed.engine:DeepSpeedEngine",
    format="nca_scale.train.backends.deepspeed.format:FORMAT",
    memory="nca_scale.train.backends.deepspeed.memory:SHARDING",
    section=DeepSpeedConfig,
    check=check,
    background_saves=False,  # DeepSpeed saves synchronously
    simulation="nca_scale.train.backends.deepspeed.engine:SIMULATION",
)
