"""nca-scale eval CKPT [configs/eval/TASK.yaml] task=ppl|humaneval|gsm8k|bbl [key=value ...]

Evaluate a checkpoint (any backend and layout, a run directory = its latest checkpoint, or a Hugging Face
Llama directory). Tasks and their keys (docs/evaluation.md):
  ppl        data=nca|SHARDS|FILE.jsonl|FILE.txt|DIR|FILE.bin [seq_len=N max_sequences=N]
  humaneval  [n=64 temperature=0.4 top_p=0.95 max_new_tokens=500 timeout=10 memory_mb=1024 problems=FILE]
  gsm8k      [gsm8k=DIR (default ../shared/data/gsm8k) n=32 temperature=0.6 max_new_tokens=250 shots=3]
  bbl        bigbench=bigbench-1.0.0.tar.gz [tasks=[...] shots=2 max_examples=350 n=64 max_new_tokens=35]
Common: tokenizer=PATH.model device=auto|cpu|cuda dtype=fp32|bf16 batch_size=N limit=N seed=N ks=[1,2,4] out=FILE.
Sampling defaults are the paper's. Writes the result JSON (default RUN/eval/TASK-stepN.json) and appends a
summary line to RUN/eval/results.jsonl.
"""

from __future__ import annotations

from nca_scale import config
from nca_scale.errors import UserError


def main(args: list[str]) -> int:
    from nca_scale.analysis.eval.runner import EvalConfig, run

    positional, overrides = config.split_overrides(args)
    yamls = [p for p in positional if p.endswith((".yaml", ".yml"))]
    rest = [p for p in positional if p not in yamls]
    if len(rest) != 1 or len(yamls) > 1:
        raise UserError("usage: nca-scale eval CKPT [CONFIG.yaml] task=ppl|humaneval|gsm8k|bbl [key=value ...]")
    cfg = config.load(EvalConfig, yamls[0] if yamls else None, overrides)
    run(rest[0], cfg)
    return 0


main.__doc__ = __doc__


def report(args: list[str]) -> int:
    """nca-scale eval report DIR [DIR ...] [out=FILE.json]

    Every evaluation recorded under the directories (RUN/eval/results.jsonl of each run of a sweep), latest per
    run, task, step and data, as a Markdown table on stdout and, with out=, as JSON rows."""
    import json

    from nca_scale.analysis.eval.report import collect, markdown

    positional, overrides = config.split_overrides(args)
    unknown = [k for k, _ in overrides if k != "out"]
    if not positional or unknown:
        raise UserError("usage: nca-scale eval report DIR [DIR ...] [out=FILE.json]")
    rows = collect(positional)
    print(markdown(rows))
    for _, out in overrides:
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
