"""The size-aware recipe (nca_scale/train/recipe.py): OLMo-core's rule (Porian et al. 2024) and its two
adaptations (batch in whole micro-batches, warmup capped at a fraction of the run)."""

from __future__ import annotations

import math

import pytest

from nca_scale.errors import UserError
from nca_scale.train.recipe import RecipeConfig, batch_tokens_for, beta2_for, hyper, lr_for

RULE = RecipeConfig()


def test_the_rule_at_its_reference_size():
    # N = 108M is the reference point of the fit: lr 0.0047, 2048 x 160 tokens per step
    assert lr_for(108_000_000) == pytest.approx(0.0047)
    assert batch_tokens_for(108_000_000) == pytest.approx(327_680)
    h = hyper(RULE, 108_000_000, seq_len=2048, run_tokens=20 * 108_000_000, micro_batch=16)
    assert (h.batch_size, h.micro_batch, h.beta2) == (160, 16, 0.99)
    assert h.steps == math.ceil(20 * 108_000_000 / (160 * 2048))
    assert h.warmup == math.ceil(108_000_000 / (160 * 2048))  # one token per parameter, under the 10% cap


def test_bigger_models_get_smaller_lr_larger_batch_and_beta2_095():
    small = hyper(RULE, 25_000_000, 1024, 10**9, micro_batch=16)
    big = hyper(RULE, 1_600_000_000, 1024, 10**10, micro_batch=16)
    assert big.lr < small.lr and big.batch_size > small.batch_size
    assert big.lr == pytest.approx(0.0047 * (1_600_000_000 / 108e6) ** (-1 / 3))
    assert small.beta2 == 0.99 and big.beta2 == 0.95  # 524,288 tokens per step is the switch
    assert beta2_for(524_288) == 0.95 and beta2_for(524_287) == 0.99


# N = 1M at seq 128, by hand: 327,680 * (1M / 108M)^(2/3) / 128 = 2,560 * 0.044095 = 112.88 sequences per step
@pytest.mark.parametrize("micro,dp,batch,micro_used,steps,warmup", [
    (8, 1, 112, 8, 70, 7),  # 14 x 8 = 112; 10^6 / 14,336 tokens = 69.8 -> 70 steps; warmup min(70, 7)
    (4, 2, 112, 4, 70, 7),  # units of 4 x 2 ranks: the same 112
    (3, 1, 114, 3, 69, 6),  # 37.6 -> 38 x 3 = 114; 10^6 / 14,592 = 68.5 -> 69 steps; warmup min(69, 6.9 -> 6)
])
def test_batch_is_whole_micro_batches_on_every_rank(micro, dp, batch, micro_used, steps, warmup):
    h = hyper(RULE, 1_000_000, 128, 10**6, micro_batch=micro, dp=dp)
    assert (h.batch_size, h.micro_batch, h.steps, h.warmup) == (batch, micro_used, steps, warmup)
    assert h.lr == pytest.approx(0.022382, rel=2e-5)  # 0.0047 / (1M / 108M)^(1/3) = 0.0047 / 0.209987


def test_warmup_is_capped_for_short_runs_and_multipliers_scale_every_cell():
    # 200,000 tokens / 14,336 per step = 13.95 -> 14 steps: warmup 10% of 14 -> 1, not ceil(10^6 / 14,336) = 70
    short = hyper(RULE, 1_000_000, 128, run_tokens=200_000, micro_batch=8)
    assert (short.batch_size, short.steps, short.warmup) == (112, 14, 1)
    # batch x 0.25: 28.2 sequences -> 32; 200,000 / 4,096 = 48.8 -> 49 steps, warmup 4; lr halved
    scaled = hyper(RecipeConfig(lr_multiplier=0.5, batch_multiplier=0.25), 1_000_000, 128, 200_000, micro_batch=8)
    assert (scaled.batch_size, scaled.steps, scaled.warmup) == (32, 49, 4)
    assert scaled.lr == pytest.approx(short.lr / 2)


def test_bad_recipe_values_are_user_errors():
    with pytest.raises(UserError, match="multiplier"):
        RecipeConfig(lr_multiplier=0).validate()
    with pytest.raises(UserError, match="max_warmup_fraction"):
        RecipeConfig(max_warmup_fraction=2).validate()
    with pytest.raises(UserError, match="positive"):
        hyper(RULE, 0, 128, 100, 8)
