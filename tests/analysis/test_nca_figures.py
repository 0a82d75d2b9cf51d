"""Stats and figure helpers behind `nca stats` / `nca show`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nca_scale.analysis import nca_figures as nf
from nca_scale.errors import UserError
from nca_scale.nca.automaton import Automaton
from nca_scale.nca.bank import rule_tables
from nca_scale.nca.complexity import BANDS
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.stats import scan_bands, summarize


def test_summarize_band_edges_are_strict():
    s = np.array([0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 1.0, 0.02])
    res = summarize(s)
    assert res["rules"] == 10
    assert res["accepted"] == {"20-30": 0.1, "30-40": 0.1, "40-50": 0.1, "50+": 0.1}
    assert res["quantiles"]["0"] == 0.02 and res["quantiles"]["100"] == 1.0
    assert res["quantiles"]["50"] == pytest.approx(np.median(s))
    with pytest.raises(ValueError):
        summarize(np.array([]))


def test_scan_bands_is_chunk_independent_and_respects_limits():
    cfg = NCAConfig(seed=3)
    a = scan_bands(cfg, 2, 300, chunk=37)
    b = scan_bands(cfg, 2, 300, chunk=300)
    assert a.picked == b.picked
    np.testing.assert_array_equal(a.scores[: b.scanned], b.scores[: a.scanned])
    for band, (lo, hi) in BANDS.items():
        assert len(a.picked[band]) == 2
        assert all(lo < s < hi for _, s in a.picked[band])
    assert a.scanned < 300  # stopped once every band had its rules
    c = scan_bands(cfg, 2, 300, min_rules=250, chunk=100)
    assert c.scanned == 300 and c.picked == a.picked
    d = scan_bands(cfg, 1000, 64, chunk=50)  # cap reached: bands come back short, scan stops at the cap
    assert d.scanned == 64 and all(len(v) < 1000 for v in d.picked.values())


def test_trajectories_are_the_generator_rollout():
    cfg = NCAConfig(seq_len=128)
    traj = nf.trajectories(cfg, [5, 2], cfg.frames)
    assert traj.shape == (2, cfg.frames, 12, 12) and traj.dtype == np.uint8
    a = Automaton(cfg)
    ids = torch.tensor([5, 2])
    from nca_scale.nca import rng

    ref = a.rollout(rule_tables(cfg, "train", 0, ids), rng.hash32(nf.SHOW_KEYS, cfg.seed, ids), cfg.frames,
                    cfg.burn_in, cfg.dt)
    np.testing.assert_array_equal(traj, ref.numpy())
    # rows do not depend on which other rules share the batch
    np.testing.assert_array_equal(nf.trajectories(cfg, [2], cfg.frames)[0], traj[1])


def test_state_colors_and_labels():
    c = nf.state_colors(10)
    assert c.shape == (10, 3) and len({tuple(x) for x in c}) == 10
    assert len({tuple(x) for x in nf.state_colors(17)}) == 17
    assert nf.band_label("50+") == "50%+" and nf.band_label("20-30") == "20-30%"
    assert nf.frame_columns(27) == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    assert nf.frame_columns(4) == [0, 1, 2, 3]


def test_gif_pixels_show_the_states(tmp_path):
    rs = np.random.default_rng(0)
    traj = rs.integers(0, 10, size=(3, 5, 12, 12), dtype=np.uint8)
    path = tmp_path / "x.gif"
    nf.write_gif(traj, [(1, 0.31), (2, 0.32), (3, 0.33)], path, band="30-40", states=10, start=10, dt=1, cell=4)
    colors = nf.state_colors(10)
    with Image.open(path) as im:
        assert im.n_frames == 5
        for f in (0, 4):
            im.seek(f)
            rgb = np.asarray(im.convert("RGB"))
            for i in range(3):  # the centre pixel of cell (r, c) of trajectory i has the state's colour
                x0 = 14 + i * (12 * 4 + 14)
                for r, c in [(0, 0), (5, 7), (11, 11)]:
                    px = rgb[24 + 18 + r * 4 + 2, x0 + c * 4 + 2]
                    np.testing.assert_array_equal(px, colors[traj[i, f, r, c]])


@pytest.mark.slow
def test_make_show_replaces_its_own_output_and_is_atomic(tmp_path, monkeypatch):
    cfg = NCAConfig(seq_len=128)
    out = tmp_path / "figs"
    idx = nf.make_show(cfg, out, per_band=1, max_rules=200, min_rules=0)
    assert json.loads((out / "index.json").read_text()) == json.loads(json.dumps(idx))
    assert sorted(idx["files"]) == sorted(p.name for p in out.iterdir())
    first = (out / "index.json").read_text()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(nf, "write_gif", boom)
    with pytest.raises(RuntimeError):
        nf.make_show(NCAConfig(seq_len=128, seed=9), out, per_band=1, max_rules=200, min_rules=0)
    assert (out / "index.json").read_text() == first  # the old output is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["figs"]  # no temp dir left behind
    monkeypatch.undo()
    idx2 = nf.make_show(NCAConfig(seq_len=128, seed=9), out, per_band=1, max_rules=200, min_rules=0)
    assert idx2["seed"] == 9 and json.loads((out / "index.json").read_text())["seed"] == 9
    assert [p.name for p in tmp_path.iterdir()] == ["figs"]

    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError):
        nf.check_out(tmp_path / "afile")
