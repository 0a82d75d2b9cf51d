"""Dyck-k baseline: well-formed rows, depth bounds, determinism by (seed, index), its tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nca_scale.data.dyck import DyckConfig, DyckStream, DyckTokenizer, check_prefix, sequence
from nca_scale.errors import UserError


@pytest.mark.parametrize("cfg", [DyckConfig(), DyckConfig(k=3, min_depth=4, max_depth=6, p_open=0.3, seq_len=200),
                                 DyckConfig(k=1, max_depth=1, seq_len=50)])
def test_well_formed(cfg):
    rows = DyckStream(cfg).sequences(np.arange(40)).numpy()
    assert rows.shape == (40, cfg.seq_len + 1) and rows.dtype == np.int64
    assert rows.min() >= 0 and rows.max() < cfg.vocab_size
    for row in rows:
        assert check_prefix(row, cfg.k, cfg.max_depth) >= 1
        # every complete word reaches min_depth
        depth, deepest = 0, 0
        for t in row:
            depth += 1 if t < cfg.k else -1
            deepest = max(deepest, depth)
            if depth == 0:
                assert deepest >= cfg.min_depth
                deepest = 0
    if cfg.max_depth == 1:
        assert np.array_equal(rows[0][:4], [0, 1, 0, 1])


def test_check_prefix_rejects():
    with pytest.raises(ValueError, match="does not match"):
        check_prefix([0, 1 + 2], k=2)
    with pytest.raises(ValueError, match="does not match"):
        check_prefix([2], k=2)
    with pytest.raises(ValueError, match="depth"):
        check_prefix([0, 0, 0], k=2, max_depth=2)


def test_deterministic_by_seed_and_index():
    cfg = DyckConfig(k=8, seq_len=128, seed=3)
    a = DyckStream(cfg).sequences([5, 0, 17])
    b = torch.stack([torch.from_numpy(sequence(cfg, i)) for i in (5, 0, 17)])
    assert torch.equal(a, b)
    assert torch.equal(DyckStream(cfg).sequences([17]), a[2:])
    assert not torch.equal(DyckStream(DyckConfig(k=8, seq_len=128, seed=4)).sequences([5]), a[:1])
    assert not torch.equal(a[0], a[1])


def test_a_row_traced_by_hand():
    """DyckConfig(k=4, seq_len=15, seed=0), index 0, traced by hand from the module docstring's rules (open
    type t = id t, its close = id 4 + t) and the draws of numpy's PCG64([seed, index]): 16 uniforms (open
    when < p_open = 0.5), then 16 bracket types in [0, 4)."""
    rng = np.random.Generator(np.random.PCG64([0, 0]))
    coins, types = np.round(rng.random(16), 2).tolist(), rng.integers(0, 4, size=16).tolist()
    assert coins == [.64, .27, .04, .02, .81, .91, .61, .73, .54, .94, .82, .0, .86, .03, .73, .18]
    assert types == [0, 3, 0, 2, 0, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 2]
    hand = [
        0,  # t0  depth 0: a word starts, open type 0               stack [0]
        3,  # t1  .27 < .5: open type 3                             [0 3]
        0,  # t2  .04: open 0                                       [0 3 0]
        2,  # t3  .02: open 2                                       [0 3 0 2]
        6,  # t4  .81: close the top, 2 -> 4 + 2                    [0 3 0]
        4,  # t5  .91: close 0                                      [0 3]
        7,  # t6  .61: close 3                                      [0]
        4,  # t7  .73: close 0; the word is complete                []
        1,  # t8  depth 0: open type 1 (its coin .54 is unused)     [1]
        5,  # t9  .94: close 1                                      []
        0,  # t10 depth 0: open 0                                   [0]
        0,  # t11 .00: open 0                                       [0 0]
        4,  # t12 .86: close 0                                      [0]
        2,  # t13 .03: open 2                                       [0 2]
        6,  # t14 .73: close 2                                      [0]
        2,  # t15 .18: open 2 (the row ends inside a word)          [0 2]
    ]
    assert sequence(DyckConfig(k=4, seq_len=15, seed=0), 0).tolist() == hand


def test_p_open_controls_depth():
    shallow = DyckStream(DyckConfig(p_open=0.2, seq_len=512)).sequences(range(8)).numpy()
    deep = DyckStream(DyckConfig(p_open=0.8, seq_len=512)).sequences(range(8)).numpy()

    def mean_depth(rows, k=64):
        return np.mean([np.cumsum(np.where(r < k, 1, -1)).mean() for r in rows])

    assert mean_depth(deep) > mean_depth(shallow) + 3


def test_tokenizer_round_trip():
    cfg = DyckConfig(k=5, seq_len=40)
    tok = DyckTokenizer(cfg.k)
    row = sequence(cfg, 2)
    text = tok.decode(row)
    assert tok.encode(text) == row.tolist() and text.startswith("<")
    with pytest.raises(ValueError):
        tok.encode("<7")


def test_config_errors():
    for bad in (DyckConfig(k=0), DyckConfig(min_depth=5, max_depth=2), DyckConfig(p_open=1.0)):
        with pytest.raises(UserError):
            bad.validate()
