"""nca-scale sft-data gsm8k|bbl out=FILE.jsonl [key=value ...]

Write the paper's fine-tuning documents (before GSM8K / BIG-bench-Lite evaluation) as JSONL for the text
pipeline: corpus build -> corpus tokenize -> `nca-scale train configs/train/ft-gsm8k.yaml` (or ft-bbl.yaml).
  gsm8k: gsm8k=DIR (default ../shared/data/gsm8k) shots=5 epochs=10 seed=0
  bbl:   bigbench=bigbench-1.0.0.tar.gz tasks=[...] (default: the English BBL tasks) max_per_task=350
         min_train_examples=100 seed=0 (the train side of the split `nca-scale eval task=bbl` uses)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nca_scale import config
from nca_scale.errors import UserError


@dataclass(frozen=True)
class SFTJob:
    out: str | None = None  # the JSONL file to write (required)
    gsm8k: str | None = None  # gsm8k: directory with train.jsonl; default ../shared/data/gsm8k
    shots: int = 5  # gsm8k: worked examples before each problem
    epochs: int = 10  # gsm8k: passes over the training problems
    seed: int = 0  # seed of the shot choice and order
    bigbench: str | None = None  # bbl: bigbench-1.0.0.tar.gz (or an unpacked tree)
    tasks: list[str] = field(default_factory=list)  # bbl: tasks; default the English BBL tasks
    max_per_task: int = 350  # bbl: most examples per task
    min_train_examples: int = 100  # bbl: tasks with fewer training examples are skipped
    val_fraction: float = 0.2  # bbl: share held out for evaluation (as `nca-scale eval`)


def main(args: list[str]) -> int:
    from nca_scale.analysis.eval import bigbench, finetune

    positional, overrides = config.split_overrides(args)
    job = config.load(SFTJob, None, overrides)
    if positional not in (["gsm8k"], ["bbl"]) or not job.out:
        raise UserError("usage: nca-scale sft-data gsm8k|bbl out=FILE.jsonl [key=value ...]")
    if positional == ["gsm8k"]:
        docs, dropped = finetune.gsm8k_documents(job.gsm8k, shots=job.shots, epochs=job.epochs, seed=job.seed), {}
    else:
        if not job.bigbench:
            raise UserError("bbl needs bigbench=PATH/bigbench-1.0.0.tar.gz (pip download --no-deps bigbench==1.0.0)")
        docs, dropped = finetune.bbl_documents(job.bigbench, list(job.tasks) or list(bigbench.BBL_ENGLISH),
                                               max_per_task=job.max_per_task, min_train_examples=job.min_train_examples,
                                               val_fraction=job.val_fraction, seed=job.seed)
    out = finetune.write_jsonl(docs, job.out)
    print(f"[nca-scale] {len(docs)} documents -> {out}" + (f"; dropped {dropped}" if dropped else ""))
    return 0


main.__doc__ = __doc__
