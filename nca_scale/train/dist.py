"""Process-group setup shared by the backends: gloo on CPU, NCCL on GPUs; world 1 without a launcher."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from nca_scale.errors import UserError

T = TypeVar("T")


def quiet_upstream_warnings() -> None:
    """Silence warnings megatron-core and DeepSpeed emit on every run: fallbacks when Apex/TE are absent and
    torch deprecations they still call."""
    for message in (".*Apex.*", ".*Transformer Engine.*", ".*reduce_scatter_tensor.*", ".*all_gather_into_tensor.*",
                    ".*non-leaf Tensor.*"):
        warnings.filterwarnings("ignore", message=message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init() -> None:
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # a plain single process: a one-rank group keeps every code path the same
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        os.environ.update(env)  # as torchrun would set them (DeepSpeed reads LOCAL_RANK)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def decided_by_rank0(decide: Callable[[], T]) -> T:
    """decide() on global rank 0 only, and its result (or its UserError) on every rank: for choices that all
    ranks must make alike and that read a lot, like picking a checkpoint by checksumming its files, which
    every rank doing would multiply by the world size."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return decide()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box = [("ok", decide())]
        except UserError as e:
            box = [("error", str(e))]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def step_seed(seed: int, step: int, *ranks: int) -> int:
    """Seed of the dropout RNG at `step`: runtime randomness is a function of (seed, step, rank), so an exact
    resume needs no saved generator state."""
    h = seed
    for v in (step, *ranks):
        h = (h * 1_000_003 + v + 1) % 2**62
    return h


def mean_over(value: float, group=None) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return t.item() / dist.get_world_size(group)
