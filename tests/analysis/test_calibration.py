"""Calibration, not trust (docs/analysis.md, "Calibration"): synthetic studies from known laws, with the seed
noise the demo measured, analysed by the report's own functions. Each test prints what it measured (run with
-s to see it): recovery, the share of 95 % intervals that cover the truth, and the verdict error rates.

The design is the CPU study's (configs/sweeps/cpu-study.yaml): sizes of 0.13-1.05M non-embedding parameters,
stage-2 budgets of 50k, 100k and 200k tokens, 3 seeds. Seed noise: sd 0.005 nats of final loss per run, the
demo's measured scratch seed sd (0.0027 at cpu-tiny, 0.0063 at cpu-1m, 3 seeds each; docs/results/cpu-study/).
"""

from __future__ import annotations

import numpy as np
import pytest

from nca_scale.analysis import claims, fits, inference, transfer

pytestmark = pytest.mark.slow

TRUE = {"E": 3.5, "A": 44.0, "alpha": 0.3, "B": 47.0, "beta": 0.3}  # loss ~5.4-6.3 nats over the design
LAW_T = {"log10_k": 1.3, "alpha": 0.4, "beta": 0.3}  # D_T = k D_F^alpha N^beta: D_T ~ D_F at 100k tokens
REF = (100_000.0, 300_000.0)  # the transfer fit's centre (D_F, N) in these tests
SIZES = {"cpu-tiny": 131_392, "cpu-250k": 249_336, "cpu-400k": 443_040, "cpu-1m": 1_049_728}
BUDGETS = [50_000, 100_000, 200_000]
SEEDS = [0, 1, 2]
SD = 0.005
STUDIES, RESAMPLES = 200, 40
KEYS = [(z, s, d) for z in SIZES for s in SEEDS for d in BUDGETS]
N = np.array([SIZES[k[0]] for k in KEYS], dtype=np.float64)
D = np.array([k[2] for k in KEYS], dtype=np.float64)
BY_SIZE = {z: SEEDS for z in SIZES}


def law(n, d):
    return fits.Fit(fits.ND, TRUE, 0.0, 0).predict(n, d)


def d_transferred(n, d):
    return 10 ** LAW_T["log10_k"] * d ** LAW_T["alpha"] * n ** LAW_T["beta"]


TRUE_T = {"log10_dt_ref": float(np.log10(d_transferred(REF[1], REF[0]))), "alpha": LAW_T["alpha"],
          "beta": LAW_T["beta"], "log10_k": LAW_T["log10_k"]}


def covered(lo, hi, truth) -> float:
    return float(np.mean((lo <= truth) & (truth <= hi)))


@pytest.fixture(scope="module")
def studies():
    """STUDIES synthetic studies: scratch losses from the L(N, D) law, transferred losses from the transfer law,
    each fitted as the report fits them, with RESAMPLES seed-bootstrap refits of the scratch law each."""
    rng = np.random.default_rng(2024)
    scratch = law(N, D) + rng.normal(0.0, SD, (STUDIES, len(KEYS)))
    arm = law(N, D + d_transferred(N, D)) + rng.normal(0.0, SD, (STUDIES, len(KEYS)))
    x, y, target = fits._logs(N, D, scratch[0])
    starts = fits._best_starts(fits.ND, x, y, target, fits.DELTA, 8)
    theta, _ = fits.fit_rows(fits.ND, N, scratch, D, starts=starts)
    rows_s, rows_a = [], []
    for i in range(STUDIES):  # the same seed draw for scratch and arm, as transfer.transfer_for does
        draws = fits.seed_draws(BY_SIZE, RESAMPLES, i)
        rows_s.append(fits.resampled(dict(zip(KEYS, scratch[i])), KEYS, BY_SIZE, draws))
        rows_a.append(fits.resampled(dict(zip(KEYS, arm[i])), KEYS, BY_SIZE, draws))
    boot, _ = fits.fit_rows(fits.ND, N, np.concatenate(rows_s), D, starts=np.repeat(theta[:, None], RESAMPLES, 0))
    return {"scratch": scratch, "arm": arm, "theta": theta, "boot": boot.reshape(STUDIES, RESAMPLES, -1),
            "arm_boot": np.stack(rows_a)}


def test_t_distribution_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 30):
        for q in (0.025, 0.8, 0.975):
            assert inference.t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), abs=1e-7)
    assert inference.detectable(1.0, 3) == pytest.approx((stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) / 3 ** 0.5)


def test_claim_verdicts_have_the_error_rates_they_imply():
    """The claims' paired t-interval over 3 seeds: with no true effect, 'supported' or 'contradicted' in ~5 % of
    studies (the level); with a true effect equal to the detectable effect, 'supported' in ~80 % (the power)."""
    rng = np.random.default_rng(7)
    sd, n, reps = 0.004, 3, 2000
    mde = inference.detectable(sd, n)
    rates = {}
    for name, effect in (("null", 0.0), ("at the detectable effect", mde), ("reversed", -mde)):
        values = effect + rng.normal(0.0, sd, (reps, n))
        got = [inference.verdict(inference.t_interval(v, 0.95)["ci"]) for v in values]
        rates[name] = {w: got.count(w) / reps for w in (inference.SUPPORTED, inference.CONTRADICTED,
                                                         inference.UNDECIDED)}
        ci = [inference.t_interval(v, 0.95)["ci"] for v in values]
        rates[name]["coverage"] = covered(np.array([c[0] for c in ci]), np.array([c[1] for c in ci]), effect)
    print(f"\nverdicts over {reps} studies of {n} seeds (detectable effect {mde:.4f} nats = "
          f"{inference.pct(mde):.2f} % ppl at sd {sd}): {rates}")
    null = rates["null"]
    assert 0.03 <= null[inference.SUPPORTED] + null[inference.CONTRADICTED] <= 0.07
    assert 0.75 <= rates["at the detectable effect"][inference.SUPPORTED] <= 0.86
    assert rates["at the detectable effect"][inference.CONTRADICTED] < 0.005
    assert 0.75 <= rates["reversed"][inference.CONTRADICTED] <= 0.86
    assert all(0.93 <= r["coverage"] <= 0.97 for r in rates.values())
    assert claims.STATEMENTS.keys() >= {"a", "b", "c", "d"}


def test_loss_nd_fit_recovers_the_law_and_its_intervals_cover(studies):
    names = list(TRUE)
    est = np.array([[fits.params_of(fits.ND, t)[k] for k in names] for t in studies["theta"]])
    boot = np.array([[[fits.params_of(fits.ND, t)[k] for k in names] for t in row] for row in studies["boot"]])
    med = dict(zip(names, np.median(est, axis=0)))
    logs = {"E", "A", "B"}
    cov = {}
    for j, k in enumerate(names):
        f = np.log if k in logs else (lambda v: v)
        lo, hi = np.array([fits.se_interval(f(est[i, j:j + 1]), f(boot[i, :, j:j + 1]), 0.95, BY_SIZE)[:, 0]
                           for i in range(STUDIES)]).T
        cov[k] = covered(lo, hi, f(TRUE[k]))
    pct_lo, pct_hi = np.quantile(boot, [0.025, 0.975], axis=1)
    pct_cov = {k: covered(pct_lo[:, j], pct_hi[:, j], TRUE[k]) for j, k in enumerate(names)}
    print(f"\nL(N, D) over {STUDIES} studies: median estimates {med}; 95 % interval coverage {cov} "
          f"(plain percentile intervals: {pct_cov})")
    assert abs(med["alpha"] - TRUE["alpha"]) < 0.02 and abs(med["beta"] - TRUE["beta"]) < 0.02
    assert abs(med["E"] / TRUE["E"] - 1) < 0.02
    assert all(0.90 <= c <= 0.98 for c in cov.values()), cov


def test_transfer_law_is_recovered_and_its_intervals_cover(studies):
    """transfer.transfer_for's steps on every study: D_E from the study's scratch law, the law fitted at a fixed
    centre, the same seed draws refitted, fits.se_interval."""
    n, d = N, D
    keys = list(TRUE_T)
    est, lo, hi = [], [], []
    for i in range(STUDIES):
        p = fits.params_of(fits.ND, studies["theta"][i])
        full = transfer.fit_law(n, d, transfer.d_effective_fit(p, n, studies["arm"][i]) - d, ref=REF)
        refits = [transfer.fit_law(n, d, transfer.d_effective_fit(fits.params_of(fits.ND, t), n, a) - d, ref=REF)
                  for t, a in zip(studies["boot"][i], studies["arm_boot"][i])]
        table = np.array([[r[k] if r else np.nan for k in keys] for r in refits])
        ci = fits.se_interval(np.array([full[k] for k in keys]), table, 0.95, BY_SIZE)
        est.append([full[k] for k in keys])
        lo.append(ci[0])
        hi.append(ci[1])
    est, lo, hi = np.array(est), np.array(lo), np.array(hi)
    med = dict(zip(keys, np.median(est, axis=0)))
    cov = {k: covered(lo[:, j], hi[:, j], TRUE_T[k]) for j, k in enumerate(keys)}
    beta_above = float(np.mean(lo[:, keys.index("beta")] > 0))
    print(f"\ntransfer law D_T = k D_F^alpha N^beta over {STUDIES} studies (truth {TRUE_T}): median estimates {med}; "
          f"95 % interval coverage {cov}; 'pays off more as models grow' (beta interval > 0) in {beta_above:.0%}")
    assert abs(med["alpha"] - LAW_T["alpha"]) < 0.1 and abs(med["beta"] - LAW_T["beta"]) < 0.1
    assert abs(med["log10_dt_ref"] - TRUE_T["log10_dt_ref"]) < 0.05
    # the level at the centre and the exponents are what the report states; k (an extrapolation) is printed
    assert all(0.90 <= cov[k] <= 0.98 for k in ("log10_dt_ref", "alpha", "beta")), cov
