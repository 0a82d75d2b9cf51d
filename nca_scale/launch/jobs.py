"""Jobs through submitit, for `nca-scale submit` and `nca-scale sweep launch`: the executor of a cluster profile,
submitting tasks (one job, or an array), the job records, and waiting for results.

Every submitted job is recorded as one JSON line in RUN/launch/jobs.jsonl (and SWEEP_DIR/launch/jobs.jsonl for
a sweep's runs) and in the index $NCA_SCALE_HOME/jobs.jsonl (default ~/.nca_scale): what `nca-scale status`
reads. A record: submission (the id of the submission it was part of), job_id, name, cluster, executor, argv
(the nca-scale command line the job runs), out, cell, logs, after (job ids it waited for), submitted (time).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

from nca_scale.errors import UserError
from nca_scale.launch import profile as profiles


def index_path() -> Path:
    return Path(os.environ.get("NCA_SCALE_HOME", Path.home() / ".nca_scale")) / "jobs.jsonl"


def make_executor(prof: profiles.ClusterProfile, folder: Path, name: str, deps: list[str], script_only: bool = False):
    """submitit's executor for the profile. script_only: it only writes the batch script (a dry run on a
    machine without the Slurm client, where submitit's SlurmExecutor refuses to exist)."""
    import submitit

    if prof.executor == "local":
        ex = submitit.LocalExecutor(folder=str(folder / "%j"))
        ex.update_parameters(timeout_min=prof.minutes, tasks_per_node=1, nodes=1)
        return ex
    executor = submitit.SlurmExecutor
    if script_only:  # affinity() is submitit's check for `srun` on PATH
        executor = type("ScriptOnlySlurmExecutor", (executor,), {"affinity": classmethod(lambda cls: 1)})
    ex = executor(folder=str(folder / "%j"), max_num_timeout=prof.max_restarts)
    extra = {"requeue": True, "chdir": os.getcwd(), **prof.sbatch}  # config paths are relative to here
    if deps:
        extra.update({"dependency": "afterok:" + ":".join(deps), "kill-on-invalid-dep": "yes"})
    # the batch shell must survive a USR2 meant for the tasks (Slurm 22.05 signals it too when the warning
    # comes before the step has started)
    setup = ["trap 'echo \"batch script: SIGUSR2 (the tasks handle it)\"' USR2"]
    if prof.cpus_per_task:
        # since Slurm 22.05 srun does not inherit the job's --cpus-per-task: without this each task gets one core
        # (the NCA data each rank generates on the fly, OMP threads); a profile's env may still override it
        setup.append(f"export SRUN_CPUS_PER_TASK={int(prof.cpus_per_task)}")
    setup += [f"export {k}={shlex.quote(str(v))}" for k, v in prof.env.items()] + list(prof.setup)
    # a task that fails ends the step: the others would otherwise wait for it until a collective times out
    srun_args = ["--kill-on-bad-exit=1", *prof.container, *prof.srun_args]
    params = dict(
        job_name=name, partition=prof.partition, account=prof.account, qos=prof.qos, nodes=prof.nodes,
        ntasks_per_node=prof.tasks, cpus_per_task=prof.cpus_per_task, time=prof.minutes,
        constraint=prof.constraint, setup=setup, srun_args=srun_args,
        signal_delay_s=prof.signal_lead_s, additional_parameters=extra, stderr_to_stdout=True,
    )
    if prof.gpus_per_node:
        params["gpus_per_node"] = prof.gpus_per_node
    if prof.mem_gb:
        params["mem"] = f"{int(prof.mem_gb * 1024)}M"
    if prof.exclusive:
        params["exclusive"] = True
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def submit(ex, prof: profiles.ClusterProfile, tasks: list, array: bool) -> list:
    """The submitit jobs of `tasks`: one job when `array` is false (a single task), else one job array (on Slurm
    every task may run at once)."""
    if not array:
        return [ex.submit(tasks[0])]
    if prof.executor == "slurm":
        ex.update_parameters(array_parallelism=len(tasks))
    with ex.batch():
        return [ex.submit(t) for t in tasks]


def record(job, *, submission: str, name: str, cluster: str, executor: str, argv: list[str], out: Path,
           cell: dict, after: list[str], submitted: str) -> dict:
    """The jobs.jsonl line of a submitted job."""
    return {"submission": submission, "job_id": str(job.job_id), "name": name, "cluster": cluster,
            "executor": executor, "argv": argv, "out": str(Path(out).resolve()), "cell": cell,
            "logs": str(Path(job.paths.stdout).resolve()).replace("%t", "0"), "after": after, "submitted": submitted}


def write_record(rec: dict, dirs) -> None:
    """Append `rec` to DIR/launch/jobs.jsonl of each directory and to the index."""
    for d in dirs:
        _append(Path(d) / "launch" / "jobs.jsonl", rec)
    _append(index_path(), rec)


def _append(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")


def has_records(target: str) -> bool:
    """Whether run or sweep directory `target` holds jobs recorded by `nca-scale submit`."""
    return (Path(target) / "launch" / "jobs.jsonl").is_file()


def records(targets: list[str]) -> list[dict]:
    """The latest record of every job in RUN/SWEEP directories (or in the index when none is given)."""
    files = []
    if not targets:
        if not index_path().is_file():
            raise UserError(f"no jobs recorded yet ({index_path()}); submit one with `nca-scale submit`")
        files = [index_path()]
    for t in targets:
        f = Path(t) / "launch" / "jobs.jsonl"
        if not f.is_file():
            raise UserError(f"{t} has no recorded jobs ({f}); pass a run or sweep directory written by nca-scale submit")
        files.append(f)
    seen: dict[str, dict] = {}
    for f in files:
        for line in f.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                seen[rec["job_id"]] = rec
    return list(seen.values())


def dependencies(after: list[str]) -> list[str]:
    """Job ids from `after=`: ids as given, and for a run or sweep directory every job of its last submission."""
    ids = []
    for item in after:
        if item.replace("_", "").isdigit():
            ids.append(item)
            continue
        rec = Path(item) / "launch" / "jobs.jsonl"
        if not rec.is_file():
            raise UserError(f"after={item}: neither a job id nor a run/sweep directory with {rec}")
        lines = [json.loads(line) for line in rec.read_text().splitlines() if line.strip()]
        last = lines[-1]["submission"]
        ids += [r["job_id"] for r in lines if r["submission"] == last]
    return ids


def wait(jobs: list) -> Iterator[tuple[object, str | None]]:
    """(job, None) or (job, the last line of its error) for each job in turn, once it has ended."""
    for job in jobs:
        try:
            job.results()
            yield job, None
        except Exception as e:  # submitit raises the task's error (or UncompletedJobError) here
            yield job, str(e).strip().splitlines()[-1][:300]
