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


@pytest.mark.parametrize("micro,dp", [(8, 1), (4, 2), (3, 1)])
def test_batch_is_whole_micro_batches_on_every_rank(micro, dp):
    h = hyper(RULE, 1_000_000, 128, 10**6, micro_batch=micro, dp=dp)
    assert h.batch_size % (h.micro_batch * dp) == 0 and h.micro_batch <= micro
    want = batch_tokens_for(1_000_000) / 128
    assert abs(h.batch_size - want) <= h.micro_batch * dp  # the nearest multiple


def test_warmup_is_capped_for_short_runs_and_multipliers_scale_every_cell():
    short = hyper(RULE, 1_000_000, 128, run_tokens=200_000, micro_batch=8)
    assert short.warmup == math.floor(0.1 * short.steps) < math.ceil(1_000_000 / (short.batch_size * 128))
    scaled = hyper(RecipeConfig(lr_multiplier=0.5, batch_multiplier=0.25), 1_000_000, 128, 200_000, micro_batch=8)
    assert scaled.lr == pytest.approx(short.lr / 2)
    assert scaled.batch_size < short.batch_size and scaled.steps > short.steps


def test_bad_recipe_values_are_user_errors():
    with pytest.raises(UserError, match="multiplier"):
        RecipeConfig(lr_multiplier=0).validate()
    with pytest.raises(UserError, match="max_warmup_fraction"):
        RecipeConfig(max_warmup_fraction=2).validate()
    with pytest.raises(UserError, match="positive"):
        hyper(RULE, 0, 128, 100, 8)
