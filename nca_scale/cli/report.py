"""`nca-scale report SWEEP_DIR`: the sweep's metrics, intervals, compute-matched comparison and scaling fits."""

from __future__ import annotations

from nca_scale import config
from nca_scale.errors import UserError


def main(args: list[str]) -> int:
    """nca-scale report SWEEP_DIR [out=SWEEP_DIR/report] [level=0.95] [resamples=10000] [fit_resamples=200] [seed=0]

    Reads SWEEP_DIR/results.jsonl (one record per finished run, docs/sweeps.md) and writes into out (complete or
    not at all): report.md, report.html (self-contained), report.json (the same numbers) and PNG plots: loss
    curves, final perplexity, improvement and speedup vs scratch over N, loss-vs-N fits, complexity bands.
    Definitions and caveats: docs/analysis.md.
    """
    from nca_scale.analysis.report import ReportConfig, write_report

    positional, overrides = config.split_overrides(args)
    if len(positional) != 1:
        raise UserError("expected exactly one SWEEP_DIR, e.g. `nca-scale report runs/sweeps/demo`")
    cfg = config.load(ReportConfig, None, overrides)
    out, rep = write_report(positional[0], cfg)
    print(f"wrote {len(rep.files)} files to {out} ({rep.scale['stage2_runs']} stage-2 runs, "
          f"{len(rep.notes)} notes): {out / 'report.md'}")
    return 0
