"""`nca-scale submit` as a library call: `submit(command, options)` runs any nca-scale command as submitit jobs.

The cli layer (nca_scale/cli/submit.py) parses `[COMMAND] CONFIG [cluster=PROFILE] [submit keys] [key=value ...]`
into a `Command` (what runs; it resolves COMMAND and passes its own entry point for commands other than train)
and `SubmitOptions`, and prints what this returns. Submit's own keys:

  cluster=NAME|PATH   profile (configs/cluster/, launchers/); none = this machine, submitit's local executor
  cluster.KEY=VALUE   override one profile key (partition, nodes, time, ...)
  sweep.KEY=A,B,...   one job-array cell per combination of values; cell i writes to OUT/cell_<i>
  after=ID|RUN,...    start only after these jobs (ids, or runs/sweeps submitted earlier) succeeded; if one
                      fails, this job is cancelled and never runs
  name=NAME           the Slurm job name (default: the out directory's name)
  wait=true|false     wait for the result (default: true for the local executor, false on Slurm)
  dry_run=true        check everything offline and print the batch script; queue nothing
  check_cluster=true  with dry_run: also check the profile against the live cluster (sinfo, sbatch --test-only)

Everything is checked before anything is queued: the command's config, the profile against the live cluster
(sinfo and `sbatch --test-only`). A dry run needs no Slurm at all: it checks the config, profile and layout
offline and says which live checks it skipped (check_cluster=true runs them). Each submission is recorded in
RUN/launch/jobs.jsonl (what `nca-scale status` reads) and in the index $NCA_SCALE_HOME/jobs.jsonl (default ~/.nca_scale): nca_scale.launch.jobs.
"""

from __future__ import annotations

import itertools
import json
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from nca_scale import config
from nca_scale.errors import UserError
from nca_scale.launch import jobs, planner, safety
from nca_scale.launch import profile as profiles
from nca_scale.launch.task import CommandWork, Task, TrainWork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmitOptions:
    cluster: str | None = None
    name: str | None = None
    after: list[str] = field(default_factory=list)
    wait: bool | None = None
    dry_run: bool = False
    check_cluster: bool = False  # a dry run also checks the profile against the live cluster (sinfo, sbatch --test-only)
    cluster_keys: list[tuple[str, str]] = field(default_factory=list)  # cluster.KEY=VALUE, as (KEY, VALUE)


@dataclass(frozen=True)
class Command:
    """What a submission runs: `nca-scale WORDS CONFIG key=value ...` (sweep.KEY= overrides make cells)."""

    words: list[str]  # ["train"], ["generate"], ["eval", "report"], ...
    config: str
    overrides: list[tuple[str, str]] = field(default_factory=list)
    main: Callable[[list[str]], int] | None = None  # runs a command line in the job (every command but train)


@dataclass
class Submission:
    """What `submit` did: the batch script text of a dry run, or the jobs it queued and their records."""

    dry_run: str | None = None
    jobs: list = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    wait: bool = False  # whether the caller should wait for the jobs (wait=, or the local executor's default)


def _sweep_cells(sweep: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    axes = []
    for key, raw in sweep:
        values = config.yaml.safe_load(raw) if raw.strip().startswith("[") else raw.split(",")
        if not isinstance(values, list) or not values:
            raise UserError(f"sweep.{key}={raw!r}: give comma-separated values, e.g. sweep.{key}=1,2,3")
        axes.append([(key, v if isinstance(v, str) else json.dumps(v)) for v in values])
    return [list(c) for c in itertools.product(*axes)]


@dataclass
class Planned:
    argv: list[str]  # the nca-scale command line a task runs
    out: Path  # the run directory (records, metrics)
    cell: dict  # sweep values of this cell ({} outside sweeps)
    cfg: object = None  # its TrainConfig, validated for the profile's world size (training only)
    assessment: object = None  # the planner's verdict on a GPU profile (planner.Assessment)


def _out_of(words: list[str], path: str, overrides: list[tuple[str, str]]) -> str | None:
    for k, v in reversed(overrides):
        if k == "out":
            return v
    data = config.read_yaml(path)
    return data.get("out") if words == ["train"] else None


def validate_train(argv: list[str], after: bool):
    """The TrainConfig of a training command line, validated (layout, batch, data) as its ranks will see it."""
    from nca_scale.train.config import from_args

    if after:  # init_from/resume may name checkpoints the jobs we wait for will write
        argv = [a for a in argv if not a.startswith(("init_from=", "resume="))]
    return from_args(argv)


def plan(words: list[str], path: str, overrides: list[tuple[str, str]], prof: profiles.ClusterProfile,
         after: bool) -> tuple[list[Planned], Path]:
    """Every task's command line, checked; and the directory the submission is recorded in."""
    sweep = [(k[len("sweep."):], v) for k, v in overrides if k.startswith("sweep.")]
    plain = [(k, v) for k, v in overrides if not k.startswith("sweep.")]
    out = _out_of(words, path, plain)
    if out is None or "://" in out:
        out = str(Path("runs/launch") / Path(path).stem)
    train = words == ["train"]
    if train:  # the previous release's flat names (nproc=, tp=, ...) renamed here, once, with their warning
        from nca_scale.train.config import TrainConfig

        plain = config.renamed_overrides(TrainConfig, plain)
    if train and prof.executor == "slurm":
        given = [v for k, v in plain if k == "parallel.nproc"]
        if given and int(given[-1]) != prof.world:
            raise UserError(f"parallel.nproc={given[-1]} but the profile runs {prof.nodes} node(s) x {prof.tasks} "
                            f"task(s) = {prof.world} processes; drop parallel.nproc= or change "
                            "cluster.nodes/tasks_per_node")
        plain = [(k, v) for k, v in plain if k != "parallel.nproc"] + [("parallel.nproc", str(prof.world))]
    if train and any(k == "overwrite" for k, _ in plain):
        raise UserError("overwrite=true is for `nca-scale train` only: a submitted run resumes when requeued; move "
                        "the old run folder aside yourself (mv RUN RUN.old) and submit again")
    if train and not any(k == "resume" for k, _ in plain):
        plain.append(("resume", "auto"))  # a requeued or resubmitted run continues from its latest checkpoint
    cells = _sweep_cells(sweep) if sweep else [[]]
    planned = []
    for i, cell in enumerate(cells):
        over = plain + cell
        cell_out = Path(out) / f"cell_{i:03d}" if sweep else Path(out)
        if sweep or train:
            over = [(k, v) for k, v in over if k != "out"] + [("out", str(cell_out))]
        argv = [*words, path, *(f"{k}={v}" for k, v in over)]
        cfg = validate_train(argv[1:], after) if train else None
        verdict = None
        if cfg is not None and prof.executor == "slurm" and prof.gpus_per_node:
            # memory per GPU and step time (launch/planner.py): refused when it cannot fit, the micro-batch lowered
            # (auto_micro_batch) when that makes it fit
            verdict = planner.assess(cfg, prof.hardware, prof.nodes, prof.gpus_per_node)
            if verdict.overrides:
                argv += [f"{k}={v}" for k, v in verdict.overrides]
                cfg = validate_train(argv[1:], after)
                log.info("%s", next(line for line in verdict.lines() if line.startswith("re-planned")))
        planned.append(Planned(argv, cell_out, dict(cell), cfg, verdict))
    return planned, Path(out)


def _work(command: Command, argv: list[str]):
    if command.words == ["train"]:
        return TrainWork(tuple(argv[1:]))
    return CommandWork(command.main, argv)


def layout(prof: profiles.ClusterProfile, cfg) -> str:
    """One line: where the ranks run and how the global batch is split (what a dry run prints)."""
    if prof.executor == "local":
        where = f"this machine, {cfg.world} process(es)"
    else:
        per_node = f"{prof.gpus_per_node} GPU(s)" if prof.gpus_per_node else f"{prof.tasks} task(s)"
        where = f"{prof.nodes} node(s) x {per_node} = {cfg.world} ranks"
    return (f"layout: {where}; tp {cfg.parallel.tp} x pp {cfg.parallel.pp} x dp {cfg.data_parallel}; batch {cfg.batch_size} = "
            f"micro-batch {cfg.chosen_micro_batch()} x {cfg.grad_accum} accumulation x dp {cfg.data_parallel}")


def _dry_run(prof, prof_name: str, planned: list[Planned], logs: Path, ex, offline: bool) -> str:
    lines = [f"# {len(planned)} job(s) on {prof_name} ({prof.executor}); logs in {logs}; nothing queued"]
    if offline:
        lines.append("# offline dry run: config, profile and layout checked here; skipped the live checks (sinfo: "
                     "partition, nodes, GPUs, CPUs, memory; sbatch --test-only); check_cluster=true runs them")
    for p in planned:
        lines.append("#  nca-scale " + " ".join(shlex.quote(a) for a in p.argv))
        if p.cfg is not None:
            lines.append("#  " + layout(prof, p.cfg))
        if p.assessment is not None:
            lines += ["#  " + line for line in p.assessment.lines()]
    if prof.executor == "slurm":
        lines.append(ex._make_submission_file_text("python -u -m submitit.core._submit FOLDER", "UID"))
    return "\n".join(lines)


def submit(command: Command, opt: SubmitOptions) -> Submission:
    """Check everything, then queue `command` (one job, or an array of sweep cells) and record it."""
    prof, prof_name = profiles.load(opt.cluster, opt.cluster_keys)
    safety.check_profile(prof)  # before sbatch --test-only sees it
    words, path, rest = command.words, command.config, command.overrides
    if words != ["train"] and prof.world > 1:  # only training is multi-process; other commands run once
        log.info("note: `%s` runs as a single task (the profile's %d tasks are for training)", " ".join(words),
                 prof.world)
        prof = replace(prof, nodes=1, tasks_per_node=1, gpus_per_node=min(prof.gpus_per_node, 1))
    if opt.after and prof.executor == "local":
        raise UserError("after= needs a Slurm profile (the local executor has no dependencies); run the stages in order")
    # a dry run checks everything but the live cluster, whose Slurm client may be missing, down or another
    # cluster's; check_cluster=true asks for the live checks too
    offline = opt.dry_run and prof.executor == "slurm" and not opt.check_cluster
    if prof.executor == "slurm" and not offline:  # the profile against the live cluster, then the config
        partition = profiles.check(prof)
        profiles.test_only(prof, partition)
    planned, out = plan(words, path, rest, prof, bool(opt.after))
    deps = jobs.dependencies(opt.after)
    name = opt.name or out.name
    logs = Path(prof.logs) / name if prof.logs else out / "launch"
    safety.check_submission(name, path, rest, str(logs))  # before the batch script and the pickled job
    ex = jobs.make_executor(prof, logs, name, deps, script_only=offline)
    if opt.dry_run:
        return Submission(dry_run=_dry_run(prof, prof_name, planned, logs, ex, offline))
    tasks = [Task(_work(command, p.argv), dict(prof.env), prof.max_restarts, prof.minutes, prof.signal_lead_s)
             for p in planned]
    submitted = jobs.submit(ex, prof, tasks, array=len(tasks) > 1)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    records = []
    for p, job in zip(planned, submitted):
        rec = jobs.record(job, submission=f"{stamp}-{submitted[0].job_id}", name=name, cluster=prof_name,
                          executor=prof.executor, argv=p.argv, out=p.out, cell=p.cell, after=deps, submitted=stamp)
        records.append(rec)
        jobs.write_record(rec, {p.out, out})
    if len(planned) > 1:
        (out / "sweep.json").write_text(json.dumps({"cells": [{"out": str(p.out), **p.cell} for p in planned]},
                                                   indent=1))
    wait = opt.wait if opt.wait is not None else prof.executor == "local"
    return Submission(jobs=submitted, records=records, wait=wait)
