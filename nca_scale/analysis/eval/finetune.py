"""Fine-tuning documents for the paper's instruction step before GSM8K and BIG-bench-Lite (paper.md §4), as
JSONL ({"text", "source"}) for the text pipeline: `nca-scale corpus build` (files: [this JSONL]) ->
`nca-scale corpus tokenize` -> text shards -> `nca-scale train configs/train/ft-{gsm8k,bbl}.yaml`.

- GSM8K: every train problem once per epoch, each preceded by `shots` (5) random other train problems, in the
  evaluation format (nca_scale.analysis.eval.gsm8k); epochs are written out, each with fresh shots.
- BBL: per task, the train side of the same seeded split the evaluation uses (validation never appears), at most
  `max_per_task` (350) examples, each with 0-3 random shots of its task; tasks under `min_train_examples` dropped.

The packer appends EOS after each document, so a fine-tuned model learns to stop after its answer. Not yet as
in the release: the loss covers the whole packed row (the release masks question tokens and does not pack),
because the training engine's data sources have one loss mask for all rows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from nca_scale.analysis.eval import bigbench, gsm8k


def gsm8k_documents(directory: str | None, *, shots: int = 5, epochs: int = 10, seed: int = 0) -> list[dict]:
    train = gsm8k.read("train", directory)
    rng = random.Random(seed)
    docs = []
    for epoch in range(epochs):
        for i, p in enumerate(train):
            chosen = rng.sample(range(len(train) - 1), shots)
            chosen = [j + (j >= i) for j in chosen]  # never the target itself
            parts = [gsm8k.format_example(train[j]["question"], train[j]["answer"]) for j in chosen]
            docs.append({"text": "\n\n".join([*parts, gsm8k.format_example(p["question"], p["answer"])]),
                         "source": f"gsm8k-train/epoch{epoch}"})
    return docs


def bbl_documents(archive: str, tasks, *, max_per_task: int = 350, min_train_examples: int = 100,
                  val_fraction: float = 0.2, seed: int = 0, max_shots: int = 3) -> tuple[list[dict], dict]:
    specs = bigbench.read_tasks(archive, tasks)
    rng = random.Random(seed)
    docs, dropped = [], {}
    for task in tasks:
        train, _ = bigbench.split(task, bigbench.examples_of(specs[task]), val_fraction, seed)
        if len(train) < min_train_examples:
            dropped[task] = f"{len(train)} train examples < {min_train_examples}"
            continue
        for k, ex in enumerate(train[:max_per_task]):
            pool = [s for j, s in enumerate(train) if j != k and s["fmt"] is ex["fmt"]]
            shots = rng.sample(pool, min(len(pool), rng.randint(0, max_shots)))
            docs.append({"text": bigbench.prompt(ex, shots) + ex["targets"][0], "source": f"bbl-train/{task}"})
    rng.shuffle(docs)
    return docs, dropped


def write_jsonl(docs: list[dict], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return out
