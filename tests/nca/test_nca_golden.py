"""Golden vectors: the fast generator (folded tables, embedding_bag, torch) against the plain float64 NumPy
reference in golden_numpy.py, at temperature 0 (argmax dynamics, the tau=1e-4 regime of paper.md §1)."""

from __future__ import annotations

import dataclasses

import golden_numpy as ref
import numpy as np
import pytest
import torch

from nca_scale.nca import rng
from nca_scale.nca.automaton import Automaton
from nca_scale.nca.bank import PROBE, probe_scores, rule_key
from nca_scale.nca.complexity import gzip_scores
from nca_scale.nca.config import BankConfig, ComplexityConfig, NCAConfig
from nca_scale.nca.rules import fold, sample_params, select_tables
from nca_scale.nca.stream import NCAStream
from nca_scale.nca.tokenizer import encode

RULES = [0, 1, 2, 5, 17, 1234]

CASES = {
    "paper": NCAConfig(temperature=0.0),
    "no-channel-wrap": NCAConfig(temperature=0.0, wrap_state_channels=False),
    "identity-bias": NCAConfig(temperature=0.0, identity_bias=0.15, init_state="uniform"),
    "g8-s3-p2": NCAConfig(grid=8, states=3, patch=2, temperature=0.0, identity_bias=0.2, seq_len=200, burn_in=3, dt=2),
    "g8-s3-p4-nowrap": NCAConfig(
        grid=8, states=3, patch=4, temperature=0.0, identity_bias=-0.3, wrap_state_channels=False, seq_len=60,
        token_dtype="int32", burn_in=0, conv_channels=5, hidden=7,
    ),
    # more states than uint8 holds (patch 1 keeps the vocabulary within int32)
    "g6-s300-p1": NCAConfig(grid=6, states=300, patch=1, temperature=0.0, seq_len=100, token_dtype="int32", burn_in=2),
}


def numpy_params(p, r: int) -> dict:
    return ref.flax_params(*(t[r].numpy() for t in (p.w1, p.b1, p.w2, p.b2, p.w3, p.b3)))


def generated(cfg: NCAConfig, rule_ids: list[int], traj_keys: torch.Tensor):
    params = sample_params(cfg, torch.tensor(rule_ids), 3, 0, 1)
    tables = fold(cfg, params)
    auto = Automaton(cfg)
    state0 = auto.initial_state(traj_keys)
    frames = auto.rollout(tables, traj_keys, cfg.frames, cfg.burn_in, cfg.dt)
    return params, tables, auto, state0, frames


@pytest.mark.parametrize("name", list(CASES))
def test_rollout_and_tokens_match_numpy_reference(name):
    cfg = CASES[name]
    cfg.validate()
    keys = torch.arange(len(RULES), dtype=torch.int64) * 7919 + 11
    params, tables, auto, state0, frames = generated(cfg, RULES, keys)
    assert params.w1.shape[2] == cfg.in_channels == (cfg.states + 2 if cfg.wrap_state_channels else cfg.states)
    toks = encode(cfg, frames)
    g = cfg.grid
    for r in range(len(RULES)):
        p = numpy_params(params, r)
        s0 = state0[r].view(g, g).numpy()
        want_frames, want_logits = ref.rollout(
            s0, p, cfg.states, cfg.wrap_state_channels, cfg.identity_bias, cfg.frames, cfg.burn_in, cfg.dt
        )
        # stepwise logits on the reference's own states
        states = [s0] + [lg.argmax(-1) for lg in want_logits[:-1]]
        batch = torch.from_numpy(np.stack([s.reshape(-1) for s in states])).long()
        rep = select_tables(tables, torch.full((len(states),), r))
        got_logits = auto.logits(batch, rep).double().numpy().reshape(len(states), g, g, cfg.states)
        np.testing.assert_allclose(got_logits, np.stack(want_logits), rtol=0, atol=2e-5, err_msg=f"rule {RULES[r]}")
        # frames and tokens exactly
        np.testing.assert_array_equal(frames[r].numpy(), want_frames, err_msg=f"{name} rule {RULES[r]}")
        want_tokens = ref.tokens(want_frames, cfg.patch, cfg.states, cfg.seq_len)
        assert len(want_tokens) == cfg.seq_len + 1
        np.testing.assert_array_equal(toks[r].numpy(), want_tokens)


def test_paper_sequence_layout():
    """27 frames s_10..s_36, 38 tokens each, truncated to 1025 tokens (paper.md §1 Rollout, §2)."""
    cfg = CASES["paper"]
    assert (cfg.frames, cfg.frame_tokens, cfg.sequence_tokens, cfg.grid_start, cfg.grid_end) == (27, 38, 1025, 10000, 10001)
    keys = torch.tensor([5])
    params, tables, auto, state0, frames = generated(cfg, [3], keys)
    p = numpy_params(params, 0)
    # s_10 .. s_36 by stepping the reference one step at a time from s_0
    s = state0[0].view(12, 12).numpy()
    seen = []
    for _ in range(37):
        seen.append(s)
        s = ref.logits(s, p, 10, True).argmax(-1)
    np.testing.assert_array_equal(frames[0].numpy(), np.stack(seen[10:37]))


def test_the_channel_wrap_is_not_a_no_op():
    """With wrap_state_channels the kernels of states 0 and S-1 receive the extra channels: logits differ from
    the unwrapped network built from the same middle channels."""
    cfg = CASES["paper"]
    params = sample_params(cfg, torch.tensor([0]), 3, 0, 1)
    p = numpy_params(params, 0)
    s = np.random.default_rng(0).integers(0, 10, (12, 12))
    wrapped = ref.logits(s, p, 10, True)
    p_mid = dict(p, k1=p["k1"][:, :, 1:-1, :])
    assert not np.allclose(wrapped, ref.logits(s, p_mid, 10, False))


@pytest.mark.parametrize("name", ["paper", "g8-s3-p2", "g8-s3-p4-nowrap"])
def test_gzip_score_equals_reference_gzipfile(name):
    cfg = CASES[name]
    keys = torch.arange(len(RULES), dtype=torch.int64) + 100
    params, tables, auto, state0, frames = generated(cfg, RULES, keys)
    got = gzip_scores(cfg, frames)
    want = [ref.gzip_score(f.numpy(), cfg.patch, cfg.states) for f in frames]
    assert got.dtype == np.float64
    assert list(got) == want  # exactly, not approximately
    gen = np.random.default_rng(1)
    extra = [np.zeros((10, cfg.grid, cfg.grid), np.uint8),
             gen.integers(0, cfg.states, (10, cfg.grid, cfg.grid)).astype(np.uint8),
             gen.integers(0, 2, (3, cfg.grid, cfg.grid)).astype(np.uint8)]
    for x in extra:
        assert gzip_scores(cfg, torch.from_numpy(x)[None])[0] == ref.gzip_score(x, cfg.patch, cfg.states)


def test_probe_scores_are_the_reference_filter_trajectory():
    """A candidate's score = gzip of frames s_10..s_19 of its own probe trajectory (paper.md §1 filter)."""
    cfg = dataclasses.replace(CASES["paper"], complexity=ComplexityConfig(lo=0.5, hi=1.0))
    auto = Automaton(cfg)
    cand = torch.arange(8)
    got = probe_scores(cfg, auto, "train", 0, cand)
    params = sample_params(cfg, cand, *rule_key(cfg, "train", 0))
    keys = rng.hash32(PROBE, *rule_key(cfg, "train", 0), cand)
    state0 = auto.initial_state(keys)
    for r in range(len(cand)):
        f, _ = ref.rollout(state0[r].view(12, 12).numpy(), numpy_params(params, r), 10, True, 0.0, 10, 10, 1)
        assert got[r] == ref.gzip_score(f, 2, 10)


def test_stream_end_to_end_matches_numpy_reference():
    """NCAStream.sequences at tau=0: bank rule -> weights -> trajectory key -> initial state -> rollout -> tokens."""
    # no band: the bank is candidates 0, 1, 2, ... unscored (the filter itself is checked above)
    cfg = NCAConfig(temperature=0.0, seq_len=128, bank=BankConfig(size=16))
    stream = NCAStream(cfg, batch_size=3)
    idx = np.array([0, 3, 17, 40, 2**33])
    toks = stream.sequences(idx)
    banks, cand, _ = stream.rules(idx)
    assert sorted(stream.rules(np.arange(16))[1]) == list(range(16))
    params = sample_params(cfg, torch.from_numpy(cand), *rule_key(cfg, "train", 0))
    state0 = Automaton(cfg).initial_state(stream.trajectory_keys(torch.from_numpy(idx)))
    for r in range(len(idx)):
        f, _ = ref.rollout(state0[r].view(12, 12).numpy(), numpy_params(params, r), 10, True, 0.0, cfg.frames, 10, 1)
        np.testing.assert_array_equal(toks[r].numpy(), ref.tokens(f, 2, 10, 128))
