"""nca-scale train CONFIG.yaml [key=value ...]

Train a model (configs/train/*.yaml). Common keys: out=DIR steps=N tokens=N backend=torch|megatron|deepspeed
parallel.nproc=N parallel.tp=N parallel.pp=N parallel.vpp=N parallel.dp=N deepspeed.zero=0..3 checkpoint.every=N
resume=never|auto|DIR overwrite=true init_from=CKPT; any nested key as model.d_model=128, optim.lr=3e-4, ...
(the previous release's flat names, e.g. nproc=N, still work, with a deprecation warning). With
parallel.nproc=N the command starts N local processes
itself; under torchrun/srun (RANK set) it runs as one rank of that job. Writes OUT/metrics.jsonl,
OUT/checkpoints/ and OUT/config.yaml (the resolved config of the latest start). An OUT that already holds a
run is refused unless resume=auto (continue it) or overwrite=true (move it aside to OUT.old-<time> first), and
a folder whose run is still training is refused whatever the keys say (OUT/lease.json names it).
Ctrl-C finishes the step, saves it and exits 130 ("saved step N; `resume=auto` continues"); a second Ctrl-C
aborts at once. Checkpoints are saved every checkpoint.every steps and at least every checkpoint.every_minutes
(default 30) minutes of training, so a crash loses at most that much work.
"""

from __future__ import annotations

from nca_scale import config
from nca_scale.errors import UserError
from nca_scale.train import lease


def main(args: list[str]) -> int:
    _live_run_first(args)
    from nca_scale.train import dist
    from nca_scale.train.config import from_args
    from nca_scale.train.entry import train

    # every config and layout error is raised here, before any process starts; under torchrun/srun for its world
    cfg = from_args(args, world=dist.launched_world())
    return train(cfg, args).exit_code


def _live_run_first(args: list[str]) -> None:
    """A run folder another training holds is refused before torch is imported (in well under 2 s): the out=
    of the command line, else the config file's top-level `out:`. run_folder.check repeats it for every out."""
    positional, overrides = config.split_overrides(args)
    outs = [v for k, v in overrides if k == "out"]
    if not outs and len(positional) == 1:
        try:
            outs = [str(config.read_yaml(positional[0]).get("out", ""))]
        except UserError:
            return  # from_args says what is wrong with the file
    if outs and outs[-1].strip():
        lease.check(outs[-1])
