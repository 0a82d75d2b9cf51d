"""`nca-scale report SWEEP_DIR`: the sweep's numbers as report.json, report.md and report.html, with PNG plots.

Everything is computed once into the JSON dict; Markdown and HTML are rendered from it, so the three agree.
The output directory (default SWEEP_DIR/report) is written to a temporary sibling and swapped in whole.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nca_scale
from nca_scale.analysis import sweep_plots as plots
from nca_scale.analysis.report_doc import Doc, html_page, markdown
from nca_scale.analysis.sweep_metrics import (
    Bootstrap,
    compute_matched,
    final_ppl_table,
    fmt_tokens,
    vs_scratch,
)
from nca_scale.analysis.sweep_results import Sweep, fmt_count, load_sweep
from nca_scale.analysis.sweep_scaling import FitSettings, loss_fits, metric_trends, nd_fits
from nca_scale.errors import UserError
from nca_scale.files import replacing

REPORT_JSON, REPORT_MD, REPORT_HTML = "report.json", "report.md", "report.html"
PAPER_SCALE = "the paper: 1.6B parameters, 164M NCA tokens, 4.2B-12.6B stage-2 tokens"


@dataclass(frozen=True)
class ReportConfig:
    out: str = ""  # output directory; default SWEEP_DIR/report
    level: float = 0.95  # confidence level of every interval
    resamples: int = 10_000  # bootstrap resamples of means over seeds
    fit_resamples: int = 200  # bootstrap refits per scaling fit
    seed: int = 0  # numpy seed of every bootstrap

    def validate(self) -> None:
        if not 0.5 <= self.level < 1.0:
            raise UserError(f"level={self.level} must be in [0.5, 1), e.g. level=0.95")
        if self.resamples < 100 or self.fit_resamples < 10:
            raise UserError("resamples must be >= 100 and fit_resamples >= 10")


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file; pass a directory for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_JSON).is_file():
        raise UserError(f"out={out} is a non-empty directory that is not an earlier report; pass a new or empty one")


# ---- formatting: every number next to its seeds and interval ------------------------------------------------
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


# ---- the numbers -------------------------------------------------------------------------------------------
def scale_summary(sweep: Sweep) -> dict:
    runs = sweep.runs
    return {
        "stage2_runs": len(runs), "stage1_runs": len(sweep.stage1),
        "sizes": {r.size: {"params": r.params, "non_embedding_params": r.non_embedding_params} for r in runs},
        "domains": sorted({r.domain or "-" for r in runs}),
        "arms": sorted({r.arm_label for r in runs}),
        "seeds": sorted({r.seed for r in runs}),
        "stage2_tokens": sorted({r.stage2_tokens or 0 for r in runs}),
        "stage1_tokens": sorted({r.stage1_tokens for r in runs if r.stage1_tokens}),
        "code_versions": sorted({r.code_version for r in runs + sweep.stage1 if r.code_version}),
    }


def compute(sweep: Sweep, cfg: ReportConfig) -> dict:
    boot = Bootstrap(cfg.level, cfg.resamples, cfg.seed)
    fset = FitSettings(cfg.fit_resamples, cfg.seed)
    notes = list(sweep.notes)
    rows = vs_scratch(sweep, boot, notes)
    matched = compute_matched(sweep, boot, notes)
    if not matched:
        notes.append("no scratch_matched runs: the compute-matched comparison (does NCA beat training longer?) "
                     "is not measured in this sweep")
    bands = [{"domain": r["cell"]["domain"], "axes": r["cell"]["axes"], "size": r["cell"]["size"], "n": r["cell"]["non_embedding_params"],
              "stage2_tokens": r["cell"]["stage2_tokens"], "stage1_tokens": r["stage1_tokens"], "band": r["band"],
              "arm": r["arm"], "mean": r["improvement_pct"]["mean"], "ci": r["improvement_pct"]["ci"],
              "n_seeds": r["improvement_pct"]["n"]} for r in rows if r["kind"] == "nca" and r["band"]]
    if len({b["band"] for b in bands}) < 2:
        notes.append("fewer than 2 NCA complexity bands were run: no band effect can be read from this sweep")
    return {
        "sweep": sweep.name, "directory": str(sweep.directory), "nca_scale_version": nca_scale.__version__,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {**asdict(cfg), "bootstrap": boot.describe()},
        "scale": scale_summary(sweep),
        "final_ppl": final_ppl_table(sweep, boot),
        "vs_scratch": rows,
        "compute_matched": matched,
        "bands": bands,
        "scaling": {
            "n_definition": "non-embedding parameters",
            "loss_vs_n": loss_fits(sweep, boot, fset),
            "loss_nd": nd_fits(sweep),
            "improvement_vs_n": metric_trends(rows, "improvement_pct", boot, fset),
            "speedup_vs_n": metric_trends(rows, "speedup", boot, fset),
        },
        "notes": notes,
    }


# ---- the document ------------------------------------------------------------------------------------------
def _caveats(rep: dict) -> list[str]:
    sc = rep["scale"]
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
        f"Intervals: {rep['settings']['bootstrap']}. With few seeds (under ~5) percentile intervals are rough and "
        "tend to be too narrow; one seed gives no interval.",
        "Improvement % = 100 (ppl_scratch - ppl_arm) / ppl_scratch on final validation perplexity: positive = the "
        "arm ends with lower perplexity than scratch, negative = worse. Seeds are paired (seed s vs seed s).",
        "Speedup = stage-2 tokens scratch trained / stage-2 tokens the arm needed to first reach scratch's final "
        "perplexity (linear interpolation between evaluations); stage-1 tokens are not counted, as in the paper. "
        "The compute-matched section is the comparison that charges stage 1.",
    ]


def document(rep: dict, images: dict[str, str]) -> Doc:
    doc = Doc(f"Sweep report: {rep['sweep']}")
    sc = rep["scale"]
    doc.p(f"Sweep directory {rep['directory']}; {sc['stage2_runs']} finished stage-2 runs, {sc['stage1_runs']} "
          f"stage-1 runs; generated {rep['generated']} by nca_scale {rep['nca_scale_version']}"
          f"{'; runs from ' + ', '.join(sc['code_versions']) if sc['code_versions'] else ''}.")
    doc.h("What was measured, and how to read it")
    doc.ul(_caveats(rep))
    doc.table(["size", "parameters", "non-embedding N"],
              [[s, f"{v['params']:,}", f"{v['non_embedding_params']:,}"]
               for s, v in sorted(sc["sizes"].items(), key=lambda kv: kv[1]["params"])])

    doc.h("Final validation perplexity")
    doc.p("Mean over seeds [interval]; per-seed values in report.json.")
    doc.table(["size · domain · stage-2 tokens", "arm", "final ppl", "total FLOPs (incl. stage 1)"],
              [[cell_text(r["cell"]), r["arm"], fmt_summary(r["final_ppl"]), f"{r['total_flops']:.3g}"]
               for r in rep["final_ppl"]])
    if "final_ppl" in images:
        doc.img(images["final_ppl"], "Final validation perplexity per size and arm: bars = mean, whiskers = "
                "interval, dots = seeds")
    if "loss_curves" in images:
        doc.img(images["loss_curves"], "Validation perplexity over stage-2 tokens, every seed of every arm")

    doc.h("Against scratch: improvement and convergence speedup")
    doc.table(["size · domain · stage-2 tokens", "arm", "arm ppl", "scratch ppl", "improvement %", "reads",
               "speedup", "reads "],
              [[cell_text(r["cell"]), r["arm"], fmt_summary(r["final_ppl"]), fmt_summary(r["scratch_final_ppl"]),
                fmt_summary(r["improvement_pct"], "{:+.2f}", "%"), verdict(r["improvement_pct"], 0.0),
                speedup_text(r["speedup"]), verdict(r["speedup"], 1.0)] for r in rep["vs_scratch"]])
    if not rep["vs_scratch"]:
        doc.p("No arm could be compared with scratch (see notes).")
    for key, caption in (("improvement_vs_n", "Improvement vs scratch (%) over N, mean and interval per size"),
                         ("speedup_vs_n", "Convergence speedup vs scratch over N (dashed: no speedup)")):
        if key in images:
            doc.img(images[key], caption)

    doc.h("Compute-matched: pre-pre-training vs simply training longer")
    if rep["compute_matched"]:
        doc.p("scratch_matched trains stage 2 for the same tokens plus the stage-1 FLOPs as extra language tokens. "
              "Improvement % here is the arm's final ppl vs scratch_matched's at (nearly) equal total FLOPs; "
              "flops ratio = matched total / arm total.")
        doc.table(["size · domain · stage-2 tokens", "arm", "arm ppl", "scratch_matched ppl", "improvement %",
                   "reads", "flops ratio"],
                  [[cell_text(r["cell"]), r["arm"], fmt_summary(r["arm_final_ppl"]),
                    fmt_summary(r["matched_final_ppl"]), fmt_summary(r["improvement_pct"], "{:+.2f}", "%"),
                    verdict(r["improvement_pct"], 0.0),
                    ", ".join(f"{v:.3f}" for v in r["flops_ratio"].values())] for r in rep["compute_matched"]])
    else:
        doc.p("Not measured: the sweep has no scratch_matched runs.")

    doc.h("Complexity band per domain")
    if rep["bands"]:
        doc.table(["domain", "size", "stage-1 tokens", "band", "improvement %"],
                  [[domain_text(b), b["size"], fmt_tokens(b["stage1_tokens"]), b["band"],
                    fmt_summary({"mean": b["mean"], "ci": b["ci"], "n": b["n_seeds"], "seeds": b["n_seeds"]},
                                "{:+.2f}", "%")] for b in rep["bands"]])
    if "bands" in images:
        doc.img(images["bands"], "Improvement vs scratch per NCA complexity band, per domain")
    if len({b["band"] for b in rep["bands"]}) < 2:
        doc.p("Fewer than two bands were run, so the band effect is not measured here.")

    doc.h("Scaling fits")
    sl = rep["scaling"]
    doc.p(f"N = {sl['n_definition']}; loss = final validation loss (nats/token). Fits: Huber loss (delta 1e-3) on "
          "log loss, multi-start; intervals from refits on seeds redrawn within each size "
          f"({rep['settings']['fit_resamples']} refits, {rep['settings']['level']:.0%}). Holdout: the largest size "
          "is left out, the rest fitted, the largest predicted.")
    fit_rows = []
    for f in sl["loss_vs_n"]:
        params = ("; ".join(
            f"{k} {v:.4g}" + (f" [{f['ci'][k][0]:.3g}, {f['ci'][k][1]:.3g}]" if f["ci"] else "")
            for k, v in f["fit"]["params"].items()) if f["fit"] else "not fitted")
        hold = (f"{f['holdout']['predicted']:.4g} predicted vs {f['holdout']['observed_mean']:.4g} observed at "
                f"N={fmt_count(f['holdout']['n'])} ({f['holdout']['error_pct']:+.2f}%)" if f["holdout"] else "-")
        fit_rows.append([domain_text(f), fmt_tokens(f["stage2_tokens"]), f["arm"], str(f["sizes"]),
                         f["form"] or "-", params, hold, "; ".join(f["notes"]) or "-"])
    doc.table(["domain", "stage-2 tokens", "arm", "sizes", "form", "parameters [interval]", "holdout", "notes"],
              fit_rows)
    if "loss_fits" in images:
        doc.img(images["loss_fits"], "Final loss vs N per arm: dots = seeds, line = fit, band = interval, "
                "x = holdout prediction of the largest size")
    nd_rows = [[domain_text(f), f["arm"], str(f["cells"]),
                "; ".join(f"{k} {v:.4g}" for k, v in f["fit"]["params"].items()) if f["fit"] else "not fitted",
                f"{f['holdout']['mean_abs_error_pct']:.2f}%" if f.get("holdout") else "-",
                "; ".join(f["notes"]) or "-"] for f in sl["loss_nd"]]
    doc.p("L(N, D) = E + A/N^alpha + B/D^beta with D = stage-2 tokens, over the sweep's final points:")
    doc.table(["domain", "arm", "(N, D) cells", "parameters", "holdout mean |error|", "notes"], nd_rows)
    trend_rows = []
    for key, unit in (("improvement_vs_n", "pp"), ("speedup_vs_n", "x")):
        for t in sl[key]:
            slope = "-" if t["slope_per_decade"] is None else f"{t['slope_per_decade']:+.3g} {unit} per 10x N"
            if t["ci"]:
                slope += f" [{t['ci'][0]:+.3g}, {t['ci'][1]:+.3g}]"
            trend_rows.append([key.replace("_vs_n", ""), domain_text(t), fmt_tokens(t["stage2_tokens"]), t["arm"],
                               str(t["sizes"]), slope, "; ".join(t["notes"]) or "-"])
    doc.p("Does the gain hold as models grow? Least-squares slope of the per-seed metric against log10 N:")
    doc.table(["metric", "domain", "stage-2 tokens", "arm", "sizes", "slope [interval]", "notes"], trend_rows)

    doc.h("Notes")
    doc.ul(rep["notes"] or ["none"])
    return doc


# ---- writing -----------------------------------------------------------------------------------------------
def _plots(sweep: Sweep, rep: dict, tmp: Path) -> dict[str, str]:
    colors = plots.arm_colors(r.arm_label for r in sweep.runs)
    scale = f"{rep['sweep']}: {len(rep['scale']['seeds'])} seed(s)"
    made = {}
    jobs = {
        "loss_curves": lambda p: plots.loss_curves(sweep, colors, p, f"Validation perplexity ({scale})"),
        "final_ppl": lambda p: plots.ppl_bars(rep["final_ppl"], colors, p, f"Final validation perplexity ({scale})"),
        "improvement_vs_n": lambda p: plots.metric_vs_n(rep["scaling"]["improvement_vs_n"], colors, p,
                                                        f"Improvement vs scratch ({scale})", "improvement (%)", 0.0),
        "speedup_vs_n": lambda p: plots.metric_vs_n(rep["scaling"]["speedup_vs_n"], colors, p,
                                                    f"Convergence speedup vs scratch ({scale})", "speedup (x)", 1.0),
        "loss_fits": lambda p: plots.loss_fits(rep["scaling"]["loss_vs_n"], colors, p, f"Loss vs N ({scale})"),
        "bands": lambda p: plots.band_effect(rep["bands"], p, f"Complexity band effect ({scale})"),
    }
    for name, draw in jobs.items():
        if draw(tmp / f"{name}.png"):
            made[name] = f"{name}.png"
    return made


def write_report(sweep_dir: str | Path, cfg: ReportConfig) -> tuple[Path, dict]:
    cfg.validate()
    sweep = load_sweep(sweep_dir)
    out = Path(cfg.out) if cfg.out else Path(sweep_dir) / "report"
    check_out(out)
    rep = compute(sweep, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:  # the whole report appears at once, replacing an earlier one
        tmp.mkdir()
        images = _plots(sweep, rep, tmp)
        rep["files"] = sorted([*images.values(), REPORT_JSON, REPORT_MD, REPORT_HTML])
        doc = document(rep, images)
        (tmp / REPORT_JSON).write_text(json.dumps(rep, indent=1) + "\n")
        (tmp / REPORT_MD).write_text(markdown(doc))
        (tmp / REPORT_HTML).write_text(html_page(doc, tmp))
    return out, rep
