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

simulate=NODESxGPUS trains nothing: it builds ranks of that layout in this process against a fake process group, at
the model's real shapes on the meta device, and prints each one's parameters and bytes of weights, gradients and
optimizer state next to the planner's memory estimate (docs/gpu.md, "Memory and layout planner");
simulate.ranks=0,8 picks the global ranks (default: the first and the last pipeline stage), simulate.real=true
builds them on the CPU with random weights and runs one step on random tokens.
"""

from __future__ import annotations

from nca_scale import config
from nca_scale.errors import UserError
from nca_scale.train import lease

SIMULATE = ("simulate", "simulate.ranks", "simulate.real")


def main(args: list[str]) -> int:
    if any(a.split("=", 1)[0] in SIMULATE for a in args):
        return _simulate(args)
    _live_run_first(args)
    from nca_scale.train import dist
    from nca_scale.train.config import from_args
    from nca_scale.train.entry import train

    # every config and layout error is raised here, before any process starts; under torchrun/srun for its world
    cfg = from_args(args, world=dist.launched_world())
    return train(cfg, args).exit_code


def _simulate(args: list[str]) -> int:
    from nca_scale.train import simulate
    from nca_scale.train.config import from_args

    keys = dict(config.split_overrides(args)[1])
    if "simulate" not in keys:
        raise UserError("simulate.ranks= and simulate.real= go with simulate=NODESxGPUS")
    nodes, gpus = simulate.parse_shape(keys["simulate"])
    try:
        ranks = [int(r) for r in keys["simulate.ranks"].split(",")] if "simulate.ranks" in keys else None
    except ValueError:
        raise UserError(f"simulate.ranks={keys['simulate.ranks']!r}: give global ranks, e.g. 0,8") from None
    real = config.yaml.safe_load(keys.get("simulate.real", "false"))
    if not isinstance(real, bool):
        raise UserError(f"simulate.real={keys['simulate.real']!r}: true or false")
    rest = [a for a in args if a.split("=", 1)[0] not in (*SIMULATE, "parallel.nproc", "nproc")]
    cfg = from_args([*rest, f"parallel.nproc={nodes * gpus}"])
    print(f"simulate: {nodes} node(s) x {gpus} GPU(s); {simulate.layout_of(simulate.gpu_config(cfg)).describe()}")
    for report in simulate.simulate(cfg, ranks, real):
        print(report.describe())
    return 0


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
