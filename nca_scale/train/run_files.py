"""The files of a run directory OUT that are records, typed: OUT/metrics.jsonl and OUT/progress.json.

One writer and one reader per file, both here; every other module goes through these rows instead of
telling a line's kind by which key it holds. The schema is in docs/training.md ("The run directory").

metrics.jsonl holds one JSON object per line, flat (for jq and wandb alike), each with `v` (this format's
version) and `kind`:
- `train`: a logged step: step, tokens, loss, lr, grad_norm and its measurements (step_time, data_time,
  fwd_bwd_time, optimizer_time, tokens_per_s, mfu, checkpoint_time, peak_memory_gib, ...);
- `eval`: an evaluation: step, tokens, eval_loss, eval_ppl;
- `restart`: written when a run resumes after a stop that was not its end: restart, lost_steps, lost_tokens,
  lost_seconds, reason.
Lines written before `v` existed are read by the keys they hold (their only difference).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from nca_scale.files import write_atomic

VERSION = 1
METRICS = "metrics.jsonl"
PROGRESS = "progress.json"


@dataclass(frozen=True)
class TrainRow:
    step: int
    tokens: int
    loss: float
    lr: float
    grad_norm: float
    measures: dict[str, float | None] = field(default_factory=dict)  # timings, throughput, MFU, memory

    kind = "train"

    @classmethod
    def from_metrics(cls, metrics: dict) -> TrainRow:
        """From the Trainer's per-step metrics dict (as the callbacks extended it)."""
        return cls(**{k: metrics[k] for k in _TRAIN_KEYS},
                   measures={k: v for k, v in metrics.items() if k not in _TRAIN_KEYS})

    def to_json(self) -> dict:
        d = asdict(self)
        return {"v": VERSION, "kind": self.kind, **{k: v for k, v in d.items() if k != "measures"}, **self.measures}


_TRAIN_KEYS = tuple(f.name for f in fields(TrainRow) if f.name != "measures")  # once, not per row


@dataclass(frozen=True)
class EvalRow:
    step: int
    tokens: int
    eval_loss: float
    eval_ppl: float

    kind = "eval"

    def to_json(self) -> dict:
        return {"v": VERSION, "kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class RestartRow:
    step: int  # the step the run resumed at
    tokens: int
    restart: int  # 1 for the first restart of this run
    lost_steps: int  # steps done before the stop that the resumed run repeats
    lost_tokens: int
    lost_seconds: float
    reason: str  # how the previous attempt ended: a signal's name, or "killed"

    kind = "restart"

    def to_json(self) -> dict:
        return {"v": VERSION, "kind": self.kind, **asdict(self)}


Row = TrainRow | EvalRow | RestartRow
KINDS = {cls.kind: cls for cls in (TrainRow, EvalRow, RestartRow)}


def _legacy_kind(d: dict) -> str | None:
    """The kind of a line written before `kind` existed (the keys each kind always held)."""
    return "restart" if "restart" in d else "eval" if "eval_loss" in d else "train" if "loss" in d else None


def parse_row(d: dict) -> Row | None:
    """A metrics line as its row; None for a line of a kind or version this code does not know."""
    if not isinstance(d, dict) or d.get("v", VERSION) > VERSION:
        return None
    cls = KINDS.get(d.get("kind") or _legacy_kind(d))
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    try:
        if cls is TrainRow:
            return TrainRow.from_metrics({k: v for k, v in d.items() if k not in ("v", "kind")})
        return cls(**{k: d[k] for k in names})
    except KeyError:  # a line missing a field of its kind: not one of ours
        return None


def read_metrics(out: str | Path) -> list[Row]:
    """Every row of OUT/metrics.jsonl in file order; a line cut short by a kill (the trainer drops it on resume)
    or not of this format is skipped."""
    f = Path(out) / METRICS
    rows = []
    for line in f.read_text().splitlines() if f.is_file() else []:
        try:
            row = parse_row(json.loads(line))
        except json.JSONDecodeError:
            continue
        if row is not None:
            rows.append(row)
    return rows


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except ValueError:  # the torn last line of a killed process
        return float("inf")


class MetricsWriter:
    """The one writer of OUT/metrics.jsonl (rank 0 only: the caller decides)."""

    def __init__(self, out: str | Path):
        self.path = Path(out) / METRICS

    def append(self, row: Row) -> None:
        with self.path.open("a") as f:  # one write per line
            f.write(json.dumps(row.to_json()) + "\n")

    def keep_until(self, step: int) -> None:
        """Drop the lines past `step` (a resume or a rollback to it), so the file reads as one uninterrupted run;
        atomically, as a kill mid-write must not lose history."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
        write_atomic(self.path, "".join(line + "\n" for line in keep))


@dataclass(frozen=True)
class Progress:
    """OUT/progress.json: where the run is (rank 0 rewrites it after every step), what a restart is measured
    against. `stopped`: "finished", "diverged", a signal's name after a preemption stop, None while running."""

    step: int
    tokens: int
    time: float
    step_time: float
    restart: int = 0
    job_id: str | None = None
    stopped: str | None = None
    v: int = VERSION

    def write(self, out: str | Path) -> None:
        write_atomic(Path(out) / PROGRESS, json.dumps(asdict(self)))

    @classmethod
    def read(cls, out: str | Path) -> Progress | None:
        f = Path(out) / PROGRESS
        if not f.is_file():
            return None
        d = json.loads(f.read_text())
        names = {x.name for x in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Summary:
    """What status tables and sweep records read from a run's metrics: its last logged step and loss, its
    restarts and the steps they lost, and its evaluations."""

    step: int | None = None
    tokens: int = 0
    loss: float | None = None
    restarts: int = 0
    lost_steps: int = 0
    evals: tuple[EvalRow, ...] = ()


def summary(out: str | Path) -> Summary:
    step, tokens, loss, restarts, lost, evals = None, 0, None, 0, 0, []
    for row in read_metrics(out):
        if isinstance(row, TrainRow):
            step, tokens, loss = row.step, row.tokens, row.loss
        elif isinstance(row, RestartRow):
            restarts, lost = max(restarts, row.restart), lost + row.lost_steps
        else:
            evals.append(row)
    return Summary(step, tokens, loss, restarts, lost, tuple(evals))
