"""Training throughput of each backend and layout on this machine: runs `nca-scale train` per setting and
reports medians over the steps after warm-up of tokens/s (whole step, NCA generation included), the model's
share (tokens/s excluding data generation), MFU against the pinned peak table, and step time. Prints JSON.

  python benchmarks/train_throughput.py                       # tiny model, the default settings
  python benchmarks/train_throughput.py --model configs/model/cpu-5m.yaml --steps 8 --only torch,megatron-tp2

`bare` is the yardstick: a plain PyTorch loop (same model class, same NCA batches, AdamW, clipping, one
thread) with none of the trainer around it. The machine is noisy, so the settings run in `--rounds` rounds,
each round measuring bare and then every setting back to back; `ratio_to_bare` is the median over rounds of
(a setting's tokens/s / the same round's bare tokens/s), and `round_ratios` lists them.
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
    "torch-ddp2": ["backend=torch", "parallel.nproc=2"],
    "megatron": ["backend=megatron"],
    "megatron-tp2": ["backend=megatron", "parallel.nproc=2", "parallel.tp=2"],
    "megatron-pp2": ["backend=megatron", "parallel.nproc=2", "parallel.pp=2"],
    "megatron-dp2": ["backend=megatron", "parallel.nproc=2", "parallel.dp=2"],
    "deepspeed-zero2": ["backend=deepspeed", "parallel.nproc=2", "deepspeed.zero=2"],
    "deepspeed-zero3": ["backend=deepspeed", "parallel.nproc=2", "deepspeed.zero=3"],
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
    return {"setting": "bare", "tokens_per_s": statistics.median(json.loads(proc.stdout.splitlines()[-1]))}


def measure(name: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [str(Path(sys.executable).parent / "nca-scale"), "train", args.config, f"out={out}", f"model={args.model}",
           f"steps={args.steps}", "eval_every=0", "wandb=disabled", "progress=false", "checkpoint.every=0",
           f"batch_size={args.batch_size}", f"micro_batch={args.micro_batch}", *SETTINGS[name], *args.overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode:
        return {"setting": name, "error": proc.stderr.strip().splitlines()[-1:]}
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][args.warmup :]
    med = lambda key: statistics.median(m[key] for m in steps)  # noqa: E731
    tokens = steps[0]["tokens"] // steps[0]["step"]
    return {
        "setting": name, "tokens_per_s": med("tokens_per_s"), "model_tokens_per_s": statistics.median(
            tokens / (m["step_time"] - m["data_time"]) for m in steps),
        # an unknown GPU (no peak in nca_scale/train/speed.py, no peak_flops=) logs mfu null
        "mfu": None if any(m["mfu"] is None for m in steps) else med("mfu"), "step_time_s": med("step_time"), "data_time_s": med("data_time"),
        "wall_s": time.perf_counter() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/train/cpu-tiny.yaml")
    p.add_argument("--model", default="configs/model/cpu-tiny.yaml")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="bare + every setting, this many times, interleaved")
    p.add_argument("--only", default=",".join(SETTINGS), help="comma-separated settings: " + ", ".join(SETTINGS))
    p.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = p.parse_args()
    if args.bare_worker:
        bare_loop(args)
        return
    names = args.only.split(",")
    rounds: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            this = {"bare": measure_bare(args)}
            for name in names:
                this[name] = measure(name, args, Path(tmp) / f"{name}-{r}")
            rounds.append(this)
            print(json.dumps({"round": r, **{k: v.get("tokens_per_s") for k, v in this.items()}}), file=sys.stderr,
                  flush=True)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "load_avg": os.getloadavg(), "model": args.model, "batch_size": args.batch_size,
                      "rounds": args.rounds, "results": [summarize(name, rounds) for name in ["bare", *names]]},
                     indent=1))


def summarize(name: str, rounds: list[dict[str, dict]]) -> dict:
    """Medians over rounds; for a setting, also its per-round ratios to that round's bare loop."""
    runs = [r[name] for r in rounds]
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        return {"setting": name, "error": errors[0]}
    out = {"setting": name}
    for key, digits in (("tokens_per_s", 0), ("model_tokens_per_s", 0), ("mfu", 4), ("step_time_s", 3),
                        ("data_time_s", 3), ("wall_s", 1)):
        if key in runs[0] and all(r[key] is not None for r in runs):
            value = statistics.median(r[key] for r in runs)
            out[key] = round(value, digits) if digits else round(value)
    bare = [r["bare"].get("tokens_per_s") for r in rounds]
    if name != "bare" and all(bare):
        ratios = [run["tokens_per_s"] / b for run, b in zip(runs, bare)]
        out["ratio_to_bare"] = round(statistics.median(ratios), 3)
        out["round_ratios"] = [round(x, 3) for x in ratios]
    return out


if __name__ == "__main__":
    main()
