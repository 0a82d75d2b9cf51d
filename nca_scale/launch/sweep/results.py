"""SWEEP_DIR/results.jsonl: one record per finished run, written by the run's own job (docs/sweeps.md has the
contract with the analysis side). Readers keep the last record per run name, so a re-run replaces a record."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict
from pathlib import Path

import nca_scale
from nca_scale.model.config import flops_per_token, param_counts
from nca_scale.train import run_files
from nca_scale.train.config import from_args

RESULTS = "results.jsonl"
VERSION = 1  # the record format (docs/sweeps.md); a reader skips records of a newer one


def code_version() -> str:
    """nca_scale's version, plus the git commit of its checkout when there is one ("+dirty" with local edits)."""
    root = Path(nca_scale.__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return nca_scale.__version__
    if sha.returncode != 0:
        return nca_scale.__version__
    return f"{nca_scale.__version__}+g{sha.stdout.strip()[:12]}" + ("+dirty" if dirty.stdout.strip() else "")


def record(sweep: str, run: dict, wall_s: float) -> dict:
    """The results.jsonl record of a finished planned run (a plan.json entry), from its config and metrics."""
    cfg = from_args(run["train_args"]).resolved()
    summary = run_files.summary(run["out"])
    curve = [asdict(e) for e in summary.evals]
    tokens = summary.tokens
    counts = param_counts(cfg.model)
    final = curve[-1] if curve else {"eval_loss": None, "eval_ppl": None}
    return {
        "v": VERSION,
        "sweep": sweep,
        "run": run["name"],
        "stage": run["stage"],
        "config_hash": hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest(),
        "code_version": code_version(),
        "coords": run["coords"],
        "params": counts["total"],
        "non_embedding_params": counts["non_embedding"],
        "tokens": tokens,
        "flops": float(flops_per_token(cfg.model, cfg.seq_len)["train"] * tokens),
        "stage1_flops": run["stage1_flops"],
        "eval_curve": curve,
        "final": {"eval_loss": final["eval_loss"], "eval_ppl": final["eval_ppl"]},
        "wall_s": round(wall_s, 3),
        "restarts": summary.restarts,
        "out": str(Path(run["out"]).resolve()),
    }


def append(sweep_dir: str | Path, rec: dict) -> None:
    with (Path(sweep_dir) / RESULTS).open("a") as f:  # one short write per line: appends from jobs interleave whole
        f.write(json.dumps(rec) + "\n")


def read_records(sweep_dir: str | Path, required: tuple[str, ...] = ("run",)) -> tuple[dict[str, dict], list[str]]:
    """(run name -> its last record, one note per skipped line). A line that is not JSON (e.g. cut short by a
    job killed while appending) or lacks a `required` key is skipped: its run counts as unfinished, so the
    next `sweep launch` runs it again, rather than one bad line stopping launch, status and report."""
    f = Path(sweep_dir) / RESULTS
    out: dict[str, dict] = {}
    notes: list[str] = []
    for i, line in enumerate(f.read_text().splitlines() if f.is_file() else [], 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            notes.append(f"{RESULTS} line {i} is not JSON (skipped)")
            continue
        if isinstance(rec, dict) and rec.get("v", VERSION) > VERSION:
            notes.append(f"{RESULTS} line {i} is format v{rec['v']}, newer than this nca_scale reads (skipped)")
            continue
        missing = [k for k in required if not isinstance(rec, dict) or k not in rec]
        if missing:
            notes.append(f"{RESULTS} line {i} lacks {', '.join(missing)} (skipped)")
            continue
        out[rec["run"]] = rec
    return out, notes


def read(sweep_dir: str | Path) -> dict[str, dict]:
    """run name -> its last record (skipping unreadable lines, see read_records)."""
    return read_records(sweep_dir)[0]
