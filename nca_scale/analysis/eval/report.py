"""The evaluation part of a sweep report: every RUN/eval/results.jsonl under the given directories (a run, a
sweep of runs, any tree), latest line per (run, task, step), as rows and as a Markdown table."""

from __future__ import annotations

import json
from pathlib import Path

from nca_scale.errors import UserError

HEADLINE = {"ppl": ("ppl", "loss"), "humaneval": ("pass@1", "pass@10"), "gsm8k": ("pass@1", "pass@8"),
            "bbl": ("normalised_pass@2", "pass@1")}


def collect(dirs: list[str]) -> list[dict]:
    files = []
    for d in dirs:
        p = Path(d)
        if not p.is_dir():
            raise UserError(f"{p} is not a directory")
        files += sorted(p.rglob("eval/results.jsonl"))
    if not files:
        raise UserError(f"no eval/results.jsonl under {', '.join(dirs)}; run `nca-scale eval` on their checkpoints")
    latest: dict[tuple, dict] = {}
    for f in files:
        run = str(f.parent.parent)
        for line in f.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                key = (run, rec["task"], rec.get("step"), json.dumps(rec.get("data"), sort_keys=True))
                latest[key] = {"run": run, **rec}
    return sorted(latest.values(), key=lambda r: (r["run"], r["task"], r.get("step") or -1))


def markdown(rows: list[dict]) -> str:
    lines = ["| run | task | step | tokens | metrics |", "|---|---|---|---|---|"]
    for r in rows:
        keys = [k for k in HEADLINE.get(r["task"], ()) if k in r["metrics"]] or list(r["metrics"])[:2]
        metrics = ", ".join(f"{k} {r['metrics'][k]:.4g}" for k in keys)
        lines.append(f"| {r['run']} | {r['task']} | {r.get('step')} | {r.get('tokens')} | {metrics} |")
    return "\n".join(lines)
