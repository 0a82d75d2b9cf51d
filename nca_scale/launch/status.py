"""`nca-scale status [RUN|SWEEP ...]`: the recorded jobs with state, step, last loss, restarts and log paths, and
for every run folder among the targets (however it was started) its own state (train/run_state.py).

Job state comes from Slurm (squeue for live jobs, sacct for finished ones) or, for the local executor, from the
job's submitit result file; step, last loss, restarts and lost steps from the run's own metrics.jsonl.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from nca_scale.errors import UserError
from nca_scale.launch.jobs import has_records, records
from nca_scale.train import run_files, run_state


def slurm_states(ids: list[str]) -> dict[str, str]:
    states: dict[str, str] = {}
    if not ids or shutil.which("sacct") is None:
        return states
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", "JobID,State"],
                         capture_output=True, text=True, timeout=60).stdout
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        states[jid] = state.split()[0] if state else "UNKNOWN"
    out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"], capture_output=True, text=True,
                         timeout=60).stdout  # live state, and why a job waits
    for line in out.splitlines():
        jid, state, reason = line.split("|")
        states[jid] = state if reason in ("None", "") else f"{state} ({reason})"
    return states


def local_state(rec: dict) -> str:
    logs = Path(rec["logs"]).parent
    result = logs / f"{rec['job_id']}_0_result.pkl"
    if result.exists():
        import pickle

        kind = pickle.loads(result.read_bytes())[0]
        return "COMPLETED" if kind == "success" else "FAILED"
    return "RUNNING"


def progress(out: str) -> dict:
    """step, last loss, restarts and lost steps from OUT/metrics.jsonl."""
    s = run_files.summary(out)
    return {"step": s.step, "loss": s.loss, "restarts": s.restarts, "lost_steps": s.lost_steps}


def runs(targets: list[str]) -> list[run_state.RunState]:
    """The state of every run folder among `targets`; a target that is neither a run folder nor holds submitted
    jobs is an error."""
    for t in targets:
        if not run_state.is_run_folder(t) and not has_records(t):
            raise UserError(f"{t} is neither a run folder (no config.yaml, metrics.jsonl, progress.json or lease.json) "
                            "nor a directory of jobs written by nca-scale submit")
    return [run_state.read(t) for t in targets if run_state.is_run_folder(t)]


def status(targets: list[str]) -> list[dict]:
    """The recorded jobs of `targets` (every job in the index when none is given; none for plain run folders)."""
    with_jobs = [t for t in targets if has_records(t)]
    if targets and not with_jobs:
        return []
    recs = records(with_jobs)
    slurm = slurm_states([r["job_id"] for r in recs if r["executor"] == "slurm"])
    rows = []
    for r in recs:
        state = slurm.get(r["job_id"], "UNKNOWN") if r["executor"] == "slurm" else local_state(r)
        rows.append({"job_id": r["job_id"], "name": r["name"], "state": state, **progress(r["out"]),
                     "cell": r.get("cell", {}), "out": r["out"], "logs": r["logs"]})
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'JOB':<12} {'STATE':<28} {'STEP':>6} {'LOSS':>9} {'RESTARTS':>8}  RUN / LOG"
    lines = [head]
    for r in rows:
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
        step = str(r["step"]) if r["step"] is not None else "-"
        restarts = f"{r['restarts']}" + (f" (-{r['lost_steps']})" if r["lost_steps"] else "")
        cell = " " + " ".join(f"{k}={v}" for k, v in r["cell"].items()) if r["cell"] else ""
        lines.append(f"{r['job_id']:<12} {r['state'][:28]:<28} {step:>6} {loss:>9} {restarts:>8}  {r['out']}{cell}")
        lines.append(f"{'':<12} {'':<28} {'':>6} {'':>9} {'':>8}  {r['logs']}")
    return "\n".join(lines)
