"""The paper's metrics on a sweep's stage-2 runs, per seed and as means with bootstrap intervals (docs/analysis.md).

- improvement % = 100 * (ppl_scratch - ppl_arm) / ppl_scratch on final validation perplexity (positive = the
  arm is better; the paper's "-5.7% perplexity" is +5.7 here).
- convergence speedup = T_scratch / T_arm: T_scratch = tokens at scratch's last evaluation, T_arm = tokens at
  which the arm's eval curve first reaches scratch's final ppl, linearly interpolated in ppl between the two
  evaluations around the crossing. Never reached -> no speedup ("not reached"), reported as such.
- Seeds are paired: seed s of an arm is compared with seed s of scratch in the same cell (size, domain,
  stage-2 tokens). Means over seeds get percentile bootstrap intervals (resampling seeds, seeded).
- compute-matched: a pre-pre-trained arm's final ppl vs `scratch_matched` (stage 2 given the stage-1 FLOPs as
  extra tokens), same cell and seed: does NCA beat simply training longer at equal total FLOPs?
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from nca_scale.analysis.sweep.runs import MATCHED, PRE_ARMS, Run, Sweep, fmt_count


@dataclass(frozen=True)
class Bootstrap:
    level: float = 0.95
    resamples: int = 10_000
    seed: int = 0

    def describe(self) -> str:
        return (f"{self.level:.0%} percentile bootstrap over seeds ({self.resamples} resamples, "
                f"numpy seed {self.seed})")


def improvement_pct(arm_ppl: float, scratch_ppl: float) -> float:
    return 100.0 * (scratch_ppl - arm_ppl) / scratch_ppl


def crossing_tokens(tokens, ppl, target: float) -> float | None:
    """Tokens at which the curve first reaches ppl <= target (linear in ppl between evaluations), else None."""
    for i, (t, p) in enumerate(zip(tokens, ppl)):
        if p <= target:
            if i == 0 or p == ppl[i - 1]:
                return float(t)
            t0, p0 = tokens[i - 1], ppl[i - 1]
            return float(t0 + (p0 - target) / (p0 - p) * (t - t0))
    return None


def speedup(scratch: Run, arm: Run) -> dict:
    """{"speedup" (None if not reached), "reached", "target_ppl", "scratch_tokens", "arm_tokens"}."""
    target = scratch.final_ppl
    t_scratch = scratch.curve_tokens[-1]
    t_arm = crossing_tokens(arm.curve_tokens, arm.curve_ppl, target)
    return {"speedup": None if t_arm is None or t_arm <= 0 else t_scratch / t_arm, "reached": t_arm is not None,
            "target_ppl": target, "scratch_tokens": t_scratch, "arm_tokens": t_arm}


def bootstrap_ci(values, boot: Bootstrap) -> list[float] | None:
    """Percentile interval of the mean of `values` over resampled seeds; None with fewer than 2 values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    rng = np.random.default_rng(boot.seed)
    means = v[rng.integers(0, v.size, size=(boot.resamples, v.size))].mean(axis=1)
    alpha = (1.0 - boot.level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def summary(per_seed: dict[int, float | None], boot: Bootstrap) -> dict:
    """Per-seed values, and mean + interval over the seeds that have a value."""
    vals = [v for v in per_seed.values() if v is not None]
    return {"per_seed": {str(s): v for s, v in sorted(per_seed.items())}, "n": len(vals), "seeds": len(per_seed),
            "mean": float(np.mean(vals)) if vals else None, "ci": bootstrap_ci(vals, boot)}


def cells(runs: list[Run]) -> dict[tuple, dict[str, dict[int, Run]]]:
    """cell (size, domain, stage2_tokens, axes) -> arm label -> seed -> run; cells ordered by domain, budget,
    axes, then model size (non-embedding parameters)."""
    out: dict[tuple, dict[str, dict[int, Run]]] = defaultdict(lambda: defaultdict(dict))
    for r in sorted(runs, key=lambda r: (r.cell[1:], r.non_embedding_params, r.size)):
        out[r.cell][r.arm_label][r.seed] = r
    return out


def cell_dict(cell: tuple, any_run: Run) -> dict:
    size, domain, stage2, axes = cell
    return {"size": size, "domain": domain, "stage2_tokens": stage2, "axes": axes, "params": any_run.params,
            "non_embedding_params": any_run.non_embedding_params}


def final_ppl_table(sweep: Sweep, boot: Bootstrap) -> list[dict]:
    rows = []
    for cell, arms in cells(sweep.runs).items():
        for label, seeds in sorted(arms.items()):
            first = next(iter(seeds.values()))
            rows.append({"cell": cell_dict(cell, first), "arm": label, "kind": first.arm,
                         "final_ppl": summary({s: r.final_ppl for s, r in seeds.items()}, boot),
                         "final_loss": summary({s: r.final_loss for s, r in seeds.items()}, boot),
                         "tokens": first.tokens, "total_flops": first.total_flops})
    return rows


def vs_scratch(sweep: Sweep, boot: Bootstrap, notes: list[str]) -> list[dict]:
    """Every non-scratch arm against scratch of the same cell, seed by seed."""
    rows = []
    for cell, arms in cells(sweep.runs).items():
        scratch = arms.get("scratch")
        where = f"{cell[0]} {cell[1]} {fmt_tokens(cell[2])} {cell[3]}".rstrip()
        others = [a for a in arms if a != "scratch" and not a.startswith(MATCHED)]
        if not scratch:
            if others:
                notes.append(f"{where}: no scratch run, so {', '.join(sorted(others))} cannot be compared")
            continue
        for label in sorted(others):
            seeds = arms[label]
            paired = sorted(set(seeds) & set(scratch))
            unpaired = sorted(set(seeds) ^ set(scratch))
            if unpaired:
                notes.append(f"{where} {label}: seeds {unpaired} have no partner (in only one of the arm and "
                             "scratch) and are left out")
            if not paired:
                continue
            sp = {s: speedup(scratch[s], seeds[s]) for s in paired}
            first = seeds[paired[0]]
            rows.append({
                "cell": cell_dict(cell, first), "arm": label, "kind": first.arm, "band": first.band,
                "stage1_tokens": first.stage1_tokens, "seeds": paired,
                "final_ppl": summary({s: seeds[s].final_ppl for s in paired}, boot),
                "scratch_final_ppl": summary({s: scratch[s].final_ppl for s in paired}, boot),
                "improvement_pct": summary({s: improvement_pct(seeds[s].final_ppl, scratch[s].final_ppl)
                                            for s in paired}, boot),
                "speedup": {**summary({s: v["speedup"] for s, v in sp.items()}, boot),
                            "reached": sum(v["reached"] for v in sp.values()),
                            "detail": {str(s): v for s, v in sp.items()}},
            })
    return rows


def _matched_partner(run: Run, arms: dict[str, dict[int, Run]]) -> Run | None:
    """The pre-pre-trained run a scratch_matched run was given the FLOPs of: same cell and seed, named by coords.extra.matched_to (the arm label inside the partner's run name
    s2-<domain>-<size>-<label>-..., or the whole run name); else the only such pre-pre-trained run."""
    pre = [r for seeds in arms.values() for s, r in seeds.items()
           if r.arm in PRE_ARMS and s == run.seed and r.full_transfer]  # transfer variants share the run's name
    named = [r for r in pre if run.matched_to and (r.name == run.matched_to or f"-{run.matched_to}-" in r.name)]
    if len(named) == 1:
        return named[0]
    return pre[0] if len(pre) == 1 and not named else None


def compute_matched(sweep: Sweep, boot: Bootstrap, notes: list[str]) -> list[dict]:
    """Pre-pre-trained arm vs scratch_matched at (nearly) equal total FLOPs, per seed."""
    grouped: dict[tuple, dict[int, tuple[Run, Run]]] = defaultdict(dict)
    for cell, arms in cells(sweep.runs).items():
        for label, seeds in arms.items():
            if not label.startswith(MATCHED + " "):
                continue
            for s, m in seeds.items():
                partner = _matched_partner(m, arms)
                if partner is None:
                    notes.append(f"{m.name}: cannot tell which arm it is matched to (coords.extra.matched_to="
                                 f"{m.matched_to!r} names no run of its cell and seed); left out")
                    continue
                grouped[(cell, partner.arm_label)][s] = (partner, m)
    rows = []
    for (cell, label), pairs in sorted(grouped.items()):
        seeds = sorted(pairs)
        arm, matched = pairs[seeds[0]]
        rows.append({
            "cell": cell_dict(cell, arm), "arm": label, "kind": arm.arm, "seeds": seeds,
            "arm_final_ppl": summary({s: pairs[s][0].final_ppl for s in seeds}, boot),
            "matched_final_ppl": summary({s: pairs[s][1].final_ppl for s in seeds}, boot),
            "improvement_pct": summary({s: improvement_pct(pairs[s][0].final_ppl, pairs[s][1].final_ppl)
                                        for s in seeds}, boot),
            "arm_total_flops": {str(s): pairs[s][0].total_flops for s in seeds},
            "matched_total_flops": {str(s): pairs[s][1].total_flops for s in seeds},
            "flops_ratio": {str(s): pairs[s][1].total_flops / pairs[s][0].total_flops for s in seeds},
            "matched_tokens": matched.tokens,
        })
    return rows


def fmt_tokens(n: int | None) -> str:
    return fmt_count(n) + " tok" if n else "-"
