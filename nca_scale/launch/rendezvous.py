"""torch.distributed rendezvous from the Slurm environment.

Under `srun` (one task per GPU, or per process on CPU) each task exports what torchrun would have set:
RANK = SLURM_PROCID, LOCAL_RANK = SLURM_LOCALID, WORLD_SIZE = SLURM_NTASKS, LOCAL_WORLD_SIZE = the tasks on
this node, MASTER_ADDR = the first host of SLURM_JOB_NODELIST, MASTER_PORT = a port derived from the job id
(and restart count, so a requeued job never meets its predecessor's store). Under torchrun (RANK already set)
nothing is changed, so the trainer sees the same variables either way and has one code path.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess

from submitit.slurm.slurm import SlurmParseException, _parse_node_list

from nca_scale.errors import UserError


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's hostlist syntax -> host names: 'gpu[001-002,010],r[1-2]n[1-2]' -> ['gpu001', 'gpu002', 'gpu010',
    'r1n1', 'r1n2', 'r2n1', 'r2n2'] (zero padding kept, several bracket ranges per name). Slurm's own parser
    (`scontrol show hostnames`) where its client is installed; otherwise submitit's (a container without the
    Slurm client), which the tests hold to the same answers."""
    if shutil.which("scontrol"):
        proc = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60)
        if proc.returncode == 0 and proc.stdout.split():
            return proc.stdout.split()
    try:
        return _parse_node_list(nodelist)
    except SlurmParseException:
        raise UserError(f"SLURM_JOB_NODELIST={nodelist!r} is not a Slurm host list; set MASTER_ADDR to the first "
                        "node's address") from None


def tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """The count for node `node_id` in SLURM_TASKS_PER_NODE, e.g. '2(x3),1' -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in tasks_per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if m:
            counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node_id] if node_id < len(counts) else counts[-1]


def master_port(job_id: str, restart: str | int = 0) -> int:
    digits = int(re.sub(r"\D", "", str(job_id)) or 0)
    return 20000 + (digits * 13 + int(restart or 0) * 7919) % 20000


def slurm_env(environ: dict | None = None) -> dict[str, str]:
    """The torch.distributed variables for this Slurm task ({} outside Slurm or under torchrun)."""
    env = os.environ if environ is None else environ
    if "RANK" in env or "SLURM_PROCID" not in env:
        return {}
    node_id = int(env.get("SLURM_NODEID", 0))
    local_world = env.get("SLURM_NTASKS_PER_NODE") or str(tasks_on_node(env.get("SLURM_TASKS_PER_NODE", "1"), node_id))
    job_id = env.get("SLURM_ARRAY_JOB_ID", env.get("SLURM_JOB_ID", "0")) + env.get("SLURM_ARRAY_TASK_ID", "")
    return {
        "RANK": env["SLURM_PROCID"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": env.get("SLURM_NTASKS", "1"),
        "LOCAL_WORLD_SIZE": local_world.split("(")[0],
        "GROUP_RANK": str(node_id),
        "MASTER_ADDR": env.get("MASTER_ADDR")
        or expand_nodelist(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "localhost")))[0],
        "MASTER_PORT": env.get("MASTER_PORT") or str(master_port(job_id, env.get("SLURM_RESTART_COUNT", 0))),
    }


def describe(values: dict[str, str]) -> str:
    """One line for the task's log: this rank, its node and address, and the master address it meets (so a
    log shows which network the job's ranks use)."""
    who = f"rendezvous: rank {values['RANK']} of {values['WORLD_SIZE']} on {socket.gethostname()}"
    master, port = values["MASTER_ADDR"], int(values["MASTER_PORT"])
    try:
        master_ip = socket.gethostbyname(master)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((master_ip, port))  # UDP: nothing is sent; the kernel picks the route and our source address
            own = s.getsockname()[0]
    except OSError as e:
        return f"{who}: MASTER_ADDR={master} is not reachable from here ({e})"
    return f"{who} ({own}) -> MASTER_ADDR={master} ({master_ip}), MASTER_PORT={port}"


def export() -> dict[str, str]:
    """Set the variables in os.environ; returns what was set."""
    values = slurm_env()
    os.environ.update(values)
    return values
