"""Counter-based random numbers: every draw is a hash of (key words, counters).

Why not torch.Generator: a sequence must be a pure function of (config, seed, global index), whatever the
batch, worker or device it is generated on. A stateful generator ties draws to call order and batch shape;
hashing the coordinates of each draw does not, and runs as ordinary integer tensor ops on CPU and CUDA alike.
The mixer is `lowbias32` (C. Wellons), evaluated in int64 so products wrap harmlessly before masking.
"""

from __future__ import annotations

import math

import torch

M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9

# Domain tags: one per kind of draw, so no two kinds ever share a counter space.
WEIGHTS, INIT_Z, INIT_CELLS, NOISE, PERM, TRAJ = 1, 2, 3, 4, 5, 6

# u = (h23 + 0.5) / 2^23 is never 0 or 1, so a Gumbel draw -log(-log u) is bounded; the bound tells which
# cells can possibly change their argmax under sampling at a given temperature (automaton.py).
U_MIN = 0.5 / 2**23
U_MAX = 1.0 - U_MIN
GUMBEL_SPAN = -math.log(-math.log(U_MAX)) + math.log(-math.log(U_MIN))


def mix32(x: torch.Tensor) -> torch.Tensor:
    x = x & M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    """mix32 on a Python int (the scalar prefix of a hash is folded without tensor ops)."""
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def words(value: int) -> list[int]:
    """Split a non-negative Python int (< 2^64) into two 32-bit words, low first."""
    if value < 0 or value >= 2**64:
        raise ValueError(f"hash inputs must be in [0, 2^64), got {value}")
    return [value & M32, (value >> 32) & M32]


_START = 0x2545F491


def hash32(*parts, device=None, start: int | torch.Tensor = _START) -> torch.Tensor:
    """Hash Python ints and int64 tensors (broadcast together) to 32-bit values in an int64 tensor.

    Each 32-bit word w is folded as h = mix32(h ^ (w + GOLDEN)). An int contributes both its words; a tensor
    element contributes its high word only where that word is non-zero, which keeps the hash of an element a
    function of its own value while sparing the common case (indices < 2^32) one mix.
    `start` continues from an earlier hash: hash32(a, b) == hash32(b, start=hash32(a)), so a prefix shared
    by many draws (a trajectory's noise key) is folded once.
    """
    h: int | torch.Tensor = start
    for p in parts:
        if isinstance(p, int):
            for w in words(p):
                if isinstance(h, int):
                    h = _mix32_int(h ^ ((w + _GOLDEN) & M32))
                else:
                    h = mix32(h ^ ((w + _GOLDEN) & M32))
        else:
            p = p.to(torch.int64)
            h = mix32(((p & M32) + _GOLDEN) ^ h)
            high = p >> 32
            if bool((high != 0).any()):
                h = torch.where(high != 0, mix32(h ^ ((high & M32) + 2 * _GOLDEN)), h)
    if isinstance(h, int):
        return torch.tensor(h, dtype=torch.int64, device=device)
    return h


def uniform(*parts, device=None, start: int | torch.Tensor = _START) -> torch.Tensor:
    """float32 uniforms in (0, 1), one per broadcast element of `parts`: (k + 0.5) / 2^23 for the top 23 bits
    k of the hash. 23 bits keep every value, 1 - 2^-24 included, exact in float32 (24 would round to 1.0)."""
    h = hash32(*parts, device=device, start=start)
    return ((h >> 9).to(torch.float32) + 0.5) * (1.0 / 2**23)


def gumbel(*parts, device=None, start: int | torch.Tensor = _START) -> torch.Tensor:
    return -torch.log(-torch.log(uniform(*parts, device=device, start=start)))


def truncated_normal(*parts, device=None, bound: float = 2.0) -> torch.Tensor:
    """Standard normal truncated to [-bound, bound] by inverse CDF (what jax's truncated_normal samples)."""
    lo = 0.5 * (1 + math.erf(-bound / math.sqrt(2)))
    hi = 1 - lo
    u = uniform(*parts, device=device).to(torch.float64)
    return torch.special.ndtri(lo + u * (hi - lo)).clamp_(-bound, bound).to(torch.float32)


def normal(*parts, device=None) -> torch.Tensor:
    u = uniform(*parts, device=device).to(torch.float64)
    return torch.special.ndtri(u).to(torch.float32)


def permutation(n: int, *parts, device=None) -> torch.Tensor:
    """A permutation of range(n) keyed by `parts`: argsort of hashed keys, ties broken by position."""
    keys = hash32(*parts, torch.arange(n, device=device), device=device)
    return torch.sort(keys * n + torch.arange(n, device=device)).indices
