"""`nca-scale nca stats` / `nca-scale nca show` through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nca_scale.cli import main
from nca_scale.nca.automaton import Automaton
from nca_scale.nca.bank import probe_scores
from nca_scale.nca.complexity import BANDS
from nca_scale.nca.config import NCAConfig

REPO = Path(__file__).resolve().parents[2]
PAPER = str(REPO / "configs/nca/paper.yaml")
CODE = str(REPO / "configs/nca/code.yaml")
QKEYS = ["0", "10", "25", "50", "75", "90", "100"]


def run_stats(capsys, *args) -> dict:
    rc = main(["nca", "stats", *args])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 1, f"stdout must be exactly one JSON line, got {out!r}"
    return json.loads(lines[0])


def without_seconds(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "seconds"}


# ---- stats --------------------------------------------------------------------------------------------
def test_stats_schema_and_values(capsys):
    res = run_stats(capsys, "rules=300", "seed=5", "threads=2")
    assert set(res) == {"rules", "quantiles", "accepted", "seconds"}
    assert res["rules"] == 300
    assert list(res["quantiles"]) == QKEYS
    assert list(res["accepted"]) == list(BANDS)
    q = [res["quantiles"][k] for k in QKEYS]
    assert all(a <= b for a, b in zip(q, q[1:])), q
    fr = list(res["accepted"].values())
    assert all(0.0 <= f <= 1.0 for f in fr) and sum(fr) <= 1.0 + 1e-9
    assert isinstance(res["seconds"], float) and res["seconds"] >= 0
    # the same numbers straight from the generator's probe scores (candidates 0..299 of train bank 0)
    cfg = NCAConfig(seed=5)
    with torch.inference_mode():
        s = probe_scores(cfg, Automaton(cfg), "train", 0, torch.arange(300))
    np.testing.assert_allclose(q, np.quantile(s, [int(k) / 100 for k in QKEYS]), atol=1e-6)
    for band, (lo, hi) in BANDS.items():
        assert res["accepted"][band] == pytest.approx(((s > lo) & (s < hi)).mean(), abs=1e-6)
    assert q[0] < 0.1 < 0.5 < q[-1] < 0.7  # constant grids score ~0.02, i.i.d. noise ~0.67


def test_stats_deterministic_per_seed(capsys):
    a = run_stats(capsys, "rules=200", "seed=11")
    b = run_stats(capsys, "rules=200", "seed=11", "threads=1")
    c = run_stats(capsys, "rules=200", "seed=12")
    assert without_seconds(a) == without_seconds(b)
    assert without_seconds(a) != without_seconds(c)


def test_stats_ignores_config_band(capsys):
    # paper.yaml (50%+), code.yaml (30-40%) and a band that accepts nothing score the same random rules
    a = run_stats(capsys, PAPER, "rules=200")
    b = run_stats(capsys, CODE, "rules=200")
    c = run_stats(capsys, PAPER, "rules=200", "complexity.lo=0.9", "complexity.hi=0.95")
    assert without_seconds(a) == without_seconds(b) == without_seconds(c)
    assert a["accepted"]["30-40"] > 0 and a["accepted"]["50+"] > 0


def test_stats_stdout_is_only_json_in_a_real_process():
    cmd = [sys.executable, "-c", "import sys; from nca_scale.cli import main; sys.exit(main())",
           "nca", "stats", "rules=64"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["rules"] == 64
    assert "scoring random rules" in p.stderr  # the progress bar goes to stderr


# ---- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["nca", "stats", "rules=0"],
        ["nca", "stats", "rules=-3"],
        ["nca", "stats", "threads=0"],
        ["nca", "stats", "device=tpu"],
        ["nca", "stats", "nosuchkey=1"],
        ["nca", "stats", "configs/nca/missing.yaml"],
        ["nca", "show", PAPER],
        ["nca", "show", "per_band=2"],
        ["nca", "show", PAPER, "out=figs", "per_band=0"],
        ["nca", "show", PAPER, "out=figs", "frames=1"],
        ["nca", "show", PAPER, "out=figs", "rules=0"],
    ],
)
def test_bad_input_exits_2_with_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nca-scale: error: "), cap.err
    assert not (tmp_path / "figs").exists()


def test_show_refuses_a_foreign_directory(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["nca", "show", PAPER, f"out={out}", "rules=50"]) == 2
    assert "not an earlier `nca show` output" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


# ---- show ---------------------------------------------------------------------------------------------
PER_BAND = 2


@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    root = tmp_path_factory.mktemp("show")
    out = root / "figures" / "nca"
    rc = main(["nca", "show", PAPER, f"out={out}", f"per_band={PER_BAND}", "rules=400"])
    assert rc == 0
    return out, json.loads((out / "index.json").read_text())


def test_show_files_are_valid_and_indexed(shown):
    out, index = shown
    assert sorted(index["files"]) == sorted(p.name for p in out.iterdir())
    assert "index.json" in index["files"] and index["histogram"] in index["files"]
    assert [p.name for p in out.parent.iterdir()] == ["nca"]  # no temp dir left next to out
    cfg = NCAConfig()
    assert index["frames"] == cfg.frames == 27
    pngs = [f for f in index["files"] if f.endswith(".png")]
    gifs = [f for f in index["files"] if f.endswith(".gif")]
    assert len(pngs) == len(BANDS) + 1 and len(gifs) == len(BANDS)
    for name in pngs:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
            im.verify()
    for name in gifs:
        with Image.open(out / name) as im:
            assert im.format == "GIF"
            assert im.n_frames == index["frames"]
            im.seek(im.n_frames - 1)  # every frame decodes
    for band, entry in index["bands"].items():
        assert entry["png"] == f"band_{band.replace('+', 'plus')}.png" and entry["png"] in index["files"]
        assert entry["gif"] in index["files"]


def test_show_band_assignments(shown):
    _, index = shown
    cfg = NCAConfig()  # paper.yaml = defaults with a band, and the band does not change scores
    ids_all = [r["id"] for e in index["bands"].values() for r in e["rules"]]
    with torch.inference_mode():
        s = probe_scores(cfg, Automaton(cfg), "train", 0, torch.arange(max(ids_all) + 1))
    for band, (lo, hi) in BANDS.items():
        rules = index["bands"][band]["rules"]
        assert len(rules) == PER_BAND
        for r in rules:
            assert lo < r["score"] < hi
            assert r["score"] == pytest.approx(s[r["id"]], abs=1e-12)
        # the first PER_BAND candidates of the band, in candidate order
        assert [r["id"] for r in rules] == list(np.nonzero((s > lo) & (s < hi))[0][:PER_BAND])
