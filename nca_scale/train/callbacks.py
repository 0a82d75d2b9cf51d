"""Trainer callbacks: checkpointing, speed/MFU, JSONL metrics, run progress, wandb, progress bar.

Hooks: pre_train (after the model is built), post_step (with the step's metrics dict, which callbacks of
higher priority may extend), post_eval, post_train (after the trainer's last save, also after a stop or a
divergence), rewound, on_error. Each hook runs over the callbacks in descending `priority` (as OLMo-core orders
them; equal priorities are independent of each other). A callback never looks for another, reads another's
attributes or relies on its place in the list: what they share is the Trainer's fields and methods and the
step's metrics dict, as listed here, and the documented priorities below.

    shared                                 written by (priority)              read by
    trainer.cfg, step, tokens, skipped     Trainer                            any callback
    trainer.stop_signal / request_stop()   Preemption (STOPS) asks            Trainer, RunProgress, Preemption
    trainer.diverged                       Trainer.non_finite                 RunProgress, RunSummary (post_train)
    trainer.save_checkpoint(), poll_save() Checkpointer (SAVES), Preemption   Trainer (owns the Saver)
    trainer.saved_at                       Trainer.save_checkpoint            Preemption (the wall-clock cadence)
    trainer.should_log()                   Trainer                            SpeedMonitor, MetricsLog, Wandb
    metrics step, tokens, loss, lr,        Trainer, before post_step          every post_step
      grad_norm, step_time, data_time,
      fwd_bwd_time, optimizer_time,
      checkpoint_time (logged steps)       (a test's faults.Pace, TESTS, pads
                                           step_time)
    metrics tokens_per_s, mfu,             SpeedMonitor (MEASURES)            MetricsLog, Wandb, ProgressBar (LOGS)
      peak_memory_gib (logged, GPU)
    OUT/metrics.jsonl rows past the        MetricsLog.pre_train (LOGS)        RunProgress.pre_train (RECORDS)
      resumed step dropped                                                    appends the restart row after it
    OUT/progress.json, metrics.jsonl       RunProgress (RECORDS), MetricsLog  RunSummary (SUMMARY, post_train)

Priorities, the highest first: what extends the metrics (MEASURES), what writes them (LOGS, then RECORDS), what
saves (SAVES: a step is logged before it is saved, so a kill right after the commit cannot lose its line), what
stops (STOPS: the step is logged and any periodic save of it made before), the closing line (SUMMARY). A test's
hooks (faults.py) run above all (TESTS). The checkpointer and the preemption callback act on every rank; the
loggers on global rank 0.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from pathlib import Path

import torch

from nca_scale.config import to_dict
from nca_scale.model.config import flops_per_token
from nca_scale.train import dist as tdist
from nca_scale.train import run_files
from nca_scale.train.speed import peak_flops_per_rank

log = logging.getLogger(__name__)


# priorities, the highest first (see the module docstring)
TESTS, MEASURES, LOGS, RECORDS, SAVES, STOPS, SUMMARY = 400, 300, 200, 199, 100, 0, -1


class Callback:
    priority = LOGS

    def pre_train(self, trainer) -> None: ...
    def post_step(self, trainer, metrics: dict) -> None: ...
    def post_eval(self, trainer, metrics: dict) -> None: ...
    def post_train(self, trainer) -> None: ...
    def rewound(self, trainer) -> None: ...  # after a rollback set trainer.step back
    def on_error(self, trainer) -> None: ...  # an error ends this rank


def _rank0() -> bool:
    return tdist.rank_and_world()[0] == 0


class Checkpointer(Callback):
    """Decides when to save: every `checkpoint.every` steps; after each step it also lets a save written in the
    background make progress. The saving itself (staging, background writes, the commit protocol, the mirror,
    bounded waits, failures shared by every rank) is the Trainer's Saver (train/checkpoint/saver.py), which
    also saves at the end of a run and at a stop (Trainer.save_checkpoint). Its priority is below the loggers',
    so a step is logged before it is checkpointed; resuming is the Trainer's (Trainer.resume)."""

    priority = SAVES

    def post_step(self, trainer, metrics: dict) -> None:
        trainer.poll_save()
        every = trainer.cfg.checkpoint.every
        if every and trainer.step % every == 0:
            trainer.save_checkpoint(background=True)


class SpeedMonitor(Callback):
    """Adds tokens_per_s (global) and mfu to each step's metrics (FLOPs per token include attention), and to
    each logged step's, on a GPU, the peak memory allocated since the previous logged step, the first from
    start-up (peak_memory_gib; the caching allocator's counters, no device sync)."""

    priority = MEASURES

    def pre_train(self, trainer) -> None:
        cfg = trainer.cfg
        self.flops_per_token = flops_per_token(cfg.model, cfg.seq_len)["train"]
        peak = cfg.peak_flops or peak_flops_per_rank()  # None: a GPU the table does not know (MFU null)
        self.peak = peak * tdist.rank_and_world()[1] if peak else None

    def post_step(self, trainer, metrics: dict) -> None:
        tps = trainer.cfg.tokens_per_step / metrics["step_time"]
        metrics["tokens_per_s"] = tps
        metrics["mfu"] = tps * self.flops_per_token / self.peak if self.peak else None
        if trainer.should_log() and torch.cuda.is_available():
            metrics["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()


class MetricsLog(Callback):
    """OUT/metrics.jsonl (run_files.py): one row per logged step and per evaluation. On resume, rows past the
    resumed step are dropped so the file reads as one uninterrupted run."""

    def pre_train(self, trainer) -> None:
        self.writer = run_files.MetricsWriter(trainer.cfg.out)
        self.rewound(trainer)

    def rewound(self, trainer) -> None:
        if _rank0():
            self.writer.keep_until(trainer.step)

    def post_step(self, trainer, metrics: dict) -> None:
        if trainer.should_log() and _rank0():
            self.writer.append(run_files.TrainRow.from_metrics(metrics))

    def post_eval(self, trainer, metrics: dict) -> None:
        if _rank0():
            self.writer.append(run_files.EvalRow(**metrics))


class RunProgress(Callback):
    """OUT/progress.json (rank 0, after every step; run_files.Progress): where the run is, what a restart is
    measured against, and at the end how it ended ("finished", "diverged", or the name of the signal it stopped
    for).

    A resumed run records the restart in OUT/metrics.jsonl: one restart row (step, tokens, restart,
    lost_steps, lost_tokens, lost_seconds, reason), where lost work is what the previous attempt trained past
    its last complete checkpoint (nothing after a stop's save; the steps since the last save after a hard
    kill). Its priority (RECORDS) is below MetricsLog's, which first drops the rows past the resumed step."""

    priority = RECORDS

    def pre_train(self, trainer) -> None:
        self.restart, self.step_time = 0, 0.0
        if _rank0():
            self._record_restart(trainer)

    def _record_restart(self, trainer) -> None:
        before = run_files.Progress.read(trainer.cfg.out)
        if trainer.cfg.resume == "never" or before is None:
            return  # a fresh run
        if before.stopped == "finished":
            return  # a finished run continued to more steps is not a restart
        restart = before.restart + 1
        slurm = os.environ.get("SLURM_RESTART_COUNT")
        if slurm is not None and before.job_id == os.environ.get("SLURM_JOB_ID"):
            restart = max(restart, int(slurm))
        lost = max(0, before.step - trainer.step)
        row = run_files.RestartRow(trainer.step, trainer.tokens, restart, lost_steps=lost,
                                   lost_tokens=lost * trainer.cfg.tokens_per_step,
                                   lost_seconds=round(lost * before.step_time, 3), reason=before.stopped or "killed")
        run_files.MetricsWriter(trainer.cfg.out).append(row)
        self.restart = restart
        log.info(f"restart {restart}: resumed at step {trainer.step}, {lost} steps of work lost")

    def _write(self, trainer, stopped: str | None = None) -> None:
        if _rank0():
            run_files.Progress(trainer.step, trainer.tokens, time.time(), self.step_time, self.restart,
                               os.environ.get("SLURM_JOB_ID"), stopped).write(trainer.cfg.out)

    def post_step(self, trainer, metrics: dict) -> None:
        self.step_time = metrics.get("step_time", 0.0)
        self._write(trainer)

    def post_train(self, trainer) -> None:
        signum = trainer.stop_signal
        ended = "diverged" if trainer.diverged else signal.Signals(signum).name if signum else "finished"
        self._write(trainer, ended)


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
