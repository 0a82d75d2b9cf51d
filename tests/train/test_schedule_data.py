"""LR schedules and the data contract: batches are a function of (seed, step), whatever the DP size."""

import numpy as np
import pytest
import torch

from nca_scale.train.config import DataConfig, ScheduleConfig
from nca_scale.train.data import BatchLoader, build_source, target_mask
from nca_scale.train.schedule import lr_at


def test_warmup_then_cosine():
    cfg = ScheduleConfig(name="cosine", warmup=10, total=110, min_lr_ratio=0.1)
    lrs = [lr_at(cfg, 1.0, s, 999) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_wsd_is_flat_then_decays_linearly():
    cfg = ScheduleConfig(name="wsd", warmup=0, decay_fraction=0.2)
    lrs = [lr_at(cfg, 2.0, s, 100) for s in range(101)]
    assert set(lrs[:80]) == {2.0} and lrs[90] == pytest.approx(1.0) and lrs[100] == 0.0


def test_total_defaults_to_the_run_length():
    cfg = ScheduleConfig(name="cosine", warmup=0)
    assert lr_at(cfg, 1.0, 50, 100) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def data_cfg():
    from nca_scale import config
    from nca_scale.nca.config import NCAConfig

    nca = config.load(NCAConfig, "configs/nca/tiny.yaml", [("bank.size", "8"), ("bank.val_size", "4"), ("seq_len", "64")])
    return DataConfig(nca=nca)


@pytest.fixture(scope="module")
def loader(data_cfg):
    source, mask = build_source(data_cfg, "train"), target_mask(data_cfg)
    return lambda dp_rank, dp_size: BatchLoader(source, mask, 8, 2, dp_rank, dp_size)


def test_global_batch_is_the_same_for_any_dp_size(loader):
    one = loader(0, 1)
    for dp in (2, 4):
        ranks = [loader(r, dp) for r in range(dp)]
        for step in (0, 3):
            assert np.array_equal(np.concatenate([r.indices(step) for r in ranks]), one.indices(step))
            joined = torch.cat([x for r in ranks for x in r.batch(step).inputs])
            assert torch.equal(joined, torch.cat(one.batch(step).inputs))
    assert np.array_equal(one.indices(3), np.arange(24, 32))


def test_batches_are_split_into_micro_batches_with_the_loss_mask(loader, data_cfg):
    batch = loader(1, 2).batch(0)
    assert len(batch.inputs) == 2 and batch.inputs[0].shape == (2, 64)
    assert torch.equal(batch.inputs[0][:, 1:], batch.targets[0][:, :-1])
    frame = data_cfg.nca.frame_tokens
    assert not batch.masks[0][:, : frame - 1].any() and batch.masks[0][:, frame - 1 :].all()
