"""Training throughput of each backend and layout on this machine: runs `nca-scale train` per setting and
reports medians over the steps after warm-up of tokens/s (whole step, NCA generation included), the model's
share (tokens/s excluding data generation), MFU against the pinned peak table, and step time. Prints JSON.

  python benchmarks/train_throughput.py                       # tiny model, the default settings
  python benchmarks/train_throughput.py --model configs/model/cpu-5m.yaml --steps 8 --only torch,megatron-tp2

`bare` is the yardstick: a plain PyTorch loop (same model class, same NCA batches, AdamW, clipping, one
thread) with none of the trainer around it; `ratio_to_bare` = a setting's tokens/s over the bare loop's.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> overrides
    "torch": ["backend=torch"],
    "torch-ddp2": ["backend=torch", "nproc=2"],
    "megatron": ["backend=megatron"],
    "megatron-tp2": ["backend=megatron", "nproc=2", "tp=2"],
    "megatron-pp2": ["backend=megatron", "nproc=2", "pp=2"],
    "megatron-dp2": ["backend=megatron", "nproc=2", "dp=2"],
    "deepspeed-zero2": ["backend=deepspeed", "nproc=2", "zero=2"],
    "deepspeed-zero3": ["backend=deepspeed", "nproc=2", "zero=3"],
}


def bare_loop(args: argparse.Namespace) -> None:
    """Run in a child process (one thread, like the trainer runs): print per-step tokens/s as JSON."""
    import numpy as np
    import torch

    from nca_scale import config as config_io
    from nca_scale.model.llama import Llama, masked_loss
    from nca_scale.train.config import TrainConfig
    from nca_scale.train.data import build_source, target_mask

    cfg = config_io.load(TrainConfig, args.config, [("model", args.model), ("batch_size", str(args.batch_size)),
                                                    ("micro_batch", str(args.micro_batch))]).resolved()
    torch.manual_seed(cfg.seed)
    model = Llama(cfg.model, cfg.data.seq_len, seed=cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    source, mask = build_source(cfg.data, "train"), target_mask(cfg.data)
    rates = []
    for step in range(args.steps):
        t = time.perf_counter()
        tokens = source.sequences(np.arange(step * args.batch_size, (step + 1) * args.batch_size)).long()
        chunks = tokens.split(args.micro_batch)
        for c in chunks:
            m = mask.expand(len(c), -1)
            (masked_loss(model(c[:, :-1]), c[:, 1:], m) / len(chunks)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad or float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        rates.append(args.batch_size * cfg.data.seq_len / (time.perf_counter() - t))
    print(json.dumps(rates[args.warmup :]))


def measure_bare(args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--bare-worker", "--config", args.config, "--model", args.model,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
           "--micro-batch", str(args.micro_batch)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode:
        return {"setting": "bare", "error": proc.stderr.strip().splitlines()[-1:]}
    return {"setting": "bare", "tokens_per_s": round(statistics.median(json.loads(proc.stdout.splitlines()[-1])))}


def measure(name: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [str(Path(sys.executable).parent / "nca-scale"), "train", args.config, f"out={out}", f"model={args.model}",
           f"steps={args.steps}", "eval_every=0", "wandb=disabled", "progress=false", "checkpoint_every=0",
           f"batch_size={args.batch_size}", f"micro_batch={args.micro_batch}", *SETTINGS[name], *args.overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode:
        return {"setting": name, "error": proc.stderr.strip().splitlines()[-1:]}
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][args.warmup :]
    med = lambda key: statistics.median(m[key] for m in steps)  # noqa: E731
    tokens = steps[0]["tokens"] // steps[0]["step"]
    return {
        "setting": name, "tokens_per_s": round(med("tokens_per_s")), "model_tokens_per_s": round(
            statistics.median(tokens / (m["step_time"] - m["data_time"]) for m in steps)),
        "mfu": round(med("mfu"), 4), "step_time_s": round(med("step_time"), 3), "data_time_s": round(med("data_time"), 3),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/train/cpu-tiny.yaml")
    p.add_argument("--model", default="configs/model/cpu-tiny.yaml")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--only", default=",".join(SETTINGS), help="comma-separated settings: " + ", ".join(SETTINGS))
    p.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = p.parse_args()
    if args.bare_worker:
        bare_loop(args)
        return
    results = [measure_bare(args)]
    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            results.append(measure(name, args, Path(tmp) / name))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    bare = results[0].get("tokens_per_s")
    for r in results[1:]:
        if bare and "tokens_per_s" in r:
            r["ratio_to_bare"] = round(r["tokens_per_s"] / bare, 3)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "model": args.model, "batch_size": args.batch_size, "results": results}, indent=1))


if __name__ == "__main__":
    main()
