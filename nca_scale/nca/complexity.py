"""Complexity scores of rule trajectories and the band filter.

gzip (the reference's `gzip_complexity`): the patch tokens of the probe frames, without delimiters, as
int32 little-endian bytes, compressed with gzip level 9; score = compressed size / raw size (header and
trailer included). Higher = less compressible = more complex: a constant grid scores ~0.02, i.i.d. uniform
cells ~0.67. diff: mean fraction of cells that change between consecutive frames.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from nca_scale.nca.config import NCAConfig
from nca_scale.nca.tokenizer import patch_ids

BANDS = {"20-30": (0.2, 0.3), "30-40": (0.3, 0.4), "40-50": (0.4, 0.5), "50+": (0.5, 1.0)}


def gzip_ratio(raw: bytes) -> float:
    # zlib with wbits=31 writes the same 10-byte gzip header, deflate stream and trailer as
    # gzip.GzipFile(compresslevel=9) over an unnamed buffer, and releases the GIL while compressing.
    return len(zlib.compress(raw, 9, wbits=31)) / len(raw)


def gzip_scores(cfg: NCAConfig, frames: torch.Tensor, threads: int = 1) -> np.ndarray:
    """(B, F, grid, grid) frames -> (B,) float64 gzip scores."""
    return gzip_token_scores(patch_ids(cfg, frames).flatten(1).to(torch.int32).cpu().numpy(), threads)


def gzip_token_scores(ids: np.ndarray, threads: int = 1) -> np.ndarray:
    """(B, T) token ids -> (B,) gzip scores, each row as int32 little-endian bytes (also used for text tokens)."""
    rows = [row.tobytes() for row in np.asarray(ids).astype("<i4")]
    if threads > 1 and len(rows) > 64:
        with ThreadPoolExecutor(threads) as pool:
            return np.fromiter(pool.map(gzip_ratio, rows, chunksize=256), dtype=np.float64, count=len(rows))
    return np.fromiter(map(gzip_ratio, rows), dtype=np.float64, count=len(rows))


def diff_scores(frames: torch.Tensor) -> np.ndarray:
    changed = (frames[:, 1:] != frames[:, :-1]).float()
    return changed.flatten(1).mean(1).cpu().double().numpy()


def scores(cfg: NCAConfig, frames: torch.Tensor, threads: int = 1) -> np.ndarray:
    if cfg.complexity.mode == "gzip":
        return gzip_scores(cfg, frames, threads)
    return diff_scores(frames)


def in_band(lo: float | None, hi: float, s: np.ndarray) -> np.ndarray:
    """The reference keeps lo < score < hi (strict); lo None keeps everything."""
    if lo is None:
        return np.ones(len(s), dtype=bool)
    return (s > lo) & (s < hi)
