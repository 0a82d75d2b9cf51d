"""Rule banks: the accepted rules a stream draws its sequences from.

Bank n of a split is built by scoring candidate rules 0, 1, 2, ... (weights keyed by seed, split, n and the
candidate id) and keeping, in candidate order, the first `size` whose score falls in the band. Scores are
per-candidate pure functions, so the bank does not depend on how candidates are batched. A bank is stored as
candidate ids and scores only: weights are re-derived from the ids.
"""

from __future__ import annotations

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


class RuleBank:
    """Bank `number` of a split: the first `size` accepted candidates, scored lazily in fixed-size chunks.
    Without a band (complexity.lo = None) every candidate is accepted unscored and its score is NaN.

    `ensure(n)` scores just enough chunks to know the first n accepted rules, so a short run does not pay for
    a whole bank. Chunks are scored in order and a candidate's score does not depend on its chunk, so the
    bank is the same however it is grown.
    """

    def __init__(self, cfg: NCAConfig, split: str, number: int, size: int, device="cpu", chunk: int = 2048,
                 threads: int = 1, progress: bool = False):
        self.cfg, self.split, self.number, self.size = cfg, split, number, size
        self.device, self.chunk, self.threads, self.progress = device, chunk, threads, progress
        self.automaton = Automaton(cfg, device)
        self._ids: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._accepted = 0
        self.scanned = 0  # candidates scored so far

    @property
    def candidates(self) -> np.ndarray:
        """Accepted candidate ids known so far (at most `size`), in candidate order."""
        return np.concatenate(self._ids)[: self.size] if self._ids else np.zeros(0, dtype=np.int64)

    @property
    def scores(self) -> np.ndarray:
        return np.concatenate(self._scores)[: self.size] if self._scores else np.zeros(0)

    @property
    def acceptance(self) -> float:
        return self._accepted / max(self.scanned, 1)

    def _next_chunk(self, n: int) -> int:
        """Candidates to score next: about what n rules still need at the acceptance seen so far (a half
        before any is known), in multiples of 64, capped at `chunk`. Banks do not depend on it."""
        rate = self.acceptance if self.scanned else 0.5
        want = 1.25 * (n - self._accepted) / max(rate, 0.01)
        return int(min(self.chunk, max(64, -(-want // 64) * 64)))

    def ensure(self, n: int) -> RuleBank:
        from nca_scale.errors import UserError

        n = min(n, self.size)
        if self._accepted >= n:
            return self
        c = self.cfg.complexity
        bar = tqdm(total=n, initial=min(self._accepted, n), desc=f"rule bank {self.split}/{self.number}",
                   unit="rule", disable=not self.progress, leave=False)
        with torch.inference_mode():
            while self._accepted < n:
                if self.scanned >= MAX_CANDIDATES_PER_RULE * max(n, 100):
                    raise UserError(
                        f"complexity band ({c.lo}, {c.hi}) accepted {self._accepted} of {self.scanned} random "
                        f"rules; widen the band (complexity.lo/hi) or check `nca-scale nca stats`"
                    )
                ids = torch.arange(self.scanned, self.scanned + self._next_chunk(n), device=self.device)
                if c.lo is None:  # no filter: every candidate is accepted and no probe is rolled out
                    s = np.full(len(ids), np.nan)
                else:
                    s = probe_scores(self.cfg, self.automaton, self.split, self.number, ids, self.threads)
                ok = in_band(c.lo, c.hi, s)
                self._ids.append(ids.cpu().numpy()[ok])
                self._scores.append(s[ok])
                self._accepted += int(ok.sum())
                self.scanned += len(ids)
                bar.update(min(self._accepted, n) - bar.n)
        bar.close()
        return self


def build_bank(cfg: NCAConfig, split: str, number: int, size: int, device="cpu", chunk: int = 2048,
               threads: int = 1, progress: bool = False) -> RuleBank:
    """A complete bank of `size` rules."""
    return RuleBank(cfg, split, number, size, device, chunk, threads, progress).ensure(size)
