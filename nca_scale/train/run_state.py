"""Where a run folder's run stands, from its files alone: `nca-scale status RUN` for any run folder (started by
`train`, `submit` or a sweep) and the summary line every run ends with.

State: running (its lease is live), stale lease (a lease nobody renews: killed on another host, or hung), finished,
stopped (after a signal: Ctrl-C, preemption; resume=auto continues), diverged (a non-finite loss it could not roll
back from; nothing saved after it), or not running (killed or failed: no
lease, no end recorded). Then step of total, last loss, last evaluation, tokens/s, ETA while running, and the
latest checkpoint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from nca_scale.train import checkpoint, dist, lease, run_files
from nca_scale.train.callbacks import SUMMARY, Callback
from nca_scale.train.checkpoint import mirror
from nca_scale.train.run_folder import CONFIG

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunState:
    out: str
    state: str  # running | stale lease | finished | stopped | diverged | not running
    detail: str  # the holder, the signal, or why it is not running
    step: int | None
    total: int | None
    loss: float | None
    eval_loss: float | None
    eval_ppl: float | None
    eval_step: int | None
    tokens_per_s: float | None
    eta_s: float | None
    checkpoint: str | None

    def line(self) -> str:
        parts = [f"{self.state}{f' ({self.detail})' if self.detail else ''}"]
        if self.step is not None:
            parts.append(f"step {self.step}" + (f"/{self.total}" if self.total else ""))
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.eval_loss is not None:
            parts.append(f"eval loss {self.eval_loss:.4f} (ppl {self.eval_ppl:.2f}) at step {self.eval_step}")
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:,.0f} tokens/s")
        if self.eta_s is not None:
            parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(self.eta_s))}"
                         + (f" ({self.eta_s / 86400:.0f} days)" if self.eta_s >= 86400 else ""))
        parts.append(f"checkpoint {self.checkpoint or '-'}")
        return f"{self.out}: " + ", ".join(parts)


def is_run_folder(out: str | Path) -> bool:
    out = Path(out)
    return any((out / name).exists() for name in (CONFIG, run_files.METRICS, run_files.PROGRESS, lease.NAME))


def _total_steps(out: Path) -> int | None:
    from nca_scale.config import load
    from nca_scale.errors import UserError
    from nca_scale.train.config import TrainConfig

    try:
        return load(TrainConfig, out / CONFIG, validate=False).with_data_shape().total_steps
    except (UserError, OSError, ValueError, KeyError):
        return None  # no config.yaml, or its text shards are gone: the step alone


def read(out: str | Path) -> RunState:
    out = Path(out)
    progress, holder = run_files.Progress.read(out), lease.read(out)
    step = loss = tps = eval_row = None
    for row in run_files.read_metrics(out) if (out / run_files.METRICS).is_file() else []:
        if isinstance(row, run_files.TrainRow):
            step, loss, tps = row.step, row.loss, row.measures.get("tokens_per_s")
        elif isinstance(row, run_files.EvalRow):
            eval_row = row
    if progress is not None:
        step = progress.step
    total = _total_steps(out)
    if holder is not None and not lease.is_mine(holder):  # this process's own: the run is ending (RunSummary)
        reason = lease.stale_reason(holder)
        state, detail = ("stale lease", f"{holder.describe()}: {reason}") if reason else \
            ("running", f"host {holder.host}, pid {holder.pid}")
    elif progress is not None and progress.stopped == "finished":
        state, detail = "finished", ""
    elif progress is not None and progress.stopped == "diverged":
        state, detail = "diverged", "a non-finite loss; the run log names the step"
    elif progress is not None and progress.stopped:
        state, detail = "stopped", f"{progress.stopped}; resume=auto continues"
    else:
        state, detail = "not running", "killed or failed: no end recorded" + (
            "; resume=auto continues from the latest checkpoint" if checkpoint.latest_name(out) else "")
    eta = None
    if state == "running" and progress is not None and total and progress.step_time:
        eta = max(0, total - progress.step) * progress.step_time
    return RunState(str(out), state, detail, step, total, loss, eval_row.eval_loss if eval_row else None,
                    eval_row.eval_ppl if eval_row else None, eval_row.step if eval_row else None, tps, eta,
                    "; ".join(filter(None, [checkpoint.latest_name(out), mirror.lag(out)])) or None)


class RunSummary(Callback):
    """The line every run ends with (rank 0, also with progress=false): how it ended, step of total, last loss and
    evaluation, tokens/s and the latest checkpoint, as `nca-scale status RUN` shows it. The last callback: it
    reads what the others wrote."""

    priority = SUMMARY

    def post_train(self, trainer) -> None:
        if dist.rank_and_world()[0] == 0:
            log.info(read(trainer.cfg.out).line())
