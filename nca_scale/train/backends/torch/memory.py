"""What a torch rank holds (the planner's arithmetic, model/memory.py, for this backend): DDP replicates the
native Llama in fp32 (bf16 autocasts: the weights stay fp32), its gradients and its optimizer state on every rank."""

from __future__ import annotations

from nca_scale.model.config import ModelConfig
from nca_scale.model.memory import Layout, moment_bytes, native_params


class TorchSharding:
    native = True
    model_parallel = False

    def settings(self, cfg) -> dict:
        """The Layout keys of this backend, from a TrainConfig: none of its own."""
        return {}

    def describe(self, layout: Layout) -> str:
        return f"DDP x dp {layout.dp}"

    def states(self, cfg: ModelConfig, layout: Layout, stage: int, dp_rank: int) -> tuple[int, int, int, int, int]:
        n = sum(native_params(cfg))
        return n, n * 4, n * 4, n * moment_bytes(layout.optimizer), 0

    def dp_traffic(self, layout: Layout) -> str:
        return "replicated"


SHARDING = TorchSharding()
