"""PNG figures of a sweep report (matplotlib Agg, no pyplot state). Each returns False when it has nothing to draw."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from nca_scale.analysis.nca_figures import band_label, new_figure
from nca_scale.analysis.sweep.metrics import fmt_tokens
from nca_scale.analysis.sweep.runs import Sweep, fmt_count
from nca_scale.nca.complexity import BANDS


def arm_colors(labels) -> dict[str, tuple]:
    from matplotlib import colormaps

    ordered = sorted(set(labels), key=lambda a: (a != "scratch", a))
    cmap = colormaps["tab10"] if len(ordered) <= 10 else colormaps["tab20"]
    return {a: cmap(i % cmap.N) for i, a in enumerate(ordered)}


def _panels(n: int, width: float = 4.6, height: float = 3.4):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = new_figure(max(width * cols + 0.6, 7.5), height * rows + 1.2)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def title_of(*parts) -> str:
    """'web · 2M tok' from (domain, stage-2 tokens, axes) or (size, domain, tokens, axes); empty axes left out."""
    *head, tokens, axes = parts
    return " · ".join([*head, fmt_tokens(tokens)] + ([axes] if axes else []))


def _err(mean, ci):
    if ci is None:
        return [[0.0], [0.0]]
    return [[mean - ci[0]], [ci[1] - mean]]


def _legend(fig, axes) -> int:
    """One legend for all panels, below them; returns its number of rows."""
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if not handles:
        return 0
    width_px = fig.get_size_inches()[0] * fig.dpi
    ncol = int(max(1, min(4, width_px // (6.5 * max(map(len, labels)) + 40))))
    fig.legend([handles[k] for k in labels], labels, loc="lower center", ncol=min(len(labels), ncol), fontsize=8,
               frameon=False)
    return -(-len(labels) // ncol)


def _save(fig, path: Path, title: str, legend_rows: int) -> bool:
    fig.suptitle(title, fontsize=10)
    inches = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, min(0.4, 0.22 * legend_rows / inches + 0.02), 1, 0.97))
    fig.savefig(path)
    return True


def loss_curves(sweep: Sweep, colors: dict, path: Path, title: str) -> bool:
    by_cell = defaultdict(list)
    for r in sweep.runs:
        by_cell[r.cell].append(r)
    fig, axes = _panels(len(by_cell))
    for ax, (cell, runs) in zip(axes, sorted(by_cell.items())):
        for label in sorted({r.arm_label for r in runs}):
            mine = [r for r in runs if r.arm_label == label]
            for i, r in enumerate(sorted(mine, key=lambda r: r.seed)):
                ax.plot(r.curve_tokens, r.curve_ppl, color=colors[label], linewidth=1.0, alpha=0.8, marker=".",
                        markersize=3, label=label if i == 0 else None)
        ax.set_xlabel("stage-2 tokens")
        ax.set_ylabel("validation perplexity")
        ax.set_title(title_of(cell[0], *cell[1:]), fontsize=9)
        ax.grid(alpha=0.3)
    return _save(fig, path, title, _legend(fig, axes))


def ppl_bars(rows: list[dict], colors: dict, path: Path, title: str) -> bool:
    panels = defaultdict(list)
    for row in rows:
        panels[(row["cell"]["domain"], row["cell"]["stage2_tokens"], row["cell"]["axes"])].append(row)
    fig, axes = _panels(len(panels), width=5.2)
    for ax, (panel, rs) in zip(axes, sorted(panels.items())):
        sizes = sorted({r["cell"]["size"] for r in rs}, key=lambda s: next(
            r["cell"]["non_embedding_params"] for r in rs if r["cell"]["size"] == s))
        arms = sorted({r["arm"] for r in rs}, key=lambda a: (a != "scratch", a))
        width = 0.8 / len(arms)
        for j, arm in enumerate(arms):
            for i, size in enumerate(sizes):
                hit = [r for r in rs if r["arm"] == arm and r["cell"]["size"] == size]
                if not hit:
                    continue
                s = hit[0]["final_ppl"]
                x = i + (j - (len(arms) - 1) / 2) * width
                ax.bar(x, s["mean"], width, color=colors[arm], label=arm if i == 0 else None, alpha=0.85)
                ax.errorbar(x, s["mean"], yerr=_err(s["mean"], s["ci"]), color="0.1", capsize=3, linewidth=1)
                seeds = [v for v in s["per_seed"].values() if v is not None]
                ax.plot([x] * len(seeds), seeds, "o", color="0.1", markersize=2.5)
        lo = min(v for r in rs for v in r["final_ppl"]["per_seed"].values())
        hi = max(v for r in rs for v in r["final_ppl"]["per_seed"].values())
        ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9) - 0.02 * lo, hi + 0.15 * (hi - lo + 1e-9) + 0.02 * hi)
        ax.set_xticks(range(len(sizes)), sizes, fontsize=8)
        ax.set_ylabel("final validation perplexity")
        ax.set_title(title_of(*panel), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path, title, _legend(fig, axes))


def metric_vs_n(trends: list[dict], colors: dict, path: Path, title: str, ylabel: str, ref: float) -> bool:
    panels = defaultdict(list)
    for t in trends:
        panels[(t["domain"], t["stage2_tokens"], t["axes"])].append(t)
    if not panels:
        return False
    fig, axes = _panels(len(panels))
    for ax, (panel, ts) in zip(axes, sorted(panels.items())):
        for t in ts:
            pts = [p for p in t["per_size"] if p["mean"] is not None]
            for p in pts:
                ax.errorbar(p["n"], p["mean"], yerr=_err(p["mean"], p["ci"]), color=colors[t["arm"]], capsize=3,
                            marker="o", markersize=4)
            ax.plot([p["n"] for p in pts], [p["mean"] for p in pts], color=colors[t["arm"]], label=t["arm"])
            for p in t["per_size"]:
                if p["n_seeds"] < p["seeds"]:
                    ax.annotate(f"reached {p['n_seeds']}/{p['seeds']}", (p["n"], p["mean"] or ref), fontsize=7,
                                textcoords="offset points", xytext=(4, -10))
        ax.axhline(ref, color="0.3", linestyle="--", linewidth=0.8)
        if any(p["mean"] is not None for t in ts for p in t["per_size"]):  # log axes need a point (none: never reached)
            ax.set_xscale("log")
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel(ylabel)
        ax.set_title(title_of(*panel), fontsize=9)
        ax.grid(alpha=0.3)
    return _save(fig, path, title, _legend(fig, axes))


def loss_fits(rows: list[dict], colors: dict, path: Path, title: str) -> bool:
    panels = defaultdict(list)
    for row in rows:
        panels[(row["domain"], row["stage2_tokens"], row["axes"])].append(row)
    fig, axes = _panels(len(panels))
    for ax, (panel, rs) in zip(axes, sorted(panels.items())):
        for row in rs:
            c = colors[row["arm"]]
            for p in row["points"]:
                ax.plot([p["n"]] * len(p["losses"]), p["losses"], "o", color=c, markersize=3.5)
            curve = row["curve"]
            if curve:
                ax.plot(curve["n"], curve["loss"], color=c, label=f"{row['arm']}: {row['form']}")
                if "lo" in curve:
                    ax.fill_between(curve["n"], curve["lo"], curve["hi"], color=c, alpha=0.15)
            else:
                ax.plot([], [], "o", color=c, label=f"{row['arm']} (not fitted)")
            h = row["holdout"]
            if h:
                ax.plot([h["n"]], [h["predicted"]], marker="x", color=c, markersize=8, linestyle="none")
        ax.set_xscale("log")
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel("final validation loss (nats/token)")
        ax.set_title(title_of(*panel) + "  (x: holdout prediction)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    return _save(fig, path, title, _legend(fig, axes))


def band_effect(rows: list[dict], path: Path, title: str) -> bool:
    """Improvement vs scratch per complexity band, one panel per domain that ran >= 2 bands, one line per
    (size, stage-1 tokens, stage-2 tokens)."""
    banded = [r for r in rows if r["band"] is not None and r["band"] in BANDS]
    if not banded:
        return False
    panels = defaultdict(list)
    for r in banded:
        panels[(r["domain"], r["axes"])].append(r)
    panels = {k: rs for k, rs in panels.items() if len({r["band"] for r in rs}) >= 2}  # one band: no effect to see
    if not panels:
        return False
    order = list(BANDS)
    fig, axes = _panels(len(panels))
    for ax, ((domain, axes_text), rs) in zip(axes, sorted(panels.items())):
        series = defaultdict(list)
        for r in rs:
            series[(r["n"], r["size"], r["stage1_tokens"], r["stage2_tokens"])].append(r)
        for k, ((_, size, s1, s2), pts) in enumerate(sorted(series.items())):
            pts = sorted(pts, key=lambda r: order.index(r["band"]))
            xs = [order.index(p["band"]) + (k - (len(series) - 1) / 2) * 0.06 for p in pts]
            for x, p in zip(xs, pts):
                ax.errorbar(x, p["mean"], yerr=_err(p["mean"], p["ci"]), capsize=3, marker="o", markersize=4,
                            color=f"C{k}")
            ax.plot(xs, [p["mean"] for p in pts], color=f"C{k}",
                    label=f"{size}, NCA {fmt_count(s1)} -> {fmt_tokens(s2)}")
        ax.axhline(0.0, color="0.3", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(order)), [band_label(b) for b in order], fontsize=8)
        ax.set_xlabel("NCA complexity band (gzip score of the rule probe)")
        ax.set_ylabel("improvement vs scratch (%)")
        ax.set_title(f"{domain} {axes_text}".strip(), fontsize=9)
        ax.grid(alpha=0.3)
    return _save(fig, path, title, _legend(fig, axes))



def transfer(rows: list[dict], path: Path, title: str) -> bool:
    """Effective data transferred D_T against fine-tuning tokens D_F, log-log, one panel per (domain, arm), one
    colour per size: dots = seeds with 0 < D_T < inf, lines = the fitted D_T = k D_F^alpha N^beta."""
    rows = [r for r in rows if any(p["d_t"] and p["d_t"] > 0 for p in r["points"])]
    if not rows:
        return False
    fig, axes = _panels(len(rows))
    for ax, row in zip(axes, rows):
        sizes = sorted({(p["n"], p["size"]) for p in row["points"]})
        for k, (n, size) in enumerate(sizes):
            pts = [p for p in row["points"] if p["size"] == size and p["d_t"] and p["d_t"] > 0]
            ax.plot([p["d_f"] for p in pts], [p["d_t"] for p in pts], "o", color=f"C{k}", markersize=4,
                    label=f"{size} (N={fmt_count(n)})")
            f = row["fit"]
            if f and pts:
                d = np.geomspace(min(p["d_f"] for p in row["points"]), max(p["d_f"] for p in row["points"]), 20)
                ax.plot(d, 10 ** f["log10_k"] * d ** f.get("alpha", 0.0) * n ** f.get("beta", 0.0), color=f"C{k}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("fine-tuning tokens D_F")
        ax.set_ylabel("effective data transferred D_T")
        ax.set_title(" · ".join(x for x in (row["domain"], row["axes"], row["arm"]) if x), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    return _save(fig, path, title, _legend(fig, axes))


def claims(rows: list[dict], sizes: dict[str, dict], path: Path, title: str) -> bool:
    """The claims table per size: effect (% ppl, positive = the paper's direction) against N with its interval,
    one series per claim comparison, one panel per domain."""
    rows = [r for r in rows if r["size"] != "all sizes" and r["effect_pct"] is not None]
    if not rows:
        return False
    panels = defaultdict(lambda: defaultdict(list))
    for r in rows:
        panels[(r["domain"], r["axes"])][f"({r['claim']}) {r['comparison']}"].append(r)
    fig, axes = _panels(len(panels), width=6.0, height=4.0)
    for ax, (panel, series) in zip(axes, sorted(panels.items())):
        for k, (label, rs) in enumerate(sorted(series.items())):
            rs = sorted(rs, key=lambda r: sizes[r["size"]]["non_embedding_params"])
            n = [sizes[r["size"]]["non_embedding_params"] * (1 + 0.04 * (k - len(series) / 2)) for r in rs]
            y = [r["effect_pct"] for r in rs]
            err = [[max(0.0, v - r["ci_pct"][0]) if r["ci_pct"] else 0.0 for v, r in zip(y, rs)],
                   [max(0.0, r["ci_pct"][1] - v) if r["ci_pct"] else 0.0 for v, r in zip(y, rs)]]
            ax.errorbar(n, y, yerr=err, capsize=3, marker="o", markersize=4, color=f"C{k}", label=label)
        ax.axhline(0.0, color="0.3", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel("effect: % lower perplexity (paper's direction > 0)")
        ax.set_title(" ".join(panel).strip(), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    return _save(fig, path, title, _legend(fig, axes))
