"""nca-scale train CONFIG.yaml [key=value ...]

Train a model (configs/train/*.yaml). Common keys: out=DIR steps=N tokens=N backend=torch|megatron|deepspeed
nproc=N tp=N pp=N vpp=N dp=N zero=0..3 checkpoint_every=N resume=never|auto|DIR overwrite=true init_from=CKPT;
any nested key as model.d_model=128, optim.lr=3e-4, ... With nproc=N the command starts N local processes
itself; under torchrun/srun (RANK set) it runs as one rank of that job. Writes OUT/metrics.jsonl,
OUT/checkpoints/ and OUT/config.yaml (the resolved config of the latest start). An OUT that already holds a
run is refused unless resume=auto (continue it) or overwrite=true (move it aside to OUT.old-<time> first).
"""

from __future__ import annotations

import os
import subprocess
import sys

from nca_scale.train import checkpoint, run_folder, transfer
from nca_scale.train.config import from_args


def main(args: list[str]) -> int:
    cfg = from_args(args)  # every config and layout error is raised here, before any process starts
    run_folder.check(cfg)  # ... and every run-folder error (a run already there, not writable)
    from nca_scale.train.trainer import run

    if "RANK" in os.environ:  # one rank of a job torchrun/srun started: the ranks agree on the checkpoint in `run`
        run_folder.start(cfg, writer=os.environ["RANK"] == "0")  # before the rendezvous, so every rank has checked
        run(cfg)
        return 0
    resume = checkpoint.resolve(cfg, cfg.resume)  # verified here, once; the ranks take it as is
    if resume:
        checkpoint.check_resumable(cfg, resume)
    if cfg.init_from:
        # an absolute path: a folder named `never` or `auto` is a checkpoint here, not resume's keyword (fuzz)
        transfer.check(cfg, checkpoint.resolve(cfg, os.path.abspath(cfg.init_from)))
    run_folder.start(cfg, write=cfg.nproc == 1)  # with nproc > 1 rank 0 writes config.yaml (worker.py)
    if cfg.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}",
               "-m", "nca_scale.train.worker", *args]
        from nca_scale.train.preemption import LAUNCHER_ENV, die_with_parent

        env = {**os.environ, checkpoint.RESUME_ENV: str(resume or ""), LAUNCHER_ENV: str(os.getpid())}
        return subprocess.call(cmd, env=env, preexec_fn=die_with_parent)  # torchrun never outlives this command
    run(cfg, chosen=(resume,))
    return 0
