"""Sampling at temperature > 0: the sparse Gumbel-max step draws next states from
softmax((logits + identity_bias * onehot(state)) / tau), cell by cell (paper.md §1 Update)."""

from __future__ import annotations

import math

import golden_numpy as ref
import numpy as np
import pytest
import torch

from nca_scale.nca import rng
from nca_scale.nca.automaton import Automaton
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.rules import fold, sample_params, select_tables


def _params(cfg, rule):
    p = sample_params(cfg, torch.tensor([rule]), 9, 0, 0)
    return p, fold(cfg, p), ref.flax_params(*(t[0].numpy() for t in (p.w1, p.b1, p.w2, p.b2, p.w3, p.b3)))


def _chi_square_z(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pooled Pearson chi-square over cells (rows), bins with expected count < 5 merged per cell, as a
    Wilson-Hilferty z-score (approximately N(0, 1) under the null)."""
    n = counts.sum(1, keepdims=True)
    expected = probs * n
    x2, dof = 0.0, 0
    for o, e in zip(counts, expected):
        big = e >= 5
        obs = list(o[big]) + ([o[~big].sum()] if (~big).any() else [])
        exp = list(e[big]) + ([e[~big].sum()] if (~big).any() else [])
        obs, exp = np.array(obs, float), np.array(exp, float)
        keep = exp > 0
        if keep.sum() < 2:
            assert obs[~keep].sum() == 0, "a draw landed on a state of probability ~0"
            continue
        x2 += float((((obs - exp) ** 2)[keep] / exp[keep]).sum())
        dof += int(keep.sum()) - 1
    z = ((x2 / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return z, dof


@pytest.mark.parametrize(
    "tau,ib,rule", [(1.0, 0.0, 4), (0.05, 0.0, 4), (0.05, 0.1, 11), (0.3, -0.2, 2)]
)
def test_step_distribution_is_softmax_over_tau(tau, ib, rule):
    cfg = NCAConfig(temperature=tau, identity_bias=ib)
    _, tables, p = _params(cfg, rule)
    auto = Automaton(cfg)
    state = auto.initial_state(torch.tensor([12345]))  # (1, 144)
    n = 3000
    batch_tables = select_tables(tables, torch.zeros(n, dtype=torch.long))
    keys = torch.arange(n, dtype=torch.int64) * 1_000_003 + 77
    with torch.inference_mode():
        nxt = auto.step(state.expand(n, -1).contiguous(), batch_tables, keys, step=5)
    counts = np.zeros((cfg.grid**2, cfg.states))
    np.add.at(counts, (np.tile(np.arange(cfg.grid**2), n), nxt.reshape(-1).numpy()), 1)

    lg = ref.logits(state.view(12, 12).numpy(), p, 10, True, ib).reshape(-1, 10) / tau
    probs = np.exp(lg - lg.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ambiguous = (probs.max(1) < 0.99).sum()
    assert ambiguous >= 10, f"only {ambiguous} cells are random at tau={tau}: the check has no power"
    z, dof = _chi_square_z(counts, probs)
    assert z < 4.5, f"chi-square z={z:.2f} over {dof} dof: next states are not softmax((logits+ib*onehot)/tau)"
    # a sharper look at the most uncertain cell
    c = int(np.argmin(probs.max(1)))
    np.testing.assert_allclose(counts[c] / n, probs[c], atol=5 * math.sqrt(0.25 / n))


def test_sampling_with_more_states_than_uint8_holds():
    """256 states, tau=10: every state of every cell is within tau*GUMBEL_SPAN of the top, so all cells are
    sampled; the count of such states must not wrap around in a narrow integer type."""
    cfg = NCAConfig(grid=6, states=256, patch=1, seq_len=100, token_dtype="int32", temperature=10.0)
    cfg.validate()
    _, tables, p = _params(cfg, 1)
    auto = Automaton(cfg)
    state = auto.initial_state(torch.tensor([99]))
    n = 2000
    with torch.inference_mode():
        nxt = auto.step(state.expand(n, -1).contiguous(), select_tables(tables, torch.zeros(n, dtype=torch.long)),
                        torch.arange(n, dtype=torch.int64), step=1)
    counts = np.zeros((36, 256))
    np.add.at(counts, (np.tile(np.arange(36), n), nxt.long().reshape(-1).numpy()), 1)
    lg = ref.logits(state.long().view(6, 6).numpy(), p, 256, True).reshape(-1, 256) / 10.0
    probs = np.exp(lg - lg.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert (counts > 0).sum(1).min() > 100  # near-uniform over 256 states
    assert _chi_square_z(counts, probs)[0] < 4.5


def test_wrong_temperature_would_be_detected():
    """The chi-square check has power: draws at tau=1 are rejected against the tau=0.5 distribution."""
    cfg = NCAConfig(temperature=1.0)
    _, tables, p = _params(cfg, 4)
    auto = Automaton(cfg)
    state = auto.initial_state(torch.tensor([12345]))
    n = 3000
    with torch.inference_mode():
        nxt = auto.step(state.expand(n, -1).contiguous(), select_tables(tables, torch.zeros(n, dtype=torch.long)),
                        torch.arange(n, dtype=torch.int64), step=0)
    counts = np.zeros((144, 10))
    np.add.at(counts, (np.tile(np.arange(144), n), nxt.reshape(-1).numpy()), 1)
    lg = ref.logits(state.view(12, 12).numpy(), p, 10, True) / 0.5
    probs = np.exp(lg - lg.max(-1, keepdims=True)).reshape(-1, 10)
    probs /= probs.sum(1, keepdims=True)
    assert _chi_square_z(counts, probs)[0] > 10


def test_only_ambiguous_cells_can_leave_their_argmax():
    """tau=1e-4 (the release): a cell whose top-2 gap is >= tau * GUMBEL_SPAN always takes its argmax."""
    cfg = NCAConfig(temperature=1e-4)
    _, tables, p = _params(cfg, 4)
    auto = Automaton(cfg)
    n = 64
    state = auto.initial_state(torch.arange(n))
    with torch.inference_mode():
        nxt = auto.step(state, select_tables(tables, torch.zeros(n, dtype=torch.long)), torch.arange(n), step=0)
    lg = np.stack([ref.logits(s.view(12, 12).numpy(), p, 10, True).reshape(-1, 10) for s in state])
    top2 = np.sort(lg, -1)[..., -2:]
    sure = (top2[..., 1] - top2[..., 0]) >= 1e-4 * rng.GUMBEL_SPAN + 1e-6
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(nxt.numpy()[sure], lg.argmax(-1)[sure])


def test_noise_depends_on_trajectory_step_and_cell_only():
    cfg = NCAConfig(temperature=1.0)
    _, tables, _ = _params(cfg, 4)
    auto = Automaton(cfg)
    keys = torch.arange(40, dtype=torch.int64) * 31 + 5
    state = auto.initial_state(keys)
    t40 = select_tables(tables, torch.zeros(40, dtype=torch.long))
    with torch.inference_mode():
        full = auto.step(state, t40, keys, step=3)
        # any sub-batch, in any order, gives the same rows
        order = torch.tensor([7, 3, 39, 0])
        part = auto.step(state[order], select_tables(t40, order), keys[order], step=3)
        again = auto.step(state, t40, keys, step=3)
        other_step = auto.step(state, t40, keys, step=4)
    assert torch.equal(part, full[order])
    assert torch.equal(again, full)
    assert not torch.equal(other_step, full)


def test_uniform_draws_stay_inside_the_open_interval(monkeypatch):
    """rng.uniform documents u in (0, 1), so Gumbel draws are bounded by GUMBEL_SPAN and normals are finite.
    The largest 24-bit value h24 = 2^24 - 1 gives (h24 + 0.5) / 2^24, which float32 rounds to exactly 1.0:
    gumbel -> +inf and normal -> +inf (an initial state's softmax(z) becomes NaN). It happens once per 2^24
    draws: ~1 in every 1.7M reference initial states."""
    top = torch.tensor([2**32 - 1, 2**32 - 256, 255, 0], dtype=torch.int64)
    monkeypatch.setattr(rng, "hash32", lambda *parts, **_: top)
    u = rng.uniform(0)
    assert bool((u > 0).all() and (u < 1).all()), u
    assert float(u.max()) <= rng.U_MAX and float(u.min()) >= rng.U_MIN
    g = rng.gumbel(0)
    assert bool(torch.isfinite(g).all()), g
    assert float(g.max() - g.min()) <= rng.GUMBEL_SPAN
    assert bool(torch.isfinite(rng.normal(0)).all())


def _state_counts(cfg: NCAConfig, n: int) -> np.ndarray:
    s0 = Automaton(cfg).initial_state(torch.arange(n, dtype=torch.int64) * 7 + 1).numpy()
    return np.stack([np.bincount(row, minlength=cfg.states) for row in s0])  # (n, S)


def test_uniform_initial_state():
    counts = _state_counts(NCAConfig(init_state="uniform"), 3000)
    assert abs(counts.mean() - 14.4) < 0.1
    # multinomial(144, 1/10): per-state count variance 144 * 0.1 * 0.9 = 12.96
    assert abs(counts.var(0).mean() / 12.96 - 1) < 0.1


def test_reference_initial_state_is_a_per_trajectory_categorical():
    """Cells i.i.d. from softmax(z), z ~ N(0, I_S) drawn once per trajectory (paper.md §1 Initial state)."""
    cfg = NCAConfig()
    n = 3000
    counts = _state_counts(cfg, n)
    assert abs(counts.mean() - 14.4) < 0.1
    # colour fractions vary between trajectories far beyond multinomial noise: compare with a simulation of
    # the reference's two-level draw
    gen = np.random.default_rng(0)
    z = gen.standard_normal((20000, 10))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    sim = np.stack([gen.multinomial(144, q) for q in p])
    assert abs(counts.var(0).mean() / sim.var(0).mean() - 1) < 0.1
    assert abs(counts.max(1).mean() / sim.max(1).mean() - 1) < 0.05
    assert counts.var(0).mean() > 5 * 12.96
    # and exactly: given the trajectory's z (its INIT_Z draws), the cells follow softmax(z)
    keys = torch.arange(400, dtype=torch.int64) * 7 + 1
    zt = rng.normal(rng.INIT_Z, keys[:, None], torch.arange(10)[None, :]).double().numpy()
    probs = np.exp(zt) / np.exp(zt).sum(1, keepdims=True)
    z_score, _ = _chi_square_z(counts[:400], probs)
    assert z_score < 4.5
