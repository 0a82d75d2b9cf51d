"""GSM8K (paper.md §4): test problems with 3 in-context shots drawn from the test set (never the problem
itself), n samples each, the answer = the text after the last "Final Answer:" (else the last whitespace
token), checked with math_verify against the number after "####"; unbiased pass@k.

Format (the release's fine-tuning format, so fine-tuned models see at evaluation what they were trained on):
    Question:\\n{question}\\nAnswer:\\n{chain of thought, calculator annotations <<...>> removed}\\nFinal Answer: {x}
Shots are separated by a blank line; the prompt ends with "Answer:\\n". Generation stops at EOS or at
"\\nQuestion:" (a model that does not emit EOS goes on to invent the next problem).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import nca_scale
from nca_scale.analysis.eval.passk import mean_pass_at_k
from nca_scale.errors import UserError

STOP = ("\nQuestion:",)
_CALC = re.compile(r"<<[^>]*>>")


def default_dir() -> Path:
    """../shared/data/gsm8k beside the repository (as in CI), else relative to the working directory."""
    repo = Path(nca_scale.__file__).resolve().parents[1]
    for base in (repo.parent / "shared" / "data" / "gsm8k", Path("../shared/data/gsm8k")):
        if (base / "test.jsonl").is_file():
            return base
    raise UserError("GSM8K not found at ../shared/data/gsm8k; pass gsm8k=DIR (with test.jsonl and train.jsonl)")


def read(split: str, directory: str | None = None) -> list[dict]:
    d = Path(directory) if directory else default_dir()
    f = d / f"{split}.jsonl"
    if not f.is_file():
        raise UserError(f"{f} does not exist (expected GSM8K's {split}.jsonl)")
    return [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_answer(answer: str) -> tuple[str, str]:
    """(chain of thought without calculator annotations, final answer) of a GSM8K answer field."""
    cot, _, final = answer.rpartition("####")
    return _CALC.sub("", cot).strip(), final.strip().replace(",", "")


def format_example(question: str, answer: str | None = None) -> str:
    text = f"Question:\n{question.strip()}\nAnswer:\n"
    if answer is None:
        return text
    cot, final = split_answer(answer)
    return text + f"{cot}\nFinal Answer: {final}"


def prompts(problems: list[dict], shots: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(problems):
        pool = [j for j in range(len(problems)) if j != i]
        chosen = rng.sample(pool, min(shots, len(pool)))
        parts = [format_example(problems[j]["question"], problems[j]["answer"]) for j in chosen]
        out.append("\n\n".join([*parts, format_example(p["question"])]))
    return out


def extract(completion: str) -> str:
    text = completion.strip()
    if "Final Answer:" in text:
        text = text.rpartition("Final Answer:")[2].strip()
        text = text.split("\n")[0].strip()
    tokens = text.split()
    return tokens[-1].rstrip(".").replace(",", "") if tokens else ""


def is_correct(pred: str, gold: str) -> bool:
    if not pred:
        return False
    try:
        from math_verify import parse, verify

        return bool(verify(parse(gold), parse(pred)))
    except ImportError:  # plain numeric comparison without math_verify
        pass
    try:
        return abs(float(pred.lstrip("$")) - float(gold)) < 1e-6
    except ValueError:
        return pred == gold


def score(problems: list[dict], samples: list[list[dict]], ks) -> tuple[dict, list[dict]]:
    records, counts = [], []
    for p, ss in zip(problems, samples):
        gold = split_answer(p["answer"])[1]
        preds = [extract(s["text"]) for s in ss]
        ok = [is_correct(x, gold) for x in preds]
        counts.append((len(ok), sum(ok)))
        records.append({"question": p["question"], "gold": gold, "predictions": preds, "correct": ok,
                        "completions": [s["text"] for s in ss]})
    return {**mean_pass_at_k(counts, ks), "problems": len(counts)}, records
