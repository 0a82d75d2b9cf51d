"""Rule banks scored by a pool of processes are the banks one process scores: same candidates, same scores,
same order, whatever the pool size or how many pieces were in flight (nca/bank.py `RuleBank.ensure`)."""

from __future__ import annotations

import dataclasses
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from nca_scale.config import load
from nca_scale.nca.bank import RuleBank, build_bank, score_range
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.stream import NCAStream

TINY = Path(__file__).resolve().parents[2] / "configs" / "nca" / "tiny.yaml"


@pytest.fixture(scope="module")
def cfg() -> NCAConfig:
    return load(NCAConfig, TINY)


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as p:
        yield p


@pytest.fixture(scope="module")
def sequential(cfg) -> RuleBank:
    return build_bank(cfg, "train", 0, 40)


@pytest.mark.parametrize("in_flight", [1, 3, 8])
def test_bank_scored_in_a_pool_equals_sequential(cfg, pool, sequential, in_flight, counting_pool):
    counted = counting_pool(pool)
    bank = RuleBank(cfg, "train", 0, 40).ensure(40, counted, in_flight)
    assert counted.tasks["score_range"] >= 1  # the pool scored it
    assert np.array_equal(bank.candidates, sequential.candidates)
    assert np.array_equal(bank.scores, sequential.scores)
    assert bank.scanned >= sequential.candidates[-1] + 1  # every candidate up to the last accepted was scored


def test_bank_grown_in_steps_across_pool_and_process(cfg, pool, sequential):
    """Growing lazily, alternating between a pool and this process, gives the same bank."""
    bank = RuleBank(cfg, "train", 0, 40)
    for n, p in ((5, pool), (11, None), (29, pool), (40, None)):
        bank.ensure(n, p, 2)
        assert len(bank.candidates) >= n
        assert np.array_equal(bank.candidates[:n], sequential.candidates[:n])
        assert np.array_equal(bank.scores[:n], sequential.scores[:n])


def test_score_range_is_per_candidate(cfg, sequential):
    """A candidate's score does not depend on the piece that scored it."""
    whole = score_range(cfg, "train", 0, 0, 96)
    parts = np.concatenate([score_range(cfg, "train", 0, a, b) for a, b in ((0, 1), (1, 40), (40, 96))])
    assert np.array_equal(whole, parts)
    keep = (whole > cfg.complexity.lo) & (whole < cfg.complexity.hi)
    first = np.nonzero(keep)[0][: len(sequential.candidates)]
    assert np.array_equal(first, sequential.candidates[: len(first)])
    unbanded = dataclasses.replace(cfg, complexity=dataclasses.replace(cfg.complexity, lo=None))
    assert np.isnan(score_range(unbanded, "train", 0, 0, 5)).all()


def test_stream_with_a_pool_gives_the_same_sequences(cfg, pool, counting_pool):
    idx = np.arange(0, 70, 3)  # passes beyond the 64-rule bank too
    counted = counting_pool(pool)
    with_pool = NCAStream(cfg, pool=counted, in_flight=4)
    plain = NCAStream(cfg)
    assert np.array_equal(with_pool.sequences(idx).numpy(), plain.sequences(idx).numpy())
    assert counted.tasks["score_range"] >= 1 and with_pool.bank(0) is not plain.bank(0)  # each scored its own
    for a, b in zip(with_pool.rules(idx), plain.rules(idx)):
        assert np.array_equal(a, b)


def test_pieces_still_running_carry_over_to_the_next_call(cfg, pool, sequential):
    """A pool call returns as soon as it has the rules asked for; pieces still running are taken, in order,
    by the next call, with or without a pool."""
    bank = RuleBank(cfg, "train", 0, 40)
    bank.ensure(3, pool, 8)  # 8 pieces in flight for 3 rules: most are still queued or running on return
    assert np.array_equal(bank.candidates[:3], sequential.candidates[:3])
    bank.ensure(40)
    assert np.array_equal(bank.candidates, sequential.candidates) and np.array_equal(bank.scores, sequential.scores)
    fresh = RuleBank(cfg, "train", 0, 40)
    fresh.ensure(3, pool, 8)
    fresh.ensure(40, pool, 8)
    assert np.array_equal(fresh.candidates, sequential.candidates)
