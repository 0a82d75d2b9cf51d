"""The scaling part of a sweep report: fits of final loss vs N per arm, L(N, D), and gain / speedup vs N.

N is the non-embedding parameter count (embeddings and head change with the vocabulary, not with depth and
width; Kaplan et al.'s convention). Loss is the final validation loss (nats per token) of stage 2.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from nca_scale.analysis import fits
from nca_scale.analysis.sweep.metrics import Bootstrap
from nca_scale.analysis.sweep.runs import Sweep


@dataclass(frozen=True)
class FitSettings:
    resamples: int = 200  # bootstrap refits per fit (each a multi-start optimisation)
    seed: int = 0


def _n_grid(ns: list[float]) -> np.ndarray:
    lo, hi = min(ns), max(ns)
    return np.geomspace(lo / 1.5, hi * 3.0, 40)


def loss_fits(sweep: Sweep, boot: Bootstrap, settings: FitSettings) -> list[dict]:
    """One loss-vs-N fit per (domain, stage-2 tokens, arm)."""
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    n_of: dict[str, float] = {}
    for r in sweep.runs:  # grouped by model (size name), not by float equality of N
        key = (r.domain or "-", r.stage2_tokens or 0, r.axes, r.arm_label)
        groups[key][r.size].append(r.final_loss)
        n_of[r.size] = float(r.non_embedding_params)
    rows = []
    for key, by_size in sorted(groups.items()):
        named = sorted(((n_of[z], z, ls) for z, ls in by_size.items()))
        points = [(n, ls) for n, _, ls in named]
        res = fits.loss_vs_n(points, level=boot.level, resamples=settings.resamples, seed=settings.seed,
                             grid_n=_n_grid([p[0] for p in points]))
        rows.append({"domain": key[0], "stage2_tokens": key[1], "axes": key[2], "arm": key[3],
                     "points": [{"n": n, "size": z, "losses": ls} for n, z, ls in named], **res})
    return rows


def nd_fits(sweep: Sweep, boot: Bootstrap, settings: FitSettings) -> list[dict]:
    """One L(N, D) fit per (domain, arm) over every (size, stage-2 budget) cell with a finished run, D = the tokens
    each run trained, with intervals of every parameter and of the compute-optimal allocation
    (fits.loss_nd_ci; seeds redrawn within each size)."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in sweep.runs:
        if r.stage2_tokens:
            groups[(r.domain or "-", r.axes, r.arm_label)].append(
                (r.size, r.seed, float(r.non_embedding_params), float(r.tokens), r.final_loss))
    return [{"domain": d, "axes": x, "arm": a,
             **fits.loss_nd_ci(points, level=boot.level, resamples=settings.resamples, seed=settings.seed)}
            for (d, x, a), points in sorted(groups.items())]


def metric_trends(rows: list[dict], metric: str, boot: Bootstrap, settings: FitSettings) -> list[dict]:
    """`metric` ("improvement_pct" or "speedup") of vs-scratch rows as a function of N, per (domain, tokens, arm):
    per-size mean and interval (from the rows) and the slope per decade of N with a bootstrap interval."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        c = row["cell"]
        groups[(c["domain"], c["stage2_tokens"], c["axes"], row["arm"])].append(row)
    out = []
    for (domain, tokens, axes, arm), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["cell"]["non_embedding_params"])
        points = [(float(r["cell"]["non_embedding_params"]),
                   [v for v in r[metric]["per_seed"].values() if v is not None]) for r in rs]
        res = fits.trend(points, level=boot.level, resamples=settings.resamples, seed=settings.seed)
        out.append({"domain": domain, "stage2_tokens": tokens, "axes": axes, "arm": arm, "metric": metric,
                    "per_size": [{"size": r["cell"]["size"], "n": r["cell"]["non_embedding_params"],
                                  "mean": r[metric]["mean"], "ci": r[metric]["ci"], "n_seeds": r[metric]["n"],
                                  "seeds": r[metric]["seeds"]} for r in rs], **res})
    return out
