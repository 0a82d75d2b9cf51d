"""`nca-scale sweep plan|launch|status SPEC`: run a study (a sweep spec, configs/sweeps/) through submitit.

launch = plan (SWEEP_DIR/plan.json) -> text data for the stage-2 domains and text arms (launch/sweep_data.py:
corpus build, tokenizer, tokenize; each step cached) -> submit what is neither finished (a record in SWEEP_DIR/results.jsonl) nor queued
or running on Slurm. Stage-1 runs go out as one job array; on Slurm each stage-1 run's stage-2 runs are an array
that depends on it (afterok), on this machine they start when stage 1 is done. Every job runs
`nca-scale sweep run SWEEP_DIR run=NAME`: the training, then the run's record appended to results.jsonl.
Jobs are recorded like `nca-scale submit`'s (SWEEP_DIR/launch/jobs.jsonl), so `nca-scale status SWEEP_DIR`
works as well.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nca_scale import config
from nca_scale.errors import UserError
from nca_scale.launch import jobs, sweep_data, sweep_plan, sweep_results, sweep_spec
from nca_scale.launch import profile as profiles
from nca_scale.launch import status as job_status
from nca_scale.launch import submit as submitting
from nca_scale.launch.task import Task

if TYPE_CHECKING:
    from nca_scale.train.entry import Outcome

log = logging.getLogger(__name__)

RUN_FILE = "sweep_run.json"  # in each run's directory: the plan entry its job runs
IN_FLIGHT = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD",
             "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


def _spec(args: list[str], own: set[str]) -> tuple[sweep_spec.SweepSpec, str, dict]:
    positional, overrides = config.split_overrides(args)
    if len(positional) != 1:
        raise UserError("usage: nca-scale sweep plan|launch|status SPEC.yaml [key=value ...] (see configs/sweeps/)")
    opts = {k: v for k, v in overrides if k in own}
    spec = sweep_spec.load(positional[0], [(k, v) for k, v in overrides if k not in own])
    return spec, positional[0], opts


# ---- plan ---------------------------------------------------------------------------------------------
def plan_command(args: list[str]) -> int:
    spec, path, opts = _spec(args, {"format"})
    runs = sweep_plan.plan(spec)
    where = sweep_plan.write(spec, path, runs)
    if opts.get("format", "table") == "json":
        print(where.read_text())
    else:
        print(sweep_plan.table(spec, runs))
        print(f"# written {where}")
    return 0


# ---- what to submit -----------------------------------------------------------------------------------
def _jobs(sweep_dir: Path) -> dict[str, dict]:
    """run name -> the latest job record of it."""
    f = sweep_dir / "launch" / "jobs.jsonl"
    if not f.is_file():
        return {}
    return {r["cell"]["run"]: r for r in jobs.records([str(sweep_dir)]) if "run" in r.get("cell", {})}


def _states(recorded: dict[str, dict]) -> dict[str, str]:
    slurm = job_status.slurm_states([r["job_id"] for r in recorded.values() if r["executor"] == "slurm"])
    return {run: (slurm.get(r["job_id"], "UNKNOWN") if r["executor"] == "slurm" else job_status.local_state(r))
            for run, r in recorded.items()}


def todo(runs: list[sweep_plan.Run], sweep_dir: Path) -> tuple[list[sweep_plan.Run], dict[str, str], dict]:
    """(runs to submit, {run: Slurm job it is queued/running as}, finished records)."""
    done = sweep_results.read(sweep_dir)
    recorded = _jobs(sweep_dir)
    states = _states({n: r for n, r in recorded.items() if r["executor"] == "slurm"})
    flying = {n: recorded[n]["job_id"] for n, s in states.items() if s.split()[0] in IN_FLIGHT and n not in done}
    return [r for r in runs if r.name not in done and r.name not in flying], flying, done


def _flag(opts: dict, key: str) -> bool:
    value = opts.get(key, "false").lower()
    if value not in ("true", "false"):
        raise UserError(f"{key}={opts[key]}: write {key}=true or {key}=false")
    return value == "true"


# ---- launch -------------------------------------------------------------------------------------------
def _task(prof: profiles.ClusterProfile, sweep_dir: Path, run: sweep_plan.Run, env: dict) -> Task:
    return Task(SweepRunWork(str(sweep_dir), run.name), env, prof.max_restarts, prof.minutes, prof.signal_lead_s)


def _submit(prof, prof_name: str, sweep_dir: Path, name: str, runs: list[sweep_plan.Run], deps: list[str],
            env: dict, stamp: str) -> list:
    logs = Path(prof.logs) / name if prof.logs else sweep_dir / "launch"
    ex = jobs.make_executor(prof, logs, name, deps)
    submitted = jobs.submit(ex, prof, [_task(prof, sweep_dir, r, env) for r in runs], array=True)
    for r, job in zip(runs, submitted):
        rec = jobs.record(job, submission=stamp, name=name, cluster=prof_name, executor=prof.executor,
                          argv=SweepRunWork(str(sweep_dir), r.name).argv, out=Path(r.out),
                          cell={"run": r.name, "stage": r.stage}, after=deps, submitted=stamp)
        jobs.write_record(rec, (Path(r.out), sweep_dir))
        print(f"submitted {job.job_id} ({prof_name}{', after ' + ','.join(deps) if deps else ''}): {r.name}")
    return submitted


def _wait(submitted: list, runs: list[sweep_plan.Run]) -> list[str]:
    failed = []
    for (job, error), r in zip(jobs.wait(submitted), runs):
        if error is None:
            print(f"{job.job_id}: {r.name} done")
        else:
            failed.append(r.name)
            print(f"{job.job_id}: {r.name} FAILED: {error}\n  log {job.paths.stdout}", file=sys.stderr)
    return failed


def _validate(runs: list[sweep_plan.Run]) -> None:
    """Every train command line checked before anything is queued (init_from names checkpoints to come)."""
    from nca_scale.train.config import text_manifest

    for r in runs:
        try:
            submitting.validate_train(r.train_args, after=r.parent is not None)
        except UserError as e:
            raise UserError(f"run {r.name}: {e}") from None
        shards = [a.partition("=")[2] for a in r.train_args if a.startswith("data.shards=")]
        if shards and "data.source=text_shards" in r.train_args:
            need, have = r.steps * r.hyper["batch_size"], text_manifest(shards[-1])["sequences"]
            if need > have:
                raise UserError(f"run {r.name} trains on {need} sequences, {shards[-1]} holds {have}: lower its "
                                "tokens, or raise data.train_tokens (or use a bigger corpus)")


def launch(args: list[str]) -> int:
    spec, path, opts = _spec(args, {"wait", "dry_run"})
    wait, dry = (_flag(opts, k) for k in ("wait", "dry_run"))
    planner = sweep_plan.Planner(spec)
    runs = planner.plan()
    sweep_dir = spec.sweep_dir
    sweep_plan.write(spec, path, runs)
    prof, prof_name = spec.profile()
    if prof.executor == "slurm":
        profiles.test_only(prof, profiles.check(prof))
    pending, flying, done = todo(runs, sweep_dir)
    print(f"# sweep {spec.name}: {len(runs)} runs: {len(done)} finished, {len(flying)} queued or running, "
          f"{len(pending)} to submit ({prof_name}, {prof.executor})")
    if not pending:
        return 0
    if dry:
        for r in pending:
            print(f"#  {r.name}: nca-scale train {' '.join(r.train_args)}")
        return 0
    sweep_data.prepare_data(spec, planner)
    _validate(pending)
    for r in pending:  # what the job runs, fixed at launch (a later `sweep plan` rewrites plan.json)
        Path(r.out).mkdir(parents=True, exist_ok=True)
        (Path(r.out) / RUN_FILE).write_text(json.dumps({"sweep": spec.name, **asdict(r)}, indent=1))
    env = dict(prof.env)
    if prof.executor == "local":
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // spec.parallel)))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    by_name = {r.name: r for r in runs}
    stage1 = [r for r in pending if r.stage == 1]
    stage2 = [r for r in pending if r.stage == 2]
    if prof.executor == "local":
        return _launch_local(spec, prof, prof_name, sweep_dir, stage1, stage2, env, stamp)
    ids: dict[str, str] = dict(flying)
    if stage1:
        s1_jobs = _submit(prof, prof_name, sweep_dir, f"{spec.name}-s1", stage1, [], env, stamp)
        ids.update({r.name: str(j.job_id) for r, j in zip(stage1, s1_jobs)})
    groups: dict[str | None, list[sweep_plan.Run]] = {}
    for r in stage2:
        groups.setdefault(r.parent if r.parent in ids else None, []).append(r)
    all_jobs = []
    for parent, group in groups.items():
        deps = [ids[parent]] if parent else []
        name = f"{spec.name}-s2" + (f"-{by_name[parent].name}" if parent else "")
        all_jobs += _submit(prof, prof_name, sweep_dir, name, group, deps, env, stamp)
    if wait:
        return 1 if _wait(all_jobs, [r for g in groups.values() for r in g]) else 0
    print(f"# follow it with: nca-scale sweep status {path}")
    return 0


def _launch_local(spec, prof, prof_name, sweep_dir, stage1, stage2, env, stamp) -> int:
    """This machine: stage 1, then the stage-2 runs whose stage 1 finished, `parallel` runs at a time."""
    failed = []
    for stage, runs in ((1, stage1), (2, stage2)):
        if stage == 2:
            done = sweep_results.read(sweep_dir)
            blocked = [r for r in runs if r.parent and r.parent not in done]
            for r in blocked:
                print(f"{r.name}: not started, its stage-1 run {r.parent} did not finish", file=sys.stderr)
            failed += [r.name for r in blocked]
            runs = [r for r in runs if r not in blocked]
        for i in range(0, len(runs), spec.parallel):
            chunk = runs[i:i + spec.parallel]
            failed += _wait(_submit(prof, prof_name, sweep_dir, f"{spec.name}-s{stage}", chunk, [], env, stamp), chunk)
    if failed:
        print(f"# {len(failed)} run(s) did not finish: {', '.join(failed)}; `sweep launch` again submits them",
              file=sys.stderr)
        return 1
    print(f"# sweep {spec.name} finished: {sweep_dir / sweep_results.RESULTS}")
    return 0


# ---- status -------------------------------------------------------------------------------------------
def status_rows(spec: sweep_spec.SweepSpec) -> list[dict]:
    runs = sweep_plan.plan(spec)
    done, notes = sweep_results.read_records(spec.sweep_dir)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    recorded = _jobs(spec.sweep_dir)
    states = _states(recorded)
    rows = []
    for r in runs:
        p = job_status.progress(r.out)
        evals = [m for m in sweep_results.metric_lines(r.out) if "eval_loss" in m]
        state = "FINISHED" if r.name in done else states.get(r.name, "NOT SUBMITTED")
        if state == "COMPLETED":  # the job ended well but wrote no record: it did not finish its run
            state = "INCOMPLETE"
        rows.append({"run": r.name, "stage": r.stage, "state": state, "step": p["step"], "steps": r.steps,
                     "loss": p["loss"], "eval_loss": evals[-1]["eval_loss"] if evals else None,
                     "restarts": p["restarts"], "job_id": recorded[r.name]["job_id"] if r.name in recorded else None,
                     "log": recorded[r.name]["logs"] if r.name in recorded else None})
    return rows


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


def status_command(args: list[str]) -> int:
    spec, _, opts = _spec(args, {"format"})
    rows = status_rows(spec)
    print(json.dumps(rows, indent=1) if opts.get("format", "table") == "json" else status_table(rows))
    return 0


# ---- the job --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepRunWork:
    """A launched sweep's job (nca_scale.launch.task): one run, `nca-scale sweep run SWEEP_DIR run=NAME`."""

    sweep_dir: str
    run: str

    @property
    def argv(self) -> list[str]:
        return ["sweep", "run", self.sweep_dir, f"run={self.run}"]

    def __call__(self) -> Outcome:
        return run_one(Path(self.sweep_dir), self.run)


def run_command(args: list[str]) -> int:
    positional, overrides = config.split_overrides(args)
    names = [v for k, v in overrides if k == "run"]
    if len(positional) != 1 or len(names) != 1 or len(overrides) != 1:
        raise UserError("usage: nca-scale sweep run SWEEP_DIR run=NAME (what a `sweep launch` job runs)")
    return run_one(Path(positional[0]), names[0]).exit_code


def run_one(sweep_dir: Path, name: str) -> Outcome:
    """One run of a launched sweep: train (resuming from its latest checkpoint), then append its record."""
    from nca_scale.train.config import from_args
    from nca_scale.train.entry import train

    f = sweep_dir / "runs" / name / RUN_FILE
    if not f.is_file():
        raise UserError(f"{f} does not exist: {name!r} was not launched from {sweep_dir} (nca-scale sweep launch)")
    run = json.loads(f.read_text())
    t0 = time.perf_counter()
    outcome = train(from_args(run["train_args"]), run["train_args"])
    if outcome.exit_code or int(os.environ.get("RANK", 0)) != 0:
        return outcome
    parent = sweep_results.read(sweep_dir).get(run["parent"]) if run["parent"] else None
    if parent is not None:  # what the stage-1 run really cost, rather than its plan
        run = {**run, "stage1_flops": parent["flops"]}
    sweep_results.append(sweep_dir, sweep_results.record(run["sweep"], run, time.perf_counter() - t0))
    log.info("%s: record appended to %s", name, sweep_dir / sweep_results.RESULTS)
    return outcome
