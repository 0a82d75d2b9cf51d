"""Helpers for the launch tests: they drive the real `nca-scale submit` / `status` commands and Slurm's own
clients (no mocks)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[2]
CLI = Path(sys.executable).parent / "nca-scale"
# the tiny recipe of tests/train (4 layers, small rule banks), no wandb, no progress bar
FAST = ["model.n_layers=4", "data.nca.bank.size=8", "data.nca.bank.val_size=4", "wandb=disabled", "progress=false",
        "eval_every=0"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}

# node lists as real clusters write them, expanded by hand (Slurm's own `scontrol show hostnames` gives the same:
# test_slurm.py checks that on the live cluster)
NODELISTS = {
    "gpu[001-004,010]": ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010"],
    "r[1-2]n[1-2]": ["r1n1", "r1n2", "r2n1", "r2n2"],
    "a1,b[3-4]": ["a1", "b3", "b4"],
    "n[1-2],gpu[07-09,12],login": ["n1", "n2", "gpu07", "gpu08", "gpu09", "gpu12", "login"],
    "node[08-11]": ["node08", "node09", "node10", "node11"],
    "node[8-10]": ["node8", "node9", "node10"],
    "cn9-ib,cn10-ib": ["cn9-ib", "cn10-ib"],  # Slurm writes names with a suffix after the digits uncompressed
}


def cluster_up() -> str | None:
    """None when a Slurm cluster answers with two idle-or-busy nodes; else why not."""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return "no Slurm client (sinfo) on this machine"
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return f"sinfo failed: {last[:200]}"
    nodes = {line.split()[0] for line in out.stdout.splitlines() if line.split()[1] not in ("down", "drain", "down*")}
    if len(nodes) < 2:
        return f"the cluster has {len(nodes)} usable nodes, the tests need 2 (tools/local_slurm.sh up)"
    return None


def nca(env: dict, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [str(CLI), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def job_ids(run: Path) -> list[str]:
    recs = [json.loads(line) for line in (run / "launch" / "jobs.jsonl").read_text().splitlines()]
    last = recs[-1]["submission"]
    return [r["job_id"] for r in recs if r["submission"] == last]


def state(job: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "-o", "JobID,State"], capture_output=True, text=True,
                         timeout=30).stdout
    for line in out.splitlines():
        jid, _, st = line.partition("|")
        if jid == job:
            return st.split()[0] if st else "UNKNOWN"
    return "UNKNOWN"


def wait_for(job: str, timeout: float = 400) -> str:
    """Poll sacct until the job reaches a terminal state (a requeued job is not terminal)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = state(job)
        if st in TERMINAL:
            return st
        time.sleep(2)
    raise AssertionError(f"job {job} still {state(job)} after {timeout} s")


def logged_steps(run: Path) -> int:
    f = run / "metrics.jsonl"
    if not f.exists():
        return 0
    return sum(1 for line in f.read_text().splitlines() if '"loss"' in line)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> list[float]:
    return [m["loss"] for m in metrics(run) if "loss" in m]


def final_weights(backend: str, ckpt: Path, tmp: Path) -> dict:
    """Model tensors of a checkpoint of `backend`, gathered to full size."""
    import torch

    if backend == "deepspeed":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="ds")
    if backend == "torch":
        from nca_scale.train.backends.torch.format import DCP
        from nca_scale.train.transfer import read_dcp

        return read_dcp(ckpt / DCP, "model.")
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    tmp.mkdir(parents=True, exist_ok=True)
    dcp_to_torch_save(ckpt / "dist", tmp / "full.pt")
    full = torch.load(tmp / "full.pt", weights_only=False)
    return {k: v for k, v in full.items() if isinstance(v, torch.Tensor) and not k.startswith("optimizer")}
