"""BIG-bench-Lite-style tasks (paper.md §4) read straight from the `bigbench` source archive, which is never
installed: `pip download --no-deps bigbench==1.0.0` gives bigbench-1.0.0.tar.gz (358 MB), and this module
reads `*/bigbench/benchmark_tasks/<task>/task.json` (and `<task>/<subtask>/task.json`) from it in one pass.

Per task: the examples are split with a seeded shuffle into validation (`val_fraction`) and train; tasks with
fewer than `min_train_examples` train examples are dropped (as the paper does); the first `shots` train
examples are the fixed shots; at most `max_examples` validation examples are scored. Prompts follow BIG-bench's
JSON-task format (task_prefix, example_input_prefix "\\nQ: ", choices appended as "\\n  choice: ...",
example_output_prefix "\\nA: "). Completions are cut at the first newline and scored by exact match after
lowercasing and stripping against any target (multiple choice: the highest-scoring choice). Per-task pass@k
with the unbiased estimator; multiple-choice tasks are also chance-normalised, max(0, (s - 1/n) / (1 - 1/n));
tasks are macro-averaged.
"""

from __future__ import annotations

import json
import random
import re
import tarfile
from pathlib import Path

from nca_scale.analysis.eval.passk import mean_pass_at_k, normalised, pass_at_k
from nca_scale.errors import UserError

# BIG-bench Lite (BBL24). The paper uses "the 18 English BBL tasks"; which 18 is not in the release notes we
# could read, so the default is the 20 English ones (BBL24 minus the four non-English tasks below).
BBL24 = (
    "auto_debugging", "bbq_lite_json", "code_line_description", "conceptual_combinations", "conlang_translation",
    "emoji_movie", "formal_fallacies_syllogisms_negation", "hindu_knowledge", "known_unknowns",
    "language_identification", "linguistics_puzzles", "logic_grid_puzzle", "logical_deduction",
    "misconceptions_russian", "novel_concepts", "operators", "parsinlu_reading_comprehension",
    "play_dialog_same_or_different", "repeat_copy_logic", "strange_stories", "strategyqa",
    "symbol_interpretation", "vitaminc_fact_verification", "winowhy",
)
NON_ENGLISH = ("conlang_translation", "language_identification", "misconceptions_russian",
               "parsinlu_reading_comprehension")
BBL_ENGLISH = tuple(t for t in BBL24 if t not in NON_ENGLISH)
STOP = ("\n",)
_MEMBER = re.compile(r"(?:^|/)benchmark_tasks/([^/]+)/(?:([^/]+)/)?task\.json$")


def read_tasks(archive: str | Path, names) -> dict[str, list[dict]]:
    """{task: [task.json dicts (the task's own, or one per subtask)]} for the named tasks, from the tarball
    (or from an unpacked directory holding benchmark_tasks/)."""
    path = Path(archive)
    wanted, found = set(names), {}
    if path.is_dir():
        for f in sorted(path.rglob("task.json")):
            m = _MEMBER.search(f.as_posix())
            if m and m.group(1) in wanted:
                found.setdefault(m.group(1), []).append(json.loads(f.read_text(encoding="utf-8")))
    elif path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    m = _MEMBER.search(member.name)
                    if m and m.group(1) in wanted and member.isfile():
                        found.setdefault(m.group(1), []).append(json.load(tar.extractfile(member)))
        except tarfile.TarError as e:
            raise UserError(f"bigbench={path} is not a readable tar archive: {e}") from None
    else:
        raise UserError(f"bigbench={path} does not exist; `pip download --no-deps bigbench==1.0.0 -d DIR` gives "
                        "DIR/bigbench-1.0.0.tar.gz")
    missing = sorted(wanted - set(found))
    if missing:
        raise UserError(f"{path}: no task.json for {', '.join(missing)} (task.py-only tasks cannot be read)")
    return found


def examples_of(specs: list[dict]) -> list[dict]:
    """Flat examples of a task (all its subtasks), each with its prompt pieces and targets."""
    out = []
    for spec in specs:
        fmt = {
            "task_prefix": spec.get("task_prefix", ""),
            "input_prefix": spec.get("example_input_prefix", "\nQ: "),
            "output_prefix": spec.get("example_output_prefix", "\nA: "),
            "choice_prefix": spec.get("choice_prefix", "\n  choice: "),
            "append_choices": spec.get("append_choices_to_input", True),
            "separator": spec.get("few_shot_example_separator", "\n"),
        }
        for ex in spec.get("examples", []):
            if "target_scores" in ex:
                scores = ex["target_scores"]
                best = max(scores.values())
                targets = [c for c, s in scores.items() if s == best]
                choices = list(scores)
            else:
                t = ex.get("target", "")
                targets, choices = ([str(x) for x in t] if isinstance(t, list) else [str(t)]), None
            out.append({"input": str(ex["input"]), "targets": targets, "choices": choices, "fmt": fmt})
    return out


def query(ex: dict) -> str:
    f = ex["fmt"]
    text = f["input_prefix"] + ex["input"]
    if ex["choices"] and f["append_choices"]:
        text += "".join(f["choice_prefix"] + c for c in ex["choices"])
    return text + f["output_prefix"]


def prompt(ex: dict, shots: list[dict]) -> str:
    f = ex["fmt"]
    parts = [query(s) + s["targets"][0] for s in shots] + [query(ex)]
    return (f["task_prefix"] + f["separator"].join(parts)).lstrip("\n")


def split(task: str, examples: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(examples)))
    random.Random(f"{seed}:{task}").shuffle(order)
    n_val = max(1, round(val_fraction * len(examples)))
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


def build(archive, tasks, *, shots: int, max_examples: int, min_train_examples: int, val_fraction: float,
          seed: int) -> tuple[dict[str, dict], dict[str, str]]:
    """({task: {"prompts", "examples", "n_choices"}}, {dropped task: reason})."""
    specs = read_tasks(archive, tasks)
    kept, dropped = {}, {}
    for task in tasks:
        exs = examples_of(specs[task])
        train, val = split(task, exs, val_fraction, seed)
        if len(train) < max(min_train_examples, shots):
            dropped[task] = f"{len(train)} train examples < {max(min_train_examples, shots)}"
            continue
        val = val[:max_examples]
        # shots from the same subtask format as the query where possible
        kept[task] = {
            "examples": val,
            "prompts": [prompt(ex, [s for s in train if s["fmt"] is ex["fmt"]][:shots] or train[:shots]) for ex in val],
            "n_choices": (sum(len(e["choices"]) for e in val) / len(val)) if all(e["choices"] for e in val) else None,
        }
    return kept, dropped


def correct(completion: str, targets: list[str]) -> bool:
    answer = completion.split("\n")[0].strip().lower()
    return any(answer == t.strip().lower() for t in targets)


def score(tasks: dict[str, dict], samples: dict[str, list[list[dict]]], ks) -> tuple[dict, dict]:
    per_task, summary = {}, {}
    for task, data in tasks.items():
        counts = [(len(ss), sum(correct(s["text"], ex["targets"]) for s in ss))
                  for ex, ss in zip(data["examples"], samples[task])]
        raw = mean_pass_at_k(counts, ks)
        entry = {**raw, "examples": len(counts), "multiple_choice": data["n_choices"] is not None}
        if data["n_choices"]:
            entry["n_choices"] = data["n_choices"]
            entry |= {f"normalised_{k}": normalised(v, data["n_choices"]) for k, v in raw.items()}
        else:
            entry |= {f"normalised_{k}": v for k, v in raw.items()}
        per_task[task] = entry
    keys = {k for e in per_task.values() for k in e if k.startswith(("pass@", "normalised_pass@"))}
    for k in sorted(keys):
        vals = [e[k] for e in per_task.values() if k in e]
        summary[k] = sum(vals) / len(vals)
    summary["tasks"] = len(per_task)
    return summary, per_task


__all__ = ["BBL24", "BBL_ENGLISH", "build", "pass_at_k", "read_tasks", "score"]
