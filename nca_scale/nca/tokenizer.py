"""Frames -> tokens, the reference's patch tokenizer.

A p x p patch becomes id = sum_k c_k * S^k over its cells in row-major order (top-left least significant);
patches are read row-major; each frame is wrapped as <grid> patches </grid> with <grid> = S^(p^2) and
</grid> = S^(p^2) + 1. A trajectory is one sequence of seq_len + 1 tokens.
"""

from __future__ import annotations

import torch

from nca_scale.nca.config import NCAConfig


def patch_ids(cfg: NCAConfig, frames: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """(..., grid, grid) states -> (..., patches) patch ids (int64, or `dtype` when the vocabulary fits it)."""
    g, p, s = cfg.grid, cfg.patch, cfg.states
    ids = torch.zeros(*frames.shape[:-2], g // p, g // p, dtype=dtype, device=frames.device)
    # cell (dy, dx) of every patch at once as a strided slice: p*p passes over the frames, no reshuffle
    for k in range(p * p):
        ids.add_(frames[..., k // p :: p, k % p :: p], alpha=s**k)
    return ids.flatten(-2)


def encode(cfg: NCAConfig, frames: torch.Tensor) -> torch.Tensor:
    """(B, F, grid, grid) frames -> (B, seq_len + 1) int32 tokens (truncated to the sequence length)."""
    b, f = frames.shape[:2]
    if f * cfg.frame_tokens < cfg.sequence_tokens:
        raise ValueError(f"{f} frames give {f * cfg.frame_tokens} tokens, fewer than seq_len+1={cfg.sequence_tokens}")
    seq = torch.empty(b, f, cfg.frame_tokens, dtype=torch.int32, device=frames.device)
    seq[..., 0] = cfg.grid_start
    seq[..., -1] = cfg.grid_end
    seq[..., 1:-1] = patch_ids(cfg, frames, torch.int32)
    return seq.view(b, -1)[:, : cfg.sequence_tokens].contiguous()


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
