"""The prepared GPU check (run it through tools/gpu_check.sh; docs/gpu.md says how to bring the wheels).

On one GPU, through the project's own CLI (`nca-scale train` / `nca-scale generate`, what users run), it measures
and prints ONE JSON object on stdout (the children's output goes to log files under --out):

- versions: Python, torch, CUDA, cuDNN, the GPU, megatron-core, DeepSpeed, TransformerEngine (if any);
- the NCA generator's tokens/s (`nca-scale generate configs/nca/paper.yaml`) on CUDA and on all CPU cores, first:
  the training runs below generate the same data on the fly;
- for each backend (torch, megatron TP=1, DeepSpeed ZeRO-1): a bf16 run of the 400M preset (configs/model/400m.yaml,
  419M parameters: its three saves per backend write <= 18 GB, deleted once measured) on the paper's NCA data (configs/nca/paper.yaml, 50 %+ band) at seq 2048, 30 steps: tokens/s, TFLOP/s per GPU
  and MFU (medians of steps 6-30), the phase timers (data wait, forward/backward, optimizer) and the data-wait
  share, peak device memory (NVML) and torch's peak allocated memory, the loss at steps 1 and 30 (finite,
  falling); then a resume from its step-25 checkpoint whose losses at steps 26-30 must equal the uninterrupted
  run's.

Before anything else, in well under a second, `--preflight` names every module the check imports that neither the
interpreter nor the wheels directory provides (tools/gpu_check.sh runs it before installing the wheels), so a
machine without the wheels fails at once instead of minutes later inside a run.

`--dry-run` (any machine, no GPU needed) checks the plan instead: every command resolves to a CLI command, every
training config validates and is the 400M preset at seq 2048 in bf16 for 30 steps whose checkpoints fit the
disk budget, every generate job parses, every module the check imports is importable here, and the wheels
directory (if present) holds one installable cp312 x86-64 wheel per package the check needs. Exit status 0 when
everything passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the console script `nca-scale` is nca_scale.cli:main; called through the interpreter so that the check also
# runs where the project is on PYTHONPATH but not pip-installed (a GPU machine fed with wheels)
CLI = [sys.executable, "-c", "import sys; from nca_scale.cli import main; sys.exit(main())"]
STEPS, RESUME_FROM, WARMUP = 30, 25, 5
TRAIN = [
    "configs/train/paper-stage1.yaml", "model=configs/model/400m.yaml", "data.nca.seq_len=2048", "precision=bf16",
    f"steps={STEPS}", "tokens=null", "batch_size=8", "micro_batch=8", "auto_micro_batch=false",
    # a short run must show the loss falling: a higher LR than the paper's 1e-4 with its 5,000-step warmup
    "optim.lr=3e-4", "schedule.warmup=5", f"schedule.total={STEPS}",
    # a smaller rule bank than the paper's 16,000: start-up time, not a different stream per rule
    "data.nca.bank.size=2000", "data.nca.bank.val_size=200",
    "eval_every=0", "wandb=disabled", "progress=false", "log_every=1", f"checkpoint.every={RESUME_FROM}",
    "checkpoint.keep_last=2",
]
BACKENDS = {"torch": ["backend=torch"], "megatron": ["backend=megatron", "parallel.tp=1"],
            "deepspeed": ["backend=deepspeed", "deepspeed.zero=1"]}
GENERATE = {"cuda": ["device=cuda", "batch_size=4096"], "cpu": ["device=cpu", "workers=0"]}
NCA_TOKENS = 8_000_000
# what a PyTorch GPU image (CUDA torch, numpy, PyYAML, nvcc) lacks, distribution -> (version, module it provides):
# the wheels tools/gpu_wheels.sh downloads into .whl/ and tools/gpu_check.sh installs. The versions are CI's
# (requirements/cpu.txt and what it resolves to). Every module is imported on the check's path except those of
# submitit/cloudpickle and sentencepiece (the launcher and the tokenizer: small, so a copied checkout has them)
# and DeepSpeed's op-building helpers (py-cpuinfo, ninja: a JIT-built op needs them). Not carried: wandb,
# s3fs and matplotlib (imported only for wandb=online, s3:// URLs and figures; with their dependencies > 40 MB).
WHEELS = {
    "megatron-core": ("0.16.1", "megatron.core"), "deepspeed": ("0.19.8", "deepspeed"),
    "webdataset": ("1.0.2", "webdataset"), "braceexpand": ("0.1.7", "braceexpand"),
    "hjson": ("3.1.0", "hjson"), "pydantic": ("2.14.4", "pydantic"), "pydantic-core": ("2.50.5", "pydantic_core"),
    "annotated-types": ("0.8.0", "annotated_types"), "typing-inspection": ("0.4.5", "typing_inspection"),
    "typing-extensions": ("4.16.0", "typing_extensions"), "einops": ("0.8.2", "einops"),
    "msgpack": ("1.2.4", "msgpack"), "psutil": ("7.2.2", "psutil"), "tqdm": ("4.70.1", "tqdm"),
    "packaging": ("26.4", "packaging"), "fsspec": ("2026.9.0", "fsspec"), "py-cpuinfo": ("9.0.0", "cpuinfo"),
    "ninja": ("1.13.2", "ninja"), "nvidia-ml-py": ("13.615.71", "pynvml"), "submitit": ("1.5.4", "submitit"),
    "cloudpickle": ("3.1.3", "cloudpickle"), "sentencepiece": ("0.2.3", "sentencepiece"),
}
OPTIONAL = {"nvidia-ml-py"}  # NVML's memory figure: null without it, the check goes on
SOURCE_ONLY = {"deepspeed"}  # a source release: tools/gpu_wheels.sh builds its pure-Python wheel
IMAGE = {"torch": "torch", "numpy": "numpy", "PyYAML": "yaml"}  # what the GPU image itself must provide
BYTES_PER_PARAM_SAVED = 14  # bf16 weights + fp32 main weights + two fp32 Adam moments (megatron, DeepSpeed; torch 12)
SAVES_PER_BACKEND = 3  # steps 25 and 30 of the full run, step 30 of the resumed one
DISK_BUDGET = 20e9  # checkpoint bytes one backend may write (a 64 GB disk, with room)
RESUME_TOLERANCE = 1e-3  # relative, bf16: GPU kernels need not be bitwise deterministic (reported separately)
GPU_DEFAULTS = "megatron overlap: grad reduce on, param gather on; fusions: "  # docs/training.md, "Overlap and fusion"


def train_args(backend: str, out: Path, resume: Path | None = None) -> list[str]:
    extra = [f"resume={resume}"] if resume else []
    return ["train", *TRAIN, *BACKENDS[backend], f"out={out}", *extra]


def generate_args(device: str, out: Path) -> list[str]:
    return ["generate", "configs/nca/paper.yaml", f"out={out}", f"tokens={NCA_TOKENS}", "progress=false",
            *GENERATE[device]]


def shown(args: list[str]) -> str:
    return "nca-scale " + shlex.join(args)


# ---- measuring ---------------------------------------------------------------------------------------
class MemorySampler:
    """Peak memory in use on GPU 0 while a child runs (NVML every 0.2 s: the CUDA context and the caching
    allocator's reserve included, which is what the device had to hold)."""

    def __init__(self):
        self.peak: int | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:  # nvidia-ml-py; without it the figure is null, the check goes on
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # ImportError, or any NVML error
            return
        self.peak = 0
        while not self.stop.wait(0.2):
            self.peak = max(self.peak, pynvml.nvmlDeviceGetMemoryInfo(handle).used)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def run_cli(args: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.run([*CLI, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True,
                              timeout=max(timeout, 1))
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


def failed(proc: subprocess.CompletedProcess) -> str:
    tail = [line for line in proc.stdout.splitlines() if line.strip()][-3:]
    return f"exit {proc.returncode}: " + " | ".join(tail)


def losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if "loss" in m}


def speed(out: Path, flops_per_token: float) -> dict:
    steps = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "loss" in m and m["step"] > WARMUP]
    tokens_per_s = statistics.median(m["tokens_per_s"] for m in steps)
    mfu = [m["mfu"] for m in steps if m.get("mfu") is not None]
    peaks = [m["peak_memory_gib"] for m in steps if "peak_memory_gib" in m]  # torch's allocator, per line
    return {"tokens_per_s": round(tokens_per_s), "tflops_per_gpu": round(tokens_per_s * flops_per_token / 1e12, 1),
            "mfu": round(statistics.median(mfu), 4) if mfu else None,
            "step_time_s": round(statistics.median(m["step_time"] for m in steps), 4),
            # metrics.jsonl's phase timers (docs/training.md): where a GPU step's time goes
            "phases_s": {k: round(statistics.median(m[k] for m in steps), 4)
                         for k in ("data_time", "fwd_bwd_time", "optimizer_time")},
            "data_wait_share": round(statistics.median(m["data_time"] / m["step_time"] for m in steps), 5),
            "peak_allocated_gib": round(max(peaks), 2) if peaks else None,
            "median_of_steps": [WARMUP + 1, STEPS]}


def check_backend(backend: str, work: Path, deadline: float) -> dict:
    from nca_scale.model.config import flops_per_token
    from nca_scale.train.config import from_args

    full, again = work / backend / "full", work / backend / "resumed"
    shutil.rmtree(work / backend, ignore_errors=True)
    args = train_args(backend, full)
    result: dict = {"command": shown(args)}
    cfg = from_args(args[1:]).resolved()
    t0 = time.perf_counter()
    with MemorySampler() as memory:
        proc = run_cli(args, work / f"{backend}.log", deadline - time.time())
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["peak_memory_gib"] = None if memory.peak is None else round(memory.peak / 2**30, 2)
    if proc.returncode:
        return {**result, "ok": False, "error": failed(proc)}
    seen = losses(full)
    first, last = seen.get(1, math.nan), seen.get(STEPS, math.nan)
    falling = all(math.isfinite(v) for v in seen.values()) and last < first
    result.update(speed(full, flops_per_token(cfg.model, cfg.seq_len)["train"]),
                  **{"loss_step1": first, f"loss_step{STEPS}": last}, loss_finite_and_falling=falling)
    # megatron's start-up lines: the attention kernel, and the overlap and fusions the GPU defaults chose; the
    # defaults must be on here (torch.compile's fusions need nothing else; Apex's and TE's are reported)
    result["start_up"] = [x.removeprefix("[nca-scale] ") for x in proc.stdout.splitlines()
                          if x.startswith(("[nca-scale] megatron spec:", "[nca-scale] megatron overlap:"))]
    if backend == "megatron":
        result["gpu_defaults_on"] = any(x.startswith(GPU_DEFAULTS) and "bias_swiglu_fusion" in x
                                        and "cross_entropy_fusion" in x for x in result["start_up"])

    ckpt = full / "checkpoints" / f"step_{RESUME_FROM:08d}"
    args = train_args(backend, again, resume=ckpt)
    proc = run_cli(args, work / f"{backend}-resume.log", deadline - time.time())
    resume: dict = {"command": shown(args)}
    if proc.returncode:
        resume.update(ok=False, error=failed(proc))
    else:
        after = losses(again)
        steps = list(range(RESUME_FROM + 1, STEPS + 1))
        diff = max(abs(after[s] - seen[s]) / abs(seen[s]) for s in steps) if set(steps) <= after.keys() else math.inf
        resume.update(steps=[steps[0], steps[-1]], losses=[after.get(s) for s in steps],
                      uninterrupted=[seen[s] for s in steps], bitwise=diff == 0.0, max_rel_diff=diff,
                      ok=diff <= RESUME_TOLERANCE)
    result["resume"] = resume
    result["ok"] = falling and resume["ok"] and result.get("gpu_defaults_on", True)
    shutil.rmtree(work / backend, ignore_errors=True)  # 17.6 GB of checkpoints per backend
    return result


def check_generate(device: str, work: Path, deadline: float) -> dict:
    out = work / f"nca-{device}"
    shutil.rmtree(out, ignore_errors=True)
    args = generate_args(device, out)
    t0 = time.perf_counter()
    proc = run_cli(args, work / f"nca-{device}.log", deadline - time.time())
    result = {"command": shown(args), "wall_s": round(time.perf_counter() - t0, 1), "cpu_cores": os.cpu_count()}
    shutil.rmtree(out, ignore_errors=True)
    line = [x for x in proc.stdout.splitlines() if x.endswith(" tokens/s")]
    if proc.returncode or not line:
        return {**result, "ok": False, "error": failed(proc)}
    return {**result, "ok": True, "tokens_per_s": int(line[-1].rsplit(";", 1)[1].split()[0].replace(",", ""))}


def versions() -> dict:
    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
             "gpus": torch.cuda.device_count(), "cpu_cores": os.cpu_count()}
    for name in ("megatron-core", "deepspeed", "transformer-engine"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        found["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        found["commit"] = None
    return found


def measure(work: Path, budget_s: float) -> dict:
    import torch

    deadline = time.time() + budget_s
    report: dict = {"check": "nca_scale GPU check", "versions": versions(), "nca": {}, "train": {}}
    if not torch.cuda.is_available():
        report.update(ok=False, problems=["no CUDA device visible to torch; use --dry-run on a machine without a GPU"])
        return report
    t0 = time.perf_counter()
    try:
        for device in GENERATE:  # first: the training runs generate the same data on the fly
            try:
                report["nca"][device] = check_generate(device, work, deadline)
            except subprocess.TimeoutExpired:
                report["nca"][device] = {"ok": False, "error": f"over the {budget_s:.0f} s budget"}
        for backend in BACKENDS:
            try:
                report["train"][backend] = check_backend(backend, work, deadline)
            except subprocess.TimeoutExpired:
                report["train"][backend] = {"ok": False, "error": f"over the {budget_s:.0f} s budget"}
    finally:
        clean(work)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    report["problems"] = [f"{kind} {name}: {r.get('error') or 'check failed'}"
                          for kind in ("nca", "train") for name, r in report[kind].items() if not r["ok"]]
    report["ok"] = not report["problems"]
    return report


def run_dirs(work: Path) -> list[Path]:
    """The directories the runs write under `work` (run folders, checkpoints, generated shards); the logs stay."""
    return [work / name for name in (*BACKENDS, *(f"nca-{device}" for device in GENERATE))]


def clean(work: Path) -> None:
    """Delete what the runs wrote but the logs (tools/gpu_check.sh's trap does the same if this process dies)."""
    for d in run_dirs(work):
        shutil.rmtree(d, ignore_errors=True)


# ---- before anything: every module the check imports, in well under a second ---------------------------
def _wheel_names(directory: Path) -> set[str]:
    """Canonical distribution names of the wheels in `directory`, from the file names alone (standard library
    only: the interpreter may have nothing else yet)."""
    if not directory.is_dir():
        return set()
    return {re.sub(r"[-_.]+", "-", f.name.split("-")[0]).lower() for f in directory.glob("*.whl")}


def missing_modules(directory: Path) -> list[str]:
    """Each module the check imports that neither this interpreter nor a wheel in `directory` provides, with the
    distribution that provides it. find_spec of the top-level name only: nothing is imported."""
    wheels = _wheel_names(directory)
    missing = []
    for dist, module in IMAGE.items():
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module} ({dist}: the GPU image's own)")
    for dist, (version, module) in WHEELS.items():
        if dist not in wheels and dist not in OPTIONAL and importlib.util.find_spec(module.split(".")[0]) is None:
            missing.append(f"{module} ({dist}=={version})")
    return missing


def preflight(directory: Path) -> int:
    missing = missing_modules(directory)
    if not missing:
        return 0
    fixes = []
    if any("the GPU image's own" not in m for m in missing):
        fixes.append(f"fill {directory} with tools/gpu_wheels.sh on a machine with internet access")
    if any("the GPU image's own" in m for m in missing):
        fixes.append("run it with the GPU image's Python, which has a CUDA build of torch, numpy and PyYAML (PYTHON=)")
    print(f"gpu_check: {len(missing)} modules missing, found neither in {sys.executable} nor as wheels in "
          f"{directory}: {', '.join(missing)}; {'; '.join(fixes)} (docs/gpu.md)", file=sys.stderr)
    return 1


# ---- the plan, checked without a GPU --------------------------------------------------------------------
def check_wheels(directory: Path) -> tuple[dict, list[str]]:
    """One wheel per distribution, each installable on CPython 3.12 / x86-64 Linux, and every one the check
    needs present."""
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

    if not directory.is_dir():
        return {"dir": str(directory), "present": False}, []
    problems, found = [], {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".whl":
            problems.append(f"wheels: {path.name} is not a wheel")
            continue
        try:
            name, version, _, tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename as e:
            problems.append(f"wheels: {e}")
            continue
        if name in found:
            problems.append(f"wheels: two versions of {name} ({found[name]}, {version}): pip --no-deps would stop")
        found[name] = str(version)
        if not any(_installable(tag) for tag in tags):
            problems.append(f"wheels: {path.name} does not install on CPython 3.12 x86-64 Linux")
    missing = {canonicalize_name(n) for n in WHEELS} - found.keys()
    wrong = {n: v for n, (v, _) in WHEELS.items() if found.get(canonicalize_name(n), v) != v}
    problems += [f"wheels: {n} {found[canonicalize_name(n)]}, the check pins {v}" for n, v in sorted(wrong.items())]
    problems += [f"wheels: {name} is missing (docs/gpu.md lists the download)" for name in sorted(missing)]
    return {"dir": str(directory), "present": True, "wheels": found}, problems


def _installable(tag) -> bool:
    python_ok = tag.interpreter in ("py3", "cp312") or (tag.abi == "abi3" and tag.interpreter.startswith("cp3"))
    platform_ok = tag.platform == "any" or (tag.platform.startswith("manylinux") and tag.platform.endswith("x86_64"))
    return python_ok and platform_ok


def dry_run(work: Path, wheels: Path) -> dict:
    from nca_scale.cli import resolve
    from nca_scale.cli.common import parse_job
    from nca_scale.data.writer import GenerateJob
    from nca_scale.errors import UserError
    from nca_scale.model.config import flops_per_token
    from nca_scale.nca.config import NCAConfig
    from nca_scale.train.config import from_args

    problems: list[str] = []
    plan = []
    for device in GENERATE:
        args = generate_args(device, work / f"nca-{device}")
        step = {"command": shown(args)}
        plan.append(step)
        try:
            fn, rest = resolve(args)
            job, cfg, _ = parse_job(GenerateJob, NCAConfig, rest, config_required=True)
            job.validate()
            step.update(cli=f"{fn.__module__}.{fn.__name__}", device=job.device, band=[cfg.complexity.lo, cfg.complexity.hi])
        except UserError as e:
            problems.append(f"{shown(args)}: {e}")
    for backend in BACKENDS:
        ckpt = work / backend / "full" / "checkpoints" / f"step_{RESUME_FROM:08d}"
        for args in (train_args(backend, work / backend / "full"), train_args(backend, work / backend / "resumed", ckpt)):
            step = {"command": shown(args)}
            plan.append(step)
            try:
                fn, rest = resolve(args)
                # the checkpoint a resume names exists only once the first run made it: the config checks it
                cfg = from_args([a if not a.startswith("resume=") else "resume=never" for a in rest]).resolved()
            except UserError as e:
                problems.append(f"{shown(args)}: {e}")
                continue
            import torch

            from nca_scale.model.llama import Llama

            with torch.device("meta"):  # the model's shapes, nothing allocated
                params = sum(p.numel() for p in Llama(cfg.model, cfg.seq_len).parameters())
            written = params * BYTES_PER_PARAM_SAVED * SAVES_PER_BACKEND
            if written > DISK_BUDGET:
                problems.append(f"{shown(args)}: its checkpoints would write {written / 1e9:.1f} GB, over "
                                f"{DISK_BUDGET / 1e9:.0f} GB")
            step.update(cli=f"{fn.__module__}.{fn.__name__}", backend=cfg.backend, precision=cfg.precision,
                        seq_len=cfg.seq_len, steps=cfg.total_steps, layers=cfg.model.n_layers, d_model=cfg.model.d_model,
                        micro_batch=cfg.micro_batch, accumulation=cfg.grad_accum, parameters=params,
                        checkpoint_gb_written=round(written / 1e9, 1),
                        train_flops_per_token=flops_per_token(cfg.model, cfg.seq_len)["train"])
            want = {"backend": backend, "precision": "bf16", "seq_len": 2048, "steps": STEPS, "layers": 15, "d_model": 1280}
            problems += [f"{shown(args)}: {k}={step[k]}, the check needs {v}" for k, v in want.items() if step[k] != v]
    wheel_report, wheel_problems = check_wheels(wheels)
    wheel_problems += [f"module missing: {m}" for m in missing_modules(wheels)]
    return {"check": "nca_scale GPU check", "dry_run": True, "versions": versions(), "plan": plan,
            "wheels": wheel_report, "problems": problems + wheel_problems, "ok": not problems + wheel_problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="check the plan without a GPU and exit")
    parser.add_argument("--out", type=Path, default=Path("/tmp/nca_scale_gpu_check"), help="run directories and logs")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="the wheels tools/gpu_check.sh installs")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all runs together")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--preflight", action="store_true",
                        help="only name the modules neither this interpreter nor the wheels provide; exit 1 if any")
    parser.add_argument("--print-wheels", choices=("binary", "source"),
                        help="print the pinned requirements tools/gpu_wheels.sh downloads (binary) or builds (source)")
    args = parser.parse_args()
    if args.print_wheels:
        source = args.print_wheels == "source"
        print(" ".join(f"{n}=={v}" for n, (v, _) in WHEELS.items() if (n in SOURCE_ONLY) == source))
        return 0
    if args.preflight:
        return preflight(args.wheels)
    report = dry_run(args.out, args.wheels) if args.dry_run else measure(args.out, args.budget)
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
