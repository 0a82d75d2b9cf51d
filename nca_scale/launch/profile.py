"""Cluster profiles: where and how a job runs (YAML in configs/cluster/ or launchers/, or a path).

`cluster=NAME` picks configs/cluster/NAME.yaml (then launchers/NAME.yaml); `cluster.KEY=VALUE` overrides one
key. Without `cluster=` the embedded default runs the job on this machine through submitit's local executor.
`check()` compares a Slurm profile with the live cluster (sinfo) before anything is queued, so an unknown
partition, more nodes or GPUs than exist, or a malformed time is an error at submit time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nca_scale import config
from nca_scale.errors import UserError
from nca_scale.launch.planner import Hardware

SEARCH = (Path("configs/cluster"), Path("launchers"))
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ClusterProfile:
    executor: Literal["local", "slurm"] = "local"  # slurm: sbatch through submitit; local: this machine
    partition: str | None = None  # Slurm partition; None = the cluster's default
    account: str | None = None  # Slurm account to charge
    qos: str | None = None  # Slurm quality of service
    nodes: int = 1  # nodes per job
    gpus_per_node: int = 0  # one task per GPU; on CPU nodes tasks_per_node processes
    tasks_per_node: int | None = None  # None = gpus_per_node, or 1 without GPUs
    cpus_per_task: int = 1  # CPU cores per task
    mem_gb: float | None = None  # per node; None = the partition's default
    time: str = "01:00:00"  # [D-]HH:MM:SS, HH:MM:SS, MM:SS or minutes
    constraint: str | None = None  # Slurm node feature constraint, e.g. h100
    exclusive: bool = False  # whole nodes only (sbatch --exclusive)
    setup: list[str] = field(default_factory=list)  # shell lines run in the batch script before srun
    env: dict[str, str] = field(default_factory=dict)  # exported to every task
    container: list[str] = field(default_factory=list)  # extra srun arguments, e.g. ["--container-image=..."]
    srun_args: list[str] = field(default_factory=list)  # extra srun arguments
    sbatch: dict[str, str] = field(default_factory=dict)  # any other sbatch option, e.g. {"mail-type": "FAIL"}
    signal_lead_s: int = 120  # USR2 this long before the time limit: must cover one step plus a save
    max_restarts: int = 3  # requeues the job asks for itself (after USR2: preemption warning or time limit)
    logs: str | None = None  # where submitit's folders go; None = RUN/launch
    hardware: Hardware = field(default_factory=Hardware)  # the GPUs, for the memory and layout planner

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1

    @property
    def world(self) -> int:
        return self.nodes * self.tasks

    @property
    def minutes(self) -> int:
        return parse_time(self.time)

    def validate(self) -> None:
        for name in ("nodes", "cpus_per_task"):
            if getattr(self, name) < 1:
                raise UserError(f"cluster.{name}={getattr(self, name)} must be >= 1")
        if self.gpus_per_node < 0 or (self.tasks_per_node is not None and self.tasks_per_node < 1):
            raise UserError("cluster.gpus_per_node must be >= 0 and cluster.tasks_per_node >= 1")
        if self.gpus_per_node and self.tasks_per_node and self.tasks_per_node != self.gpus_per_node:
            raise UserError(f"cluster.tasks_per_node={self.tasks_per_node} != gpus_per_node={self.gpus_per_node}: "
                            "nca-scale runs one task per GPU")
        minutes = self.minutes
        if self.signal_lead_s >= minutes * 60:
            raise UserError(f"cluster.signal_lead_s={self.signal_lead_s} is not shorter than cluster.time={self.time}")
        if self.max_restarts < 0:
            raise UserError("cluster.max_restarts must be >= 0")
        if self.executor == "local" and self.nodes > 1:
            raise UserError("the local executor runs on this machine only: nodes must be 1 (use a Slurm profile)")
        self.hardware.validate()


def parse_time(text: str) -> int:
    """Slurm time formats -> whole minutes (rounded up); a UserError for anything else."""
    s = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?", s)
    bad = UserError(f"cluster.time={text!r} is not a Slurm time: use [D-]HH:MM:SS, HH:MM:SS, MM:SS or minutes")
    if not m or not s:
        raise bad
    days, a, b, c = m.groups()
    if days is not None and b is None:  # D-HH
        h, mi, sec = int(a), 0, 0
    elif c is not None:
        h, mi, sec = int(a), int(b), int(c)
    elif b is not None:
        h, mi, sec = (int(a), int(b), 0) if days else (0, int(a), int(b))
    else:
        h, mi, sec = 0, int(a), 0
    if (b is not None and int(b) >= 60) or (c is not None and int(c) >= 60) or (days is not None and h >= 24):
        raise bad
    total = ((int(days or 0) * 24 + h) * 60 + mi) * 60 + sec
    if total <= 0:
        raise UserError(f"cluster.time={text!r} must be positive")
    return -(-total // 60)


def find(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or "/" in name:
        if p.is_file():
            return p
        raise UserError(f"cluster profile {name} does not exist")
    for base in (Path.cwd(), _PACKAGE_ROOT):
        for d in SEARCH:
            for ext in (".yaml", ".yml"):
                cand = base / d / f"{name}{ext}"
                if cand.is_file():
                    return cand
    known = sorted({q.stem for base in (Path.cwd(), _PACKAGE_ROOT) for d in SEARCH if (base / d).is_dir()
                    for q in (base / d).glob("*.y*ml")})
    raise UserError(f"unknown cluster profile {name!r}; known: {', '.join(known) or 'none'} "
                    "(configs/cluster/NAME.yaml or launchers/NAME.yaml, or a path)")


def load(name: str | None, overrides: list[tuple[str, str]] = ()) -> tuple[ClusterProfile, str]:
    """(profile, its name) from `cluster=NAME` (None = the embedded local default) and cluster.KEY overrides."""
    path = find(name) if name else None
    prof = config.load(ClusterProfile, path, overrides)
    return prof, (Path(name).stem if name else "local")


# ---- the live cluster ----------------------------------------------------------------------------------
def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found: this machine has no Slurm client (use the local executor)") from None
    except subprocess.CalledProcessError as e:
        raise UserError(f"`{' '.join(cmd)}` failed: {(e.stderr or e.stdout).strip()[:300]}") from None


def _gpus(gres: str) -> int:
    """GPUs per node from a sinfo %G field such as 'gpu:a100:8(S:0-1),shard:8' or '(null)'."""
    n = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if m:
            n += int(m.group(1))
    return n


def partitions() -> dict[str, dict]:
    """partition -> {nodes, cpus (per node, min), mem_mb (per node, min), gpus (per node, max), default, features}."""
    if shutil.which("sinfo") is None:
        raise UserError("sinfo not found: this machine has no Slurm client (use the local executor)")
    out = _run(["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G|%f"])
    parts: dict[str, dict] = {}
    for line in out.splitlines():
        pname, node, cpus, mem, gres, feats = line.split("|")
        default = pname.endswith("*")
        pname = pname.rstrip("*")
        p = parts.setdefault(pname, {"nodes": set(), "cpus": None, "mem_mb": None, "gpus": 0, "default": default,
                                     "features": set()})
        p["nodes"].add(node)
        c, m = int(re.sub(r"\D", "", cpus) or 0), int(re.sub(r"\D", "", mem) or 0)
        p["cpus"] = c if p["cpus"] is None else min(p["cpus"], c)
        p["mem_mb"] = m if p["mem_mb"] is None else min(p["mem_mb"], m)
        p["gpus"] = max(p["gpus"], _gpus(gres))
        p["features"].update(f for f in feats.split(",") if f and f != "(null)")
    return parts


def check(prof: ClusterProfile) -> str:
    """Check a Slurm profile against the live cluster; returns the partition used."""
    parts = partitions()
    if not parts:
        raise UserError("sinfo lists no partitions: is the cluster up?")
    name = prof.partition or next((n for n, p in parts.items() if p["default"]), None)
    if name is None:
        raise UserError(f"the cluster has no default partition; set cluster.partition (one of {', '.join(parts)})")
    if name not in parts:
        raise UserError(f"unknown partition {name!r}; this cluster has: {', '.join(sorted(parts))}")
    p = parts[name]
    if prof.nodes > len(p["nodes"]):
        raise UserError(f"cluster.nodes={prof.nodes} but partition {name!r} has {len(p['nodes'])} nodes")
    if prof.gpus_per_node > p["gpus"]:
        raise UserError(f"cluster.gpus_per_node={prof.gpus_per_node} but nodes of partition {name!r} have "
                        f"{p['gpus']} GPUs")
    if p["cpus"] and prof.tasks * prof.cpus_per_task > p["cpus"]:
        raise UserError(f"{prof.tasks} tasks x cluster.cpus_per_task={prof.cpus_per_task} per node exceeds the "
                        f"{p['cpus']} CPUs of partition {name!r}'s nodes")
    if prof.mem_gb and p["mem_mb"] and prof.mem_gb * 1024 > p["mem_mb"]:
        raise UserError(f"cluster.mem_gb={prof.mem_gb} exceeds the {p['mem_mb']} MB of partition {name!r}'s nodes")
    return name


def test_only(prof: ClusterProfile, partition: str) -> None:
    """`sbatch --test-only` with the profile's resources: Slurm's own verdict (account, qos, constraint, limits)
    without queuing anything."""
    cmd = ["sbatch", "--test-only", f"--partition={partition}", f"--nodes={prof.nodes}",
           f"--ntasks-per-node={prof.tasks}", f"--cpus-per-task={prof.cpus_per_task}", f"--time={prof.minutes}"]
    cmd += [f"--{k}={v}" for k, v in (("account", prof.account), ("qos", prof.qos), ("constraint", prof.constraint))
            if v]
    if prof.gpus_per_node:
        cmd.append(f"--gpus-per-node={prof.gpus_per_node}")
    if prof.mem_gb:
        cmd.append(f"--mem={int(prof.mem_gb * 1024)}M")
    proc = subprocess.run([*cmd, "--wrap", "true"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        msg = " ".join((proc.stderr or proc.stdout).split())
        raise UserError(f"Slurm rejects this profile: {msg[:400]}")
