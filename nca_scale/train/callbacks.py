"""Trainer callbacks: checkpointing, speed/MFU, JSONL metrics, wandb, progress bar.

Hooks run in list order: pre_train (after the model is built), post_step (with the step's metrics dict, which
earlier callbacks may extend), post_eval, post_train. Only the checkpointer acts on every rank; the loggers
act on global rank 0.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from nca_scale.config import to_dict
from nca_scale.files import write_atomic
from nca_scale.model.config import flops_per_token
from nca_scale.train import checkpoint, mirror
from nca_scale.train.speed import peak_flops_per_rank


class Callback:
    def pre_train(self, trainer) -> None: ...
    def post_step(self, trainer, metrics: dict) -> None: ...
    def post_eval(self, trainer, metrics: dict) -> None: ...
    def post_train(self, trainer) -> None: ...
    def rewound(self, trainer) -> None: ...  # after a rollback set trainer.step back


def _rank0() -> bool:
    return dist.get_rank() == 0


class Checkpointer(Callback):
    """Saves every `checkpoint_every` steps and at the end (checkpoint.py: staged, then committed by rank 0);
    keeps the last k; with checkpoint_url= also publishes each one there. It comes after the loggers, so a
    step is logged before it is checkpointed (a kill right after the commit must not lose its metrics line);
    resuming is the Trainer's (Trainer.resume)."""

    def post_step(self, trainer, metrics: dict) -> None:
        every = trainer.cfg.checkpoint_every
        if every and trainer.step % every == 0:
            self.save(trainer)

    def post_train(self, trainer) -> None:
        if not checkpoint.is_complete(checkpoint.step_dir(trainer.cfg.out, trainer.step)):
            self.save(trainer)

    def save(self, trainer) -> None:
        cfg, t0 = trainer.cfg, time.perf_counter()
        if _rank0():
            checkpoint.begin(cfg.out, trainer.step)
        dist.barrier()
        trainer.engine.save(checkpoint.staging_dir(cfg.out, trainer.step))
        dist.barrier()
        path = checkpoint.step_dir(cfg.out, trainer.step)
        if _rank0():
            checkpoint.commit(cfg, trainer.step, trainer.tokens, skipped_steps=sorted(trainer.skipped))
            if cfg.checkpoint_url:
                mirror.publish(path, cfg.checkpoint_url, cfg.keep_last)
        dist.barrier()
        trainer.log(f"saved {path} ({time.perf_counter() - t0:.1f}s)")


class SpeedMonitor(Callback):
    """Adds tokens_per_s (global) and mfu to each step's metrics (FLOPs per token include attention), and to
    each logged step's the seconds the loop spent in the checkpointer since the previous logged step
    (checkpoint_time: a save follows its own step's line) and, on a GPU, the peak memory allocated in that
    interval, the first from start-up (peak_memory_gib; the caching allocator's counters, no device sync)."""

    def pre_train(self, trainer) -> None:
        cfg = trainer.cfg
        self.flops_per_token = flops_per_token(cfg.model, cfg.seq_len)["train"]
        peak = cfg.peak_flops or peak_flops_per_rank()  # None: a GPU the table does not know (MFU null)
        self.peak = peak * dist.get_world_size() if peak else None

    def post_step(self, trainer, metrics: dict) -> None:
        tps = trainer.cfg.tokens_per_step / metrics["step_time"]
        metrics["tokens_per_s"] = tps
        metrics["mfu"] = tps * self.flops_per_token / self.peak if self.peak else None
        if trainer.should_log():
            metrics["checkpoint_time"], trainer.checkpoint_time = trainer.checkpoint_time, 0.0
            if torch.cuda.is_available():
                metrics["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()


class MetricsLog(Callback):
    """RUN_DIR/metrics.jsonl: one line per logged step and per evaluation. On resume, lines past the resumed
    step are dropped so the file reads as one uninterrupted run."""

    def pre_train(self, trainer) -> None:
        self.path = Path(trainer.cfg.out) / "metrics.jsonl"
        self.rewound(trainer)

    def rewound(self, trainer) -> None:
        if not _rank0() or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if _step_of(line) <= trainer.step]
        write_atomic(self.path, "".join(line + "\n" for line in keep))  # a kill mid-write must not lose history

    def _write(self, metrics: dict) -> None:
        if _rank0():
            with self.path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")

    def post_step(self, trainer, metrics: dict) -> None:
        if trainer.should_log():
            self._write(metrics)

    def post_eval(self, trainer, metrics: dict) -> None:
        self._write(metrics)


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except ValueError:  # the torn last line of a killed process
        return float("inf")


class Wandb(Callback):
    """wandb run in OUT/wandb, offline unless wandb= or $WANDB_MODE says otherwise; one run id per OUT, so
    a resumed run continues the same wandb run."""

    def __init__(self, mode: str):
        self.mode, self.run = mode, None

    def pre_train(self, trainer) -> None:
        if not _rank0() or self.mode == "disabled":
            return
        import wandb

        out = Path(trainer.cfg.out)
        id_file = out / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        self.run = wandb.init(
            project=trainer.cfg.wandb_project, dir=str(out), id=run_id, resume="allow", mode=self.mode,
            config=to_dict(trainer.cfg), name=out.name,
        )

    def post_step(self, trainer, metrics: dict) -> None:
        if self.run and trainer.should_log():
            self.run.log(metrics, step=trainer.step)

    def post_eval(self, trainer, metrics: dict) -> None:
        if self.run:
            self.run.log(metrics, step=trainer.step)

    def post_train(self, trainer) -> None:
        if self.run:
            self.run.finish()


class ProgressBar(Callback):
    def pre_train(self, trainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=trainer.cfg.total_steps, initial=trainer.step, unit="step", dynamic_ncols=True,
                        disable=not (_rank0() and trainer.cfg.progress))

    def post_step(self, trainer, metrics: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)

    def post_train(self, trainer) -> None:
        self.bar.close()


def default_callbacks(cfg) -> list[Callback]:
    # loggers first: a step is logged before it is checkpointed, and before a preemption stops on it
    from nca_scale.train.preemption import Preemption

    mode = cfg.wandb or os.environ.get("WANDB_MODE", "offline")
    return [SpeedMonitor(), MetricsLog(), Wandb(mode), ProgressBar(), Checkpointer(), Preemption()]
