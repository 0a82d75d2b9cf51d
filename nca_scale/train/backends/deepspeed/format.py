"""What a DeepSpeed checkpoint holds: DeepSpeed's own directory `ds/` (the tag), the module states and, under ZeRO,
the optimizer state partitioned per DP rank (which loads into the same DP size only)."""

from __future__ import annotations

from pathlib import Path

import torch

from nca_scale.errors import UserError
from nca_scale.model.config import ModelConfig
from nca_scale.train.backends.base import Format
from nca_scale.train.config import TrainConfig

TAG = "ds"  # one tag per checkpoint directory


class DeepSpeedFormat(Format):
    resume_keys = ("deepspeed.zero",)

    def safe_classes(self) -> list[type]:
        """The three plain-data classes its ZeRO optimizer files hold."""
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        return [LossScaler, ZeroStageEnum, fragment_address]

    def layout(self, cfg: TrainConfig) -> dict:
        return {**super().layout(cfg), "zero": cfg.deepspeed.zero}

    def check_resumable(self, path: Path, cfg: TrainConfig, saved: dict, layout: dict) -> None:
        if layout.get("zero") and layout["dp"] != cfg.data_parallel:
            # DeepSpeed partitions ZeRO optimizer state per DP rank and cannot load it into another partitioning
            raise UserError(
                f"{path} holds DeepSpeed ZeRO-{layout['zero']} state partitioned over dp={layout['dp']}, but this run "
                f"has dp={cfg.data_parallel}; resume with parallel.nproc={layout['world']}, or start from its weights "
                "with init_from="
            )

    def read_weights(self, path: Path, meta: dict, model: ModelConfig) -> dict[str, torch.Tensor]:
        if meta["layout"]["zero"] == 0:  # not a ZeRO checkpoint: one full copy
            module = torch.load(path / TAG / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
            return {k: v.float() for k, v in module.items()}
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # zero_to_fp32 passes weights_only=False itself: the caller's weights_only_loads makes it weights-only
        return {k: v.float() for k, v in get_fp32_state_dict_from_zero_checkpoint(str(path), tag=TAG).items()}


FORMAT = DeepSpeedFormat()
