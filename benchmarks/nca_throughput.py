"""NCA generator throughput on the paper's config: tokens/s on CPU with 1 and 2 intra-op threads and with 2
single-threaded worker processes, unfiltered and with the paper's 50%+ gzip band, end to end (`nca-scale
generate`), and on CUDA when present. Prints one JSON object; medians of `--repeats` runs.

Step = one automaton step of a batch, per cell update, for the three implementations that give the same bits
(the torch ops, the portable C loop, the AVX-512 C loop where the CPU has it), timed in interleaved rounds on
the same states so that their ratios come from one run.

Steady state = sequences generated from an already-scored bank prefix (what a long run sees); bank scoring is
reported separately as seconds per 1,000 accepted rules, since the release draws one bank per run.
End to end = `write_shards` (what `nca-scale generate` runs): bank scoring, generation, tars, sha256 and
atomic commits to a local directory, manifest; also the console script itself as a user types it (its
wall time includes Python start-up and imports, which its own tokens/s line leaves out).
Every figure comes with the 1-minute load average read just before it (other jobs on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nca_scale import config
from nca_scale.data.producers import generator_pool
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.stream import NCAStream

_STREAMS: dict = {}


def load1() -> float:
    return os.getloadavg()[0]


def _generate(cfg: NCAConfig, banks: np.ndarray, rules: np.ndarray, idx: np.ndarray) -> int:
    """Worker task (forked pool): generate the sequences, return how many tokens."""
    if cfg not in _STREAMS:
        _STREAMS[cfg] = NCAStream(cfg)
    return _STREAMS[cfg].generate(banks, rules, idx).numel()


def steady_state(cfg: NCAConfig, device: str, threads: int, workers: int, sequences: int, batch: int,
                 repeats: int) -> dict:
    """Generation from a scored bank: `threads` intra-op threads in this process, or `workers` processes."""
    torch.set_num_threads(threads)
    pool = generator_pool(workers) if workers > 1 else None
    stream = NCAStream(cfg, device=device, batch_size=batch, threads=threads, pool=pool, in_flight=2 * workers)
    load = load1()
    t0 = time.perf_counter()
    idx = np.arange(sequences)
    banks, rules, _ = stream.rules(idx)
    bank_s = time.perf_counter() - t0
    accepted = min(sequences, stream.bank_size)

    def run() -> None:
        if pool is None:
            stream.generate(banks, rules, idx)
            return
        parts = [slice(lo, lo + batch) for lo in range(0, sequences, batch)]
        for f in [pool.submit(_generate, cfg, banks[p], rules[p], idx[p]) for p in parts]:
            f.result()

    run()  # warm-up: caches, allocator, the workers' streams, CUDA context
    rates, cpu_rates = [], []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(sequences * cfg.sequence_tokens / (time.perf_counter() - t))
        cpu_rates.append(sequences * cfg.sequence_tokens / (time.process_time() - c))
    out = {
        "tokens_per_s": statistics.median(rates),
        "runs": [round(r) for r in rates],
        "bank_s_per_1000_rules": 1000 * bank_s / accepted,
        "acceptance": stream.bank(0).acceptance,
        "load1": load,
    }
    if pool is None:  # tokens per CPU-second of this process: less sensitive than wall time to other load
        out["tokens_per_cpu_s"] = statistics.median(cpu_rates)
    return out


def step_kernels(cfg: NCAConfig, batch: int, rounds: int) -> dict:
    """ns per cell update of Automaton.step: torch ops vs the fused C loops (one thread, same input)."""
    from nca_scale.nca import native
    from nca_scale.nca.automaton import Automaton
    from nca_scale.nca.bank import rule_tables

    torch.set_num_threads(1)
    kinds = {"torch": Automaton(cfg, fused=False)}
    fused = Automaton(cfg)
    if fused.kernel is not None:
        kinds["c_portable"] = Automaton(cfg)
        kinds["c_portable"].kernel = native.step_kernel(cfg.grid, cfg.states, cfg.hidden, fused.state_dtype,
                                                         portable=True)
        kinds["c_default"] = fused
    ids = torch.arange(batch)
    keys = ids * 7919 + 1
    with torch.inference_mode():
        tables = fused.prepare(rule_tables(cfg, "train", 0, ids))
        state = fused.initial_state(keys)
        for step in range(12):  # past the initial noise, as in the probe and the frames
            state = fused.step(state, tables, keys, step)
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(rounds):
            for name, auto in kinds.items():
                auto.step(state, tables, keys, 12)  # warm (padded tables, buffers)
                t = time.process_time()
                for i in range(5):
                    auto.step(state, tables, keys, 12 + i)
                times[name].append((time.process_time() - t) / 5 / state.numel() * 1e9)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "rounds": rounds, "ns_per_cell_update": {k: round(v, 1) for k, v in med.items()},
            "speedup_vs_torch": {k: round(med["torch"] / v, 2) for k, v in med.items()},
            "fused_off": fused.fused_off, "load1": load1()}


def end_to_end(cfg: NCAConfig, threads: int, workers: int, tokens: int, repeats: int) -> dict:
    from nca_scale.data.urls import parse_location
    from nca_scale.data.writer import GenerateJob, write_shards

    torch.set_num_threads(threads)
    if workers > 1:
        generator_pool(workers)  # forked once per process, as a second run of `write_shards` would find it
    runs, loads = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            loc = parse_location(os.path.join(tmp, "shards"))
            loc.check_writable()  # creates the directory, as `nca-scale generate` does
            loads.append(load1())
            t = time.perf_counter()
            job = GenerateJob(out=loc.url, tokens=tokens, threads=threads, progress=False, tar_workers=1,
                              workers=workers)
            result = write_shards(cfg, loc, job)
            runs.append(time.perf_counter() - t)
    seconds = statistics.median(runs)
    return {"tokens": result.written_tokens, "seconds": seconds, "runs_s": [round(r, 2) for r in runs],
            "tokens_per_s": result.written_tokens / seconds, "load1": loads}


def console_script(config_path: str, tokens: int, repeats: int) -> dict:
    """`nca-scale generate CONFIG out=... tokens=N` exactly as a user types it (defaults: one worker per core)."""
    script = str(Path(sys.executable).parent / "nca-scale")
    walls, reported, loads = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            loads.append(load1())
            t = time.perf_counter()
            proc = subprocess.run([script, "generate", config_path, f"out={tmp}/shards", f"tokens={tokens}",
                                   "progress=false"], capture_output=True, text=True, check=True)
            walls.append(time.perf_counter() - t)
            reported.append(float(re.search(r"([\d,]+) tokens/s", proc.stdout).group(1).replace(",", "")))
    return {"command": f"nca-scale generate {config_path} out=DIR tokens={tokens}",
            "tokens_per_s_reported": statistics.median(reported), "wall_s": statistics.median(walls),
            "tokens_per_s_wall": tokens / statistics.median(walls), "runs_wall_s": [round(w, 2) for w in walls],
            "load1": loads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/nca/paper.yaml")
    ap.add_argument("--sequences", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cuda-sequences", type=int, default=65536)
    ap.add_argument("--e2e-tokens", type=int, default=8_000_000, help="tokens for the end-to-end runs (0: skip)")
    ap.add_argument("--e2e-repeats", type=int, default=3)
    args = ap.parse_args()

    filtered = config.load(NCAConfig, args.config)
    unfiltered = config.load(NCAConfig, args.config, [("complexity.lo", "null")])
    result = {
        "benchmark": "nca_throughput",
        "config": args.config,
        "sequence_tokens": filtered.sequence_tokens,
        "sequences": args.sequences,
        "batch": args.batch,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cpu_results": {},
    }
    result["step"] = step_kernels(filtered, args.batch, 2 * args.repeats + 1)
    for key, threads, workers in (("threads1", 1, 1), ("threads2", 2, 1), ("workers2", 1, 2)):
        for name, cfg in (("unfiltered", unfiltered), ("gzip_50plus", filtered)):
            result["cpu_results"][f"{name}_{key}"] = steady_state(
                cfg, "cpu", threads, workers, args.sequences, args.batch, args.repeats)
    if args.e2e_tokens:
        result["end_to_end_gzip_50plus"] = {
            key: end_to_end(filtered, threads, workers, args.e2e_tokens, args.e2e_repeats)
            for key, threads, workers in (("threads1", 1, 1), ("workers2", 1, 2))
        }
        result["end_to_end_gzip_50plus"]["console_script"] = console_script(
            args.config, args.e2e_tokens, args.e2e_repeats)
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name()
        result["cuda_results"] = {
            name: steady_state(cfg, "cuda", 1, 1, args.cuda_sequences, 16384, args.repeats)
            for name, cfg in (("unfiltered", unfiltered), ("gzip_50plus", filtered))
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
