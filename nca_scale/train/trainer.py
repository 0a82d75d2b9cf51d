"""The training loop, top to bottom: build, resume, then step / log / evaluate / checkpoint until the step or
token budget is reached, or a callback asks it to stop (preemption). Backends differ only behind the Engine
interface.

The Trainer owns saving and stopping, as OLMo-core's does: `save_checkpoint()` commits the current step (its
Checkpointer asks for a save every checkpoint.every steps), `request_stop(signal)` ends the loop after the current
step. Either way fit() saves the last step and returns a FitOutcome; the callers turn a stop into exit status
preemption.exit_status (worker.py, entry.py). What the callbacks may read and write of the Trainer is listed in
the callbacks module's docstring.

A step whose loss or gradient norm is NaN or infinite (identical on every rank) never reaches the callbacks,
so it is neither logged as a normal step nor checkpointed. By default the run stops with the step named:
fit() returns a FitOutcome whose `diverged` says why, nothing is saved after the last good checkpoint, and the
run exits with EXIT_DIVERGED (its own status: a launcher never requeues it, a sweep records it as diverged).
With on_nonfinite=rollback it reloads the newest verified checkpoint and skips that step's batch (the step
counts, the weights do not change), at most max_rollbacks times, then diverges as above. Skipped steps are
recorded in every later checkpoint, so a resumed run skips them too and stays identical to the uninterrupted one."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nca_scale import logs
from nca_scale.errors import UserError
from nca_scale.model.config import describe
from nca_scale.train import backends, callbacks, checkpoint, dist, faults, run_folder, transfer
from nca_scale.train.callbacks import Callback, Checkpointer
from nca_scale.train.checkpoint import select as checkpoint_select
from nca_scale.train.checkpoint.saver import Saver
from nca_scale.train.config import TrainConfig
from nca_scale.train.data import Batch, BatchLoader, Prefetcher, build_source, target_mask
from nca_scale.train.launch_record import LAUNCHER, Launch
from nca_scale.train.preemption import EXIT_DIVERGED, Preemption, exit_status
from nca_scale.train.run_state import RunSummary
from nca_scale.train.schedule import lr_at

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitOutcome:
    """How fit() ended (`kind`): finished at its last step; stopped early, after saving, for a signal; or
    diverged (a non-finite loss it could not roll back from; `diverged` says which step, nothing saved after it)."""

    step: int
    stop_signal: int | None = None
    diverged: str | None = None

    @property
    def kind(self) -> str:
        return "diverged" if self.diverged else "stopped" if self.stop_signal else "finished"

    @property
    def exit_code(self) -> int:
        return exit_status(self.stop_signal, diverged=self.diverged is not None)


def default_callbacks(cfg: TrainConfig) -> list[Callback]:
    """Every callback but the checkpointer (the Trainer makes its own); they run by priority, not list order."""
    mode = cfg.wandb or os.environ.get("WANDB_MODE", "offline")
    return [callbacks.SpeedMonitor(), callbacks.MetricsLog(), callbacks.RunProgress(), callbacks.Wandb(mode),
            callbacks.ProgressBar(), Preemption(), RunSummary(), *faults.test_callbacks()]


class Trainer:
    def __init__(self, cfg: TrainConfig, engine, callbacks: list[Callback]):
        self.cfg, self.engine = cfg, engine
        self.saver = Saver(cfg, engine)  # writes, commits and mirrors checkpoints; the Checkpointer says when
        self.callbacks = sorted([*callbacks, Checkpointer()], key=lambda cb: -cb.priority)
        self.stop_signal: int | None = None  # set by request_stop
        self.diverged: str | None = None  # set by non_finite when the run cannot go on: why
        self.step, self.tokens = 0, 0
        self.skipped: set[int] = set()  # steps whose batch is not trained on (on_nonfinite=rollback)
        self.rollbacks = 0
        self.evaluated_at: int | None = None
        self.saved_at = time.monotonic()  # when the last save (or the run) began: the wall-clock cadence's origin
        self._save_time = 0.0  # seconds the loop spent saving since the last logged step (metrics checkpoint_time)
        self.train_data = self._loader("train")
        self.val_data = self._loader("val") if cfg.eval_every else None  # text_shards may have no val split
        # pinned batches only where a non-blocking host-to-device copy exists
        self.prefetch = Prefetcher(self.train_data, pin=dist.device().type == "cuda") if cfg.prefetch else None

    def _loader(self, split: str) -> BatchLoader:
        cfg = self.cfg
        source, mask = build_source(cfg.data, split), target_mask(cfg.data)
        return BatchLoader(source, mask, cfg.batch_size, cfg.micro_batch, self.engine.dp_rank, self.engine.dp_size)

    def should_log(self) -> bool:
        return self.step % self.cfg.log_every == 0 or self.step == self.cfg.total_steps

    def _train_batch(self) -> Batch:
        if self.prefetch is None:
            return self.train_data.batch(self.step)
        upcoming = self.step + 1
        while upcoming in self.skipped:
            upcoming += 1
        return self.prefetch.batch(self.step, upcoming if upcoming < self.cfg.total_steps else None)

    def save_checkpoint(self, background: bool = False) -> None:
        """Save the current step (every rank calls it at the same step). By default it is committed before this
        returns (nothing to do if it is); at the end of the run or at a stop a save that cannot be written fails
        the run, in the middle of it (a time-based save) it is abandoned with a warning, as a periodic one.
        `background`: a periodic save, which a backend writing in the background leaves in flight (poll_save).
        The time the loop is blocked is reported as the next logged step's checkpoint_time."""
        t0 = time.perf_counter()
        self.saved_at = time.monotonic()
        if background:
            self.saver.save(self.step, self.tokens, sorted(self.skipped))
        else:
            last = self.step >= self.cfg.total_steps or self.stop_signal is not None
            self.saver.save_now(self.step, self.tokens, sorted(self.skipped), last=last)
        self._save_time += time.perf_counter() - t0

    def poll_save(self) -> None:
        """Let a save written in the background make progress (every rank, after each step): commit it once every
        rank's files are written, abandon it past its deadline."""
        t0 = time.perf_counter()
        self.saver.poll(self.step)
        self._save_time += time.perf_counter() - t0

    def request_stop(self, signum: int) -> None:
        """End fit() after the current step: it saves that step and returns FitOutcome(step, signum). Every rank
        must ask at the same step (Preemption agrees on it with an all-reduce)."""
        self.stop_signal = signum

    def fit(self) -> FitOutcome:
        try:
            return self._fit()
        except BaseException:
            self.saver.abandon()  # this rank's checkpoint writer stops; nothing more is committed
            for cb in self.callbacks:
                cb.on_error(self)
            raise
        finally:
            if self.prefetch is not None:
                self.prefetch.close()
            for data in (self.train_data, self.val_data):  # e.g. text shards' node-local copies are removed
                if data is not None and (close := getattr(data.source, "close", None)):
                    close()

    def _fit(self) -> FitOutcome:
        cfg = self.cfg
        self.saved_at = time.monotonic()
        for cb in self.callbacks:
            cb.pre_train(self)
        while self.step < cfg.total_steps and self.stop_signal is None and self.diverged is None:
            if self.step in self.skipped:
                log.info(f"step {self.step + 1}: skipped (its batch gave a non-finite loss or gradient)")
                self.step += 1
                self.tokens += cfg.tokens_per_step
                continue
            t0 = time.perf_counter()
            lr = lr_at(cfg.schedule, cfg.optim.lr, self.step, cfg.total_steps)
            batch = self._train_batch()  # NCA data is generated on the fly: here, or ahead in the background
            t1 = time.perf_counter()
            loss, grad_norm = self.engine.train_step(batch, self.step, lr)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                self.non_finite(loss, grad_norm)
                continue
            self.step += 1
            self.tokens += cfg.tokens_per_step
            metrics = {"step": self.step, "tokens": self.tokens, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                       "step_time": time.perf_counter() - t0, "data_time": t1 - t0, **self.engine.phases.times}
            if self.should_log():  # a save follows its own step's line: its time shows on the next logged one
                metrics["checkpoint_time"], self._save_time = self._save_time, 0.0
            for cb in self.callbacks:
                cb.post_step(self, metrics)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.stop_signal is None:
                self.evaluate()
        if self.diverged is None:
            if cfg.eval_every and self.evaluated_at != self.step and self.stop_signal is None:
                self.evaluate()  # the final weights are always evaluated; a stopped run's are not final
            self.save_checkpoint()
        self.saver.close()
        for cb in self.callbacks:
            cb.post_train(self)
        if self.diverged is not None:  # every rank: each may be the one whose log is read
            log.error(f"diverged: {self.diverged} (exit status {EXIT_DIVERGED})")
        return FitOutcome(self.step, self.stop_signal, self.diverged)

    def resume(self, path: Path) -> dict:
        """Continue from a checkpoint: weights, optimizer state, step, tokens, skipped steps."""
        meta = checkpoint.read_meta(path)
        self.engine.load(path)
        self.step, self.tokens = meta["step"], meta["tokens"]
        self.skipped = set(meta.get("skipped_steps", []))
        self.saver.resumed(meta)
        return meta

    def non_finite(self, loss: float, grad_norm: float) -> None:
        """Roll back to the newest verified checkpoint and skip this step from now on, or (on_nonfinite=stop,
        rollbacks exhausted, nothing to roll back to) end the run as diverged: `self.diverged` says why."""
        cfg, bad = self.cfg, self.step + 1
        what = f"step {bad}: loss {loss}, grad norm {grad_norm}"
        self.saver.flush()  # a save in flight is committed first: it is a checkpoint to return to
        if cfg.on_nonfinite == "stop":
            self.diverged = (f"{what} (non-finite); stopped without saving. Lower optim.lr, check the data, or set "
                             f"on_nonfinite=rollback to skip such batches")
            return
        if self.rollbacks >= cfg.max_rollbacks:
            self.diverged = f"{what} (non-finite) after {self.rollbacks} rollbacks (max_rollbacks); stopped without saving"
            return
        target = dist.decided_by_rank0(lambda: checkpoint_select.latest_verified(cfg.out, log.info))
        if target is None:
            self.diverged = f"{what} (non-finite) and no checkpoint to roll back to; set checkpoint.every=N"
            return
        skipped = self.skipped | {self.step}
        self.resume(target)
        self.skipped |= skipped
        self.rollbacks += 1
        for cb in self.callbacks:
            cb.rewound(self)
        log.info(f"{what} (non-finite): rolled back to {target.name}; step {bad} will be skipped")

    def evaluate(self) -> dict:
        losses = [self.engine.eval_loss(self.val_data.batch(i)) for i in range(self.cfg.eval_batches)]
        loss = sum(losses) / len(losses)
        self.evaluated_at = self.step
        metrics = {"step": self.step, "tokens": self.tokens, "eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}
        for cb in self.callbacks:
            cb.post_eval(self, metrics)
        return metrics


def run(cfg: TrainConfig, launch: Launch) -> FitOutcome:
    """Train `cfg` in this process, one rank of the training `launch` describes (entry.rank): how it ended."""
    backends.prepare_process(cfg)  # before this process creates its CUDA context (dist.init)
    precision, why = cfg.chosen_precision()  # before `resolved` makes precision=auto concrete
    cfg = cfg.resolved()
    with checkpoint.weights_only_loads(cfg.backend):  # every checkpoint this run reads, upstream loaders too
        return _run(cfg, launch, f"precision {precision} ({why})")


def _resume_from(cfg: TrainConfig, launch: Launch) -> Path | None:
    """The checkpoint to resume from, chosen and verified once per job: by the launcher before it started any rank
    (taken as is), or by global rank 0 for all ranks (a job started by hand or by Slurm)."""
    if launch.verifies == LAUNCHER:  # the launcher checked it against cfg too (train/entry.py)
        return launch.resume_from
    dist.init(cfg.dist_timeout_s, cfg.rank0_timeout_s)
    path = dist.decided_by_rank0(lambda: checkpoint_select.resolve(cfg, cfg.resume))
    if path is not None:
        checkpoint_select.check_resumable(cfg, path)  # its meta.json only: what the CLI checks before starting ranks
    return path


def _run(cfg: TrainConfig, launch: Launch, precision: str) -> FitOutcome:
    resume_from = _resume_from(cfg, launch)
    if resume_from and launch.verifies != LAUNCHER and \
            checkpoint_select.finished(cfg, resume_from, checkpoint.read_meta(resume_from)):
        dist.leave()  # every rank ends its groups together
        return FitOutcome(cfg.total_steps)  # nothing written; a launcher that verifies says so before any rank starts
    if logs.rank() == 0:
        run_folder.write_config(cfg)
    # a resumed run takes its weights from its own checkpoint; the transfer source matters only at the start
    weights = transfer.fresh_weights(cfg) if resume_from else transfer.initial_weights(cfg)
    engine = backends.build(cfg, weights, transfer.frozen_names(cfg))
    if (world := dist.rank_and_world()[1]) != cfg.world:  # the layout checks ran for cfg.world ranks
        raise UserError(f"this job has {world} ranks but its config was validated for parallel.nproc={cfg.world}; "
                        f"set parallel.nproc={world} (a rank's caller passes the launcher's world: from_args(world=))")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, engine, default_callbacks(cfg))
    log.info(describe(cfg.model, cfg.seq_len))
    if resume_from:
        saved = trainer.resume(resume_from)["config"]
        if record := dist.decided_by_rank0(lambda: checkpoint_select.rewind(cfg, resume_from)):
            trainer.saver.rewound(record)
        log.info(f"resumed from {resume_from} at step {trainer.step}")
        before, now = saved["schedule"]["total"] or saved["steps"], cfg.schedule.total or cfg.total_steps
        if before != now:  # schedule.total defaults to the run length: extending a run stretches the schedule
            log.info(f"note: the LR schedule now spans {now} steps (it spanned {before}); pin schedule.total to keep it")
    log.info(
        f"backend {cfg.backend}: world {cfg.world} = tp {cfg.parallel.tp} x pp {cfg.parallel.pp} x dp {cfg.data_parallel}; "
        f"batch {cfg.batch_size} x seq {cfg.seq_len} = {cfg.tokens_per_step:,} tokens/step, micro-batch "
        f"{cfg.micro_batch} x {cfg.grad_accum} accumulation; {cfg.total_steps} steps; {precision}"
    )
    outcome = trainer.fit()
    dist.leave()  # every rank ends its groups together
    return outcome
