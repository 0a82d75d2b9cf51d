"""Helpers for the training tests: run `nca-scale train` in a fresh process (each run owns its process group) and read its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[2]
CLI = Path(sys.executable).parent / "nca-scale"
# tiny 4-layer model (so PP=2 x VPP=2 divides it), small rule banks (bank building dominates start-up), no wandb, no progress bar
FAST = ["model.n_layers=4", "data.nca.bank.size=8", "data.nca.bank.val_size=4", "wandb=disabled", "progress=false", "eval_every=0"]


def train(out: Path, *overrides: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")  # one thread: bitwise-reproducible sums
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={out}", *FAST, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return [m["loss"] for m in metrics(out) if "loss" in m]


def assert_close(a: list[float], b: list[float], rel: float = 1e-4) -> None:
    assert len(a) == len(b), (a, b)
    for x, y in zip(a, b):
        assert abs(x - y) <= rel * abs(y), (a, b)


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "state.pt", weights_only=True)["model"]


def megatron_weights(ckpt: Path, tmp: Path) -> dict[str, torch.Tensor]:
    """Model tensors of a megatron torch_dist checkpoint, gathered to full size."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    tmp.mkdir(parents=True, exist_ok=True)
    dcp_to_torch_save(ckpt / "dist", tmp / "full.pt")
    full = torch.load(tmp / "full.pt", weights_only=False)
    return {k: v for k, v in full.items() if isinstance(v, torch.Tensor) and not k.startswith("optimizer")}
