"""A sweep's analysis (docs/analysis.md): its finished runs and what the report computes and draws from them.

    runs.py     SWEEP_DIR/results.jsonl (written by nca_scale/launch/sweep/results.py) read into `Run`s of a `Sweep`
    metrics.py  the paper's metrics per seed and as means with bootstrap intervals
    scaling.py  the fits of final loss vs N, L(N, D), gain and speedup vs N
    plots.py    the report's PNG figures
"""
