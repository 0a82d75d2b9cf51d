"""Lets megatron-core 0.16 run on a CPU-only torch with gloo. Nothing here acts when CUDA is
present.

megatron-core assumes CUDA in device queries, RNG handling, buffer allocation and type asserts. Each patch
below maps one of those onto the CPU; the comment on it names the upstream call it stands in for. Verified
(docs/training.md "Layout checks, megatron", tests/train/test_megatron.py) to leave every step's loss and grad
norm, and the final weights and Adam moments, equal across TP/PP/DP layouts within stated tolerances, and
resumes bit-exact.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_active = False


def _is_cuda(device) -> bool:
    return (isinstance(device, str) and device.startswith("cuda")) or (
        isinstance(device, torch.device) and device.type == "cuda"
    )


class _CudaToCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # torch.zeros/empty/tensor(..., device="cuda") in schedules.py, optimizer.py, mappings.py, clip_grads.py
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = _CPU
        name = getattr(func, "__name__", "")
        # tensor.to("cuda") / .to(torch.cuda.current_device()) in rope_utils.py and the optimizers
        if name == "to" and args:
            args = tuple(_CPU if _is_cuda(a) else a for a in args)
        out = func(*args, **kwargs)
        # `assert param.type() == 'torch.cuda.FloatTensor'` in clip_grads.py, optimizer.py, distrib_optimizer.py
        if name == "type" and len(args) == 1 and not kwargs and isinstance(out, str) and out.startswith("torch."):
            out = out.replace("torch.", "torch.cuda.", 1)
        return out


def activate() -> None:
    """Install the patches (idempotent) when CUDA is absent. Call before building megatron models."""
    global _active
    if torch.cuda.is_available():
        return
    if not _active:
        _install()
        _active = True


def _install() -> None:
    # torch.cuda.current_device() as the device of parallel_state's global memory buffer, the p2p
    # communication buffers and tensor_parallel/layers.py weights
    torch.cuda.current_device = lambda: _CPU
    # torch.cuda.synchronize / set_device / empty_cache around timers, checkpointing and the optimizer
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.set_device = lambda *a, **k: None
    torch.cuda.empty_cache = lambda *a, **k: None
    # torch.cuda.manual_seed / get_rng_state / set_rng_state in tensor_parallel.random
    # (model_parallel_cuda_manual_seed, CudaRNGStatesTracker): CPU dropout draws from the CPU generator
    torch.cuda.manual_seed = lambda seed: torch.random.default_generator.manual_seed(int(seed))
    torch.cuda.manual_seed_all = torch.cuda.manual_seed
    torch.cuda.get_rng_state = lambda device=None: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    # tensor.cuda() / module.cuda() on freshly built models and buffers
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self

    import megatron.core.tensor_parallel.random as mp_random

    # tensor_parallel.random._get_cuda_rng_state / _set_cuda_rng_state (CudaRNGStatesTracker.fork)
    mp_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mp_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # thread-local; CPU autograd runs backward on the calling thread, so the main thread is enough
    _CudaToCpu().__enter__()

