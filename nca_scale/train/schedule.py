"""Learning-rate schedules as pure functions of the step (so a resumed run needs no scheduler state)."""

from __future__ import annotations

import math

from nca_scale.train.config import ScheduleConfig


def lr_at(cfg: ScheduleConfig, peak: float, step: int, run_steps: int) -> float:
    """LR for optimizer step `step` (0-based). Warmup rises linearly to `peak` over `warmup` steps
    (step 0 gets peak / warmup, as the paper's LambdaLR does)."""
    total = cfg.total or run_steps
    floor = peak * cfg.min_lr_ratio
    if step < cfg.warmup:
        return peak * (step + 1) / cfg.warmup
    if cfg.name == "constant":
        return peak
    if cfg.name == "cosine":
        progress = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_start = total - int(cfg.decay_fraction * total)  # wsd: warmup, stable, linear decay
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
    return peak + (floor - peak) * progress
