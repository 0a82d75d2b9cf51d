"""The one check of a user's `device=` for NCA work (generation, stats, figures)."""

from __future__ import annotations

import torch

from nca_scale.errors import UserError


def check_device(device: str) -> None:
    """One line naming the fix when `device` is not a usable cpu/cuda device here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"device={device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device} but CUDA is not available here; use device=cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device={device}: only cpu and cuda are supported")
