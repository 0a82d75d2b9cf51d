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
from nca_scale.analysis.claims import claims
from nca_scale.analysis.report_doc import html_page, markdown
from nca_scale.analysis.report_text import Report, Scaling, document
from nca_scale.analysis.sweep import plots
from nca_scale.analysis.sweep.metrics import (
    Bootstrap,
    compute_matched,
    final_ppl_table,
    vs_scratch,
)
from nca_scale.analysis.sweep.runs import Sweep, load_sweep
from nca_scale.analysis.sweep.scaling import FitSettings, loss_fits, metric_trends, nd_fits
from nca_scale.analysis.transfer import transfer
from nca_scale.errors import UserError
from nca_scale.files import replacing

REPORT_JSON, REPORT_MD, REPORT_HTML = "report.json", "report.md", "report.html"


@dataclass(frozen=True)
class ReportConfig:
    out: str = ""  # output directory; default SWEEP_DIR/report
    level: float = 0.95  # confidence level of every interval
    resamples: int = 10_000  # bootstrap resamples of means over seeds
    fit_resamples: int = 200  # bootstrap refits per scaling fit
    seed: int = 0  # numpy seed of every bootstrap
    power: float = 0.8  # the power at which the claims table states the smallest detectable effect

    def validate(self) -> None:
        if not 0.5 <= self.level < 1.0:
            raise UserError(f"level={self.level} must be in [0.5, 1), e.g. level=0.95")
        if self.resamples < 100 or self.fit_resamples < 10:
            raise UserError("resamples must be >= 100 and fit_resamples >= 10")
        if not 0.5 <= self.power < 1.0:
            raise UserError(f"power={self.power} must be in [0.5, 1), e.g. power=0.8")


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file; pass a directory for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_JSON).is_file():
        raise UserError(f"out={out} is a non-empty directory that is not an earlier report; pass a new or empty one")


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


def compute(sweep: Sweep, cfg: ReportConfig) -> Report:
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
    return Report(
        sweep=sweep.name, directory=str(sweep.directory), nca_scale_version=nca_scale.__version__,
        generated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        settings={**asdict(cfg), "bootstrap": boot.describe()},
        scale=scale_summary(sweep),
        final_ppl=final_ppl_table(sweep, boot),
        claims=claims(sweep, cfg.level, cfg.power),
        transfer=transfer(sweep, level=cfg.level, resamples=cfg.fit_resamples, seed=cfg.seed),
        vs_scratch=rows,
        compute_matched=matched,
        bands=bands,
        scaling=Scaling(
            loss_vs_n=loss_fits(sweep, boot, fset),
            loss_nd=nd_fits(sweep, boot, fset),
            improvement_vs_n=metric_trends(rows, "improvement_pct", boot, fset),
            speedup_vs_n=metric_trends(rows, "speedup", boot, fset),
        ),
        notes=notes,
    )


# ---- writing -----------------------------------------------------------------------------------------------
def _plots(sweep: Sweep, rep: Report, tmp: Path) -> dict[str, str]:
    colors = plots.arm_colors(r.arm_label for r in sweep.runs)
    scale = f"{rep.sweep}: {len(rep.scale['seeds'])} seed(s)"
    made = {}
    jobs = {
        "loss_curves": lambda p: plots.loss_curves(sweep, colors, p, f"Validation perplexity ({scale})"),
        "final_ppl": lambda p: plots.ppl_bars(rep.final_ppl, colors, p, f"Final validation perplexity ({scale})"),
        "improvement_vs_n": lambda p: plots.metric_vs_n(rep.scaling.improvement_vs_n, colors, p,
                                                        f"Improvement vs scratch ({scale})", "improvement (%)", 0.0),
        "speedup_vs_n": lambda p: plots.metric_vs_n(rep.scaling.speedup_vs_n, colors, p,
                                                    f"Convergence speedup vs scratch ({scale})", "speedup (x)", 1.0),
        "loss_fits": lambda p: plots.loss_fits(rep.scaling.loss_vs_n, colors, p, f"Loss vs N ({scale})"),
        "bands": lambda p: plots.band_effect(rep.bands, p, f"Complexity band effect ({scale})"),
        "transfer": lambda p: plots.transfer(rep.transfer, p, f"Effective data transferred ({scale})"),
        "claims": lambda p: plots.claims(rep.claims, rep.scale["sizes"], p,
                                         f"The paper's claims per size, mean and interval over seeds ({scale})"),
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
        rep.files = sorted([*images.values(), REPORT_JSON, REPORT_MD, REPORT_HTML])
        doc = document(rep, images)
        (tmp / REPORT_JSON).write_text(json.dumps(rep.to_json(), indent=1) + "\n")
        (tmp / REPORT_MD).write_text(markdown(doc))
        (tmp / REPORT_HTML).write_text(html_page(doc, tmp))
    return out, rep
