"""The run folder's lease: OUT/lease.json names the one training that may write into OUT (its host, pid, Slurm job
and a heartbeat), so that a second `nca-scale train` into a live run folder (resume=auto and overwrite=true
included) is refused naming the holder, before it writes anything.

It works where `flock` does not (NFS, Lustre, GPFS shared between nodes): the lease is created with a hard link
of a complete temp file (atomic on every POSIX filesystem, NFS included; O_EXCL where hard links are not
supported), and liveness is a heartbeat the holder rewrites every HEARTBEAT_S seconds. A lease is taken over,
with a logged line, when its heartbeat is older than STALE_S, when its process is gone (same host), or by a
requeued attempt of the same Slurm job. The holder removes it when the run ends, however it ends (a kill -9
leaves it: the next start on that host takes it over at once, on another host after STALE_S).

Several ranks of one job (srun, torchrun by hand) share the lease: rank 0 takes it, and a rank whose job
(SLURM_JOB_ID + step + restart, torchrun's TORCHELASTIC_RUN_ID, else the rendezvous MASTER_ADDR:MASTER_PORT)
matches the holder's treats it as its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from nca_scale.errors import UserError
from nca_scale.files import temp_name, write_atomic

log = logging.getLogger(__name__)

NAME = "lease.json"
HEARTBEAT_S = 15.0  # the holder rewrites its heartbeat this often
STALE_S = 120.0  # a lease whose heartbeat is older than this is taken over (8 missed heartbeats)


def _job() -> str | None:
    """The job this process is a rank of, as the ranks of one job (and only they) name it alike; None for a
    process started on its own."""
    if "RANK" not in os.environ:
        return None
    if os.environ.get("SLURM_JOB_ID"):
        return (f"slurm:{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '-')}"
                f"/{os.environ.get('SLURM_RESTART_COUNT', '0')}")
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"torchrun:{run_id}"
    if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):  # no two live jobs share a rendezvous
        return f"rendezvous:{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    return None


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float
    heartbeat: float
    token: str  # this acquisition's, so a holder knows its own lease after a takeover
    job: str | None = None  # _job(): shared by the ranks of one job
    slurm_job: str | None = None  # SLURM_JOB_ID: a requeued attempt of it takes the lease over
    restart: int = 0  # SLURM_RESTART_COUNT

    @classmethod
    def me(cls) -> Holder:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex, _job(),
                   os.environ.get("SLURM_JOB_ID"), int(os.environ.get("SLURM_RESTART_COUNT", 0)))

    def age(self) -> float:
        return max(0.0, time.time() - self.heartbeat)

    def describe(self) -> str:
        job = f", Slurm job {self.slurm_job}" if self.slurm_job else ""
        return (f"host {self.host}, pid {self.pid}{job}, started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}, "
                f"heartbeat {self.age():.0f}s ago")

    def process_gone(self) -> bool:
        """Whether this holder's process is known to have ended (only knowable on its own host)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's live process
            return False
        return False


def read(out: str | Path) -> Holder | None:
    """The holder recorded in OUT/lease.json; None without one. A lease being written (empty or torn, only
    possible without hard links) reads as a fresh holder of unknown identity."""
    path = Path(out) / NAME
    try:
        mtime = path.stat().st_mtime
    except OSError:  # none there (or OUT is a file: run_folder.check says so)
        return None
    holder = read_file(path)
    if holder is None and not path.exists():
        return None  # released meanwhile
    return holder if holder is not None else Holder("(unknown: lease being written)", -1, mtime, mtime, "")


def stale_reason(holder: Holder) -> str | None:
    """Why `holder` no longer holds its lease (None if it still does), as seen from this process."""
    me = Holder.me()
    if holder.slurm_job and holder.slurm_job == me.slurm_job and me.restart > holder.restart:
        return f"a requeued attempt (restart {me.restart}) of its Slurm job {holder.slurm_job}"
    if holder.process_gone():
        return "its process is gone"
    if holder.age() > STALE_S:
        return f"no heartbeat for {holder.age():.0f}s (over {STALE_S:.0f}s)"
    return None


def is_mine(holder: Holder) -> bool:
    """Whether `holder` is this process, or another rank of this process's job."""
    if (holder.host, holder.pid) == (socket.gethostname(), os.getpid()):
        return True
    job = _job()
    return job is not None and holder.job == job


def check(out: str | Path, key: str = "out") -> None:
    """UserError if another live training holds OUT's lease. Writes nothing."""
    holder = read(out)
    if holder is None or is_mine(holder) or stale_reason(holder):
        return
    raise UserError(f"{key}={out} is in use by another training ({holder.describe()}); wait for it to end, stop it "
                    f"(Ctrl-C or kill -INT {holder.pid} on {holder.host}: it saves and exits), or choose another "
                    f"{key}=. A lease without a heartbeat for {STALE_S:.0f}s is taken over")


class Lease:
    """OUT's lease, held by this process from `acquire` until `release` (also a context manager); a thread
    rewrites its heartbeat."""

    def __init__(self, out: str | Path):
        self.out, self.path = Path(out), Path(out) / NAME
        self.holder: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Lease:
        self.out.mkdir(parents=True, exist_ok=True)
        me = Holder.me()
        for _ in range(5):  # a takeover raced by another starter: look again
            if self._create(me):
                self.holder = me
                self._thread = threading.Thread(target=self._beat, name="nca-scale-lease", daemon=True)
                self._thread.start()
                return self
            holder = read(self.out)
            if holder is None:
                continue  # released in between
            if is_mine(holder):
                return self  # another rank of this job holds it for all (its heartbeat, its release)
            reason = stale_reason(holder)
            if reason is None:
                check(self.out)  # raises, naming the holder
            if self._remove_stale(holder):
                log.warning("taking over the lease of %s from %s: %s", self.out, holder.describe(), reason)
        raise UserError(f"out={self.out}: could not take its lease ({self.path}); another training keeps starting "
                        "into it; choose another out=")

    def _create(self, me: Holder) -> bool:
        tmp = temp_name(self.path)
        tmp.write_text(json.dumps(asdict(me)))
        try:
            os.link(tmp, self.path)  # atomic, also on NFS: fails if a lease exists
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            try:  # a filesystem without hard links
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(asdict(me)))
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_stale(self, holder: Holder) -> bool:
        """Move the stale lease out of the way, unless someone replaced it meanwhile (then put that one back)."""
        aside = temp_name(self.path)
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = read_file(aside)
        if moved is not None and moved.token != holder.token:  # not the one judged stale: a fresh lease
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            current = read(self.out)
            if current is None or current.token != self.holder.token:
                log.error("the lease of %s was taken over (%s); this run no longer holds its folder",
                          self.out, current.describe() if current else "removed")
                return
            write_atomic(self.path, json.dumps(asdict(Holder(**{**asdict(self.holder), "heartbeat": time.time()}))))

    def release(self) -> None:
        if self.holder is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = read(self.out)
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)
        self.holder = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_file(path: Path) -> Holder | None:
    """The holder in a lease file; None if it is missing, empty or torn."""
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
