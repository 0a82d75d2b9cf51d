"""Complexity scores of *random* candidate rules: quantiles, band acceptance, and rules picked per band.

Candidates are the ones a rule bank draws from (split "train", bank 0 unless told otherwise: candidate ids
0, 1, 2, ... of `rule_tables`), scored on the config's probe trajectory (`bank.probe_scores`). The config's
own band (complexity.lo/hi) plays no part: every candidate is scored and kept, so the acceptance of a band
here is exactly the acceptance `build_bank` sees for that band with this config and seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import torch

from nca_scale.nca.automaton import Automaton
from nca_scale.nca.bank import probe_scores
from nca_scale.nca.complexity import BANDS, in_band
from nca_scale.nca.config import NCAConfig

QUANTILES = (0, 10, 25, 50, 75, 90, 100)


def unfiltered(cfg: NCAConfig) -> NCAConfig:
    """`cfg` with the band filter off (scoring does not read the band; this makes the intent explicit)."""
    return dataclasses.replace(cfg, complexity=dataclasses.replace(cfg.complexity, lo=None, hi=1.0))


def iter_scores(
    cfg: NCAConfig, start: int = 0, stop: int | None = None, *, device: str | torch.device = "cpu",
    threads: int = 1, chunk: int = 1024, split: str = "train", number: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(candidate ids, scores) chunk by chunk for candidates start, start+1, ... (< stop, or forever).

    Scores are per-candidate pure functions, so the chunk size changes nothing but speed and memory."""
    cfg = unfiltered(cfg)
    automaton = Automaton(cfg, device)
    lo = start
    with torch.inference_mode():
        while stop is None or lo < stop:
            hi = lo + chunk if stop is None else min(lo + chunk, stop)
            ids = torch.arange(lo, hi, device=automaton.device)
            yield ids.cpu().numpy(), probe_scores(cfg, automaton, split, number, ids, threads)
            lo = hi


def random_rule_scores(
    cfg: NCAConfig, rules: int, *, device: str | torch.device = "cpu", threads: int = 1, chunk: int = 1024,
    on_chunk: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(rules,) float64 scores of candidates 0 .. rules-1."""
    parts = []
    for ids, s in iter_scores(cfg, 0, rules, device=device, threads=threads, chunk=chunk):
        parts.append(s)
        if on_chunk:
            on_chunk(len(ids))
    return np.concatenate(parts) if parts else np.empty(0)


def quantiles(scores: np.ndarray) -> dict[str, float]:
    """percent -> score at the QUANTILES, rounded to 6 places (as `nca stats` and `nca match` print them)."""
    return {str(p): round(float(v), 6) for p, v in zip(QUANTILES, np.quantile(scores, [q / 100 for q in QUANTILES]))}


def summarize(scores: np.ndarray) -> dict:
    """{"rules", "quantiles" (percent -> score), "accepted" (band -> fraction with lo < s < hi)}."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no scores to summarize")
    return {
        "rules": int(s.size),
        "quantiles": quantiles(s),
        "accepted": {name: round(float(in_band(lo, hi, s).mean()), 6) for name, (lo, hi) in BANDS.items()},
    }


@dataclasses.dataclass
class BandScan:
    """Result of scanning random candidates for example rules of every band."""

    scores: np.ndarray  # (scanned,) scores of candidates 0 .. scanned-1
    picked: dict[str, list[tuple[int, float]]]  # band -> [(candidate id, score)], in candidate order

    @property
    def scanned(self) -> int:
        return int(self.scores.size)


def scan_bands(
    cfg: NCAConfig, per_band: int, max_rules: int, *, min_rules: int = 0, device: str | torch.device = "cpu",
    threads: int = 1, chunk: int = 256, on_chunk: Callable[[int], None] | None = None,
) -> BandScan:
    """The first `per_band` candidates of every band in BANDS, scanning at least `min_rules` and at most
    `max_rules` candidates (a band can come back short when it is rare)."""
    picked: dict[str, list[tuple[int, float]]] = {name: [] for name in BANDS}
    parts = []
    scanned = 0
    for ids, s in iter_scores(cfg, 0, max_rules, device=device, threads=threads, chunk=chunk):
        parts.append(s)
        scanned += len(ids)
        for name, (lo, hi) in BANDS.items():
            need = per_band - len(picked[name])
            if need > 0:
                hit = np.nonzero(in_band(lo, hi, s))[0][:need]
                picked[name].extend((int(ids[i]), float(s[i])) for i in hit)
        if on_chunk:
            on_chunk(len(ids))
        if scanned >= min_rules and all(len(v) >= per_band for v in picked.values()):
            break
    return BandScan(np.concatenate(parts) if parts else np.empty(0), picked)
