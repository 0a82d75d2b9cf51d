"""The paper's metrics on hand-made curves with known answers, bootstrap coverage, loading results.jsonl."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
from sweep_synth import write_sweep

from nca_scale.analysis.sweep import metrics as sm
from nca_scale.analysis.sweep.runs import Run, Sweep, load_sweep
from nca_scale.errors import UserError


def run(tokens, ppl, *, arm="scratch", seed=0, name=None, band=None, extra=None, size="s", flops=1.0,
        stage1_flops=None) -> Run:
    return Run(
        name=name or f"{arm}-{seed}", stage=2, size=size, arm=arm, band=band, stage1_tokens=10 if band else None,
        domain="web", stage2_tokens=int(tokens[-1]), seed=seed, extra=extra or {}, params=2000,
        non_embedding_params=1000, tokens=int(tokens[-1]), flops=flops, stage1_flops=stage1_flops,
        curve_tokens=tuple(map(float, tokens)), curve_ppl=tuple(map(float, ppl)),
        curve_loss=tuple(math.log(p) for p in ppl), final_ppl=float(ppl[-1]), final_loss=math.log(ppl[-1]),
        wall_s=None, restarts=None, out=None, code_version=None,
    )


def test_improvement_sign_and_paper_number():
    # the paper's OpenWebText numbers: scratch 14.66, NCA 13.82 -> 5.73 % better
    assert sm.improvement_pct(13.82, 14.66) == pytest.approx(5.7299, abs=1e-3)
    assert sm.improvement_pct(11.0, 10.0) == pytest.approx(-10.0)


def test_crossing_interpolates_linearly_in_ppl():
    tokens, ppl = [100, 200, 300, 400], [20.0, 16.0, 12.0, 10.0]
    assert sm.crossing_tokens(tokens, ppl, 14.0) == pytest.approx(250.0)  # halfway between 16 and 12
    assert sm.crossing_tokens(tokens, ppl, 12.0) == pytest.approx(300.0)  # exactly at an evaluation
    assert sm.crossing_tokens(tokens, ppl, 25.0) == pytest.approx(100.0)  # already below at the first eval
    assert sm.crossing_tokens(tokens, ppl, 9.0) is None
    # first crossing counts, not a later dip
    assert sm.crossing_tokens([1, 2, 3, 4], [10, 8, 9, 7], 8.5) == pytest.approx(1.75)


def test_speedup_known_answer():
    scratch = run([100, 200, 300, 400], [20, 16, 13, 12])
    arm = run([100, 200, 300, 400], [18, 14, 11, 10], arm="nca", band="50+")
    sp = sm.speedup(scratch, arm)
    # target 12: arm crosses between (200, 14) and (300, 11) at 200 + 2/3 * 100
    assert sp["reached"] and sp["arm_tokens"] == pytest.approx(200 + 200 / 3)
    assert sp["speedup"] == pytest.approx(400 / (200 + 200 / 3))


def test_speedup_not_reached():
    scratch = run([100, 200], [20, 12])
    arm = run([100, 200], [21, 12.5], arm="nca", band="50+")
    sp = sm.speedup(scratch, arm)
    assert sp == {"speedup": None, "reached": False, "target_ppl": 12.0, "scratch_tokens": 200.0, "arm_tokens": None}


def test_bootstrap_interval_covers_the_truth():
    """95 % percentile intervals of a mean of 10 normal seeds: coverage over 400 synthetic studies is near 95 %
    (percentile bootstrap under-covers slightly at n = 10; accepted band 0.87-0.99)."""
    rng = np.random.default_rng(1)
    boot = sm.Bootstrap(0.95, 2000, 0)
    hits = 0
    for _ in range(400):
        lo, hi = sm.bootstrap_ci(rng.normal(3.0, 2.0, 10), boot)
        hits += lo <= 3.0 <= hi
    assert 0.87 <= hits / 400 <= 0.99
    assert sm.bootstrap_ci([1.0], boot) is None
    # seeded: the same values give the same interval
    assert sm.bootstrap_ci([1.0, 2.0, 4.0], boot) == sm.bootstrap_ci([1.0, 2.0, 4.0], boot)


def test_bootstrap_interval_equals_scipys():
    """The same interval as scipy.stats.bootstrap's percentile method (an independent implementation), up to
    Monte Carlo error: 50,000 resamples each put a 2.5 % quantile within ~0.015 standard errors of the mean;
    a 90 % interval instead of 95 % would be ~0.3 standard errors narrower on each side."""
    rng = np.random.default_rng(5)
    for level in (0.95, 0.8):
        v = rng.normal(3.0, 2.0, 10)
        ref = scipy.stats.bootstrap((v,), np.mean, n_resamples=50_000, method="percentile", confidence_level=level,
                                    rng=np.random.default_rng(7)).confidence_interval
        lo, hi = sm.bootstrap_ci(v, sm.Bootstrap(level, 50_000, 0))
        se = v.std() / len(v) ** 0.5
        assert abs(lo - ref.low) < 0.1 * se and abs(hi - ref.high) < 0.1 * se, (lo, hi, ref)


def test_vs_scratch_pairs_seeds_and_reports_not_reached(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path / "sw", sizes=("tiny-a",), seeds=(0, 1)))
    notes: list[str] = []
    rows = {r["arm"]: r for r in sm.vs_scratch(sweep, sm.Bootstrap(resamples=500), notes)}
    assert set(rows) == {"nca 50+ 1M", "nca 30-40 1M"}  # scratch_matched is not compared with scratch here
    good, bad = rows["nca 50+ 1M"], rows["nca 30-40 1M"]
    for r in (good, bad):
        assert r["seeds"] == [0, 1] and r["improvement_pct"]["n"] == 2
    assert good["improvement_pct"]["mean"] > 0 and good["speedup"]["reached"] == 2
    assert bad["improvement_pct"]["mean"] < 0  # a worse arm is reported as worse
    assert bad["speedup"]["reached"] == 0 and bad["speedup"]["mean"] is None
    assert bad["speedup"]["per_seed"] == {"0": None, "1": None}


def test_unpaired_seed_and_missing_scratch_are_notes(tmp_path):
    scratch = run([1, 2], [10, 9], seed=0)
    arms = [run([1, 2], [10, 8], arm="nca", band="50+", seed=s, name=f"nca-{s}") for s in (0, 1)]
    lonely = run([1, 2], [10, 8], arm="nca", band="50+", size="other", name="nca-other")
    notes: list[str] = []
    rows = sm.vs_scratch(Sweep(tmp_path, "x", [scratch, *arms, lonely], []), sm.Bootstrap(resamples=200), notes)
    assert len(rows) == 1 and rows[0]["seeds"] == [0]
    assert any("seeds [1] have no partner" in n for n in notes)
    assert any("no scratch run" in n for n in notes)


def test_compute_matched_finds_partner_by_label(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path / "sw", sizes=("tiny-a",), seeds=(0, 1)))
    notes: list[str] = []
    rows = sm.compute_matched(sweep, sm.Bootstrap(resamples=500), notes)
    assert not notes and len(rows) == 1
    r = rows[0]
    assert r["arm"] == "nca 50+ 1M" and r["seeds"] == [0, 1]
    by_name = {x.name: x for x in sweep.runs}
    for s in ("0", "1"):
        arm = by_name[f"s2-web-tiny-a-nca-b50-t1M-d2M-s{s}"]
        matched = by_name[f"s2-web-tiny-a-matched-nca-b50-t1M-d2M-s{s}"]
        assert r["improvement_pct"]["per_seed"][s] == pytest.approx(
            100 * (matched.final_ppl - arm.final_ppl) / matched.final_ppl)
        assert r["flops_ratio"][s] == pytest.approx(1.0)  # the synthetic sweep matches FLOPs exactly


def test_matched_without_resolvable_partner_is_a_note(tmp_path):
    a = run([1, 2], [10, 8], arm="nca", band="50+", name="s2-nca-b50-a")
    b = run([1, 2], [10, 8], arm="nca", band="30-40", name="s2-nca-b30-b")
    m = run([1, 2], [10, 9], arm="scratch_matched", name="m", extra={"matched_to": "dyck-t1M"})
    notes: list[str] = []
    assert sm.compute_matched(Sweep(tmp_path, "x", [a, b, m], []), sm.Bootstrap(resamples=200), notes) == []
    assert any("cannot tell which arm" in n for n in notes)


def test_load_keeps_last_record_and_skips_damaged_lines(tmp_path):
    d = write_sweep(tmp_path / "sw", sizes=("tiny-a",), seeds=(0,), arms=("scratch", "nca-50+"))
    lines = (d / "results.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    rec["final"] = {"eval_loss": 1.0, "eval_ppl": math.e}
    no_curve = json.loads(lines[0])
    diverged = json.loads(lines[0]) | {"run": "diverged", "final": {"eval_loss": float("nan"), "eval_ppl": float("nan")}}
    newer = rec | {"v": 2, "final": {"eval_loss": 9.0, "eval_ppl": 9.0}}  # a format this code does not know
    (d / "results.jsonl").write_text("\n".join([*lines, json.dumps(rec), "{not json", '{"run": "x"}',
                                                json.dumps(diverged), json.dumps(newer)]) + "\n")
    sweep = load_sweep(d)
    last = {r.name: r for r in sweep.runs}[rec["run"]]
    assert last.final_ppl == pytest.approx(math.e)
    assert len(sweep.runs) == 2 and len(sweep.stage1) == 1
    assert any("not JSON" in n for n in sweep.notes) and any("lacks" in n for n in sweep.notes)
    assert any("diverged" in n for n in sweep.notes) and any("format v2" in n for n in sweep.notes)
    # an empty eval_curve falls back to the run's metrics.jsonl
    no_curve["eval_curve"] = []
    (d / "results.jsonl").write_text(json.dumps(no_curve) + "\n" + "\n".join(lines[1:]) + "\n")
    r = {x.name: x for x in load_sweep(d).runs}[no_curve["run"]]
    assert len(r.curve_ppl) == 8 and r.curve_ppl[-1] == pytest.approx(r.final_ppl)


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        load_sweep(tmp_path / "missing")
    with pytest.raises(UserError, match="no finished runs"):
        load_sweep(tmp_path)
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(UserError, match="no finished stage-2 run"):
        load_sweep(tmp_path)
