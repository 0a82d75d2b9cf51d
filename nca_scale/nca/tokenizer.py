"""Frames -> tokens, the reference's patch tokenizer.

A p x p patch becomes id = sum_k c_k * S^k over its cells in row-major order (top-left least significant);
patches are read row-major; each frame is wrapped as <grid> patches </grid> with <grid> = S^(p^2) and
</grid> = S^(p^2) + 1. A trajectory is one sequence of seq_len + 1 tokens.
"""

from __future__ import annotations

import torch

from nca_scale.nca.config import NCAConfig


def patch_ids(cfg: NCAConfig, frames: torch.Tensor) -> torch.Tensor:
    """(..., grid, grid) states -> (..., patches) int64 patch ids."""
    g, p, s = cfg.grid, cfg.patch, cfg.states
    lead = frames.shape[:-2]
    x = frames.reshape(*lead, g // p, p, g // p, p).transpose(-3, -2)  # (..., gy, gx, py, px)
    x = x.reshape(*lead, (g // p) ** 2, p * p).long()
    weights = s ** torch.arange(p * p, device=frames.device, dtype=torch.int64)
    return (x * weights).sum(-1)


def encode(cfg: NCAConfig, frames: torch.Tensor) -> torch.Tensor:
    """(B, F, grid, grid) frames -> (B, seq_len + 1) int32 tokens (truncated to the sequence length)."""
    ids = patch_ids(cfg, frames)  # (B, F, P)
    b, f, _ = ids.shape
    start = torch.full((b, f, 1), cfg.grid_start, dtype=ids.dtype, device=ids.device)
    end = torch.full((b, f, 1), cfg.grid_end, dtype=ids.dtype, device=ids.device)
    seq = torch.cat([start, ids, end], -1).view(b, -1)
    if seq.shape[1] < cfg.sequence_tokens:
        raise ValueError(f"{f} frames give {seq.shape[1]} tokens, fewer than seq_len+1={cfg.sequence_tokens}")
    return seq[:, : cfg.sequence_tokens].to(torch.int32)


def decode_frames(cfg: NCAConfig, tokens: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode` for the complete frames in a (B, L) token tensor -> (B, F, grid, grid) states
    (uint8, or int32 beyond 255 states)."""
    g, p, s = cfg.grid, cfg.patch, cfg.states
    ft = cfg.frame_tokens
    b, n = tokens.shape
    f = n // ft
    body = tokens[:, : f * ft].reshape(b, f, ft)
    if not bool((body[..., 0] == cfg.grid_start).all() and (body[..., -1] == cfg.grid_end).all()):
        raise ValueError("tokens are not a sequence of <grid> ... </grid> frames")
    ids = body[..., 1:-1].long()
    digits = torch.stack([(ids // s**k) % s for k in range(p * p)], -1)  # (B, F, P, p*p)
    x = digits.view(b, f, g // p, g // p, p, p).transpose(-3, -2)
    return x.reshape(b, f, g, g).to(torch.uint8 if s <= 255 else torch.int32)


def loss_mask(cfg: NCAConfig) -> torch.Tensor:
    """(seq_len,) bool over *targets* (tokens[1:]): the reference masks sequence positions of the first
    frame before the shift, leaving 987 of 1024 targets supervised for the paper's config."""
    positions = torch.arange(1, cfg.sequence_tokens)
    if not cfg.mask_first_frame:
        return torch.ones(cfg.seq_len, dtype=torch.bool)
    return positions >= cfg.frame_tokens
