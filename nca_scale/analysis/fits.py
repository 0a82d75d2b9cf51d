"""Scaling-law fits: loss vs parameters, L(N, D), trends of a metric over N; bootstrap intervals (docs/analysis.md).

Forms, all fitted on log loss with a Huber loss (delta 1e-3, as in Chinchilla's approach 3):
  "E + A/N^alpha"               log L = LSE(a - alpha log N, e),  A = exp(a), E = exp(e)
  "A/N^alpha"                   log L = a - alpha log N          (pure power law: E not identifiable)
  "E + A/N^alpha + B/D^beta"    log L = LSE(a - alpha log N, b - beta log D, e)
The optimiser is a batched Levenberg-Marquardt on the Huber objective (Gauss-Newton with Huber IRLS
weights), run from the K best points of a Chinchilla-style grid of initialisations, for many starts at once.
scipy is a test dependency only: tests/analysis/test_fits.py checks that this reaches the optimum
scipy.optimize.least_squares(loss="huber", f_scale=delta) finds on the same data (the same objective).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

DELTA = 1e-3
STARTS = 48  # optimised starts, the best of the grid by initial objective
BOOT_STARTS = 4  # per bootstrap refit, next to the full-data fit as a warm start
SATURATING, PURE, ND = "E + A/N^alpha", "A/N^alpha", "E + A/N^alpha + B/D^beta"
MIN_SIZES = {SATURATING: 4, PURE: 3}  # distinct N needed: parameters + 1 degree of freedom


def _grid(form: str) -> np.ndarray:
    a = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    exps = [0.05, 0.3, 0.6, 1.0, 1.5]
    e = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    axes = {SATURATING: [a, exps, e], PURE: [[-5.0, 0.0, 5.0, 10.0], [0.0, 0.1, 0.3, 1.0]],
            ND: [a, exps, a, exps, e]}[form]
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


def _model(form: str, theta: np.ndarray, x: np.ndarray, y: np.ndarray | None):
    """Predicted log loss (S, n) and its Jacobian (S, n, P) for parameters theta (S, P)."""
    if form == PURE:
        pred = theta[:, :1] - theta[:, 1:2] * x
        jac = np.stack([np.ones_like(pred), -np.broadcast_to(x, pred.shape)], axis=-1)
        return pred, jac
    terms = [theta[:, :1] - theta[:, 1:2] * x]
    if form == ND:
        terms.append(theta[:, 2:3] - theta[:, 3:4] * y)
    terms.append(np.broadcast_to(theta[:, -1:], terms[0].shape))
    stacked = np.stack(terms)
    pred = np.logaddexp.reduce(stacked, axis=0)
    w = np.exp(stacked - pred)  # d pred / d term
    cols = [w[0], -x * w[0]]
    if form == ND:
        cols += [w[1], -y * w[1]]
    cols.append(w[-1])
    return pred, np.stack(cols, axis=-1)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum(axis=-1)


def _minimize(form, theta, x, y, target, delta, iters=400):
    theta = theta.copy()
    lam = np.full(len(theta), 1e-3)
    obj = _huber(_model(form, theta, x, y)[0] - target, delta)
    eye = np.eye(theta.shape[1])
    for _ in range(iters):
        pred, jac = _model(form, theta, x, y)
        r = pred - target
        psi = np.clip(r, -delta, delta)
        w = np.where(np.abs(r) <= delta, 1.0, delta / np.maximum(np.abs(r), 1e-300))
        g = np.einsum("snp,sn->sp", jac, psi)
        h = np.einsum("snp,sn,snq->spq", jac, w, jac)
        damp = lam[:, None, None] * (np.einsum("spp->sp", h)[:, :, None] * eye + 1e-12 * eye)
        # a start whose terms overflowed has a non-finite Jacobian: it takes no step (its damping grows until it
        # stops), and it cannot break the others' solve (pinv's SVD does not converge on inf or NaN)
        ok = np.isfinite(h).all(axis=(1, 2)) & np.isfinite(g).all(axis=1)
        step = np.zeros_like(theta)
        a, b = h[ok] + damp[ok], -g[ok][..., None]
        try:
            step[ok] = np.linalg.solve(a, b)[..., 0]
        except np.linalg.LinAlgError:  # a start whose Jacobian lost a column (a term underflowed): least squares
            step[ok] = (np.linalg.pinv(a) @ b)[..., 0]
        new = theta + step
        new_obj = _huber(_model(form, new, x, y)[0] - target, delta)
        better = np.isfinite(new_obj) & (new_obj < obj)
        theta[better], obj[better] = new[better], new_obj[better]
        lam = np.where(better, lam / 3, lam * 4)
        if np.all((np.abs(step).max(axis=1) < 1e-10) | (lam > 1e12)):
            break
    return theta, obj


@dataclass(frozen=True)
class Fit:
    form: str
    params: dict[str, float]  # E, A, alpha (and B, beta); E absent for the pure power law
    objective: float
    points: int

    def predict(self, n, d=None) -> np.ndarray:
        p = self.params
        out = p["A"] / np.asarray(n, dtype=np.float64) ** p["alpha"] + p.get("E", 0.0)
        if self.form == ND:
            out = out + p["B"] / np.asarray(d, dtype=np.float64) ** p["beta"]
        return out

    def to_json(self) -> dict:
        return {"form": self.form, "params": self.params, "huber_objective": self.objective, "points": self.points}


def params_of(form: str, t: np.ndarray) -> dict[str, float]:
    params = {"A": float(np.exp(t[0])), "alpha": float(t[1])}
    if form == ND:
        params |= {"B": float(np.exp(t[2])), "beta": float(t[3])}
    if form != PURE:
        params["E"] = float(np.exp(t[-1]))
    return params


def _logs(n, d, losses):
    x = np.log(np.asarray(n, dtype=np.float64))[None, :]
    y = None if d is None else np.log(np.asarray(d, dtype=np.float64))[None, :]
    return x, y, np.log(np.atleast_2d(np.asarray(losses, dtype=np.float64)))


def _best_starts(form, x, y, target, delta, keep) -> np.ndarray:
    grid = _grid(form)
    first = _huber(_model(form, grid, x, y)[0] - target, delta)
    return grid[np.argsort(np.where(np.isfinite(first), first, np.inf), kind="stable")[:keep]]


def fit_rows(form: str, n, losses, d=None, *, starts: np.ndarray, delta: float = DELTA):
    """Fit every row of `losses` (R, points) from the same `starts` (K, P), or row r from its own starts[r]
    (R, K, P), in one batched optimisation; returns the best parameters (R, P) and Huber objective (R,) per row."""
    x, y, target = _logs(n, d, losses)
    rows, k = target.shape[0], starts.shape[-2]
    theta0 = starts.reshape(rows * k, -1) if starts.ndim == 3 else np.tile(starts, (rows, 1))
    with np.errstate(over="ignore", invalid="ignore"):
        theta, obj = _minimize(form, theta0, x, y, np.repeat(target, k, axis=0), delta)
    obj = np.where(np.isfinite(obj), obj, np.inf).reshape(rows, k)
    best = obj.argmin(axis=1)
    return theta.reshape(rows, k, -1)[np.arange(rows), best], obj[np.arange(rows), best]


def fit(form: str, n, loss, d=None, *, delta: float = DELTA) -> Fit:
    """Fit `form` to losses at parameter counts n (and token counts d for the L(N, D) form) from the STARTS
    best points of the initialisation grid."""
    x, y, target = _logs(n, d, loss)
    with np.errstate(over="ignore", invalid="ignore"):
        starts = _best_starts(form, x, y, target, delta, STARTS)
    theta, obj = fit_rows(form, n, loss, d, starts=starts, delta=delta)
    return Fit(form, params_of(form, theta[0]), float(obj[0]), x.shape[1])


def raw_params(f: Fit) -> np.ndarray:
    """The fit as an optimiser start (log-space parameters)."""
    p = f.params
    t = [np.log(p["A"]), p["alpha"]]
    if f.form == ND:
        t += [np.log(p["B"]), p["beta"]]
    if f.form != PURE:
        t.append(np.log(p["E"]))
    return np.array([t])


def form_for(sizes: int) -> str | None:
    """The richest loss-vs-N form the number of distinct sizes can identify, or None."""
    for form in (SATURATING, PURE):
        if sizes >= MIN_SIZES[form]:
            return form
    return None


def cluster_resamples(groups: list[list], resamples: int, seed: int) -> np.ndarray:
    """(resamples, members) bootstrap draws that keep every group (size) and redraw its members (seeds) with
    replacement; groups are lists of values, flattened in order."""
    rng = np.random.default_rng(seed)
    cols = [np.asarray(g, dtype=np.float64)[rng.integers(0, len(g), (resamples, len(g)))] for g in groups]
    return np.concatenate(cols, axis=1)


def percentile(values: np.ndarray, level: float, axis: int = 0) -> np.ndarray:
    alpha = (1.0 - level) / 2
    return np.nanquantile(values, [alpha, 1.0 - alpha], axis=axis)


def loss_vs_n(points: list[tuple[float, list[float]]], *, level: float, resamples: int, seed: int,
              grid_n: np.ndarray) -> dict:
    """points = [(N, [final loss per seed])]; fit the richest identifiable form, bootstrap its parameters and the
    curve on grid_n, and hold out the largest N (fit on the rest, predict it)."""
    points = sorted(points)
    form = form_for(len(points))
    out: dict = {"form": form, "sizes": len(points), "fit": None, "ci": None, "curve": None, "holdout": None,
                 "notes": []}
    if form is None:
        out["notes"].append(f"{len(points)} model size(s): too few to fit (need >= {MIN_SIZES[PURE]} for "
                            f"A/N^alpha, >= {MIN_SIZES[SATURATING]} for E + A/N^alpha)")
        return out
    if form == PURE:
        out["notes"].append(f"{len(points)} sizes: E is not identifiable, so the pure power law A/N^alpha is fitted")
    n = [size for size, ls in points for _ in ls]
    loss = [v for _, ls in points for v in ls]
    best = fit(form, n, loss)
    out["fit"] = best.to_json()
    curve = best.predict(grid_n)
    out["curve"] = {"n": grid_n.tolist(), "loss": curve.tolist()}
    if all(len(ls) < 2 for _, ls in points):
        out["notes"].append("one seed per size: no bootstrap interval")
    else:
        draws = cluster_resamples([ls for _, ls in points], resamples, seed)
        x, y, target = _logs(n, None, loss)
        starts = np.vstack([raw_params(best), _best_starts(form, x, y, target, DELTA, BOOT_STARTS)])
        theta, _ = fit_rows(form, n, draws, starts=starts)
        refits = [Fit(form, params_of(form, t), 0.0, len(n)) for t in theta]
        lo, hi = percentile(np.array([[f.params[k] for k in best.params] for f in refits]), level)
        out["ci"] = {k: [float(a), float(b)] for k, a, b in zip(best.params, lo, hi)}
        clo, chi = percentile(np.array([f.predict(grid_n) for f in refits]), level)
        out["curve"] |= {"lo": clo.tolist(), "hi": chi.tolist()}
    held_form = form_for(len(points) - 1)
    if held_form is None:
        out["notes"].append("too few sizes to hold out the largest and still fit")
    else:
        rest = points[:-1]
        f = fit(held_form, [p[0] for p in rest for _ in p[1]], [v for p in rest for v in p[1]])
        n_big, losses = points[-1]
        pred = float(f.predict([n_big])[0])
        obs = float(np.mean(losses))
        out["holdout"] = {"form": held_form, "n": n_big, "predicted": pred, "observed_mean": obs,
                          "error_pct": 100.0 * (pred - obs) / obs, "fit": f.to_json()}
    return out


def levels(values, ratio: float = 1.2) -> int:
    """Distinct levels among positive values, values within `ratio` of the previous level counted as one: D
    counts trained tokens (whole steps), so one nominal budget gives slightly different D at each size."""
    out, last = 0, None
    for v in sorted(values):
        if last is None or v > last * ratio:
            out, last = out + 1, v
    return out


def loss_nd(points: list[tuple[float, float, float]]) -> dict:
    """points = [(N, D, final loss)]: fit L(N, D) when N and D both vary enough, else say why not."""
    ns = {p[0] for p in points}
    ds = range(levels({p[1] for p in points}))
    cellset = {(p[0], p[1]) for p in points}
    out: dict = {"form": ND, "fit": None, "cells": len(cellset), "notes": []}
    if len(ds) < 2 or len(ns) < 2 or len(cellset) < 6:
        out["notes"].append(f"{len(ns)} sizes x {len(ds)} stage-2 token budgets ({len(cellset)} distinct cells): "
                            "L(N, D) needs >= 2 of each and >= 6 cells (5 parameters + 1); not fitted")
        return out
    f = fit(ND, [p[0] for p in points], [p[2] for p in points], d=[p[1] for p in points])
    out["fit"] = f.to_json()
    big = max(ns)
    rest = [p for p in points if p[0] != big]
    if len({p[0] for p in rest}) >= 2 and len({(p[0], p[1]) for p in rest}) >= 6:
        h = fit(ND, [p[0] for p in rest], [p[2] for p in rest], d=[p[1] for p in rest])
        held = [p for p in points if p[0] == big]
        pred = h.predict([p[0] for p in held], [p[1] for p in held])
        obs = np.array([p[2] for p in held])
        out["holdout"] = {"n": big, "mean_abs_error_pct": float(np.mean(np.abs(pred - obs) / obs) * 100)}
    else:
        out["notes"].append("too few cells without the largest size to hold it out")
    return out


def trend(points: list[tuple[float, list[float]]], *, level: float, resamples: int, seed: int) -> dict:
    """Least-squares slope of a per-seed metric vs log10 N (change per decade of parameters), with a cluster
    bootstrap interval (seeds redrawn within each size). Needs >= 2 sizes."""
    points = sorted(p for p in points if p[1])
    out: dict = {"sizes": len(points), "slope_per_decade": None, "ci": None, "notes": []}
    if len(points) < 2:
        out["notes"].append(f"{len(points)} size(s) with values: no trend")
        return out
    x = np.array([np.log10(n) for n, vs in points for _ in vs])
    out["slope_per_decade"] = float(np.polyfit(x, [v for _, vs in points for v in vs], 1)[0])
    if len(points) == 2:
        out["notes"].append("2 sizes: the slope is the difference between them")
    if all(len(vs) < 2 for _, vs in points):
        out["notes"].append("one seed per size: no bootstrap interval")
        return out
    draws = cluster_resamples([vs for _, vs in points], resamples, seed)
    lo, hi = percentile(np.polyfit(x, draws.T, 1)[0], level)
    out["ci"] = [float(lo), float(hi)]
    return out


# ---- L(N, D) with intervals, and the compute-optimal allocation it implies ------------------------------------
def seed_draws(seeds_by_group: dict, resamples: int, seed: int) -> dict:
    """Cluster bootstrap draws: group (model size) -> (resamples, k) seeds drawn with replacement from its k seeds.
    A drawn seed brings every run of that size and seed (all stage-2 budgets, every arm): seeds are the unit."""
    rng = np.random.default_rng(seed)
    return {g: np.asarray(s)[rng.integers(0, len(s), (resamples, len(s)))] for g, s in sorted(seeds_by_group.items())}


def resampled(values: dict[tuple, float], keys: list[tuple], seeds_by_group: dict, draws: dict) -> np.ndarray:
    """(resamples, len(keys)): for key (group, seed, *rest) at seed position j of its group, the value of
    (group, drawn seed j, *rest), or the key's own value where the drawn seed lacks that run."""
    cols = []
    for key in keys:
        g, s, *rest = key
        drawn = draws[g][:, list(seeds_by_group[g]).index(s)]
        cols.append([values.get((g, int(d), *rest), values[key]) for d in drawn])
    return np.asarray(cols, dtype=np.float64).T


def se_interval(estimate: np.ndarray, draws: np.ndarray, level: float, seeds_by_group: dict) -> np.ndarray:
    """(2, P) intervals estimate -/+ t_{G-H} sqrt(k/(k-1)) SE: SE = the sd of the (resamples, P) cluster-bootstrap
    `draws`, G = seeds over all groups (the clusters), H = groups (the strata), k = mean seeds per group.
    With 3 seeds per size a percentile interval covers ~83 % at 95 % (the bootstrap's variance is low by
    (k-1)/k within each stratum, and its tails are normal-thin); this small-sample form covers 90-98 %
    (tests/analysis/test_calibration.py)."""
    from nca_scale.analysis.inference import t_ppf

    g = sum(len(v) for v in seeds_by_group.values())
    h = len(seeds_by_group)
    k = g / h
    se = np.nanstd(draws, axis=0, ddof=1) * np.sqrt(k / (k - 1))
    half = t_ppf(0.5 + level / 2.0, max(g - h, 1)) * se
    return np.stack([estimate - half, estimate + half])


def allocation(p: dict[str, float], compute: float) -> dict[str, float]:
    """Chinchilla's compute-optimal split of C = 6 N D under L = E + A/N^alpha + B/D^beta:
    N_opt = G (C/6)^a, D_opt = (C/6)^b / G, a = beta/(alpha+beta), b = alpha/(alpha+beta),
    G = (alpha A / (beta B))^(1/(alpha+beta)) (Hoffmann et al. 2022, eq. 4)."""
    al, be = p["alpha"], p["beta"]
    if al <= 0 or be <= 0:  # loss not falling in N or in D: no interior optimum
        return {k: float("nan") for k in ("a", "b", "N_opt", "D_opt", "tokens_per_param")}
    g = (al * p["A"] / (be * p["B"])) ** (1.0 / (al + be))
    n_opt = g * (compute / 6.0) ** (be / (al + be))
    d_opt = (compute / 6.0) ** (al / (al + be)) / g
    return {"a": be / (al + be), "b": al / (al + be), "N_opt": n_opt, "D_opt": d_opt, "tokens_per_param": d_opt / n_opt}


def loss_nd_ci(points: list[tuple], *, level: float, resamples: int, seed: int) -> dict:
    """points = [(size, seed, N, D, loss)]: L(N, D) fitted to every point, cluster-bootstrap intervals (seeds
    redrawn within each size) of every parameter and of the allocation at the largest C = 6 N D measured."""
    out = loss_nd([(p[2], p[3], p[4]) for p in points])
    if out["fit"] is None:
        return out
    best = Fit(ND, out["fit"]["params"], out["fit"]["huber_objective"], out["fit"]["points"])
    compute = max(6.0 * p[2] * p[3] for p in points)
    out["compute"] = compute
    out["allocation"] = allocation(best.params, compute)
    if not np.isfinite(out["allocation"]["a"]):
        out["notes"].append(f"alpha {best.params['alpha']:.3g}, beta {best.params['beta']:.3g}: an exponent <= 0 "
                            "(loss not falling with N or D over these runs) leaves no compute-optimal allocation")
        out["allocation"] = None
    seeds_by_size: dict = defaultdict(set)
    for p in points:
        seeds_by_size[p[0]].add(p[1])
    seeds_by_size = {k: sorted(v) for k, v in seeds_by_size.items()}
    if all(len(v) < 2 for v in seeds_by_size.values()):
        out["notes"].append("one seed per size: no bootstrap interval")
        return out
    keys = [(p[0], p[1], p[3]) for p in points]
    draws = seed_draws(seeds_by_size, resamples, seed)
    losses = resampled({k: p[4] for k, p in zip(keys, points)}, keys, seeds_by_size, draws)
    n, d = [p[2] for p in points], [p[3] for p in points]
    x, y, target = _logs(n, d, [p[4] for p in points])
    starts = np.vstack([raw_params(best), _best_starts(ND, x, y, target, DELTA, BOOT_STARTS)])
    theta, _ = fit_rows(ND, n, losses, d, starts=starts)
    params = [params_of(ND, t) for t in theta]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        alloc = [allocation(q, compute) for q in params]
    # intervals on the scale the estimate is ~normal on: log for the positive scale factors, linear for exponents
    logs = ("E", "A", "B", "allocation.N_opt", "allocation.D_opt", "allocation.tokens_per_param")
    estimate = {**best.params, **{f"allocation.{k}": v for k, v in (out["allocation"] or {}).items()}}
    table = {k: np.array([q[k] for q in params]) for k in best.params}
    table |= {f"allocation.{k}": np.array([a[k] for a in alloc]) for k in (out["allocation"] or {})}
    names = list(estimate)
    est = np.array([np.log(estimate[k]) if k in logs else estimate[k] for k in names])
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = np.column_stack([np.log(table[k]) if k in logs else table[k] for k in names])
    ci = se_interval(est, np.where(np.isfinite(draws), draws, np.nan), level, seeds_by_size)
    out["ci"] = {k: [float(np.exp(a)), float(np.exp(b))] if k in logs else [float(a), float(b)]
                 for k, a, b in zip(names, ci[0], ci[1])}
    out["resamples"] = resamples
    return out
