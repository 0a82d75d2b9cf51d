"""Rule banks: the accepted rules a stream draws its sequences from.

Bank n of a split is built by scoring candidate rules 0, 1, 2, ... (weights keyed by seed, split, n and the
candidate id) and keeping, in candidate order, the first `size` whose score falls in the band. Scores are
per-candidate pure functions, so the bank does not depend on how candidates are batched. A bank is stored as
candidate ids and scores only: weights are re-derived from the ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from nca_scale.nca import rng
from nca_scale.nca.automaton import Automaton
from nca_scale.nca.complexity import in_band, scores
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.rules import RuleTables, fold, sample_params

SPLITS = {"train": 0, "val": 1}
PROBE = 7  # rng domain of probe trajectories
MAX_CANDIDATES_PER_RULE = 10_000  # give up (clear error) on bands that (almost) never accept


@dataclass
class RuleBank:
    split: str
    number: int
    candidates: np.ndarray  # (R,) int64 accepted candidate ids, in candidate order
    scores: np.ndarray  # (R,) float64 their complexity scores
    tried: int  # candidates scored to fill the bank

    @property
    def acceptance(self) -> float:
        return len(self.candidates) / max(self.tried, 1)


def rule_key(cfg: NCAConfig, split: str, number: int) -> tuple[int, int, int]:
    return (cfg.seed, SPLITS[split], number)


def rule_tables(cfg: NCAConfig, split: str, number: int, candidates: torch.Tensor) -> RuleTables:
    return fold(cfg, sample_params(cfg, candidates, *rule_key(cfg, split, number)))


def probe_scores(
    cfg: NCAConfig, automaton: Automaton, split: str, number: int, candidates: torch.Tensor, threads: int = 1
) -> np.ndarray:
    """Complexity of each candidate rule on its probe trajectory (see ComplexityConfig)."""
    c = cfg.complexity
    tables = rule_tables(cfg, split, number, candidates)
    keys = rng.hash32(PROBE, *rule_key(cfg, split, number), candidates, device=candidates.device)
    if c.probe == "reference":
        frames = automaton.rollout(tables, keys, c.probe_frames, c.probe_start, 1)
    else:
        frames = automaton.rollout(tables, keys, cfg.frames, cfg.burn_in, cfg.dt)
    return scores(cfg, frames, threads)


def build_bank(
    cfg: NCAConfig, split: str, number: int, size: int, device="cpu", chunk: int = 2048,
    threads: int = 1, progress: bool = False,
) -> RuleBank:
    from nca_scale.errors import UserError

    automaton = Automaton(cfg, device)
    c = cfg.complexity
    kept_ids, kept_scores, tried = [], [], 0
    bar = tqdm(total=size, desc=f"rule bank {split}/{number}", unit="rule", disable=not progress, leave=False)
    with torch.inference_mode():
        while sum(len(k) for k in kept_ids) < size:
            if tried >= MAX_CANDIDATES_PER_RULE * size:
                raise UserError(
                    f"complexity band ({c.lo}, {c.hi}) accepted {sum(len(k) for k in kept_ids)} of {tried} "
                    f"random rules; widen the band (complexity.lo/hi) or check `nca-scale nca stats`"
                )
            ids = torch.arange(tried, tried + chunk, device=device)
            s = probe_scores(cfg, automaton, split, number, ids, threads)
            ok = in_band(c.lo, c.hi, s)
            kept_ids.append(ids.cpu().numpy()[ok])
            kept_scores.append(s[ok])
            tried += chunk
            bar.update(int(ok.sum()))
    bar.close()
    ids = np.concatenate(kept_ids)[:size]
    # `tried` counts candidates up to and including the last one kept, so acceptance is chunk-independent
    last = int(ids[-1]) + 1
    return RuleBank(split, number, ids, np.concatenate(kept_scores)[:size], last)
