"""The deepspeed section of TrainConfig (`deepspeed.*` keys): the ZeRO stage and its settings."""

from __future__ import annotations

from dataclasses import dataclass

from nca_scale.errors import UserError


@dataclass(frozen=True)
class DeepSpeedConfig:
    zero: int = 0  # ZeRO stage: 0, 1, 2 or 3
    offload: bool = False  # optimizer state on the CPU
    zero_init: bool = True  # ZeRO-3: build the model already partitioned (deepspeed.zero.Init)
    overlap_comm: bool = True  # ZeRO: reduce gradients during the backward (on a CPU: in order, no streams)
    contiguous_gradients: bool = True  # ZeRO: gradients copied into one buffer as they are reduced

    def validate(self, backend: str, optim: str) -> None:
        if self.zero not in (0, 1, 2, 3):
            raise UserError(f"deepspeed.zero={self.zero}: DeepSpeed ZeRO stages are 0, 1, 2, 3")
        if backend != "deepspeed" and (self.zero or self.offload):
            raise UserError(f"deepspeed.zero/offload need backend=deepspeed (backend={backend})")
        if not self.zero_init and (backend != "deepspeed" or self.zero != 3):
            raise UserError(f"deepspeed.zero_init=false is a DeepSpeed ZeRO-3 setting (backend={backend}, "
                            f"zero={self.zero}); drop it")
        for name in ("overlap_comm", "contiguous_gradients"):
            if backend != "deepspeed" and not getattr(self, name):
                raise UserError(f"deepspeed.{name}=false is a DeepSpeed ZeRO setting and backend={backend} does not "
                                "read it; drop it")
        if self.offload and optim == "sgd":
            raise UserError("deepspeed.offload=true runs DeepSpeed's CPU Adam, not SGD; use optim.name=adam|adamw or "
                            "deepspeed.offload=false")


def check(cfg) -> None:
    """Checks of the whole TrainConfig (backend=deepspeed). Asked only for ZeRO-0: precision=auto resolves through
    the device (a CUDA context on a GPU)."""
    if cfg.deepspeed.zero == 0 and cfg.chosen_precision()[0] == "bf16":
        # ZeRO-0 bf16 runs DeepSpeed's fp16 loss-scaling wrapper: 2e-3 off the bf16 loss in 10 steps, ZeRO-1..3 5e-5
        raise UserError("DeepSpeed bf16 needs ZeRO (its ZeRO-0 bf16 path drifts from the bf16 reference); set "
                        "deepspeed.zero=1, or precision=fp32")
