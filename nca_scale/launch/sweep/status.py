"""Where a sweep's runs stand: finished (a record in SWEEP_DIR/results.jsonl), queued or running (its latest job
in SWEEP_DIR/launch/jobs.jsonl, asked of Slurm or of submitit's local result file), or still to submit. Used by
`sweep launch` (what to submit) and `sweep status` (the table)."""

from __future__ import annotations

from pathlib import Path

from nca_scale.launch import jobs
from nca_scale.launch import status as job_status
from nca_scale.launch.sweep import plan as sweep_plan
from nca_scale.launch.sweep import results as sweep_results
from nca_scale.launch.sweep import spec as sweep_spec
from nca_scale.train import run_files

IN_FLIGHT = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD",
             "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def recorded_jobs(sweep_dir: Path) -> dict[str, dict]:
    """run name -> the latest job record of it."""
    f = sweep_dir / "launch" / "jobs.jsonl"
    if not f.is_file():
        return {}
    return {r["cell"]["run"]: r for r in jobs.records([str(sweep_dir)]) if "run" in r.get("cell", {})}


def _states(recorded: dict[str, dict]) -> dict[str, str]:
    slurm = job_status.slurm_states([r["job_id"] for r in recorded.values() if r["executor"] == "slurm"])
    return {run: (slurm.get(r["job_id"], "UNKNOWN") if r["executor"] == "slurm" else job_status.local_state(r))
            for run, r in recorded.items()}


def todo(runs: list[sweep_plan.Run], sweep_dir: Path, live: bool = True
         ) -> tuple[list[sweep_plan.Run], dict[str, str], dict]:
    """(runs to submit, {run: Slurm job it is queued/running as}, finished records); without `live` (an offline dry
    run) no Slurm job state is asked for."""
    done = sweep_results.read(sweep_dir)
    recorded = recorded_jobs(sweep_dir)
    states = _states({n: r for n, r in recorded.items() if r["executor"] == "slurm"}) if live else {}
    flying = {n: recorded[n]["job_id"] for n, s in states.items() if s.split()[0] in IN_FLIGHT and n not in done}
    return [r for r in runs if r.name not in done and r.name not in flying], flying, done


def diverged(r: sweep_plan.Run) -> bool:
    """Whether the run's last start ended on a non-finite loss (exit 3): the same config and data would diverge
    at the same step again."""
    ended = run_files.Progress.read(r.out)
    return bool(ended and ended.stopped == "diverged")


def status_rows(spec: sweep_spec.SweepSpec) -> tuple[list[dict], list[str]]:
    """(one row per planned run: state, step, losses, restarts, job and log; notes on skipped results lines)."""
    runs = sweep_plan.plan(spec)
    done, notes = sweep_results.read_records(spec.sweep_dir)
    recorded = recorded_jobs(spec.sweep_dir)
    states = _states(recorded)
    rows = []
    for r in runs:
        p = run_files.summary(r.out)
        state = "FINISHED" if r.name in done else states.get(r.name, "NOT SUBMITTED")
        if state == "COMPLETED":  # the job ended well but wrote no record: it did not finish its run
            state = "INCOMPLETE"
        elif state != "FINISHED" and diverged(r):
            state = "DIVERGED"  # a non-finite loss (exit 3): its job failed and was not requeued
        job = recorded.get(r.name)
        rows.append({"run": r.name, "stage": r.stage, "state": state, "step": p.step, "steps": r.steps,
                     "loss": p.loss, "eval_loss": p.evals[-1].eval_loss if p.evals else None,
                     "restarts": p.restarts, "job_id": job["job_id"] if job else None,
                     "log": job["logs"] if job else None})
    return rows, notes


def status_table(rows: list[dict]) -> str:
    w = max([len(r["run"]) for r in rows] + [3])
    lines = [f"{'RUN':<{w}} {'STATE':<16} {'STEP':>11} {'LOSS':>8} {'EVAL':>8} {'RST':>3}  JOB"]
    for r in rows:
        step = f"{r['step'] or 0}/{r['steps']}"
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
        ev = f"{r['eval_loss']:.4f}" if r["eval_loss"] is not None else "-"
        lines.append(f"{r['run']:<{w}} {r['state'][:16]:<16} {step:>11} {loss:>8} {ev:>8} {r['restarts']:>3}  "
                     f"{r['job_id'] or '-'}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append("# " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    return "\n".join(lines)
