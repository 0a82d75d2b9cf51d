"""A sweep's finished runs, read from SWEEP_DIR/results.jsonl (the contract in docs/sweeps.md).

Readers keep the LAST record per run name (a re-run replaces its earlier record). A record whose eval curve
is empty falls back to the eval lines of its run's metrics.jsonl. Lines that are not JSON or lack a contract
key are skipped and named in `Sweep.notes`, so one damaged line does not hide the rest of a sweep.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nca_scale.errors import UserError
from nca_scale.launch.sweep.results import RESULTS, read_records
from nca_scale.train import run_files

REQUIRED = ("run", "stage", "coords", "params", "non_embedding_params", "tokens", "flops", "eval_curve", "final")
PRE_ARMS = ("nca", "text", "dyck")  # arms with a stage-1 run before language training
# coords.extra keys that describe the arm (docs/sweeps.md); every other key is an axis
ARM_KEYS = ("matched_to", "stage1_corpus", "reinit", "reinit_embeddings")
MATCHED = "scratch_matched"


def fmt_count(n: float | None) -> str:
    """1_000_000 -> '1M', 164e6 -> '164M', 2.5e9 -> '2.5B' (tokens, parameters)."""
    if n is None:
        return "-"
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


@dataclass(frozen=True)
class Run:
    name: str
    stage: int
    size: str
    arm: str
    band: str | None
    stage1_tokens: int | None
    domain: str | None
    stage2_tokens: int | None
    seed: int
    extra: dict
    params: int
    non_embedding_params: int
    tokens: int
    flops: float
    stage1_flops: float | None
    curve_tokens: tuple[float, ...]
    curve_ppl: tuple[float, ...]
    curve_loss: tuple[float, ...]
    final_ppl: float
    final_loss: float
    wall_s: float | None
    restarts: int | None
    out: str | None
    code_version: str | None

    @property
    def matched_to(self) -> str | None:
        return self.extra.get("matched_to")

    @property
    def arm_label(self) -> str:
        """The arm with its stage-1 coordinates: 'nca 50+ 1M', 'scratch', 'text 1M corpus=web',
        'scratch_matched (to nca-b50-t1M)'."""
        parts = [self.arm]
        if self.band:
            parts.append(self.band)
        if self.stage1_tokens:
            parts.append(fmt_count(self.stage1_tokens))
        if "stage1_corpus" in self.extra:
            parts.append(f"corpus={self.extra['stage1_corpus']}")
        if self.reinit:
            parts.append("reinit=" + "+".join(self.reinit))
        if self.extra.get("reinit_embeddings") is False:
            parts.append("keep-embeddings")
        if self.arm == MATCHED:
            parts.append(f"(to {self.matched_to})")
        return " ".join(parts)

    @property
    def reinit(self) -> list[str]:
        """Modules re-initialised before stage 2 on top of the embeddings (a transfer ablation), or []."""
        return list(self.extra.get("reinit") or [])

    @property
    def full_transfer(self) -> bool:
        """A pre-pre-trained run transferred as the paper's main arms are: new embeddings, nothing else reset."""
        return not self.reinit and self.extra.get("reinit_embeddings", True) is not False

    @property
    def base_label(self) -> str:
        """The arm label of the full transfer of the same stage-1 run (the label itself for other arms)."""
        return self.arm_label.split(" reinit=")[0].replace(" keep-embeddings", "")

    @property
    def axes(self) -> str:
        """The other swept keys ('lr=0.001 warmup=100', or ''): only runs that share them are compared."""
        return " ".join(f"{k}={v}" for k, v in sorted(self.extra.items()) if k not in ARM_KEYS)

    @property
    def cell(self) -> tuple[str, str, int, str]:
        """What a comparison holds fixed: model size, stage-2 domain, stage-2 tokens, other swept keys."""
        return (self.size, self.domain or "-", self.stage2_tokens or 0, self.axes)

    @property
    def total_flops(self) -> float:
        return self.flops + (self.stage1_flops or 0.0)


@dataclass
class Sweep:
    directory: Path
    name: str
    runs: list[Run]  # stage-2 runs (every comparison is about these)
    stage1: list[Run]
    notes: list[str] = field(default_factory=list)


def _curve_from_metrics(out: str | None, sweep_dir: Path, run: str) -> list[dict]:
    """The eval lines {step, tokens, eval_loss, eval_ppl} of the run's metrics.jsonl, in file order."""
    for d in (Path(out) if out else None, sweep_dir / "runs" / run):
        if d is not None and (d / run_files.METRICS).is_file():
            return [asdict(e) for e in run_files.summary(d).evals]
    return []


def _run(rec: dict, sweep_dir: Path) -> Run:
    c = rec["coords"]
    curve = rec["eval_curve"] or _curve_from_metrics(rec.get("out"), sweep_dir, rec["run"])
    if not curve:
        raise KeyError("eval_curve (empty, and no eval lines in the run's metrics.jsonl)")
    final = rec["final"]
    if not math.isfinite(float(final["eval_ppl"])):
        raise ValueError(f"final eval_ppl is {final['eval_ppl']} (a diverged run)")
    return Run(
        name=rec["run"], stage=int(rec["stage"]), size=str(c["size"]), arm=str(c["arm"]), band=c.get("band"),
        stage1_tokens=c.get("stage1_tokens"), domain=c.get("domain"), stage2_tokens=c.get("stage2_tokens"),
        seed=int(c["seed"]), extra=dict(c.get("extra") or {}), params=int(rec["params"]),
        non_embedding_params=int(rec["non_embedding_params"]), tokens=int(rec["tokens"]), flops=float(rec["flops"]),
        stage1_flops=rec.get("stage1_flops"),
        curve_tokens=tuple(float(p["tokens"]) for p in curve), curve_ppl=tuple(float(p["eval_ppl"]) for p in curve),
        curve_loss=tuple(float(p["eval_loss"]) for p in curve),
        final_ppl=float(final["eval_ppl"]), final_loss=float(final["eval_loss"]),
        wall_s=rec.get("wall_s"), restarts=rec.get("restarts"), out=rec.get("out"),
        code_version=rec.get("code_version"),
    )


def load_sweep(sweep_dir: str | Path) -> Sweep:
    d = Path(sweep_dir)
    if not d.is_dir():
        raise UserError(f"{d} is not a directory; pass a sweep directory (runs/sweeps/<spec name>)")
    path = d / RESULTS
    if not path.is_file():
        raise UserError(f"{path} does not exist: no finished runs in {d}; run `nca-scale sweep launch SPEC` and "
                        "wait for runs to finish (`nca-scale sweep status SPEC`)")
    latest, notes = read_records(d, REQUIRED)
    runs, stage1 = [], []
    name = ""
    for rec in latest.values():
        try:
            run = _run(rec, d)
        except (KeyError, TypeError, ValueError) as e:
            notes.append(f"run {rec['run']}: unusable record ({e}) (skipped)")
            continue
        name = name or rec.get("sweep") or ""
        (stage1 if run.stage == 1 else runs).append(run)
    if not runs:
        raise UserError(f"{path} holds no finished stage-2 run ({len(stage1)} stage-1 runs"
                        f"{', ' + str(len(notes)) + ' unusable lines' if notes else ''}); nothing to report yet")
    return Sweep(d, name or d.name, runs, stage1, notes)
