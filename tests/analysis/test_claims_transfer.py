"""The claims table and the transfer analysis on hand-built runs with known answers: which arms each claim
compares (and in which direction), the per-seed pooling, D_E from a known scratch law, and the transfer law."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nca_scale.analysis import claims, inference, transfer
from nca_scale.analysis.fits import ND, Fit
from nca_scale.analysis.sweep.runs import Run, Sweep

SCRATCH = {"E": 3.5, "A": 44.0, "alpha": 0.3, "B": 47.0, "beta": 0.3}
SIZES = {"s-a": 131_392, "s-b": 443_040, "s-c": 1_049_728}
BUDGETS = (50_000, 100_000, 200_000)


def run(size: str, arm: str, seed: int, d: int, loss: float, *, band=None, s1=None, extra=None, domain="web",
        name=None) -> Run:
    label = {"scratch": "scratch", "nca": f"nca-b{(band or '').replace('+', '')}-t300k",
             "text": "text-web-t300k", "scratch_matched": "matched-nca-b50-t300k"}[arm]
    extra = dict(extra or {})
    if extra.get("reinit"):
        label += "".join(f"-reinit-{m}" for m in extra["reinit"])
    return Run(name=name or f"s2-{domain}-{size}-{label}-d{d}-s{seed}", stage=2, size=size, arm=arm, band=band,
               stage1_tokens=s1, domain=domain, stage2_tokens=d, seed=seed, extra=extra,
               params=SIZES[size] + 64_000, non_embedding_params=SIZES[size], tokens=d, flops=6.0 * SIZES[size] * d,
               stage1_flops=None, curve_tokens=(d,), curve_ppl=(math.exp(loss),), curve_loss=(loss,),
               final_ppl=math.exp(loss), final_loss=loss, wall_s=1.0, restarts=0, out=None, code_version="t")


def scratch_loss(n, d):
    return float(Fit(ND, SCRATCH, 0.0, 0).predict([n], [d])[0])


def test_claims_orient_each_comparison_and_pool_seeds_per_size():
    """NCA 0.02 nats better than scratch, attention re-init 0.015 worse than full transfer, MLP re-init 0.005
    worse, 50+ better than 30-40 on web, NCA 0.01 worse than compute-matched; seed noise +-0.001."""
    runs = []
    for size, n in SIZES.items():
        for seed, wobble in zip((0, 1, 2), (-0.001, 0.0, 0.001)):
            for d in BUDGETS:
                base = scratch_loss(n, d)
                nca = base - 0.02 + wobble
                runs += [run(size, "scratch", seed, d, base),
                         run(size, "nca", seed, d, nca, band="50+", s1=300_000),
                         run(size, "nca", seed, d, nca + 0.01, band="30-40", s1=300_000),
                         run(size, "nca", seed, d, nca + 0.015, band="50+", s1=300_000, extra={"reinit": ["attn"]}),
                         run(size, "nca", seed, d, nca + 0.005, band="50+", s1=300_000, extra={"reinit": ["mlp"]}),
                         run(size, "scratch_matched", seed, d, nca - 0.01, extra={"matched_to": "nca-b50-t300k"})]
    rows = claims.claims(Sweep(None, "t", runs, []), 0.95)
    pooled = {(r["claim"], r["comparison"]): r for r in rows if r["size"] == "all sizes"}
    got = {k: round(r["effect_nats"], 6) for k, r in pooled.items()}
    assert got == {
        ("0", "nca 50+ 300k vs scratch"): 0.02,
        ("0", "nca 30-40 300k vs scratch"): 0.01,
        ("c", "full transfer vs attn re-initialised (nca 50+ 300k)"): 0.015,
        ("c", "full transfer vs mlp re-initialised (nca 50+ 300k)"): 0.005,
        ("c", "re-initialising attn loses more than mlp (nca 50+ 300k)"): 0.01,
        ("d", "band 50+ vs 30-40 on web"): 0.01,
        ("m", "nca 50+ 300k vs scratch_matched (to nca-b50-t300k)"): -0.01,
    }
    for r in pooled.values():
        assert r["n_seeds"] == 3 and r["size"] == "all sizes" and len(r["cells"]) == 9
    assert pooled[("0", "nca 50+ 300k vs scratch")]["verdict"] == inference.SUPPORTED
    assert pooled[("m", "nca 50+ 300k vs scratch_matched (to nca-b50-t300k)")]["verdict"] == inference.CONTRADICTED
    row = pooled[("0", "nca 50+ 300k vs scratch")]
    assert row["effect_pct"] == pytest.approx(100 * (1 - math.exp(-0.02)))
    assert row["ci_nats"][0] < 0.02 < row["ci_nats"][1]  # t interval over the 3 seed means (+-0.001 apart)
    assert len([r for r in rows if r["claim"] == "0" and r["size"] != "all sizes"]) == 2 * len(SIZES)
    table = claims.summary(rows)
    assert [r["verdict"] for r in table if r["claim"] in ("a", "b")] == [claims.NOT_RUN] * 2


def test_effective_data_from_a_known_scratch_law_and_the_transfer_law():
    """Transferred runs whose loss is scratch's at D_F + D_T with D_T = 20 D_F^0.4 N^0.3 exactly: D_E recovers
    D_F + D_T, and the fitted law is the true one; no seed noise, so the intervals are points."""
    runs = []
    for size, n in SIZES.items():
        for seed in (0, 1, 2):
            for d in BUDGETS:
                runs.append(run(size, "scratch", seed, d, scratch_loss(n, d)))
                runs.append(run(size, "nca", seed, d, scratch_loss(n, d + 20 * d**0.4 * n**0.3), band="50+",
                                s1=300_000))
    (res,) = transfer.transfer(Sweep(None, "t", runs, []), level=0.95, resamples=20, seed=0)
    assert res["arm"] == "nca 50+ 300k" and res["method"] == transfer.FIT
    assert res["scratch_law"]["alpha"] == pytest.approx(0.3, abs=1e-3)
    for p in res["points"]:
        assert p["d_t"] == pytest.approx(20 * p["d_f"] ** 0.4 * p["n"] ** 0.3, rel=0.02)
        assert p["d_e_interpolated"] is None or p["d_e_interpolated"] == pytest.approx(p["d_e"], rel=0.2)
    f = res["fit"]
    assert f["alpha"] == pytest.approx(0.4, abs=0.01) and f["beta"] == pytest.approx(0.3, abs=0.01)
    assert f["log10_k"] == pytest.approx(math.log10(20), abs=0.1)
    assert res["ci"]["beta"][0] == pytest.approx(res["ci"]["beta"][1], abs=1e-3)


def test_interpolation_censors_outside_the_scratch_budgets():
    curve = [(50_000, 6.0), (100_000, 5.8), (200_000, 5.6)]
    d, why = transfer.d_effective_interp(curve, 5.7)
    assert d == pytest.approx(math.exp((math.log(1e5) + math.log(2e5)) / 2)) and why is None
    assert transfer.d_effective_interp(curve, 5.5) == (None, "better than scratch's largest budget")
    assert transfer.d_effective_interp(curve, 6.1) == (None, "worse than scratch's smallest budget")
    assert np.isinf(transfer.d_effective_fit(SCRATCH, 1e6, 3.0))  # below E + A/N^alpha: beyond scratch's reach


def test_compute_matched_pairs_with_the_full_transfer_not_its_variants():
    """The re-initialised arm's run name also contains `-nca-b50-t300k-`: only the full transfer is the partner
    of the compute-matched run (before, two candidates made the match fail and the comparison vanish)."""
    from nca_scale.analysis.sweep.metrics import Bootstrap, compute_matched

    runs = []
    for seed in (0, 1):
        runs += [run("s-a", "scratch", seed, 50_000, 6.0),
                 run("s-a", "nca", seed, 50_000, 5.9, band="50+", s1=300_000),
                 run("s-a", "nca", seed, 50_000, 5.95, band="50+", s1=300_000, extra={"reinit": ["attn"]}),
                 run("s-a", "scratch_matched", seed, 50_000, 5.8, extra={"matched_to": "nca-b50-t300k"})]
    notes: list[str] = []
    rows = compute_matched(Sweep(None, "t", runs, []), Bootstrap(resamples=200), notes)
    assert not notes and [r["arm"] for r in rows] == ["nca 50+ 300k"]
    assert rows[0]["improvement_pct"]["mean"] == pytest.approx(100 * (math.exp(5.8) - math.exp(5.9)) / math.exp(5.8))


def test_one_budget_trained_to_whole_steps_is_one_budget():
    """D counts trained tokens: a 50k budget is 50,176 tokens at one size and 51,200 at another. That is one
    budget: no alpha of the transfer law and no L(N, D) from it (before: both fitted from the 2 % difference)."""
    from nca_scale.analysis import fits

    assert fits.levels([50_176, 50_688, 51_200, 200_704]) == 2
    n = [131_392, 131_392, 443_040, 443_040, 1_049_728, 1_049_728]
    d_f = [50_176, 50_176, 50_688, 50_688, 51_200, 51_200]
    law = transfer.fit_law(n, d_f, [1e4, 1.1e4, 2e4, 2.1e4, 3e4, 3.2e4])
    assert "alpha" not in law and "beta" in law
    nd = fits.loss_nd([(a, b, 6.0 - 0.1 * i) for i, (a, b) in enumerate(zip(n * 2, d_f * 2))])
    assert nd["fit"] is None and "1 stage-2 token budgets" in nd["notes"][0]


def test_allocation_needs_both_exponents_positive():
    """Chinchilla's eq. 4 at its own published fit; a negative exponent (loss rising with N over a small
    sweep, as in the CPU study's scratch arm) has no interior optimum: nan, not a complex number."""
    from nca_scale.analysis import fits

    a = fits.allocation({"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}, 5.76e23)
    assert a["a"] == pytest.approx(0.28 / 0.62) and 1e10 < a["N_opt"] < 1e11 and 1e12 < a["D_opt"] < 5e12
    assert a["N_opt"] * a["D_opt"] * 6 == pytest.approx(5.76e23)
    bad = fits.allocation({"E": 1.0, "A": 1.0, "alpha": -0.1, "B": 1.0, "beta": 0.3}, 1e15)
    assert all(math.isnan(v) for v in bad.values())
