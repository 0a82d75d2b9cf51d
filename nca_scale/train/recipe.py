"""Size-aware training recipe: learning rate, global batch, warmup and beta2 as functions of model size.

The rule is the one OLMo-core's model ladder uses (allenai/OLMo-core,
src/olmo_core/model_ladder/wsds_chinchilla_run_configurator.py, `configure_target_batch_size`,
`configure_optimizer`, `configure_chinchilla_periods`), which takes it from Porian et al. 2024, "Resolving
discrepancies in compute-optimal scaling of language models" (Semantic Scholar CorpusID 270764838); see
shared/research/anchors.md §5.1. With N = non-embedding parameters:

    lr           = 0.0047 * (N / 108e6) ** (-1/3)            (OLMo-core halves this for its WSD-S schedule;
                                                               our runs use cosine, so the undivided value)
    batch tokens = 2048 * 160 * (N / 108e6) ** (2/3)          (Porian et al. fit it at sequence length 2048)
    beta2        = 0.95 if batch tokens >= 524,288 else 0.99  (larger beta2 for small batches, their Table 4)
    warmup       = N tokens                                    (one token per parameter)

Two adaptations, the same for every cell: the batch in sequences is the token batch divided by the run's
sequence length, rounded to the nearest multiple of micro_batch x data-parallel ranks (at least one); and the
warmup is capped at `max_warmup_fraction` of the run, because at laptop scale a run can be shorter than N
tokens (OLMo-core's runs are >= 10 N tokens long). `lr_multiplier` and `batch_multiplier` scale the two
formulas for every cell alike (OLMo-core has the same `lr_multiplier`); they exist so a CPU study can take
more, smaller steps, and are printed by `nca-scale sweep plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from nca_scale.errors import UserError

REFERENCE_PARAMS = 108_000_000
REFERENCE_BATCH_TOKENS = 2048 * 160
SMALL_BATCH_TOKENS = 524_288


@dataclass(frozen=True)
class RecipeConfig:
    # olmo-core: the rule above. config: every run keeps the lr, batch, warmup and beta2 of its train config
    # (e.g. the paper's fixed recipes, paper.md §3.2-3.3).
    rule: Literal["olmo-core", "config"] = "olmo-core"
    lr_multiplier: float = 1.0
    batch_multiplier: float = 1.0
    max_warmup_fraction: float = 0.1

    def validate(self) -> None:
        if self.lr_multiplier <= 0 or self.batch_multiplier <= 0:
            raise UserError("recipe.lr_multiplier and recipe.batch_multiplier must be > 0")
        if not 0.0 <= self.max_warmup_fraction <= 1.0:
            raise UserError(f"recipe.max_warmup_fraction={self.max_warmup_fraction} must be in [0, 1]")


@dataclass(frozen=True)
class Hyper:
    """What the recipe sets for one run."""

    lr: float
    beta2: float
    batch_size: int  # sequences per optimizer step
    micro_batch: int
    warmup: int  # steps
    steps: int  # ceil(run tokens / tokens per step)

    def overrides(self) -> list[tuple[str, str]]:
        return [("optim.lr", f"{self.lr:.6g}"), ("optim.beta2", str(self.beta2)), ("batch_size", str(self.batch_size)),
                ("micro_batch", str(self.micro_batch)), ("schedule.warmup", str(self.warmup))]


def lr_for(n_params: int) -> float:
    return 0.0047 * (n_params / REFERENCE_PARAMS) ** (-1 / 3)


def batch_tokens_for(n_params: int) -> float:
    return REFERENCE_BATCH_TOKENS * (n_params / REFERENCE_PARAMS) ** (2 / 3)


def beta2_for(batch_tokens: int) -> float:
    return 0.95 if batch_tokens >= SMALL_BATCH_TOKENS else 0.99


def hyper(recipe: RecipeConfig, n_params: int, seq_len: int, run_tokens: int, micro_batch: int, dp: int = 1) -> Hyper:
    """The recipe's values for a model of `n_params` non-embedding parameters trained for `run_tokens` tokens
    in sequences of `seq_len`, with at most `micro_batch` sequences per rank per forward pass on `dp` ranks."""
    if n_params < 1 or seq_len < 1 or run_tokens < 1 or micro_batch < 1 or dp < 1:
        raise UserError(f"recipe inputs must be positive (params {n_params}, seq_len {seq_len}, tokens {run_tokens})")
    want = batch_tokens_for(n_params) * recipe.batch_multiplier / seq_len  # sequences
    micro = min(micro_batch, max(1, math.floor(want / dp)))
    unit = micro * dp
    batch = max(1, round(want / unit)) * unit
    tokens_per_step = batch * seq_len
    steps = -(-run_tokens // tokens_per_step)
    warmup = min(-(-n_params // tokens_per_step), math.floor(recipe.max_warmup_fraction * steps))
    return Hyper(lr=lr_for(n_params) * recipe.lr_multiplier, beta2=beta2_for(tokens_per_step), batch_size=batch,
                 micro_batch=micro, warmup=warmup, steps=steps)
