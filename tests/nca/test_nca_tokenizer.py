"""The 2x2 patch tokenizer and the loss mask (paper.md §2)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from nca_scale.nca.config import NCAConfig
from nca_scale.nca.tokenizer import decode_frames, encode, loss_mask, patch_ids

CONFIGS = [
    NCAConfig(),
    NCAConfig(grid=8, states=3, patch=2, seq_len=100),
    NCAConfig(grid=8, states=3, patch=4, seq_len=40, token_dtype="int32"),
    NCAConfig(grid=6, states=2, patch=3, seq_len=50),
    NCAConfig(grid=9, states=4, patch=3, seq_len=70, token_dtype="int32"),
    NCAConfig(grid=5, states=7, patch=1, seq_len=90),
    NCAConfig(grid=16, states=15, patch=2, seq_len=300),
    NCAConfig(grid=6, states=300, patch=1, seq_len=100, token_dtype="int32"),  # states beyond uint8
]


def test_patch_id_digits():
    """id = c00 + 10 c01 + 100 c10 + 1000 c11; patches row-major."""
    cfg = NCAConfig(grid=4, seq_len=12)
    frame = torch.tensor([[1, 2, 5, 6], [3, 4, 7, 8], [9, 0, 0, 0], [0, 0, 0, 9]])
    assert patch_ids(cfg, frame).tolist() == [4321, 8765, 9, 9000]
    tokens = encode(cfg, frame[None, None].repeat(1, 3, 1, 1))
    assert tokens[0, :6].tolist() == [10000, 4321, 8765, 9, 9000, 10001]
    assert tokens.shape == (1, 13)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"g{c.grid}s{c.states}p{c.patch}")
def test_roundtrip_and_range(cfg):
    cfg.validate()
    x = torch.from_numpy(np.random.default_rng(cfg.grid).integers(0, cfg.states, (5, cfg.frames, cfg.grid, cfg.grid)))
    tok = encode(cfg, x)
    assert tok.shape == (5, cfg.seq_len + 1) and tok.dtype == torch.int32
    assert int(tok.min()) >= 0 and int(tok.max()) <= cfg.grid_end == cfg.vocab_size - 1
    full = (cfg.seq_len + 1) // cfg.frame_tokens
    back = decode_frames(cfg, tok)
    assert back.shape[1] == full and torch.equal(back.long(), x[:, :full].long())
    # delimiters exactly at frame boundaries, patch ids everywhere else
    pos = torch.arange(cfg.seq_len + 1) % cfg.frame_tokens
    assert bool((tok[:, pos == 0] == cfg.grid_start).all())
    assert bool((tok[:, pos == cfg.frame_tokens - 1] == cfg.grid_end).all())
    body = tok[:, (pos != 0) & (pos != cfg.frame_tokens - 1)]
    assert int(body.max()) < cfg.grid_start
    # every possible patch, enumerated: distinct patches give distinct ids, and the ids fill exactly
    # [0, grid_start) (3^16 patches of the 4x4 config are too many to list)
    cells = cfg.patch**2
    if cfg.states**cells <= 60_000:
        every = torch.tensor(list(itertools.product(range(cfg.states), repeat=cells))).view(-1, cfg.patch, cfg.patch)
        ids = patch_ids(dataclasses.replace(cfg, grid=cfg.patch), every).flatten()
        assert torch.equal(ids.sort().values, torch.arange(cfg.grid_start))


def test_paper_sizes():
    cfg = NCAConfig()
    assert cfg.frame_tokens == 38 and cfg.patches_per_frame == 36 and cfg.frames == 27
    assert cfg.vocab_size == 10002


def test_loss_mask_paper():
    cfg = NCAConfig()
    m = loss_mask(cfg)
    assert m.shape == (1024,) and m.dtype == torch.bool
    assert int(m.sum()) == 987
    # targets are tokens[1:]; target j is sequence position j+1; positions 0..37 (the first frame) are masked
    assert not m[:37].any() and m[37:].all()
    assert bool(loss_mask(NCAConfig(mask_first_frame=False)).all())
    assert int(loss_mask(NCAConfig(seq_len=128)).sum()) == 128 - 37


def test_decode_rejects_misaligned_tokens():
    cfg = NCAConfig()
    tok = encode(cfg, torch.zeros(1, 27, 12, 12, dtype=torch.uint8))
    with pytest.raises(ValueError):
        decode_frames(cfg, tok[:, 1:])


def test_encode_needs_enough_frames():
    cfg = NCAConfig()
    with pytest.raises(ValueError):
        encode(cfg, torch.zeros(1, 26, 12, 12, dtype=torch.uint8))
