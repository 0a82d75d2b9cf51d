"""`nca-scale report` on synthetic sweep directories written by the contract: its numbers equal ones recomputed
here, independently, from the runs' metrics.jsonl files; missing parts degrade to notes; bad input -> exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sweep_synth import write_sweep

from nca_scale.cli import main

FAST = ["resamples=1000", "fit_resamples=30"]


def eval_lines(run_dir: Path) -> tuple[list[float], list[float]]:
    tokens, ppl = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "eval_ppl" in rec:
            tokens.append(rec["tokens"])
            ppl.append(rec["eval_ppl"])
    return tokens, ppl


def tokens_to_reach(tokens, ppl, target):
    for i, p in enumerate(ppl):
        if p <= target:
            return tokens[0] if i == 0 else float(np.interp(target, [p, ppl[i - 1]], [tokens[i], tokens[i - 1]]))
    return None


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    d = write_sweep(tmp_path_factory.mktemp("sweep") / "synth")
    assert main(["report", str(d), *FAST]) == 0
    return d, json.loads((d / "report" / "report.json").read_text())


def test_files_written(full):
    d, rep = full
    out = d / "report"
    assert sorted(p.name for p in out.iterdir()) == sorted(rep["files"])
    pngs = [f for f in rep["files"] if f.endswith(".png")]
    assert set(pngs) == {"loss_curves.png", "final_ppl.png", "improvement_vs_n.png", "speedup_vs_n.png",
                         "loss_fits.png", "bands.png", "claims.png"}
    for f in pngs:
        with Image.open(out / f) as im:
            assert im.format == "PNG" and im.size[0] > 300
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for f in pngs:
        assert f"]({f})" in md
    assert html.count("data:image/png;base64,") == len(pngs) and "src='bands.png'" not in html


def test_numbers_match_an_independent_recomputation(full):
    d, rep = full
    runs = d / "runs"
    md = (d / "report" / "report.md").read_text()
    html = (d / "report" / "report.html").read_text()
    rows = rep["vs_scratch"]
    assert len(rows) == 4 * 2  # 4 sizes x (nca 50+, nca 30-40)
    for row in rows:
        size, band = row["cell"]["size"], row["band"]
        improvements, speedups = [], []
        for seed in (0, 1, 2):
            t_s, p_s = eval_lines(runs / f"s2-web-{size}-scratch-d2M-s{seed}")
            t_a, p_a = eval_lines(runs / f"s2-web-{size}-nca-b{band.replace('+', '')}-t1M-d2M-s{seed}")
            improvements.append(100 * (p_s[-1] - p_a[-1]) / p_s[-1])
            reach = tokens_to_reach(t_a, p_a, p_s[-1])
            speedups.append(None if reach is None else t_s[-1] / reach)
            assert row["improvement_pct"]["per_seed"][str(seed)] == pytest.approx(improvements[-1], rel=1e-12)
            assert row["final_ppl"]["per_seed"][str(seed)] == pytest.approx(p_a[-1], rel=1e-12)
            got = row["speedup"]["per_seed"][str(seed)]
            assert got is None if speedups[-1] is None else got == pytest.approx(speedups[-1], rel=1e-9)
        imp = row["improvement_pct"]
        assert imp["mean"] == pytest.approx(np.mean(improvements), rel=1e-12)
        assert imp["ci"][0] <= imp["mean"] <= imp["ci"][1]
        # 95 % percentile interval over 3 seeds, by hand: of the 27 equally likely resamples one (1/27 = 3.7 %
        # > 2.5 %) repeats the smallest value, one the largest, so the interval is [min, max] of the seeds
        # (scipy.stats.bootstrap agrees: tests/analysis/test_sweep_metrics.py)
        assert imp["ci"] == pytest.approx([min(improvements), max(improvements)], rel=1e-12)
        text = f"{imp['mean']:+.2f}% [{imp['ci'][0]:+.2f}, {imp['ci'][1]:+.2f}] (3 seeds)"
        assert text in md and text in html  # every number with its interval and seeds, in both documents
        reached = [s for s in speedups if s is not None]
        assert row["speedup"]["reached"] == len(reached)
        if reached:
            assert row["speedup"]["mean"] == pytest.approx(np.mean(reached), rel=1e-9)
    # the arm that is worse than scratch is reported as worse, never dropped
    worse = [r for r in rows if r["band"] == "30-40"]
    assert all(r["improvement_pct"]["mean"] < 0 and r["speedup"]["reached"] == 0 for r in worse)
    assert "not reached (0 of 3 seeds reach scratch's final ppl)" in md


def test_compute_matched_and_fits_from_the_files(full):
    d, rep = full
    runs = d / "runs"
    assert len(rep["compute_matched"]) == 4
    for row in rep["compute_matched"]:
        size = row["cell"]["size"]
        for seed in (0, 1, 2):
            _, p_a = eval_lines(runs / f"s2-web-{size}-nca-b50-t1M-d2M-s{seed}")
            _, p_m = eval_lines(runs / f"s2-web-{size}-matched-nca-b50-t1M-d2M-s{seed}")
            assert row["improvement_pct"]["per_seed"][str(seed)] == pytest.approx(100 * (p_m[-1] - p_a[-1]) / p_m[-1])
    fits = {f["arm"]: f for f in rep["scaling"]["loss_vs_n"]}
    scratch = fits["scratch"]
    assert scratch["form"] == "E + A/N^alpha" and scratch["sizes"] == 4
    for p in scratch["points"]:
        losses = [math.log(eval_lines(runs / f"s2-web-{p['size']}-scratch-d2M-s{s}")[1][-1]) for s in (0, 1, 2)]
        assert p["losses"] == pytest.approx(losses, rel=1e-12)
    # the synthetic truth: loss = E + A/N^0.3 + (a term fixed by the token budget) -> alpha close to 0.3
    assert scratch["fit"]["params"]["alpha"] == pytest.approx(0.3, abs=0.05)
    assert scratch["holdout"]["n"] == 30_000_000
    bands = {(b["size"], b["band"]) for b in rep["bands"]}
    assert ("tiny-a", "50+") in bands and ("tiny-a", "30-40") in bands


def test_small_sweep_degrades_to_notes(tmp_path):
    d = write_sweep(tmp_path / "small", sizes=("tiny-a", "tiny-b"), seeds=(0,), arms=("scratch", "nca-50+"))
    assert main(["report", str(d), *FAST]) == 0
    rep = json.loads((d / "report" / "report.json").read_text())
    md = (d / "report" / "report.md").read_text()
    notes = " ".join(rep["notes"])
    assert "no scratch_matched runs" in notes and "fewer than 2 NCA complexity bands" in notes
    assert all(f["fit"] is None and "too few" in f["notes"][0] for f in rep["scaling"]["loss_vs_n"])
    row = rep["vs_scratch"][0]
    assert row["improvement_pct"]["ci"] is None and "(1 seed, no interval)" in md
    assert "better in its only seed (too few seeds for an interval to decide)" in md
    assert "Not measured: the sweep has no scratch_matched runs." in md
    assert "bands.png" not in rep["files"]


def test_missing_scratch_is_a_note(tmp_path):
    d = write_sweep(tmp_path / "noscratch", sizes=("tiny-a",), seeds=(0, 1), arms=("nca-50+",))
    assert main(["report", str(d), *FAST]) == 0
    rep = json.loads((d / "report" / "report.json").read_text())
    assert rep["vs_scratch"] == [] and any("no scratch run" in n for n in rep["notes"])


def test_errors_are_one_line_exit_2(tmp_path, capsys):
    def error(args) -> str:
        assert main(["report", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("nca-scale: error:")
        return err

    assert "no finished runs" in error([str(tmp_path)])
    assert "not a directory" in error([str(tmp_path / "nope")])
    assert "exactly one SWEEP_DIR" in error([])
    d = write_sweep(tmp_path / "sw", sizes=("tiny-a",), seeds=(0,), arms=("scratch",))
    assert "level=" in error([str(d), "level=2"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert "not an earlier report" in error([str(d), f"out={other}"])
    assert (other / "keep.txt").exists() and not (d / "report").exists()
    # an earlier report is replaced whole
    assert main(["report", str(d), *FAST]) == 0
    (d / "report" / "stale.png").write_text("x")
    assert main(["report", str(d), *FAST]) == 0
    assert not (d / "report" / "stale.png").exists()
