"""Trainer callbacks: checkpointing, speed/MFU, JSONL metrics, run progress, wandb, progress bar.

Hooks: pre_train (after the model is built), post_step (with the step's metrics dict, which callbacks of
higher priority may extend), post_eval, post_train (after the trainer's last save, also after a stop),
rewound, flush, on_error. Each hook runs over the callbacks in descending `priority` (as OLMo-core orders
them; equal priorities are independent of each other): the speed monitor extends the metrics before the
loggers read them, and the loggers write a step before the checkpointer saves it (a kill right after the commit
must not lose its line). No callback looks for another: what they share is the trainer (save_checkpoint,
request_stop). The checkpointer and the preemption callback act on every rank; the loggers on global rank 0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from nca_scale.config import to_dict
from nca_scale.model.config import flops_per_token
from nca_scale.train import checkpoint, run_files
from nca_scale.train import dist as tdist
from nca_scale.train.checkpoint import commit as checkpoint_commit
from nca_scale.train.checkpoint import mirror
from nca_scale.train.checkpoint import verify as checkpoint_verify
from nca_scale.train.speed import peak_flops_per_rank

log = logging.getLogger(__name__)


# priorities, the highest first: what extends the metrics, what writes them, what saves, what stops
MEASURES, LOGS, SAVES, STOPS = 300, 200, 100, 0


class Callback:
    priority = LOGS

    def pre_train(self, trainer) -> None: ...
    def post_step(self, trainer, metrics: dict) -> None: ...
    def post_eval(self, trainer, metrics: dict) -> None: ...
    def post_train(self, trainer) -> None: ...
    def rewound(self, trainer) -> None: ...  # after a rollback set trainer.step back
    def flush(self, trainer) -> None: ...  # finish background work before a stop or a rollback (every rank)
    def on_error(self, trainer) -> None: ...  # an error ends this rank: wait for its own background work only


def _rank0() -> bool:
    return dist.get_rank() == 0


class Checkpointer(Callback):
    """Saves every `checkpoint.every` steps, and when the trainer asks (Trainer.save_checkpoint: at the end of a
    run and at a stop), staged, then committed by rank 0 (checkpoint_commit.py); keeps the last k; with
    checkpoint.url= also publishes each one there, in a thread on rank 0 (the upload never blocks a step). Its
    priority is below the loggers', so a step is logged before it is checkpointed; resuming is the Trainer's
    (Trainer.resume).

    A backend that writes in the background (megatron with checkpoint.asynchronous) returns a Writing from
    engine.save: the steps go on, every rank asks after each step whether all ranks' files are written (one
    all-reduce), and then rank 0 commits the checkpoint in the thread too (checksums, manifest, rename,
    `latest`), so a kill before the commit ends leaves the previous checkpoint as `latest`. Background work is
    finished before the next save, at the end of the run, before a preemption stop and before a non-finite stop
    or rollback (flush); on an error this rank's writer is waited for but nothing more is committed (on_error).
    The other ranks wait for rank 0 on the gloo side group (dist.wait_for_rank0), never on the training group."""

    priority = SAVES

    def __init__(self) -> None:
        self.writing: tuple | None = None  # (Writing, step, tokens, skipped steps, start time) of a save in flight
        self.background: threading.Thread | None = None  # rank 0: a commit and/or an upload
        self.background_error: BaseException | None = None

    def post_step(self, trainer, metrics: dict) -> None:
        t0 = time.perf_counter()
        if self.writing is not None and self.writing[0].poll():
            self._written(trainer)
        every = trainer.cfg.checkpoint.every
        if every and trainer.step % every == 0:
            self.save(trainer)
        trainer.checkpoint_time += time.perf_counter() - t0  # the loop is blocked while a save (or its wait) runs

    def flush(self, trainer) -> None:
        """Finish the save in flight: every rank's files written, then rank 0's commit and upload (all ranks
        call it)."""
        if self.writing is not None:
            self.writing[0].wait()
            self._written(trainer)
        if self.background is not None:
            self.background.join()
            self.background = None
            if self.background_error is not None:
                raise self.background_error
        tdist.wait_for_rank0()

    def on_error(self, trainer) -> None:
        """An error stops this rank: its writer and rank 0's thread end before it does, so no process writes into
        the checkpoint directory after the run is gone; a save still being written stays uncommitted."""
        if self.writing is not None:
            self.writing[0].abandon()
            self.writing = None
        if self.background is not None:
            self.background.join()

    def save_now(self, trainer) -> None:
        """The current step committed before this returns (Trainer.save_checkpoint: the end of a run, a stop)."""
        self.flush(trainer)
        if not checkpoint.is_complete(checkpoint.step_dir(trainer.cfg.out, trainer.step)):
            self.save(trainer)
            self.flush(trainer)

    def save(self, trainer) -> None:
        cfg, t0 = trainer.cfg, time.perf_counter()
        self.flush(trainer)  # one save at a time: the previous one is committed before this one begins
        if _rank0():
            checkpoint_commit.begin(cfg.out, trainer.step)
        tdist.wait_for_rank0()
        writing = trainer.engine.save(checkpoint.staging_dir(cfg.out, trainer.step))
        state = (trainer.step, trainer.tokens, sorted(trainer.skipped))
        if writing is not None:
            self.writing = (writing, *state, t0)
            log.info(f"saving step {trainer.step} in the background (the steps were blocked "
                     f"{time.perf_counter() - t0:.2f}s)")
            return
        tdist.wait_for_rank0()  # every rank's files are written
        files = checkpoint_verify.file_table_in_parallel(checkpoint.staging_dir(cfg.out, trainer.step))
        if _rank0():
            path = checkpoint_commit.commit(cfg, *state[:2], files, skipped_steps=state[2])
            log.info(f"saved {path} ({time.perf_counter() - t0:.1f}s)")
            if cfg.checkpoint.url:
                self._in_background(self._publish, cfg, path)
        tdist.wait_for_rank0()

    def _written(self, trainer) -> None:
        """Every rank's files of the save in flight are written: rank 0 commits them in the background."""
        _, step, tokens, skipped, t0 = self.writing
        self.writing = None
        if _rank0():
            self._in_background(self._commit, trainer, step, tokens, skipped, t0)

    def _commit(self, trainer, step: int, tokens: int, skipped: list[int], t0: float) -> None:
        path = checkpoint_commit.commit(trainer.cfg, step, tokens, skipped_steps=skipped)
        log.info(f"saved {path} at step {trainer.step} ({time.perf_counter() - t0:.1f}s after the save began)")
        self._publish(trainer.cfg, path)

    @staticmethod
    def _publish(cfg, path: Path) -> None:
        if cfg.checkpoint.url:
            mirror.publish(path, cfg.checkpoint.url, cfg.checkpoint.keep_last)

    def _in_background(self, work, *args) -> None:
        """Run work(*args) in a thread of rank 0; flush() joins it and raises its error on the main thread."""
        def run() -> None:
            try:
                work(*args)
            except BaseException as e:
                self.background_error = e

        self.background_error = None
        self.background = threading.Thread(target=run, name="nca-scale-checkpoint")
        self.background.start()


class SpeedMonitor(Callback):
    """Adds tokens_per_s (global) and mfu to each step's metrics (FLOPs per token include attention), and to
    each logged step's the seconds the loop spent in the checkpointer since the previous logged step
    (checkpoint_time: a save follows its own step's line) and, on a GPU, the peak memory allocated in that
    interval, the first from start-up (peak_memory_gib; the caching allocator's counters, no device sync)."""

    priority = MEASURES

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
    measured against, and at the end how it ended ("finished", or the name of the signal it stopped for).

    A resumed run records the restart in OUT/metrics.jsonl: one restart row (step, tokens, restart,
    lost_steps, lost_tokens, lost_seconds, reason), where lost work is what the previous attempt trained past
    its last complete checkpoint (nothing after a stop's save; the steps since the last save after a hard
    kill). Its priority is below MetricsLog's, which first drops the rows past the resumed step."""

    priority = LOGS - 1

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
        self._write(trainer, signal.Signals(signum).name if signum else "finished")


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
