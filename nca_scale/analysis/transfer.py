"""Transfer scaling (Hernandez et al. 2021, "Scaling Laws for Transfer"; docs/analysis.md, "Transfer scaling").

For a pre-pre-trained run of a model with N non-embedding parameters fine-tuned on D_F stage-2 tokens to final
loss L_T, the effective data D_E is how many tokens a from-scratch model of the same size needs to reach L_T;
the effective data transferred is D_T = D_E - D_F and the data multiplier D_E / D_F. D_E comes from
  - the scratch arm's fitted L(N, D) = E + A/N^alpha + B/D^beta when the sweep identifies it (>= 2 sizes,
    >= 2 budgets, >= 6 cells): D_E = (B / (L_T - E - A/N^alpha))^(1/beta); L_T at or below what scratch
    reaches with unlimited data (E + A/N^alpha) gives D_E = infinity ("beyond scratch's reach");
  - otherwise the scratch arm's final losses at the same size, mean over seeds, log D linear in loss between
    the two budgets around L_T; outside the budgets D_E is censored (reported, not extrapolated).
D_T = k D_F^alpha N^beta is fitted by least squares on log D_T over the runs with 0 < D_T < infinity (the law
is about positive transfer; runs with D_T <= 0 are counted and reported), centred at the geometric-mean D_F and
N of those runs, where its level (log10 D_T there) is well determined; k itself is an extrapolation to 1 token
and 1 parameter. beta > 0 with an interval above 0
means "pays off more as models grow". Intervals: the seeds of each size are redrawn (the same draw for scratch
and the arm), the scratch law refitted, D_E recomputed and the law refitted; the interval is the estimate
-/+ t sqrt(k/(k-1)) x the bootstrap sd (fits.se_interval: a percentile interval undercovers with 3 seeds).
D counts the tokens each run trained (whole steps), for scratch and the arm alike.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from nca_scale.analysis import fits
from nca_scale.analysis.sweep.runs import PRE_ARMS, Run, Sweep

FIT, INTERP = "fit of the scratch arm's L(N, D)", "scratch final losses at the same size, interpolated in log D"


def d_effective_fit(params: dict, n: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """D_E from L(N, D) parameters (arrays broadcast); inf where loss <= E + A/N^alpha."""
    rest = np.asarray(loss) - params["E"] - params["A"] / np.asarray(n, dtype=np.float64) ** params["alpha"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(rest > 0, (params["B"] / np.where(rest > 0, rest, 1.0)) ** (1.0 / params["beta"]), np.inf)


def d_effective_interp(curve: list[tuple[float, float]], loss: float) -> tuple[float | None, str | None]:
    """(D_E, None) from [(D, mean scratch loss)] of one size, or (None, why) outside the measured budgets."""
    curve = sorted(curve)
    if len(curve) < 2:
        return None, "one scratch budget at this size"
    ds, ls = np.log([c[0] for c in curve]), np.array([c[1] for c in curve])
    if loss < ls.min():
        return None, "better than scratch's largest budget"
    if loss > ls.max():
        return None, "worse than scratch's smallest budget"
    for i in range(len(curve) - 1):
        lo, hi = sorted((ls[i], ls[i + 1]))
        if lo <= loss <= hi and ls[i] != ls[i + 1]:
            return float(np.exp(ds[i] + (loss - ls[i]) / (ls[i + 1] - ls[i]) * (ds[i + 1] - ds[i]))), None
    return None, "scratch losses do not bracket it"


def fit_law(n, d_f, d_t, ref: tuple[float, float] | None = None) -> dict | None:
    """log D_T = c + alpha log(D_F / D_ref) + beta log(N / N_ref) by least squares over 0 < D_T < inf, with the
    exponents the points identify (alpha needs >= 2 budgets, beta >= 2 sizes); None with fewer than (parameters
    + 1) points. ref = (D_ref, N_ref), default the geometric means of the fitted points: c = log10 D_T there is
    the well-determined level; log10_k = the same law's log10 D_T at D_F = N = 1 (the formula's k)."""
    n, d_f, d_t = (np.asarray(v, dtype=np.float64) for v in (n, d_f, d_t))
    ok = np.isfinite(d_t) & (d_t > 0)
    fit_a, fit_b = fits.levels(d_f[ok]) >= 2, fits.levels(n[ok]) >= 2  # a few % apart is one budget, not two
    if ok.sum() < 2 + fit_a + fit_b:
        return None
    ld, ln = np.log10(d_f[ok]), np.log10(n[ok])
    d_ref, n_ref = ref or (10 ** ld.mean(), 10 ** ln.mean())
    cols = [np.ones(ok.sum())] + [ld - np.log10(d_ref)] * fit_a + [ln - np.log10(n_ref)] * fit_b
    coef, *_ = np.linalg.lstsq(np.column_stack(cols), np.log10(d_t[ok]), rcond=None)
    out = {"log10_dt_ref": float(coef[0]), "d_ref": float(d_ref), "n_ref": float(n_ref)}
    if fit_a:
        out["alpha"] = float(coef[1])
    if fit_b:
        out["beta"] = float(coef[-1])
    out["log10_k"] = out["log10_dt_ref"] - out.get("alpha", 0.0) * np.log10(d_ref) - out.get("beta", 0.0) * np.log10(n_ref)
    return out


def _scratch_fit(points) -> fits.Fit | None:
    res = fits.loss_nd([(p[2], p[3], p[4]) for p in points])
    return fits.Fit(fits.ND, res["fit"]["params"], res["fit"]["huber_objective"], res["fit"]["points"]) \
        if res["fit"] else None


def _points(runs: list[Run]) -> list[tuple]:
    return [(r.size, r.seed, float(r.non_embedding_params), float(r.tokens), r.final_loss) for r in runs]


def transfer_for(scratch: list[Run], arm: list[Run], *, level: float, resamples: int, seed: int) -> dict:
    """The transfer analysis of one pre-pre-trained arm against the scratch arm of the same domain."""
    sp, ap = _points(scratch), _points(arm)
    law = _scratch_fit(sp)
    out: dict = {"method": FIT if law else INTERP, "scratch_law": law.params if law else None, "points": [],
                 "fit": None, "ci": None, "notes": []}
    curves: dict = defaultdict(lambda: defaultdict(list))
    for size, _, _, d, loss in sp:
        curves[size][d].append(loss)
    for size, s, n, d, loss in ap:
        interp, why = d_effective_interp([(k, float(np.mean(v))) for k, v in curves[size].items()], loss)
        d_e = float(d_effective_fit(law.params, n, loss)) if law else interp
        row = {"size": size, "seed": s, "n": n, "d_f": d, "loss": loss, "d_e": d_e, "d_e_interpolated": interp,
               "interpolation_note": why}
        row["d_t"] = None if d_e is None else d_e - d
        row["multiplier"] = None if d_e is None else d_e / d
        out["points"].append(row)
    usable = [p for p in out["points"] if p["d_t"] is not None]
    pos = [p for p in usable if 0 < p["d_t"] < np.inf]
    out["positive"] = {"runs": len(out["points"]), "d_e_known": len(usable), "finite_positive": len(pos),
                       "infinite": sum(p["d_t"] == np.inf for p in usable), "non_positive": sum(p["d_t"] <= 0 for p in usable)}
    fit = fit_law([p["n"] for p in pos], [p["d_f"] for p in pos], [p["d_t"] for p in pos])
    for p in usable:  # JSON has no infinity: such runs beat anything scratch reaches at their size
        if p["d_t"] == np.inf:
            p.update(d_e=None, d_t=None, multiplier=None, censored="beyond scratch's reach (L_T <= E + A/N^alpha)")
    if not law:
        out["notes"].append("the scratch arm does not identify L(N, D) (needs >= 2 sizes, >= 2 budgets, >= 6 cells): "
                            "D_E interpolated between scratch budgets; runs outside them are censored")
    if fit is None:
        out["notes"].append(f"{len(pos)} run(s) with 0 < D_T < inf: too few to fit D_T = k D_F^alpha N^beta")
        return out
    out["fit"] = fit
    if not law:
        return out
    seeds_by_size: dict = defaultdict(set)
    for p in sp + ap:
        seeds_by_size[p[0]].add(p[1])
    seeds_by_size = {k: sorted(v) for k, v in seeds_by_size.items()}
    if all(len(v) < 2 for v in seeds_by_size.values()):
        out["notes"].append("one seed per size: no bootstrap interval")
        return out
    draws = fits.seed_draws(seeds_by_size, resamples, seed)
    skeys, akeys = [(p[0], p[1], p[3], "s") for p in sp], [(p[0], p[1], p[3], "a") for p in ap]
    values = {k: p[4] for k, p in zip(skeys, sp)} | {k: p[4] for k, p in zip(akeys, ap)}
    s_loss = fits.resampled(values, skeys, seeds_by_size, draws)
    a_loss = fits.resampled(values, akeys, seeds_by_size, draws)
    theta, _ = fits.fit_rows(fits.ND, [p[2] for p in sp], s_loss, [p[3] for p in sp], starts=fits.raw_params(law))
    n, d_f = np.array([p[2] for p in ap]), np.array([p[3] for p in ap])
    refits = []
    for t, losses in zip(theta, a_loss):
        d_t = d_effective_fit(fits.params_of(fits.ND, t), n, losses) - d_f
        refits.append(fit_law(n, d_f, d_t, ref=(fit["d_ref"], fit["n_ref"])))
    keys = [k for k in fit if k not in ("d_ref", "n_ref")]
    table = np.array([[r[k] if r and k in r else np.nan for k in keys] for r in refits])
    lo, hi = fits.se_interval(np.array([fit[k] for k in keys]), table, level, seeds_by_size)
    out["ci"] = {k: [float(a), float(b)] for k, a, b in zip(keys, lo, hi)}
    out["resamples"] = resamples
    failed = int(np.isnan(table).any(axis=1).sum())
    if failed:
        out["notes"].append(f"{failed} of {resamples} resamples had too few positive D_T to refit (left out)")
    return out


def transfer(sweep: Sweep, *, level: float, resamples: int, seed: int) -> list[dict]:
    """One transfer analysis per (domain, axes, pre-pre-trained arm) with a scratch arm in the same domain."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for r in sweep.runs:
        groups[(r.domain or "-", r.axes)][r.arm_label].append(r)
    out = []
    for (domain, axes), arms in sorted(groups.items()):
        scratch = arms.get("scratch")
        for label, runs in sorted(arms.items()):
            if not scratch or runs[0].arm not in PRE_ARMS:
                continue
            res = transfer_for(scratch, runs, level=level, resamples=resamples, seed=seed)
            out.append({"domain": domain, "axes": axes, "arm": label, **res})
    return out
