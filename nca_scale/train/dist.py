"""Process-group setup shared by the backends: gloo on CPU; on GPUs one group that runs NCCL for CUDA tensors
and gloo for CPU ones; world 1 without a launcher.

Every tensor handed to a collective lives on `device()`: NCCL rejects CPU tensors, and a CPU tensor that only
works because the group happens to carry gloo too would be a silent slow path (and a failure under any
NCCL-only group, such as the ones megatron-core creates)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from nca_scale import logs
from nca_scale.errors import UserError

T = TypeVar("T")

GPU_BACKEND = "cpu:gloo,cuda:nccl"  # device map: object collectives and CPU tensors via gloo, CUDA via NCCL
logger = logging.getLogger(__name__)
_side: list = []  # the gloo side group of this process (see side_group)


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


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def gpu_job_reason() -> str | None:
    """What says this rank belongs to a GPU job (None if nothing does): Slurm allocated GPUs on this node, or
    CUDA_VISIBLE_DEVICES names devices (an empty value, -1 or NoDevFiles hides them all)."""
    gpus = os.environ.get("SLURM_GPUS_ON_NODE", "")
    if gpus not in ("", "0"):
        return f"SLURM_GPUS_ON_NODE={gpus}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible not in (None, "", "-1", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    return None


def visible_device(local_rank: int) -> int:
    """The CUDA device of this rank. With one task per GPU (srun --gpus-per-task=1, --gpu-bind=single:1...)
    each rank sees exactly one device, number 0, whatever its LOCAL_RANK; otherwise all the node's GPUs are
    visible and LOCAL_RANK picks one."""
    count = torch.cuda.device_count()
    if count == 1:
        return 0
    if local_rank >= count:
        raise UserError(
            f"node {node_name()}: LOCAL_RANK {local_rank} but only {count} GPUs visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); start one task per GPU "
            f"(gpus_per_node = tasks per node) or let each task see one GPU (--gpus-per-task=1)"
        )
    return local_rank


def _interface_of(ip: str) -> str | None:
    """The network interface holding IPv4 address `ip` (Linux), None if none does."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
            except OSError:  # no IPv4 address
                continue
            if socket.inet_ntoa(packed[20:24]) == ip:
                return name
    return None


def gloo_interface() -> tuple[str, str] | None:
    """(interface, why) for GLOO_SOCKET_IFNAME when it is unset: gloo otherwise binds to the address this host's
    name resolves to, which on many clusters is a management network that cannot reach the other nodes (the job
    then hangs until a timeout). NCCL_SOCKET_IFNAME's first existing interface when it names some (NCCL reads
    names as prefixes; an exclusion list `^...` names none), else the interface whose route reaches MASTER_ADDR.
    None where GLOO_SOCKET_IFNAME is set or nothing can be found (gloo's own choice stands)."""
    if os.environ.get("GLOO_SOCKET_IFNAME") or not sys.platform.startswith("linux"):
        return None
    names = [name for _, name in socket.if_nameindex()]
    nccl = os.environ.get("NCCL_SOCKET_IFNAME", "")
    if nccl and nccl[0] not in "^=":
        for prefix in nccl.split(","):
            if match := next((n for n in names if n.startswith(prefix.strip())), None):
                return match, f"NCCL_SOCKET_IFNAME={nccl}"
    master = os.environ.get("MASTER_ADDR")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(master), int(os.environ.get("MASTER_PORT", 29500))))  # no packet sent
            local = s.getsockname()[0]
        found = _interface_of(local)
    except (OSError, TypeError, ValueError):
        return None
    return (found, f"the route to MASTER_ADDR={master} ({local})") if found else None


# TrainConfig's defaults of dist_timeout_s and rank0_timeout_s
TIMEOUT_S = 600.0
RANK0_TIMEOUT_S = 7200.0


def init(timeout_s: float = TIMEOUT_S, rank0_timeout_s: float = RANK0_TIMEOUT_S) -> None:
    """This rank's process group and device (and its log output). Collectives on the group fail after
    `timeout_s` (dist_timeout_s: NCCL's watchdog on GPUs, gloo's on CPUs); waits for one rank's file work run on
    a gloo side group with `rank0_timeout_s` instead (side_group)."""
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # a plain single process: a one-rank group keeps every code path the same
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        os.environ.update(env)  # as torchrun would set them (DeepSpeed reads LOCAL_RANK)
    logs.setup()
    timeout = timedelta(seconds=timeout_s)
    if int(os.environ["WORLD_SIZE"]) > 1 and (chosen := gloo_interface()):
        os.environ["GLOO_SOCKET_IFNAME"] = chosen[0]
        logger.info(f"gloo: GLOO_SOCKET_IFNAME={chosen[0]} (from {chosen[1]}; set it to choose another)")
    if not torch.cuda.is_available():
        if reason := gpu_job_reason():
            # a GPU job on a node whose driver or torch build sees no GPU would otherwise train on its CPU
            raise UserError(
                f"node {node_name()}: this is a GPU job ({reason}) but torch {torch.__version__} sees no CUDA "
                f"device; check the node's driver (nvidia-smi) and install a CUDA build of torch, or unset "
                f"CUDA_VISIBLE_DEVICES to train on CPU"
            )
        dist.init_process_group("gloo", timeout=timeout)
    else:
        cuda = torch.device("cuda", visible_device(int(os.environ.get("LOCAL_RANK", 0))))
        torch.cuda.set_device(cuda)
        # device_id binds the group to this GPU (eager NCCL init: a bad node fails here, not in step 1)
        dist.init_process_group(GPU_BACKEND, device_id=cuda, timeout=timeout)
    # created by every rank right after the main group, so the ranks create their groups in the same order; its
    # connections are bounded like the main group's (a peer that cannot be reached fails in dist_timeout_s, not in
    # rank0_timeout_s), then its waits get rank0_timeout_s
    side = dist.new_group(backend="gloo", timeout=timedelta(seconds=min(timeout_s, rank0_timeout_s)))
    side.set_timeout(timedelta(seconds=rank0_timeout_s))
    _side[:] = [side]
    logger.info(f"process group: timeout {timeout_s:g} s (dist_timeout_s); waits for rank 0's checkpoint work on a "
                f"gloo side group, timeout {rank0_timeout_s:g} s (rank0_timeout_s)")


def side_group():
    """The gloo group on which the ranks wait while one rank works on files (choosing and verifying a checkpoint,
    downloading a mirror, committing and publishing a save): its own timeout (rank0_timeout_s) bounds those
    waits, so that minutes of checksumming on rank 0 never trip the main group's dist_timeout_s (NCCL's watchdog
    on GPUs). None in a process without a group."""
    return _side[0] if _side and dist.is_initialized() else None


def wait_for_rank0() -> None:
    """Every rank waits here until all arrive, on the side group (see side_group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier(group=side_group())


def leave() -> None:
    """End this rank's groups before its process exits (after training, or without it: a finished run resumed):
    once every rank has arrived, so that no rank's exit finds a peer's gloo connections still open (that aborted
    a rank now and then: "terminate called without an active exception", exit -6). One process has no peer: it
    keeps its group (an in-process caller may train again)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        wait_for_rank0()
        dist.destroy_process_group()
        _side.clear()


class RankFailure(UserError):
    """Checkpoint, verification or commit work that failed on one rank, raised on every rank with that rank and its
    error named (shared_failure): the job ends within seconds on all of them, not when a collective times out."""


def _described(error: BaseException) -> str:
    """One line: the error's first line, and its last where it carries a traceback (DCP's CheckpointException)."""
    lines = str(error).strip().splitlines() or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0].strip()} ... {lines[-1].strip()}"
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}"


def shared_failure(error: BaseException | None, what: str) -> None:
    """Every rank calls this after work that may fail on one rank alone (`error`: this rank's, or None): if any
    rank failed, every rank raises RankFailure naming the first failing rank. A gather on the side group, so it
    waits for the slowest rank under rank0_timeout_s."""
    rank, world = rank_and_world()
    mine = None if error is None else _described(error)
    if world == 1:
        found = [mine]
    else:
        found = [None] * world
        dist.all_gather_object(found, mine, group=side_group())
    failed = next(((r, m) for r, m in enumerate(found) if m is not None), None)
    if failed is not None:
        raise RankFailure(f"{what} failed on rank {failed[0]}: {failed[1]}") from error


@contextlib.contextmanager
def failures_shared(what: str) -> Iterator[None]:
    """Run the block on every rank; an exception in it on any rank ends the block on every rank with a
    RankFailure naming that rank (shared_failure). The block must not wait for other ranks (its own
    collectives would leave a failed rank's peers waiting inside them)."""
    error = None
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # torch.distributed.checkpoint's CheckpointException is a BaseException
        error = e
    shared_failure(error, what)


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank (a one-integer all-reduce on the side group): a decision every rank
    takes alike, such as a deadline one rank's clock has passed."""
    if rank_and_world()[1] == 1:
        return flag
    t = torch.tensor([int(flag)], device="cpu")  # the side group is gloo's, on every node
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=side_group())
    return bool(t.item())


def decided_by_rank0(decide: Callable[[], T]) -> T:
    """decide() on global rank 0 only, and its result (or its error) on every rank: for choices that all ranks
    must make alike and that read a lot, like picking a checkpoint by checksumming its files, which every rank
    doing would multiply by the world size. A UserError stays one; any other error (an OSError while
    checksumming) reaches the other ranks as a RankFailure naming rank 0."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return decide()
    box: list = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box = [("ok", decide())]
        except Exception as e:
            error, box = e, [("user" if isinstance(e, UserError) else "error", _described(e))]
    dist.broadcast_object_list(box, src=0, group=side_group())  # the others wait for rank 0's reading here
    kind, value = box[0]
    if kind == "user":
        raise UserError(value) from error
    if kind == "error":
        raise RankFailure(f"rank 0 failed: {value}") from error
    return value


def launched_world() -> int | None:
    """The world size an external launcher (torchrun, srun via launch/rendezvous.py) started this rank in; None
    in a process it did not start. Callers hand it to TrainConfig (from_args(args, world=...))."""
    return int(os.environ["WORLD_SIZE"]) if "RANK" in os.environ and "WORLD_SIZE" in os.environ else None


def rank_and_world() -> tuple[int, int]:
    """(global rank, world size); (0, 1) in a process without a group."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def merged_on_rank0(part: dict) -> dict | None:
    """The union of every rank's `part` on global rank 0 (None on the others), gathered on the side group."""
    rank, world = rank_and_world()
    if world == 1:
        return part
    parts = [None] * world if rank == 0 else None
    dist.gather_object(part, parts, dst=0, group=side_group())
    return {k: v for p in parts for k, v in p.items()} if rank == 0 else None


def device() -> torch.device:
    """This rank's compute device, and the device of every tensor it hands to a collective (CUDA under NCCL,
    the CPU under gloo)."""
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
    t = torch.tensor([value], dtype=torch.float64, device=device())
    dist.all_reduce(t, group=group)
    return t.item() / dist.get_world_size(group)
