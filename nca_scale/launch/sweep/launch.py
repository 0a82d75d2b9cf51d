"""`nca-scale sweep launch` as a library call: run a study (a sweep spec, configs/sweeps/) through submitit. The
CLI (nca_scale/cli/sweep.py) parses the command line into a SweepSpec and LaunchOptions.

launch = plan (SWEEP_DIR/plan.json) -> text data for the stage-2 domains and text arms (sweep/data.py: corpus
build, tokenizer, tokenize; each step cached) -> submit what is neither finished (a record in
SWEEP_DIR/results.jsonl) nor queued or running on Slurm (sweep/status.py). Stage-1 runs go out as one job array;
on Slurm each stage-1 run's stage-2 runs are an array that depends on it (afterok), on this machine they start
when stage 1 is done. Every job is a SweepRunWork (sweep/__init__.py, `nca-scale sweep run SWEEP_DIR run=NAME`):
the training, then the run's record appended to results.jsonl. Jobs are recorded like `nca-scale submit`'s
(SWEEP_DIR/launch/jobs.jsonl, launch/jobs.py), so `nca-scale status SWEEP_DIR` works as well. Progress goes to
the log (nca_scale/logs.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nca_scale.errors import UserError
from nca_scale.launch import jobs
from nca_scale.launch import profile as profiles
from nca_scale.launch import submit as submitting
from nca_scale.launch.sweep import RUN_FILE, SweepRunWork
from nca_scale.launch.sweep import data as sweep_data
from nca_scale.launch.sweep import plan as sweep_plan
from nca_scale.launch.sweep import results as sweep_results
from nca_scale.launch.sweep import spec as sweep_spec
from nca_scale.launch.sweep.status import diverged, todo
from nca_scale.launch.task import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchOptions:
    wait: bool = False  # on Slurm, wait for the stage-2 jobs to end (on this machine a launch always waits)
    dry_run: bool = False  # list the runs it would submit; prepare and queue nothing; no Slurm needed
    check_cluster: bool = False  # with dry_run: also check the profile and the recorded jobs on the live cluster
    retry_diverged: bool = False  # submit again the runs that ended on a non-finite loss (after a code or data fix)


@dataclass(frozen=True)
class _Launch:
    """What every submission of one `sweep launch` shares."""

    spec: sweep_spec.SweepSpec
    prof: profiles.ClusterProfile
    prof_name: str
    env: dict
    stamp: str

    def submit(self, name: str, runs: list[sweep_plan.Run], deps: list[str]) -> list:
        prof, sweep_dir = self.prof, self.spec.sweep_dir
        logs = Path(prof.logs) / name if prof.logs else sweep_dir / "launch"
        ex = jobs.make_executor(prof, logs, name, deps)
        work = [SweepRunWork(str(sweep_dir), r.name) for r in runs]
        submitted = jobs.submit(ex, prof, [Task(w, self.env, prof.max_restarts, prof.minutes, prof.signal_lead_s)
                                           for w in work], array=True)
        for r, w, job in zip(runs, work, submitted):
            rec = jobs.record(job, submission=self.stamp, name=name, cluster=self.prof_name, executor=prof.executor,
                              argv=w.argv, out=Path(r.out), cell={"run": r.name, "stage": r.stage}, after=deps,
                              submitted=self.stamp)
            jobs.write_record(rec, (Path(r.out), sweep_dir))
            log.info("submitted %s (%s%s): %s", job.job_id, self.prof_name,
                     ", after " + ",".join(deps) if deps else "", r.name)
        return submitted


def _wait(submitted: list, runs: list[sweep_plan.Run]) -> list[str]:
    """The names of the runs whose job failed, once every job has ended."""
    failed = []
    for (job, error), r in zip(jobs.wait(submitted), runs):
        if error is None:
            log.info("%s: %s done", job.job_id, r.name)
        else:
            failed.append(r.name)
            log.warning("%s: %s FAILED: %s\n  log %s", job.job_id, r.name, error, job.paths.stdout)
    return failed


def _validate(runs: list[sweep_plan.Run]) -> None:
    """Every train command line checked before anything is queued (init_from names checkpoints to come)."""
    from nca_scale.train.config import text_manifest

    for r in runs:
        try:
            submitting.validate_train(r.train_args, after=r.parent is not None)
        except UserError as e:
            raise UserError(f"run {r.name}: {e}") from None
        data = r.cfg.data
        if data.source == "text_shards" and data.shards:
            need, have = r.steps * r.cfg.batch_size, text_manifest(data.shards)["sequences"]
            if need > have:
                raise UserError(f"run {r.name} trains on {need} sequences, {data.shards} holds {have}: lower its "
                                "tokens, or raise data.train_tokens (or use a bigger corpus)")


def launch(spec: sweep_spec.SweepSpec, spec_path: str, opts: LaunchOptions) -> int:
    """Plan, prepare the data, and submit every run that is neither finished nor in flight; the exit status."""
    planner = sweep_plan.Planner(spec)
    runs = planner.plan()
    sweep_plan.write(spec, spec_path, runs)
    prof, prof_name = spec.profile()
    live = prof.executor == "slurm" and (not opts.dry_run or opts.check_cluster)
    if live:
        profiles.test_only(prof, profiles.check(prof))
    elif prof.executor == "slurm":
        log.info("# offline dry run: skipped the live checks (sinfo, sbatch --test-only, the states of jobs already "
                 "submitted: runs recorded as submitted are listed as to submit); check_cluster=true runs them")
    pending, flying, done = todo(runs, spec.sweep_dir, live=live or prof.executor != "slurm")
    if not opts.retry_diverged and (bad := [r.name for r in pending if diverged(r)]):
        pending = [r for r in pending if r.name not in bad]
        log.warning("# %d runs diverged (a non-finite loss; `sweep status` says DIVERGED) and are not submitted "
                    "again, where they would diverge at the same step: %s; retry_diverged=true submits them",
                    len(bad), ", ".join(bad))
    log.info("# sweep %s: %d runs: %d finished, %d queued or running, %d to submit (%s, %s)", spec.name, len(runs),
             len(done), len(flying), len(pending), prof_name, prof.executor)
    if not pending:
        return 0
    if opts.dry_run:
        for r in pending:
            log.info("#  %s: nca-scale train %s", r.name, " ".join(r.train_args))
        return 0
    sweep_data.prepare_data(spec, planner)
    _validate(pending)
    for r in pending:  # what the job runs, fixed at launch (a later `sweep plan` rewrites plan.json)
        Path(r.out).mkdir(parents=True, exist_ok=True)
        (Path(r.out) / RUN_FILE).write_text(json.dumps({"sweep": spec.name, **r.to_json()}, indent=1))
    env = dict(prof.env)
    if prof.executor == "local":
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // spec.parallel)))
    ctx = _Launch(spec, prof, prof_name, env, time.strftime("%Y-%m-%dT%H:%M:%S"))
    stage1 = [r for r in pending if r.stage == 1]
    stage2 = [r for r in pending if r.stage == 2]
    if prof.executor == "local":
        return _launch_local(ctx, stage1, stage2)
    failed = _launch_slurm(ctx, stage1, stage2, flying, opts.wait)
    if failed is None:
        log.info("# follow it with: nca-scale sweep status %s", spec_path)
    return 1 if failed else 0


def _launch_slurm(ctx: _Launch, stage1: list[sweep_plan.Run], stage2: list[sweep_plan.Run], flying: dict[str, str],
                  wait: bool) -> list[str] | None:
    """Stage 1 as one array; each stage-1 run's stage-2 runs as an array after it. The failed runs when
    waiting, else None."""
    ids: dict[str, str] = dict(flying)
    if stage1:
        s1_jobs = ctx.submit(f"{ctx.spec.name}-s1", stage1, [])
        ids.update({r.name: str(j.job_id) for r, j in zip(stage1, s1_jobs)})
    groups: dict[str | None, list[sweep_plan.Run]] = {}
    for r in stage2:
        groups.setdefault(r.parent if r.parent in ids else None, []).append(r)
    all_jobs = []
    for parent, group in groups.items():
        deps = [ids[parent]] if parent else []
        all_jobs += ctx.submit(f"{ctx.spec.name}-s2" + (f"-{parent}" if parent else ""), group, deps)
    return _wait(all_jobs, [r for g in groups.values() for r in g]) if wait else None


def _launch_local(ctx: _Launch, stage1: list[sweep_plan.Run], stage2: list[sweep_plan.Run]) -> int:
    """This machine: stage 1, then the stage-2 runs whose stage 1 finished, `parallel` runs at a time."""
    spec, failed = ctx.spec, []
    for stage, runs in ((1, stage1), (2, stage2)):
        if stage == 2:
            done = sweep_results.read(spec.sweep_dir)
            blocked = [r for r in runs if r.parent and r.parent not in done]
            for r in blocked:
                log.warning("%s: not started, its stage-1 run %s did not finish", r.name, r.parent)
            failed += [r.name for r in blocked]
            runs = [r for r in runs if r not in blocked]
        for i in range(0, len(runs), spec.parallel):
            chunk = runs[i:i + spec.parallel]
            failed += _wait(ctx.submit(f"{spec.name}-s{stage}", chunk, []), chunk)
    if failed:
        log.warning("# %d run(s) did not finish: %s; `sweep launch` again submits them", len(failed), ", ".join(failed))
        return 1
    log.info("# sweep %s finished: %s", spec.name, spec.sweep_dir / sweep_results.RESULTS)
    return 0
