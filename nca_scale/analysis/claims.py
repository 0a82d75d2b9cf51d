"""The paper's headline claims as paired comparisons of a sweep's arms (docs/analysis.md, "Claims").

Each claim is a comparison "arm beats ref" oriented so that a positive effect is the paper's direction:
  0  NCA pre-pre-training beats scratch (the paper: -5.7 % OpenWebText perplexity at 1.6B)
  a  NCA beats natural-language pre-pre-training at the same stage-1 tokens (C4 at 164M)
  b  NCA beats natural language given 10x the NCA tokens (C4 at 1.6B; new and kept embeddings)
  c  attention carries what transfers: re-initialising attention before stage 2 loses the most benefit
  d  the best complexity band depends on the domain: 50 %+ for web and math, 30-40 % for code
  m  (not the paper's) NCA beats scratch given the stage-1 FLOPs as extra language tokens (compute-matched)
The effect is the loss difference ref - arm in nats (= log perplexity ratio), shown as % perplexity
improvement. The unit of replication is the seed: a seed's value is its mean difference over the cells of a row
(one size and every stage-2 budget, or every size), since one stage-1 run feeds every budget of its seed.
Intervals are Student-t over seeds; the verdict is `inference.verdict` of the interval; the detectable effect is
what a paired t-test at this level detects with the study's power given the measured seed sd.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from nca_scale.analysis import inference
from nca_scale.analysis.sweep.runs import MATCHED, Run, Sweep

STATEMENTS = {
    "0": "NCA pre-pre-training beats training from scratch",
    "a": "NCA beats natural-language pre-pre-training at the same stage-1 tokens",
    "b": "NCA beats natural-language pre-pre-training given 10x the NCA tokens",
    "c": "attention carries what transfers (re-initialising it loses the benefit; most, if MLP was also ablated)",
    "d": "the best NCA complexity band depends on the domain (50%+ web and math, 30-40% code)",
    "m": "NCA beats spending its stage-1 FLOPs on more language tokens (compute-matched; not a paper claim)",
}
NOT_RUN = "not measured: no finished runs of the arms it compares"
PREFERRED_BAND = {"web": "50+", "math": "50+", "code": "30-40"}  # paper.md §5.5


def _label_runs(runs: list[Run]) -> dict[tuple, dict[str, dict[tuple, dict[int, Run]]]]:
    """(domain, axes) -> arm label -> (size, stage-2 tokens) -> seed -> run."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r in runs:
        out[(r.domain or "-", r.axes)][r.arm_label][(r.size, r.stage2_tokens or 0)][r.seed] = r
    return out


def comparisons(labels: dict[str, dict], domain: str) -> list[tuple[str, str, str, str]]:
    """(claim, comparison text, arm label, ref label) for the arms present, oriented to the paper's direction."""
    first = {label: next(iter(next(iter(cells.values())).values())) for label, cells in labels.items()}
    full = {lb: r for lb, r in first.items() if r.arm in ("nca", "text", "dyck") and r.full_transfer}
    nca = {lb: r for lb, r in full.items() if r.arm == "nca"}
    out = []
    for lb, r in nca.items():
        if "scratch" in labels:
            out.append(("0", f"{lb} vs scratch", lb, "scratch"))
        for tl, t in full.items():
            if t.arm == "text" and t.stage1_tokens == r.stage1_tokens:
                out.append(("a", f"{lb} vs {tl}", lb, tl))
        for tl, t in first.items():
            if t.arm == "text" and r.stage1_tokens and t.stage1_tokens == 10 * r.stage1_tokens and not t.reinit:
                out.append(("b", f"{lb} vs {tl}", lb, tl))
        for ml, m in first.items():
            if m.arm == MATCHED and f"-{m.matched_to}-" in r.name:
                out.append(("m", f"{lb} vs {ml}", lb, ml))
    variants = {lb: r for lb, r in first.items() if r.reinit}
    for vl, v in variants.items():
        if v.base_label in labels:
            out.append(("c", f"full transfer vs {'+'.join(v.reinit)} re-initialised ({v.base_label})",
                        v.base_label, vl))
    attn = [vl for vl, v in variants.items() if v.reinit == ["attn"]]
    for vl, v in variants.items():
        for al in attn:
            if v.reinit in (["mlp"], ["norm"]) and variants[al].base_label == v.base_label:
                out.append(("c", f"re-initialising attn loses more than {v.reinit[0]} ({v.base_label})", vl, al))
    want = PREFERRED_BAND.get(domain)
    for lb, r in nca.items():
        for ol, o in nca.items():
            if want and r.band == want and o.band != want and o.stage1_tokens == r.stage1_tokens:
                out.append(("d", f"band {r.band} vs {o.band} on {domain}", lb, ol))
    return out


def _row(claim, text, domain, axes, size, per_seed: dict[int, float], cells: list, level: float, power: float) -> dict:
    t = inference.t_interval(list(per_seed.values()), level)
    mde = inference.detectable(t["sd"], t["n"], level, power) if t["sd"] is not None else None
    ci = t["ci"]
    return {"claim": claim, "statement": STATEMENTS[claim], "comparison": text, "domain": domain, "axes": axes,
            "size": size, "cells": cells, "n_seeds": t["n"],
            "effect_nats": t["mean"], "ci_nats": ci, "sd_nats": t["sd"],
            "effect_pct": inference.pct(t["mean"]), "ci_pct": [inference.pct(v) for v in ci] if ci else None,
            "detectable_pct": inference.pct(mde), "verdict": inference.verdict(ci),
            "per_seed_nats": {str(s): v for s, v in sorted(per_seed.items())}}


def claims(sweep: Sweep, level: float, power: float = 0.8) -> list[dict]:
    """One row per (claim comparison, domain, size) over that size's stage-2 budgets, and one over every size."""
    rows = []
    sizes = {r.size: r.non_embedding_params for r in sweep.runs}
    for (domain, axes), labels in sorted(_label_runs(sweep.runs).items()):
        for claim, text, arm, ref in comparisons(labels, domain):
            diffs: dict[tuple, dict[int, float]] = {}
            for cell, seeds in labels[arm].items():
                other = labels[ref].get(cell, {})
                paired = sorted(set(seeds) & set(other))
                if paired:
                    diffs[cell] = {s: other[s].final_loss - seeds[s].final_loss for s in paired}
            if not diffs:
                continue
            groups = [(size, [c for c in diffs if c[0] == size]) for size in sorted({c[0] for c in diffs},
                                                                                      key=lambda z: sizes[z])]
            groups.append(("all sizes", list(diffs)))
            for size, cells in groups:
                per_seed: dict[int, list[float]] = defaultdict(list)
                for c in cells:
                    for s, v in diffs[c].items():
                        per_seed[s].append(v)
                rows.append(_row(claim, text, domain, axes, size, {s: float(np.mean(v)) for s, v in per_seed.items()},
                                 [[c[0], c[1]] for c in sorted(cells, key=lambda c: (sizes[c[0]], c[1]))],
                                 level, power))
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """The claims table: per claim, its pooled rows (every size), or a 'not run' line when no arm tests it."""
    out = []
    for claim, statement in STATEMENTS.items():
        pooled = [r for r in rows if r["claim"] == claim and r["size"] == "all sizes"]
        if not pooled:
            out.append({"claim": claim, "statement": statement, "comparison": None, "verdict": NOT_RUN})
        out += pooled
    return out
