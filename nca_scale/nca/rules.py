"""Random rule networks: sampling their weights and folding them into lookup tables.

A rule is the reference's `NCANetwork`: Conv(C, 3x3) -> Conv(Hd, 1x1) -> ReLU -> Conv(S, 1x1) on the
one-hot state of a wrap-padded grid. Kernels are LeCun-normal (truncated at 2 sigma, fan-in), biases zero,
as Flax initialises them. Weights are a pure function of the rule's identity (rng.py), so a rule bank is
stored as a list of candidate ids, never as tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nca_scale.nca import rng
from nca_scale.nca.config import NCAConfig

# Flax's variance_scaling(1, "fan_in", "truncated_normal") divides by the std of a unit normal cut at 2.
_TRUNC_STD = 0.87962566103423978


@dataclass
class RuleParams:
    """Weights of B rules in the reference layout (torch conv layout: out, in, kh, kw)."""

    w1: torch.Tensor  # (B, C, Cin, 3, 3)
    b1: torch.Tensor  # (B, C)
    w2: torch.Tensor  # (B, Hd, C)
    b2: torch.Tensor  # (B, Hd)
    w3: torch.Tensor  # (B, S, Hd)
    b3: torch.Tensor  # (B, S)


@dataclass
class RuleTables:
    """The same rules folded for fast rollout (see `fold`)."""

    table: torch.Tensor  # (B, 9, S, Hd): contribution of "neighbour k has state s" to the hidden pre-activation
    h0: torch.Tensor  # (B, Hd): hidden bias (w2 @ b1 + b2)
    w3t: torch.Tensor  # (B, Hd, S)
    b3: torch.Tensor  # (B, S)

    @property
    def batch(self) -> int:
        return self.table.shape[0]


def sample_params(cfg: NCAConfig, rule_ids: torch.Tensor, *key: int) -> RuleParams:
    """Weights for rules `rule_ids` (int64, shape (B,)) in the rule space identified by `key` words."""
    device = rule_ids.device
    b = rule_ids.shape[0]
    c, cin, hd, s = cfg.conv_channels, cfg.in_channels, cfg.hidden, cfg.states
    shapes = [(c, cin, 3, 3), (hd, c), (s, hd)]
    tensors = []
    offset = 0
    for shape in shapes:
        n = math.prod(shape)
        fan_in = n // shape[0]
        counters = torch.arange(offset, offset + n, device=device)
        z = rng.truncated_normal(rng.WEIGHTS, *key, rule_ids[:, None], counters[None, :], device=device)
        tensors.append((z * (math.sqrt(1.0 / fan_in) / _TRUNC_STD)).view(b, *shape))
        offset += n
    zeros = lambda n: torch.zeros(b, n, device=device)  # noqa: E731 - biases start at zero, as in Flax
    return RuleParams(tensors[0], zeros(c), tensors[1], zeros(hd), tensors[2], zeros(s))


def fold(cfg: NCAConfig, p: RuleParams) -> RuleTables:
    """Fold the one-hot 3x3 conv and the linear first 1x1 conv into one table lookup.

    The conv input is one-hot, so the 3x3 conv at a cell is a sum over its 9 neighbours of one kernel
    column each, and no nonlinearity sits before the next 1x1 conv: both collapse into table[k, state]
    (w2 @ kernel column), summed over the 9 neighbours. With wrap-padded state channels (the reference
    quirk) state S-1 also feeds channel 0 and state 0 also feeds channel S+1.
    """
    s = cfg.states
    w1 = p.w1.flatten(3)  # (B, C, Cin, 9), k = kh*3 + kw
    if cfg.wrap_state_channels:
        per_state = w1[:, :, 1 : s + 1].clone()
        per_state[:, :, s - 1] += w1[:, :, 0]
        per_state[:, :, 0] += w1[:, :, s + 1]
    else:
        per_state = w1
    # (B, C, S, 9) -> (B, 9, S, Hd)
    table = torch.einsum("bcsk,bhc->bksh", per_state, p.w2)
    h0 = torch.einsum("bc,bhc->bh", p.b1, p.w2) + p.b2
    return RuleTables(table.contiguous(), h0, p.w3.transpose(1, 2).contiguous(), p.b3)


def select_tables(t: RuleTables, idx: torch.Tensor) -> RuleTables:
    return RuleTables(t.table[idx], t.h0[idx], t.w3t[idx], t.b3[idx])
