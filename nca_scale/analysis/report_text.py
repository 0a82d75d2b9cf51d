"""A sweep report's numbers (`Report`: report.json is its JSON) and their text: a Doc that Markdown and HTML
render, one function per section, every number next to its seeds and interval."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nca_scale.analysis.report_doc import Doc
from nca_scale.analysis.sweep.metrics import fmt_tokens
from nca_scale.analysis.sweep.runs import fmt_count

PAPER_SCALE = "the paper: 1.6B parameters, 164M NCA tokens, 4.2B-12.6B stage-2 tokens"


@dataclass(kw_only=True)
class Scaling:
    """Scaling fits (sweep/scaling.py); each list holds one JSON-ready dict per fit or trend."""

    n_definition: str = "non-embedding parameters"
    loss_vs_n: list[dict]
    loss_nd: list[dict]
    improvement_vs_n: list[dict]
    speedup_vs_n: list[dict]


@dataclass
class Report:
    """A sweep report's numbers: report.json is `to_json()` of this, report.md and report.html render it.
    The sections' rows are JSON-ready dicts from sweep/metrics.py (their keys are documented in docs/analysis.md)."""

    sweep: str
    directory: str
    nca_scale_version: str
    generated: str
    settings: dict
    scale: dict
    final_ppl: list[dict]
    claims: list[dict]  # claims.claims: the paper's claims as paired comparisons, per size and over all sizes
    transfer: list[dict]  # transfer.transfer: effective data transferred and the fitted transfer law, per arm
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
    for section in (_claims, _overview, _final_ppl, _vs_scratch, _compute_matched, _bands, _transfer, _scaling):
        section(doc, rep, images)
    doc.h("Notes")
    doc.ul(rep.notes or ["none"])
    return doc


def _pct(v: float | None, ci: list | None = None) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}%" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def claim_row(r: dict) -> list[str]:
    if r.get("comparison") is None:
        return [r["claim"], r["statement"], "-", "-", "-", "-", "-", r["verdict"]]
    det = f"±{abs(r['detectable_pct']):.2f}%" if r["detectable_pct"] is not None else "-"
    return [r["claim"], r["statement"], f"{r['comparison']} · {domain_text(r)}", r["size"], str(r["n_seeds"]),
            _pct(r["effect_pct"], r["ci_pct"]), det, r["verdict"]]


def _claims(doc: Doc, rep: Report, images: dict[str, str]) -> None:
    """The paper's headline claims, at the top: pooled over sizes, then per size (claims.py)."""
    from nca_scale.analysis.claims import summary

    level = rep.settings["level"]
    doc.h("The paper's claims, as measured here")
    doc.p(f"Effect = % lower final perplexity of the first arm named than the second (positive = the paper's "
          f"direction), mean over seeds of each seed's mean over the row's cells (stage-2 budgets, and sizes for "
          f"'all sizes'); [{level:.0%} Student-t interval over seeds]. Verdict: 'supported' when the interval is "
          f"above 0, 'contradicted' when below, otherwise 'undecided at this power'; 'detectable' is the effect a "
          f"paired t-test at this level finds with {rep.settings['power']:.0%} power given the measured seed sd. "
          "Claim m is this project's compute-matched question, not the paper's.")
    headers = ["claim", "statement", "comparison · domain", "sizes", "seeds", "effect [interval]", "detectable",
               "verdict"]
    doc.table(headers, [claim_row(r) for r in summary(rep.claims)])
    if "claims" in images:
        doc.img(images["claims"], "Each claim's effect per size: mean over seeds, whiskers = interval "
                "(positive = the paper's direction)")
    per_size = [r for r in rep.claims if r["size"] != "all sizes"]
    if per_size:
        doc.p("Per size (over that size's stage-2 budgets):")
        doc.table(headers, [claim_row(r) for r in per_size])


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
    nd_rows = [[domain_text(f), f["arm"], str(f["cells"]), _nd_params(f), _allocation(f),
                f"{f['holdout']['mean_abs_error_pct']:.2f}%" if f.get("holdout") else "-",
                "; ".join(f["notes"]) or "-"] for f in sl.loss_nd]
    doc.p("L(N, D) = E + A/N^alpha + B/D^beta with D = the stage-2 tokens each run trained, over the sweep's final "
          "points; [intervals]: seeds redrawn within each size, estimate -/+ t sqrt(k/(k-1)) bootstrap sd "
          "(calibrated: tests/analysis/test_calibration.py). Allocation: Chinchilla's compute-optimal split of "
          "C = 6ND at the largest C of the fitted runs (a = beta/(alpha+beta): N_opt ~ C^a, D_opt ~ C^b).")
    doc.table(["domain", "arm", "(N, D) cells", "parameters [interval]", "compute-optimal at C [interval]",
               "holdout mean |error|", "notes"], nd_rows)
    trend_rows = [_trend_row(key, unit, t) for key, unit in (("improvement_vs_n", "pp"), ("speedup_vs_n", "x"))
                  for t in getattr(sl, key)]
    doc.p("Does the gain hold as models grow? Least-squares slope of the per-seed metric against log10 N:")
    doc.table(["metric", "domain", "stage-2 tokens", "arm", "sizes", "slope [interval]", "notes"], trend_rows)


def _ci(f: dict, key: str) -> str:
    ci = (f.get("ci") or {}).get(key)
    return f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""


def _nd_params(f: dict) -> str:
    if not f["fit"]:
        return "not fitted"
    return "; ".join(f"{k} {v:.4g}{_ci(f, k)}" for k, v in f["fit"]["params"].items())


def _allocation(f: dict) -> str:
    a = f.get("allocation")
    if not a:
        return "-"
    return (f"C={f['compute']:.3g}: a {a['a']:.3g}{_ci(f, 'allocation.a')}; N_opt {fmt_count(a['N_opt'])}"
            f"{_ci(f, 'allocation.N_opt')}; D_opt {fmt_count(a['D_opt'])}{_ci(f, 'allocation.D_opt')}; "
            f"tokens/param {a['tokens_per_param']:.3g}{_ci(f, 'allocation.tokens_per_param')}")


def _transfer(doc: Doc, rep: Report, images: dict[str, str]) -> None:
    """Effective data transferred (Hernandez et al. 2021), per pre-pre-trained arm (transfer.py)."""
    doc.h("Transfer scaling: effective data transferred")
    if not rep.transfer:
        doc.p("Not measured: no pre-pre-trained arm has a scratch arm in its domain.")
        return
    doc.p("D_E = the stage-2 tokens scratch of the same size needs to reach the arm's final loss; D_T = D_E - D_F "
          "(D_F = the arm's stage-2 tokens); multiplier = D_E / D_F. Fit: log D_T = log k + alpha log D_F + "
          "beta log N over the runs with 0 < D_T < inf; beta > 0 with its interval above 0 = 'pays off more as "
          "models grow', below 0 = less. Intervals: seeds redrawn within each size for scratch and arm alike, "
          "scratch law and D_E recomputed, estimate -/+ t sqrt(k/(k-1)) bootstrap sd.")
    rows = []
    for t in rep.transfer:
        f, ci = t["fit"], t["ci"] or {}
        law = "; ".join(f"{k} {v:.3g}" + (f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if k in ci else "")
                        for k, v in f.items()) if f else "not fitted"
        grows = "-"
        if "beta" in ci:
            grows = ("grows with N" if ci["beta"][0] > 0 else "shrinks with N" if ci["beta"][1] < 0
                     else "undecided at this power")
        mult = [p["multiplier"] for p in t["points"] if p["multiplier"] is not None]
        pos = t["positive"]
        rows.append([domain_text(t), t["arm"], t["method"],
                     f"{pos['finite_positive']} of {pos['runs']} ({pos['non_positive']} <= 0, {pos['infinite']} "
                     "beyond scratch's reach)",
                     f"{min(mult):.3g}-{max(mult):.3g}" if mult else "-", law, grows, "; ".join(t["notes"]) or "-"])
    doc.table(["domain", "arm", "D_E from", "runs with 0 < D_T < inf", "multiplier D_E/D_F (range)",
               "D_T = k D_F^alpha N^beta [interval]", "transfer vs N", "notes"], rows)
    per = []
    for t in rep.transfer:
        cells: dict = {}
        for p in t["points"]:
            cells.setdefault((p["n"], p["size"], p["d_f"]), []).append(p)
        for (_, size, d_f), ps in sorted(cells.items()):
            dts = [p["d_t"] for p in ps if p["d_t"] is not None]
            mult = [p["multiplier"] for p in ps if p["multiplier"] is not None]
            cens = sorted({p.get("censored") or p["interpolation_note"] for p in ps
                           if p["d_t"] is None and (p.get("censored") or p["interpolation_note"])})
            per.append([t["arm"], size, fmt_tokens(int(d_f)), ", ".join(f"{v:.3g}" for v in dts) or "-",
                        ", ".join(f"{v:.3g}" for v in mult) or "-", "; ".join(cens) or "-"])
    doc.p("Per run (seeds in order):")
    doc.table(["arm", "size", "D_F", "D_T per seed", "D_E/D_F per seed", "censored"], per)
    if "transfer" in images:
        doc.img(images["transfer"], "Effective data transferred D_T vs fine-tuning tokens D_F per size (dots = "
                "seeds with 0 < D_T < inf, lines = the fitted law)")


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
