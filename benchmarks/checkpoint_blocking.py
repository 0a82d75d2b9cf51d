"""How long a checkpoint save blocks the training loop, synchronous vs asynchronous (megatron,
checkpoint.asynchronous=false / true): runs `nca-scale train backend=megatron` on a model whose checkpoint takes seconds
to write here, both ways in interleaved rounds, and reports from metrics.jsonl, whose `checkpoint_time` is what
each step spent in the checkpointer, the loop's blocked time per save: the checkpointer's time from one periodic
save to the next (the save itself, the per-step check whether the background write is done, a wait for an
unfinished one). The first save (it starts megatron's writer machinery) and the final one (the run waits for it
by design) are left out. Also reported: the median step time between saves (the background writer shares the
CPU with training here) and whether both ways give bit-identical losses and checkpoint files. Prints JSON.

  python benchmarks/checkpoint_blocking.py                          # d_model 1024 x 4 layers (~67M parameters)
  python benchmarks/checkpoint_blocking.py --d-model 512 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from nca_scale.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "nca-scale"


def run(args, asynchronous: bool, out: Path) -> list[dict]:
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={out}", "backend=megatron",
           f"model.d_model={args.d_model}", f"model.n_layers={args.layers}", f"model.n_heads={args.d_model // 64}",
           "batch_size=2", "micro_batch=2", f"steps={args.steps}", f"checkpoint.every={args.every}",
           f"checkpoint.asynchronous={str(asynchronous).lower()}", "checkpoint.keep_last=2", "wandb=disabled", "progress=false",
           "eval_every=0"]
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS=str(args.threads))
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=env)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def blocked_per_save(rows: list[dict], every: int, steps: int) -> list[float]:
    """The checkpointer's seconds over each interval (s, s + every] of logged steps that starts at a periodic
    save s after the first: a save at step s is timed in the line of step s + 1."""
    time_at = {r["step"]: r["checkpoint_time"] for r in rows if "loss" in r}
    starts = range(2 * every, steps - every + 1, every)
    return [sum(time_at[s] for s in range(start + 1, start + every + 1)) for start in starts]


def files(out: Path, step: int) -> dict:
    """The manifest's files of a checkpoint, without DCP's .metadata (it holds the save's own random id)."""
    table = checkpoint.read_meta(checkpoint.step_dir(out, step))["files"]
    return {k: v for k, v in table.items() if not k.endswith(".metadata")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=13)
    ap.add_argument("--every", type=int, default=3, help="checkpoint.every")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training process")
    args = ap.parse_args()
    result: dict = {"model": {"d_model": args.d_model, "n_layers": args.layers}, "steps": args.steps,
                    "checkpoint_every": args.every, "rounds": args.rounds, "threads": args.threads,
                    "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                    "load_before": os.getloadavg()[0]}
    per: dict[str, dict[str, list[float]]] = {k: {"blocked": [], "step_time": []} for k in ("sync", "async")}
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            rows = {}
            for name in ("sync", "async"):
                out = Path(tmp) / f"{name}{r}"
                rows[name] = run(args, name == "async", out)
                per[name]["blocked"] += blocked_per_save(rows[name], args.every, args.steps)
                between = [m["step_time"] for m in rows[name] if "loss" in m and m["step"] > 2 * args.every]
                per[name]["step_time"].append(statistics.median(between))
            losses = {k: [m["loss"] for m in v if "loss" in m] for k, v in rows.items()}
            identical &= losses["sync"] == losses["async"]
            identical &= files(Path(tmp) / f"sync{r}", args.steps) == files(Path(tmp) / f"async{r}", args.steps)
            result["checkpoint_bytes"] = sum(v["size"] for v in files(Path(tmp) / f"sync{r}", args.steps).values())
    for name in ("sync", "async"):
        result[name] = {"blocked_s_per_save_median": statistics.median(per[name]["blocked"]),
                        "blocked_s_per_save": [round(x, 3) for x in per[name]["blocked"]],
                        "step_time_s_median": statistics.median(per[name]["step_time"])}
    result["blocked_ratio_async_to_sync"] = (result["async"]["blocked_s_per_save_median"]
                                             / result["sync"]["blocked_s_per_save_median"])
    result["losses_and_checkpoints_bit_identical"] = identical
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
