"""nca-scale train CONFIG.yaml [key=value ...]

Train a model (configs/train/*.yaml). Common keys: out=DIR steps=N tokens=N backend=torch|megatron|deepspeed
nproc=N tp=N pp=N vpp=N dp=N zero=0..3 checkpoint_every=N resume=never|auto|DIR overwrite=true init_from=CKPT;
any nested key as model.d_model=128, optim.lr=3e-4, ... With nproc=N the command starts N local processes
itself; under torchrun/srun (RANK set) it runs as one rank of that job. Writes OUT/metrics.jsonl,
OUT/checkpoints/ and OUT/config.yaml (the resolved config of the latest start). An OUT that already holds a
run is refused unless resume=auto (continue it) or overwrite=true (move it aside to OUT.old-<time> first).
"""

from __future__ import annotations

from nca_scale.train.config import from_args
from nca_scale.train.entry import train


def main(args: list[str]) -> int:
    cfg = from_args(args)  # every config and layout error is raised here, before any process starts
    return train(cfg, args).exit_code
