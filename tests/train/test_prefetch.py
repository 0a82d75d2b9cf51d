"""Prefetching makes the next step's batch in the background without changing a token: the batches are the
loader's own, a step other than the one made ahead is made in the foreground, errors surface at their step,
and a training run gives the same losses bit for bit with prefetch on and off."""

import threading

import pytest
import torch
from train_helpers import losses, train

from nca_scale.errors import UserError
from nca_scale.train.data import Batch, Prefetcher


class CountingLoader:
    """batch(step) -> a one-row batch holding `step`; records which thread made which step."""

    def __init__(self, fail_at: int | None = None):
        self.made: list[tuple[int, str]] = []
        self.fail_at = fail_at
        self.release = threading.Event()
        self.release.set()

    def batch(self, step: int) -> Batch:
        self.release.wait(10)
        self.made.append((step, threading.current_thread().name))
        if step == self.fail_at:
            raise UserError(f"no data for step {step}")
        t = torch.full((1, 3), step)
        return Batch([t], [t + 1], [t > -1])


def test_prefetched_batches_are_the_loaders_and_made_ahead():
    loader = CountingLoader()
    pre = Prefetcher(loader)
    try:
        got = [pre.batch(s, s + 1 if s < 3 else None).inputs[0][0, 0].item() for s in range(4)]
    finally:
        pre.close()
    assert got == [0, 1, 2, 3]
    # step 0 in the foreground, steps 1..3 in the prefetch thread, nothing made after the last step
    assert [s for s, _ in loader.made] == [0, 1, 2, 3]
    assert [name.startswith("nca-scale-prefetch") for _, name in loader.made] == [False, True, True, True]


def test_a_step_other_than_the_one_made_ahead_is_made_in_the_foreground():
    loader = CountingLoader()
    pre = Prefetcher(loader)
    try:
        pre.batch(0, 1)
        b = pre.batch(5, None)  # a rollback or skip asks for another step than 1
    finally:
        pre.close()
    assert b.inputs[0][0, 0].item() == 5
    assert (5, threading.main_thread().name) in loader.made


def test_an_error_making_a_batch_is_raised_at_its_step():
    loader = CountingLoader(fail_at=1)
    pre = Prefetcher(loader)
    try:
        pre.batch(0, 1)  # step 1 fails in the background: nothing is raised yet
        with pytest.raises(UserError, match="^no data for step 1$"):
            pre.batch(1, None)
    finally:
        pre.close()


def test_losses_are_bit_identical_with_prefetch_on_and_off(tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    train(on, "steps=4")
    train(off, "steps=4", "prefetch=false")
    assert len(losses(on)) == 4 and losses(on) == losses(off)
