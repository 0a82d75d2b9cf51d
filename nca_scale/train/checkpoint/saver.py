"""The Saver: how a checkpoint is written, committed and mirrored, on every rank of the job. The Trainer owns one;
when to save is its callers' (callbacks.Checkpointer every checkpoint.every steps, Trainer.save_checkpoint at the
end of a run and at a stop).

A save: rank 0 makes the staging directory (commit.begin), every rank writes its files (Engine.save), then the
files are checksummed (each rank a share) and rank 0 commits (commit.commit: manifest, rename, `latest`, prune).
A backend that writes in the background (megatron, torch with checkpoint.asynchronous) returns a Writing: the
steps go on, every rank polls it after each step, and once every rank's files are written rank 0 commits in a
thread. Three rules hold throughout:

- Every wait is bounded. A background write has a deadline (checkpoint.write_timeout_s; by default from the
  checkpoint's size at a conservative bandwidth, logged): past it, or when a writer fails (a writer process
  killed, a filesystem error), every rank abandons the save at the same step with a warning, the previous
  checkpoint stays `latest`, training goes on and the next save retries. The last save of a run (the end, a
  stop) cannot be abandoned: it fails the run, naming the cause.
- One rank's failure is every rank's. An error on any rank inside checkpoint, checksum or commit work is
  shared on the side group (dist.failures_shared), and every rank raises a RankFailure naming that rank.
- No rank decides from its own view of the filesystem. Whether the current step is already saved is the
  Saver's memory (`committed`: the step of the checkpoint this lineage last committed or resumed from), the
  same on every rank; which checkpoint to return to is rank 0's choice, broadcast (dist.decided_by_rank0).

The mirror (checkpoint.url=) is a copy of committed checkpoints: rank 0 publishes each in a thread of its own,
retrying with backoff; when it keeps failing the run warns and goes on (the local commit is the truth), and the
next commit publishes the newest checkpoint.

What a checkpoint holds is the backend's: its engine writes and loads it (Engine.save/load), its Format
(train/backends/<name>/format.py) describes it to the readers outside the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nca_scale.model.config import param_counts
from nca_scale.train import checkpoint, dist, faults
from nca_scale.train.checkpoint import commit, mirror, verify
from nca_scale.train.config import TrainConfig

log = logging.getLogger(__name__)

# The default write deadline: a checkpoint of 16 bytes per parameter (fp32 weights and Adam's two moments, plus
# slack) at a bandwidth a busy shared filesystem still gives one job, and never under MIN_WRITE_TIMEOUT_S.
BANDWIDTH = 50e6  # bytes/s
MIN_WRITE_TIMEOUT_S = 600.0
MIRROR_ATTEMPTS, MIRROR_BACKOFF_S = 4, 0.5  # tries per checkpoint; the first wait, doubled each time


def default_write_timeout(cfg: TrainConfig) -> float:
    return max(MIN_WRITE_TIMEOUT_S, 16 * param_counts(cfg.model)["total"] / BANDWIDTH)


class SaveFailed(dist.RankFailure):
    """The last save of a run could not be written: the run fails, naming the cause."""


@dataclass
class _InFlight:
    """A save whose files are being written in the background."""

    writing: object  # backends.base.Writing
    step: int
    tokens: int
    skipped: list[int]
    started: float  # time.perf_counter() when the save began
    deadline: float  # time.monotonic() past which it is abandoned


def _rank0() -> bool:
    return dist.rank_and_world()[0] == 0


class Saver:
    def __init__(self, cfg: TrainConfig, engine):
        self.cfg, self.engine = cfg, engine
        self.committed: int | None = None  # step of this lineage's newest committed checkpoint (every rank alike)
        self.lineage: list[dict] = []  # the rewinds this run's trajectory went through (recorded in each manifest)
        self.in_flight: _InFlight | None = None
        self.committing: threading.Thread | None = None  # rank 0: the commit of a background write
        self.commit_error: BaseException | None = None
        self.commit_deadline = 0.0
        self.pending: int | None = None  # the step whose commit rank 0 runs in the background (every rank knows)
        self.mirror = _Mirror(cfg) if cfg.checkpoint.url and _rank0() else None
        self.write_timeout_s = cfg.checkpoint.write_timeout_s or default_write_timeout(cfg)
        if getattr(engine, "asynchronous", False):
            log.info(f"checkpoints written in the background get {self.write_timeout_s:.0f} s each "
                     f"(checkpoint.write_timeout_s{'' if cfg.checkpoint.write_timeout_s else ', from the size'}); "
                     "past it a save is abandoned and the next one retries")

    def resumed(self, meta: dict) -> None:
        """The run continues from the checkpoint whose manifest is `meta` (a resume, a rollback)."""
        self.committed = meta["step"]
        self.lineage = list(meta.get("lineage", []))

    def rewound(self, record: dict) -> None:
        """This run started a new lineage (checkpoint.select.rewind): every later manifest records it."""
        self.lineage.append(record)

    # ---- saving

    def save(self, step: int, tokens: int, skipped: list[int]) -> None:
        """Save `step` (every rank); a background write is left in flight (poll, flush)."""
        cfg, t0 = self.cfg, time.perf_counter()
        self.flush()  # one save at a time: the previous one is committed (or abandoned) before this one begins
        name = checkpoint.step_dir(cfg.out, step).name
        with dist.failures_shared(f"starting the save of {name}"):
            if _rank0():
                commit.begin(cfg.out, step)
        dist.wait_for_rank0()
        with dist.failures_shared(f"writing {name}"):
            writing = self.engine.save(checkpoint.staging_dir(cfg.out, step))
        if writing is not None:
            self.in_flight = _InFlight(writing, step, tokens, skipped, t0, time.monotonic() + self.write_timeout_s)
            log.info(f"saving step {step} in the background (the steps were blocked {time.perf_counter() - t0:.2f}s)")
            return
        dist.wait_for_rank0()  # every rank's files are written
        files = verify.file_table_in_parallel(checkpoint.staging_dir(cfg.out, step))
        path = None
        with dist.failures_shared(f"committing {name}"):
            if _rank0():
                path = commit.commit(cfg, step, tokens, files, skipped_steps=skipped, lineage=self.lineage)
                log.info(f"saved {path} ({time.perf_counter() - t0:.1f}s)")
        self.committed = step
        if path is not None and self.mirror is not None:
            self.mirror.submit(path)

    def poll(self, step: int) -> None:
        """After each training step (every rank): once every rank's background files are written, rank 0 commits
        them in a thread; a write past its deadline or whose writer failed is abandoned."""
        if self.in_flight is None:
            return
        status = self._status(block=False)
        if status == "written":
            self._commit_in_background(step)
        elif status is not None:
            self._abandon(status)

    def flush(self, last: bool = False) -> None:
        """Finish the save in flight, within its deadline (every rank): its files written, then rank 0's commit.
        A write that cannot finish is abandoned with a warning, or with `last` (the save a run ends with) fails
        the run. An error of rank 0's commit ends every rank."""
        if self.in_flight is not None:
            status = self._status(block=True)
            if status == "written":
                self._commit_in_background(None)
            else:
                step = self.in_flight.step
                self._abandon(status)
                if last:
                    raise SaveFailed(f"the checkpoint of step {step} could not be written: {status}")
        self._join_commit()

    def save_now(self, step: int, tokens: int, skipped: list[int], last: bool = True) -> None:
        """`step` committed before this returns (every rank; nothing to write if this lineage committed it). A
        save that cannot be written fails the run when it is the `last` (the end, a stop); a save in the middle
        of a run (checkpoint.every_minutes) is abandoned like a periodic one."""
        self.flush()
        if self.committed != step:
            self.save(step, tokens, skipped)
            self.flush(last=last)

    def abandon(self) -> None:
        """An error ends this rank: stop its writer without collectives; nothing more is committed."""
        if self.in_flight is not None:
            self.in_flight.writing.abandon(everywhere=False)
            self.in_flight = None
        if self.committing is not None:
            self.committing.join(timeout=max(0.0, self.commit_deadline - time.monotonic()))

    def close(self) -> None:
        """The run ended: give the mirror until the write deadline to catch up, then warn if it lags."""
        if self.mirror is not None:
            self.mirror.close(self.write_timeout_s)

    # ---- internals

    def _status(self, block: bool) -> str | None:
        """'written' once every rank's files are; None while they are still being written (block=False); else
        why the save cannot be committed. Every rank gets the same answer: a writer's error is raised by poll
        only once every rank's writer has finished (the poll's own collective agreed on it), so either every rank
        shares its outcome (a gather, only then) or every rank asks whether any is past the deadline."""
        flight, error = self.in_flight, None
        try:
            done = flight.writing.wait(flight.deadline) if block else flight.writing.poll()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # a writer that died or failed, on one rank or all (DCP's error is a BaseException)
            error, done = e, True
        if done:
            try:
                dist.shared_failure(error, f"writing step {flight.step}")
            except dist.RankFailure as failure:
                return str(failure)
            return "written"
        if block or dist.any_rank(time.monotonic() > flight.deadline):  # wait() returns False past the deadline
            return f"its files were not written within {self.write_timeout_s:.0f} s (checkpoint.write_timeout_s)"
        return None

    def _abandon(self, why: str) -> None:
        flight, self.in_flight = self.in_flight, None
        flight.writing.abandon(everywhere=True)
        if _rank0():
            log.warning(f"the checkpoint of step {flight.step} was abandoned ({why}); "
                        f"{checkpoint.latest_name(self.cfg.out) or 'no checkpoint'} stays `latest`; training goes "
                        "on and the next save retries")

    def _commit_in_background(self, now: int | None) -> None:
        flight, self.in_flight = self.in_flight, None
        self.pending = flight.step
        if not _rank0():
            return

        def run() -> None:
            try:
                path = commit.commit(self.cfg, flight.step, flight.tokens, skipped_steps=flight.skipped,
                                     lineage=self.lineage)
                at = f" at step {now}" if now is not None else ""
                log.info(f"saved {path}{at} ({time.perf_counter() - flight.started:.1f}s after the save began)")
                if self.mirror is not None:
                    self.mirror.submit(path)
            except BaseException as e:
                self.commit_error = e

        self.commit_error = None
        self.commit_deadline = time.monotonic() + self.write_timeout_s
        self.committing = threading.Thread(target=run, name="nca-scale-commit", daemon=True)
        self.committing.start()

    def _join_commit(self) -> None:
        """Wait (within the commit's deadline) for rank 0's commit thread; its outcome reaches every rank."""
        step = self.pending
        if step is None:
            return
        self.pending = None
        error = None
        if self.committing is not None:
            self.committing.join(timeout=max(0.0, self.commit_deadline - time.monotonic()))
            if self.committing.is_alive():
                error = TimeoutError(f"the commit did not finish within {self.write_timeout_s:.0f} s "
                                     "(checkpoint.write_timeout_s)")
            else:
                error = self.commit_error
            self.committing = None
        dist.shared_failure(error, f"committing step {step}")
        self.committed = step


class _Mirror:
    """Rank 0's uploads to checkpoint.url: one thread, the newest committed checkpoint first; each is tried
    MIRROR_ATTEMPTS times with doubling waits, then skipped with a warning (the next commit publishes)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.pending: Path | None = None
        self.published: str | None = None
        self.busy = False
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None

    def submit(self, path: Path) -> None:
        with self.wake:
            self.pending = path
            self.wake.notify()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="nca-scale-mirror", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            with self.wake:
                while self.pending is None:
                    self.wake.wait()
                path, self.pending, self.busy = self.pending, None, True
            self._publish(path)
            with self.wake:
                self.busy = False
                self.wake.notify_all()

    def _publish(self, path: Path) -> None:
        url, wait = self.cfg.checkpoint.url, MIRROR_BACKOFF_S
        for attempt in range(1, MIRROR_ATTEMPTS + 1):
            try:
                faults.hit("mirror", path.name)
                mirror.publish(path, url, self.cfg.checkpoint.keep_last)
            except Exception as e:
                if attempt == MIRROR_ATTEMPTS:
                    mirror.record(self.cfg.out, url, self.published, path.name, f"{type(e).__name__}: {e}")
                    log.warning(f"checkpoint.url={url}: {path.name} not published after {attempt} tries "
                                f"({type(e).__name__}: {e}); "
                                f"the mirror lags (it holds {self.published or 'nothing of this run'}), training "
                                "goes on and the next checkpoint is published (`nca-scale status` shows the lag)")
                    return
                log.warning(f"checkpoint.url={url}: publishing {path.name} failed ({type(e).__name__}: {e}); "
                            f"retrying in {wait:g} s")
                time.sleep(wait)
                wait *= 2
            else:
                self.published = path.name
                mirror.record(self.cfg.out, url, path.name)
                return

    def close(self, timeout_s: float) -> None:
        """Wait (at most timeout_s) for the upload in progress and the one pending."""
        deadline = time.monotonic() + timeout_s
        with self.wake:
            while self.pending is not None or self.busy:
                if time.monotonic() >= deadline:
                    log.warning(f"checkpoint.url={self.cfg.checkpoint.url}: the mirror lags (it holds "
                                f"{self.published or 'nothing of this run'}); resume=auto here still has every "
                                "local checkpoint")
                    return
                self.wake.wait(timeout=deadline - time.monotonic())
