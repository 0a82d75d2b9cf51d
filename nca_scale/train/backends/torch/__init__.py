"""The plain PyTorch backend: the native Llama, DistributedDataParallel over several ranks (engine.py);
torch.distributed.checkpoint directories (format.py)."""

from nca_scale.train.backends.backend import Backend

BACKEND = Backend(
    name="torch",
    engine="nca_scale.train.backends.torch.engine:TorchEngine",
    format="nca_scale.train.backends.torch.format:FORMAT",
    memory="nca_scale.train.backends.torch.memory:SHARDING",
    buckets=False,  # DDP keeps its own
    simulation="nca_scale.train.backends.torch.engine:SIMULATION",
)
