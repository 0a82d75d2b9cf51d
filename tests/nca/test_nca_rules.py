"""Rule weights: Flax's lecun_normal (truncated normal, fan-in) kernels, zero biases, 686 parameters
(paper.md §1 Rule network)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nca_scale.nca.config import NCAConfig
from nca_scale.nca.rules import sample_params

N_RULES = 2000
# Measured on the reference (one rule, paper.md §1): per-layer kernel std for fan-in 108, 4, 16.
MEASURED = {"w1": (108, 0.098), "w2": (4, 0.535), "w3": (16, 0.258)}
P_WITHIN_1_OF_2 = math.erf(1 / math.sqrt(2)) / math.erf(2 / math.sqrt(2))  # P(|z|<1 | |z|<2), z ~ N(0, 1)
TRUNC_STD = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(math.sqrt(2)))  # std of N(0,1)|<2


@pytest.fixture(scope="module")
def params():
    return sample_params(NCAConfig(), torch.arange(N_RULES), 0, 0, 0)


def test_parameter_count_and_shapes(params):
    cfg = NCAConfig()
    per_rule = sum(t[0].numel() for t in (params.w1, params.b1, params.w2, params.b2, params.w3, params.b3))
    assert per_rule == 686 == 432 + 4 + 64 + 16 + 160 + 10
    assert params.w1.shape == (N_RULES, 4, 12, 3, 3) and cfg.in_channels == 12
    assert params.w2.shape == (N_RULES, 16, 4) and params.w3.shape == (N_RULES, 10, 16)
    nowrap = sample_params(NCAConfig(wrap_state_channels=False), torch.arange(2), 0, 0, 0)
    assert nowrap.w1.shape == (2, 4, 10, 3, 3)


def test_biases_are_zero(params):
    for b in (params.b1, params.b2, params.b3):
        assert torch.count_nonzero(b) == 0


@pytest.mark.parametrize("name", ["w1", "w2", "w3"])
def test_kernel_std_and_truncation(params, name):
    fan_in, measured = MEASURED[name]
    w = getattr(params, name).flatten(1).double()
    assert w.shape[1] // {"w1": 4, "w2": 16, "w3": 10}[name] == fan_in
    target = 1 / math.sqrt(fan_in)  # variance_scaling(1, fan_in): the truncated draw is rescaled to this std
    assert abs(w.std().item() / target - 1) < 0.01
    assert abs(w.mean().item()) < 0.01 * target
    # truncation at 2 sigma of the underlying normal: |w| <= 2 * target / TRUNC_STD, and the tails reach it
    bound = 2 * target / TRUNC_STD
    assert w.abs().max().item() <= bound * (1 + 1e-6)
    assert w.abs().max().item() > 0.99 * bound
    within = (w.abs() < target / TRUNC_STD).double().mean().item()
    assert abs(within - P_WITHIN_1_OF_2) < 0.005
    # the reference's single measured rule is a typical draw of our per-rule std
    per_rule = w.std(1).numpy()
    lo, hi = np.quantile(per_rule, [0.005, 0.995])
    assert lo < measured < hi, (name, measured, lo, hi)


def test_weights_are_a_pure_function_of_rule_identity():
    cfg = NCAConfig()
    many = sample_params(cfg, torch.arange(10), 0, 0, 3)
    one = sample_params(cfg, torch.tensor([7]), 0, 0, 3)
    assert torch.equal(many.w1[7], one.w1[0]) and torch.equal(many.w3[7], one.w3[0])
    other_bank = sample_params(cfg, torch.tensor([7]), 0, 0, 4)
    other_seed = sample_params(cfg, torch.tensor([7]), 1, 0, 3)
    assert not torch.equal(other_bank.w1, one.w1) and not torch.equal(other_seed.w1, one.w1)
    # distinct rules have distinct weights
    flat = many.w1.flatten(1)
    assert len({tuple(r.tolist()[:5]) for r in flat}) == 10
