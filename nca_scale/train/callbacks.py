"""Trainer callbacks: checkpointing, speed/MFU, JSONL metrics, wandb, progress bar.

Hooks run in list order: pre_train (after the model is built), post_step (with the step's metrics dict, which
earlier callbacks may extend), post_eval, post_train. Only the checkpointer acts on every rank; the loggers
act on global rank 0.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from nca_scale.config import to_dict
from nca_scale.files import write_atomic
from nca_scale.model.config import flops_per_token
from nca_scale.train import checkpoint, checkpoint_commit, checkpoint_verify, mirror
from nca_scale.train import dist as tdist
from nca_scale.train.speed import peak_flops_per_rank

log = logging.getLogger(__name__)


class Callback:
    def pre_train(self, trainer) -> None: ...
    def post_step(self, trainer, metrics: dict) -> None: ...
    def post_eval(self, trainer, metrics: dict) -> None: ...
    def post_train(self, trainer) -> None: ...
    def rewound(self, trainer) -> None: ...  # after a rollback set trainer.step back
    def flush(self, trainer) -> None: ...  # finish background work before a stop or a rollback (every rank)
    def failed(self, trainer) -> None: ...  # an error ends this rank: wait for its own background work only


def _rank0() -> bool:
    return dist.get_rank() == 0


class Checkpointer(Callback):
    """Saves every `checkpoint_every` steps and at the end (checkpoint_commit.py: staged, then committed by rank 0);
    keeps the last k; with checkpoint_url= also publishes each one there, in a thread on rank 0 (the upload never
    blocks a step). It comes after the loggers, so a step is logged before it is checkpointed (a kill right after
    the commit must not lose its metrics line); resuming is the Trainer's (Trainer.resume).

    A backend that writes in the background (megatron with checkpoint_async) returns a Writing from
    engine.save: the steps go on, every rank asks after each step whether all ranks' files are written (one
    all-reduce), and then rank 0 commits the checkpoint in the thread too (checksums, manifest, rename,
    `latest`), so a kill before the commit ends leaves the previous checkpoint as `latest`. Background work is
    finished before the next save, at the end of the run, before a preemption stop and before a non-finite stop
    or rollback (flush); on an error this rank's writer is waited for but nothing more is committed (failed).
    The other ranks wait for rank 0 on the gloo side group (dist.wait_for_rank0), never on the training group."""

    def __init__(self) -> None:
        self.writing: tuple | None = None  # (Writing, step, tokens, skipped steps, start time) of a save in flight
        self.background: threading.Thread | None = None  # rank 0: a commit and/or an upload
        self.background_error: BaseException | None = None

    def post_step(self, trainer, metrics: dict) -> None:
        t0 = time.perf_counter()
        if self.writing is not None and self.writing[0].poll():
            self._written(trainer)
        every = trainer.cfg.checkpoint_every
        if every and trainer.step % every == 0:
            self.save(trainer)
        trainer.checkpoint_time += time.perf_counter() - t0  # the loop is blocked while a save (or its wait) runs

    def post_train(self, trainer) -> None:
        self.save_now(trainer)

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

    def failed(self, trainer) -> None:
        """An error stops this rank: its writer and rank 0's thread end before it does, so no process writes into
        the checkpoint directory after the run is gone; a save still being written stays uncommitted."""
        if self.writing is not None:
            self.writing[0].abandon()
            self.writing = None
        if self.background is not None:
            self.background.join()

    def save_now(self, trainer) -> None:
        """The current step committed before this returns (the end of a run, a preemption stop)."""
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
            if cfg.checkpoint_url:
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
        if cfg.checkpoint_url:
            mirror.publish(path, cfg.checkpoint_url, cfg.keep_last)

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
