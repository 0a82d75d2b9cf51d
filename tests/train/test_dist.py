"""Process-group setup for GPUs (device map, device binding, fail-fast), checked on CPU with mocks where only a
GPU could run it; mean_over on a real 2-process gloo group; and a source check that no collective in
nca_scale/ is handed a tensor that is on the CPU only because nobody said where it goes."""

from __future__ import annotations

import ast
import logging
import os
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_helpers import CLI, FAST, ROOT

from nca_scale.errors import UserError
from nca_scale.train import dist as tdist

_GPU_ENV = ("SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES", "SLURMD_NODENAME")


class _SideGroup:
    """The side group dist.new_group would return: records how it was made and the timeout set on it later."""

    def __init__(self, calls: dict, args: tuple, kwargs: dict):
        calls["side"] = (args, kwargs)
        self.calls = calls

    def set_timeout(self, timeout: timedelta) -> None:
        self.calls["side_timeout"] = timeout


@pytest.fixture
def fake_init(monkeypatch):
    """tdist.init() against mocked CUDA: records set_device and init_process_group instead of running them."""
    calls: dict = {}
    monkeypatch.setattr(logging.getLogger("nca_scale"), "handlers", [])  # init's stdout handler: this test's only
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: calls.setdefault("init", (a, k)))
    monkeypatch.setattr(dist, "new_group", lambda *a, **k: _SideGroup(calls, a, k))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    for var in _GPU_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")

    def gpus(count: int, local_rank: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        return calls

    return gpus


@pytest.mark.parametrize("count, local_rank, index", [(8, 5, 5), (1, 5, 0), (4, 0, 0)])
def test_gpu_group_is_device_mapped_and_bound_to_the_visible_gpu(fake_init, count, local_rank, index):
    # count 1: srun --gpus-per-task=1 / --gpu-bind shows each task its own GPU as device 0, whatever LOCAL_RANK
    calls = fake_init(count, local_rank)
    tdist.init()
    args, kwargs = calls["init"]
    assert args == ("cpu:gloo,cuda:nccl",)
    assert kwargs == {"device_id": torch.device("cuda", index), "timeout": timedelta(seconds=600)}  # dist_timeout_s
    # connecting is bounded by dist_timeout_s, the side group's waits then by rank0_timeout_s
    assert calls["side"] == ((), {"backend": "gloo", "timeout": timedelta(seconds=600)})
    assert calls["side_timeout"] == timedelta(seconds=7200)
    assert calls["set_device"] == torch.device("cuda", index)


def test_local_rank_beyond_the_visible_gpus_is_refused(fake_init, monkeypatch):
    calls = fake_init(2, 3)
    monkeypatch.setenv("SLURMD_NODENAME", "gpu017")
    with pytest.raises(UserError) as e:
        tdist.init()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("node gpu017: LOCAL_RANK 3 but only 2 GPUs visible")
    assert "init" not in calls and "set_device" not in calls


@pytest.mark.parametrize("var, value", [("SLURM_GPUS_ON_NODE", "8"), ("CUDA_VISIBLE_DEVICES", "0,1")])
def test_gpu_job_without_cuda_stops_naming_the_node(fake_init, monkeypatch, var, value):
    calls = fake_init(0, 0)
    monkeypatch.setenv(var, value)
    with pytest.raises(UserError) as e:
        tdist.init()
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"node {socket.gethostname()}: this is a GPU job ({var}={value}) but torch")
    assert "init" not in calls  # never a gloo group on a GPU node


@pytest.mark.parametrize("env", [{}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"},
                                 {"SLURM_GPUS_ON_NODE": "0"}])
def test_cpu_job_gets_gloo(fake_init, monkeypatch, env):
    calls = fake_init(0, 0)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    tdist.init()
    assert calls["init"] == (("gloo",), {"timeout": timedelta(seconds=600)})
    assert "set_device" not in calls


def test_gpu_job_without_cuda_stops_the_cli(tmp_path):
    """What a user sees: `nca-scale train` on a GPU node whose torch sees no GPU exits with one line."""
    env = dict(os.environ, SLURM_GPUS_ON_NODE="4", SLURMD_NODENAME="gpu042", OMP_NUM_THREADS="1")
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={tmp_path / 'run'}", *FAST, "steps=1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("nca-scale: error:")]
    assert errors == [errors[0]] and "node gpu042: this is a GPU job (SLURM_GPUS_ON_NODE=4)" in errors[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _mean_over_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    tdist.init()
    mine = [dist.new_group([r]) for r in range(2)][rank]  # every rank takes part in creating each group
    results = [tdist.mean_over(1.0 + 3.0 * rank), tdist.mean_over(1.0 + 3.0 * rank, group=mine),
               dist.get_backend()]
    torch.save(results, Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


def test_mean_over_two_gloo_ranks(tmp_path):
    # fork: the ranks need no fresh interpreter (re-importing torch would dominate the test's time)
    mp.start_processes(_mean_over_rank, args=(tdist.free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    got = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert got[0] == [2.5, 1.0, "gloo"]
    assert got[1] == [2.5, 4.0, "gloo"]


# ---- source check: every collective's tensor is placed on a device explicitly ---------------------------
_COLLECTIVES = {"all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                "reduce_scatter_tensor", "reduce", "all_to_all", "all_to_all_single", "gather", "scatter",
                "send", "recv", "isend", "irecv"}
_FACTORIES = {"tensor", "zeros", "ones", "empty", "full", "arange", "as_tensor", "from_numpy"}


def _factory_without_device(node) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _FACTORIES
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
            and not any(k.arg == "device" for k in node.keywords))


def collectives_on_undeviced_tensors(source: str, filename: str) -> list[str]:
    """`file:line` of each torch.distributed collective whose tensor argument is a torch factory call without
    device=, directly or through a local variable assigned from one."""
    found = []
    for func in ast.walk(ast.parse(source, filename)):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        made: dict[str, ast.AST] = {}
        for node in ast.walk(func):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        made[target.id] = node.value
        for node in ast.walk(func):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _COLLECTIVES and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in ("dist", "torch_dist", "distributed")):
                continue
            for arg in node.args[:2]:
                value = made.get(arg.id) if isinstance(arg, ast.Name) else arg
                if value is not None and _factory_without_device(value):
                    found.append(f"{filename}:{node.lineno}")
    return sorted(set(found))


def test_source_check_flags_a_cpu_tensor_in_a_collective():
    planted = ("import torch\nimport torch.distributed as dist\n"
               "def f(x):\n    t = torch.tensor([x], dtype=torch.float64)\n    dist.all_reduce(t)\n"
               "def g(x):\n    dist.broadcast(torch.zeros(3), src=0)\n"
               "def h(x, d):\n    t = torch.tensor([x], device=d)\n    dist.all_reduce(t)\n")
    assert collectives_on_undeviced_tensors(planted, "planted.py") == ["planted.py:5", "planted.py:7"]


def test_no_collective_in_nca_scale_takes_an_undeviced_tensor():
    package = ROOT / "nca_scale"
    found = [hit for path in sorted(package.rglob("*.py"))
             for hit in collectives_on_undeviced_tensors(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], f"collectives on tensors created without device= (use nca_scale.train.dist.device()): {found}"
