"""A sweep report's numbers (`Report`: report.json is its JSON) and their text: a Doc that Markdown and HTML
render, one function per section, every number next to its seeds and interval."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nca_scale.analysis.report_doc import Doc
from nca_scale.analysis.sweep_metrics import fmt_tokens
from nca_scale.analysis.sweep_results import fmt_count

PAPER_SCALE = "the paper: 1.6B parameters, 164M NCA tokens, 4.2B-12.6B stage-2 tokens"


@dataclass(kw_only=True)
class Scaling:
    """Scaling fits (sweep_scaling.py); each list holds one JSON-ready dict per fit or trend."""

    n_definition: str = "non-embedding parameters"
    loss_vs_n: list[dict]
    loss_nd: list[dict]
    improvement_vs_n: list[dict]
    speedup_vs_n: list[dict]


@dataclass
class Report:
    """A sweep report's numbers: report.json is `to_json()` of this, report.md and report.html render it.
    The sections' rows are JSON-ready dicts from sweep_metrics.py (their keys are documented in docs/analysis.md)."""

    sweep: str
    directory: str
    nca_scale_version: str
    generated: str
    settings: dict
    scale: dict
    final_ppl: list[dict]
    vs_scratch: list[dict]
    compute_matched: list[dict]
    bands: list[dict]
    scaling: Scaling
    notes: list[str]
    files: list[str] = field(default_factory=list)  # what write_report wrote

    def to_json(self) -> dict:
        return asdict(self)


def fmt_summary(s: dict, fmt: str = "{:.4g}", unit: str = "") -> str:
    if s["mean"] is None:
        return f"none of {s['seeds']} seeds"
    text = fmt.format(s["mean"]) + unit
    if s["ci"] is not None:
        text += " [" + ", ".join(fmt.format(v) for v in s["ci"]) + "]"
    seeds = f"{s['n']} seed" + ("s" if s["n"] != 1 else "")
    return f"{text} ({seeds}{'' if s['ci'] else ', no interval'})"


def verdict(s: dict, ref: float) -> str:
    """What the seeds say about the arm vs the reference value (0 % improvement, speedup 1): with >= 3 seeds
    the interval decides; with fewer, only the per-seed signs are stated."""
    if s["mean"] is None:
        return "not reached"
    values = [v for v in s["per_seed"].values() if v is not None]
    if len(values) < 3:
        who = "both seeds" if len(values) == 2 else "its only seed"
        if all(v > ref for v in values):
            return f"better in {who} (too few seeds for an interval to decide)"
        if all(v < ref for v in values):
            return f"worse in {who} (too few seeds for an interval to decide)"
        return "the two seeds disagree"
    lo, hi = s["ci"]
    if lo > ref:
        return "better"
    if hi < ref:
        return "worse"
    return "interval includes no effect"


def speedup_text(sp: dict) -> str:
    if sp["reached"] == 0:
        return f"not reached (0 of {sp['seeds']} seeds reach scratch's final ppl)"
    text = fmt_summary(sp, "{:.3g}", "x")
    if sp["reached"] < sp["seeds"]:
        text += f"; reached in {sp['reached']} of {sp['seeds']} seeds, mean over those"
    return text


def domain_text(d: dict) -> str:
    """The domain, with the other swept keys when the sweep has any."""
    return f"{d['domain']} {d['axes']}".strip()


def cell_text(c: dict) -> str:
    return (f"{c['size']} (N={fmt_count(c['non_embedding_params'])} non-emb., {fmt_count(c['params'])} total), "
            f"{c['domain']}, {fmt_tokens(c['stage2_tokens'])}" + (f", {c['axes']}" if c["axes"] else ""))



def _caveats(rep: Report) -> list[str]:
    sc = rep.scale
    sizes = sorted(sc["sizes"].values(), key=lambda s: s["params"])
    seeds = len(sc["seeds"])
    return [
        f"Scale measured: {len(sizes)} model size(s) of {fmt_count(sizes[0]['params'])}-"
        f"{fmt_count(sizes[-1]['params'])} parameters ({fmt_count(sizes[0]['non_embedding_params'])}-"
        f"{fmt_count(sizes[-1]['non_embedding_params'])} non-embedding), stage-2 budgets "
        f"{', '.join(fmt_tokens(t) for t in sc['stage2_tokens'])}, stage-1 budgets "
        f"{', '.join(fmt_tokens(t) for t in sc['stage1_tokens']) or 'none'}, {seeds} seed(s). Compare with "
        f"{PAPER_SCALE}. At small scale the paper's effect may be absent or reversed; this report states what was "
        "measured and no setting was tuned to make an effect appear.",
        f"Intervals: {rep.settings['bootstrap']}. With few seeds (under ~5) percentile intervals are rough and "
        "tend to be too narrow; one seed gives no interval.",
        "Improvement % = 100 (ppl_scratch - ppl_arm) / ppl_scratch on final validation perplexity: positive = the "
        "arm ends with lower perplexity than scratch, negative = worse. Seeds are paired (seed s vs seed s).",
        "Speedup = stage-2 tokens scratch trained / stage-2 tokens the arm needed to first reach scratch's final "
        "perplexity (linear interpolation between evaluations); stage-1 tokens are not counted, as in the paper. "
        "The compute-matched section is the comparison that charges stage 1.",
    ]


def document(rep: Report, images: dict[str, str]) -> Doc:
    doc = Doc(f"Sweep report: {rep.sweep}")
    for section in (_overview, _final_ppl, _vs_scratch, _compute_matched, _bands, _scaling):
        section(doc, rep, images)
    doc.h("Notes")
    doc.ul(rep.notes or ["none"])
    return doc


def _overview(doc: Doc, rep: Report, images: dict[str, str]) -> None:
    sc = rep.scale
    doc.p(f"Sweep directory {rep.directory}; {sc['stage2_runs']} finished stage-2 runs, {sc['stage1_runs']} "
          f"stage-1 runs; generated {rep.generated} by nca_scale {rep.nca_scale_version}"
          f"{'; runs from ' + ', '.join(sc['code_versions']) if sc['code_versions'] else ''}.")
    doc.h("What was measured, and how to read it")
    doc.ul(_caveats(rep))
    doc.table(["size", "parameters", "non-embedding N"],
              [[s, f"{v['params']:,}", f"{v['non_embedding_params']:,}"]
               for s, v in sorted(sc["sizes"].items(), key=lambda kv: kv[1]["params"])])


def _final_ppl(doc: Doc, rep: Report, images: dict[str, str]) -> None:
    doc.h("Final validation perplexity")
    doc.p("Mean over seeds [interval]; per-seed values in report.json.")
    doc.table(["size · domain · stage-2 tokens", "arm", "final ppl", "total FLOPs (incl. stage 1)"],
              [[cell_text(r["cell"]), r["arm"], fmt_summary(r["final_ppl"]), f"{r['total_flops']:.3g}"]
               for r in rep.final_ppl])
    if "final_ppl" in images:
        doc.img(images["final_ppl"], "Final validation perplexity per size and arm: bars = mean, whiskers = "
                "interval, dots = seeds")
    if "loss_curves" in images:
        doc.img(images["loss_curves"], "Validation perplexity over stage-2 tokens, every seed of every arm")


def _vs_scratch(doc: Doc, rep: Report, images: dict[str, str]) -> None:
    doc.h("Against scratch: improvement and convergence speedup")
    doc.table(["size · domain · stage-2 tokens", "arm", "arm ppl", "scratch ppl", "improvement %", "reads",
               "speedup", "reads "],
              [[cell_text(r["cell"]), r["arm"], fmt_summary(r["final_ppl"]), fmt_summary(r["scratch_final_ppl"]),
                fmt_summary(r["improvement_pct"], "{:+.2f}", "%"), verdict(r["improvement_pct"], 0.0),
                speedup_text(r["speedup"]), verdict(r["speedup"], 1.0)] for r in rep.vs_scratch])
    if not rep.vs_scratch:
        doc.p("No arm could be compared with scratch (see notes).")
    for key, caption in (("improvement_vs_n", "Improvement vs scratch (%) over N, mean and interval per size"),
                         ("speedup_vs_n", "Convergence speedup vs scratch over N (dashed: no speedup)")):
        if key in images:
            doc.img(images[key], caption)


def _compute_matched(doc: Doc, rep: Report, images: dict[str, str]) -> None:
    doc.h("Compute-matched: pre-pre-training vs simply training longer")
    if not rep.compute_matched:
        doc.p("Not measured: the sweep has no scratch_matched runs.")
        return
    doc.p("scratch_matched trains stage 2 for the same tokens plus the stage-1 FLOPs as extra language tokens. "
          "Improvement % here is the arm's final ppl vs scratch_matched's at (nearly) equal total FLOPs; "
          "flops ratio = matched total / arm total.")
    doc.table(["size · domain · stage-2 tokens", "arm", "arm ppl", "scratch_matched ppl", "improvement %",
               "reads", "flops ratio"],
              [[cell_text(r["cell"]), r["arm"], fmt_summary(r["arm_final_ppl"]),
                fmt_summary(r["matched_final_ppl"]), fmt_summary(r["improvement_pct"], "{:+.2f}", "%"),
                verdict(r["improvement_pct"], 0.0),
                ", ".join(f"{v:.3f}" for v in r["flops_ratio"].values())] for r in rep.compute_matched])


def _bands(doc: Doc, rep: Report, images: dict[str, str]) -> None:
    doc.h("Complexity band per domain")
    if rep.bands:
        doc.table(["domain", "size", "stage-1 tokens", "band", "improvement %"],
                  [[domain_text(b), b["size"], fmt_tokens(b["stage1_tokens"]), b["band"],
                    fmt_summary({"mean": b["mean"], "ci": b["ci"], "n": b["n_seeds"], "seeds": b["n_seeds"]},
                                "{:+.2f}", "%")] for b in rep.bands])
    if "bands" in images:
        doc.img(images["bands"], "Improvement vs scratch per NCA complexity band, per domain")
    if len({b["band"] for b in rep.bands}) < 2:
        doc.p("Fewer than two bands were run, so the band effect is not measured here.")


def _scaling(doc: Doc, rep: Report, images: dict[str, str]) -> None:
    doc.h("Scaling fits")
    sl = rep.scaling
    doc.p(f"N = {sl.n_definition}; loss = final validation loss (nats/token). Fits: Huber loss (delta 1e-3) on "
          "log loss, multi-start; intervals from refits on seeds redrawn within each size "
          f"({rep.settings['fit_resamples']} refits, {rep.settings['level']:.0%}). Holdout: the largest size "
          "is left out, the rest fitted, the largest predicted.")
    doc.table(["domain", "stage-2 tokens", "arm", "sizes", "form", "parameters [interval]", "holdout", "notes"],
              [_loss_fit_row(f) for f in sl.loss_vs_n])
    if "loss_fits" in images:
        doc.img(images["loss_fits"], "Final loss vs N per arm: dots = seeds, line = fit, band = interval, "
                "x = holdout prediction of the largest size")
    nd_rows = [[domain_text(f), f["arm"], str(f["cells"]),
                "; ".join(f"{k} {v:.4g}" for k, v in f["fit"]["params"].items()) if f["fit"] else "not fitted",
                f"{f['holdout']['mean_abs_error_pct']:.2f}%" if f.get("holdout") else "-",
                "; ".join(f["notes"]) or "-"] for f in sl.loss_nd]
    doc.p("L(N, D) = E + A/N^alpha + B/D^beta with D = stage-2 tokens, over the sweep's final points:")
    doc.table(["domain", "arm", "(N, D) cells", "parameters", "holdout mean |error|", "notes"], nd_rows)
    trend_rows = [_trend_row(key, unit, t) for key, unit in (("improvement_vs_n", "pp"), ("speedup_vs_n", "x"))
                  for t in getattr(sl, key)]
    doc.p("Does the gain hold as models grow? Least-squares slope of the per-seed metric against log10 N:")
    doc.table(["metric", "domain", "stage-2 tokens", "arm", "sizes", "slope [interval]", "notes"], trend_rows)


def _loss_fit_row(f: dict) -> list[str]:
    params = ("; ".join(
        f"{k} {v:.4g}" + (f" [{f['ci'][k][0]:.3g}, {f['ci'][k][1]:.3g}]" if f["ci"] else "")
        for k, v in f["fit"]["params"].items()) if f["fit"] else "not fitted")
    hold = (f"{f['holdout']['predicted']:.4g} predicted vs {f['holdout']['observed_mean']:.4g} observed at "
            f"N={fmt_count(f['holdout']['n'])} ({f['holdout']['error_pct']:+.2f}%)" if f["holdout"] else "-")
    return [domain_text(f), fmt_tokens(f["stage2_tokens"]), f["arm"], str(f["sizes"]), f["form"] or "-", params,
            hold, "; ".join(f["notes"]) or "-"]


def _trend_row(key: str, unit: str, t: dict) -> list[str]:
    slope = "-" if t["slope_per_decade"] is None else f"{t['slope_per_decade']:+.3g} {unit} per 10x N"
    if t["ci"]:
        slope += f" [{t['ci'][0]:+.3g}, {t['ci'][1]:+.3g}]"
    return [key.replace("_vs_n", ""), domain_text(t), fmt_tokens(t["stage2_tokens"]), t["arm"], str(t["sizes"]),
            slope, "; ".join(t["notes"]) or "-"]
