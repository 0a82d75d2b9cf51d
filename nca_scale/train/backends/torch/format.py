"""What a torch-backend checkpoint holds: `dcp/`, a torch.distributed.checkpoint directory (model and FQN-keyed
optimizer state, any DP size loads it); checkpoints of earlier versions (and `nca-scale import`'s) hold rank 0's
`state.pt` instead, which every reader still reads."""

from __future__ import annotations

from pathlib import Path

import torch

from nca_scale.model.config import ModelConfig
from nca_scale.train import checkpoint
from nca_scale.train.backends.base import Format, Weights
from nca_scale.train.transfer import read_dcp

DCP, LEGACY = "dcp", "state.pt"


class TorchFormat(Format):
    def read_weights(self, path: Path, meta: dict, model: ModelConfig) -> dict[str, torch.Tensor]:
        if (path / LEGACY).is_file():  # mmap: only the model's pages are read
            return torch.load(path / LEGACY, map_location="cpu", weights_only=True, mmap=True)["model"]
        return read_dcp(path / DCP, "model.")

    def weight_reader(self, path: Path, meta: dict, model: ModelConfig) -> Weights:
        """A DCP checkpoint is read tensor by tensor, so a rank holds one source tensor at a time and reads only
        those its model part needs (a pipeline stage its layers); a tensor is read whole even where a TP rank keeps
        a slice (DCP stores it as one torch.save item)."""
        if (path / LEGACY).is_file():
            return super().weight_reader(path, meta, model)

        def read(name: str) -> torch.Tensor:
            with checkpoint.weights_only_loads(meta["backend"]):
                return read_dcp(path / DCP, "model.", ["model." + name])[name]

        return read

    def write_weights(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        """A checkpoint's tensors of model weights alone (`nca-scale import`): the state.pt every reader reads."""
        torch.save({"model": {k: v.contiguous() for k, v in tensors.items()}}, path / LEGACY)


FORMAT = TorchFormat()
