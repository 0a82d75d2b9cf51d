"""Complexity scores and the band filter (paper.md §1 gzip complexity filter)."""

from __future__ import annotations

import dataclasses

import golden_numpy as ref
import numpy as np
import pytest
import torch

from nca_scale.nca import rng
from nca_scale.nca.automaton import Automaton
from nca_scale.nca.bank import PROBE, build_bank, probe_scores, rule_key, rule_tables
from nca_scale.nca.complexity import BANDS, diff_scores, gzip_scores, in_band
from nca_scale.nca.config import ComplexityConfig, NCAConfig


def test_constant_grid_scores_about_0_02():
    cfg = NCAConfig()
    for state in (0, 3, 9):
        s = gzip_scores(cfg, torch.full((1, 10, 12, 12), state, dtype=torch.uint8))[0]
        assert 0.018 < s < 0.026, s  # 0.022 measured on the reference
        assert s == ref.gzip_score(np.full((10, 12, 12), state), 2, 10)


def test_uniform_random_cells_score_about_0_67():
    cfg = NCAConfig()
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 10, (32, 10, 12, 12)))
    s = gzip_scores(cfg, x)
    assert abs(s.mean() - 0.67) < 0.01 and s.min() > 0.64 and s.max() < 0.70
    # threads give the same numbers
    assert np.array_equal(gzip_scores(cfg, x.repeat(4, 1, 1, 1), threads=2), np.tile(s, 4))


def test_raw_bytes_are_int32_patch_ids_without_delimiters():
    """10 frames of 36 patches as int32: 1440 raw bytes; the score is compressed size / 1440."""
    cfg = NCAConfig()
    x = np.random.default_rng(1).integers(0, 10, (10, 12, 12))
    s = gzip_scores(cfg, torch.from_numpy(x)[None])[0]
    assert round(s * 1440) == pytest.approx(s * 1440, abs=1e-9)
    assert s == ref.gzip_score(x, 2, 10)


def test_band_filter_is_strict():
    s = np.array([0.2, 0.3, 0.30001, 0.35, 0.39999, 0.4, 0.9])
    assert in_band(0.3, 0.4, s).tolist() == [False, False, True, True, True, False, False]
    assert in_band(None, 0.4, s).all()
    assert in_band(0.5, 1.0, np.array([0.5, 0.67, 1.0])).tolist() == [False, True, False]
    assert BANDS == {"20-30": (0.2, 0.3), "30-40": (0.3, 0.4), "40-50": (0.4, 0.5), "50+": (0.5, 1.0)}


def test_diff_scores():
    a = torch.zeros(1, 4, 6, 6, dtype=torch.uint8)
    assert diff_scores(a)[0] == 0.0
    b = a.clone()
    b[0, 1::2] = 1  # every frame differs from the previous one everywhere
    assert diff_scores(b)[0] == 1.0
    c = a.clone()
    c[0, 1:, 0, :3] = 2  # 3 of 36 cells change once, in 1 of 3 transitions
    assert diff_scores(c)[0] == pytest.approx(3 / 36 / 3)


@pytest.mark.parametrize("lo,hi", [(0.5, 1.0), (0.3, 0.4)])
def test_bank_is_exactly_the_in_band_candidates(lo, hi):
    """The bank holds the first accepted candidates in candidate order; every skipped candidate before the last
    accepted one scores outside the band; every kept score lies strictly inside it."""
    cfg = NCAConfig(seq_len=128, complexity=ComplexityConfig(lo=lo, hi=hi))
    bank = build_bank(cfg, "train", 0, 12, chunk=64)
    assert len(bank.candidates) == 12
    assert np.all((bank.scores > lo) & (bank.scores < hi))
    last = int(bank.candidates[-1])
    all_ids = torch.arange(last + 1)
    s = probe_scores(cfg, Automaton(cfg), "train", 0, all_ids)
    inside = np.nonzero((s > lo) & (s < hi))[0]
    assert np.array_equal(inside, bank.candidates)
    assert np.array_equal(s[inside], bank.scores)


def test_diff_mode_bank():
    cfg = NCAConfig(seq_len=128, complexity=ComplexityConfig(mode="diff", lo=0.05, hi=0.5))
    bank = build_bank(cfg, "train", 0, 8, chunk=64)
    assert np.all((bank.scores > 0.05) & (bank.scores < 0.5))


def test_training_probe_scores_the_training_trajectory_shape():
    """probe=training: the candidate is scored on cfg.frames frames from burn_in (not 10 frames from t=10)."""
    base = NCAConfig(seq_len=128, burn_in=3, complexity=ComplexityConfig(lo=0.5, hi=1.0))
    cfg = dataclasses.replace(base, complexity=dataclasses.replace(base.complexity, probe="training"))
    cand = torch.arange(6)
    auto = Automaton(cfg)
    got = probe_scores(cfg, auto, "train", 0, cand)
    keys = rng.hash32(PROBE, *rule_key(cfg, "train", 0), cand)
    frames = auto.rollout(rule_tables(cfg, "train", 0, cand), keys, cfg.frames, cfg.burn_in, cfg.dt)
    assert frames.shape[1] == cfg.frames == 4
    assert np.array_equal(got, gzip_scores(cfg, frames))
    assert not np.array_equal(got, probe_scores(base, auto, "train", 0, cand))
