"""How long a training step waits for its batch, with and without prefetching: runs `nca-scale train` on a
config with prefetch=false and prefetch=true, in interleaved rounds, and reports from metrics.jsonl the median
over the steps after warm-up of data_time / step_time (the data-wait share) and of step_time, plus whether the
two runs' losses are bit-identical (they must be). Prints JSON.

  python benchmarks/data_wait.py                                   # configs/train/cpu-tiny.yaml, 30 steps, 3 rounds
  python benchmarks/data_wait.py --config configs/train/cpu-1m.yaml --steps 20 --rounds 2
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

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "nca-scale"


def run(config: str, steps: int, prefetch: bool, out: Path) -> list[dict]:
    cmd = [str(CLI), "train", config, f"out={out}", f"steps={steps}", f"prefetch={str(prefetch).lower()}",
           "wandb=disabled", "progress=false", "eval_every=0"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r and "data_time" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/train/cpu-tiny.yaml")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3, help="leading steps left out of the medians")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    result: dict = {"config": args.config, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                    "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                    "load_before": os.getloadavg()[0]}
    per: dict[str, dict[str, list[float]]] = {k: {"share": [], "step_time": [], "data_time": []} for k in ("off", "on")}
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            rows = {}
            for name, prefetch in (("off", False), ("on", True)):
                rows[name] = run(args.config, args.steps, prefetch, Path(tmp) / f"{name}{r}")
                kept = rows[name][args.warmup:]
                per[name]["share"].append(statistics.median(m["data_time"] / m["step_time"] for m in kept))
                per[name]["step_time"].append(statistics.median(m["step_time"] for m in kept))
                per[name]["data_time"].append(statistics.median(m["data_time"] for m in kept))
            identical &= [m["loss"] for m in rows["off"]] == [m["loss"] for m in rows["on"]]
    for name in ("off", "on"):
        result[f"prefetch_{name}"] = {
            "data_wait_share_median": statistics.median(per[name]["share"]),
            "data_time_s_median": statistics.median(per[name]["data_time"]),
            "step_time_s_median": statistics.median(per[name]["step_time"]),
            "round_shares": [round(x, 5) for x in per[name]["share"]],
        }
    result["step_time_ratio_on_to_off"] = (result["prefetch_on"]["step_time_s_median"]
                                           / result["prefetch_off"]["step_time_s_median"])
    result["losses_bit_identical"] = identical
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
