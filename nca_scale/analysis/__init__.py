"""Figures and summaries: what the data engine produces (nca_figures), evaluation (eval/), and sweep reports:
the paper's metrics, scaling fits and `nca-scale report` (sweep_*.py, fits.py, report.py; docs/analysis.md)."""
