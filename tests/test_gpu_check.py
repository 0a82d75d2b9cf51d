"""The prepared GPU check's plan, checked where there is no GPU: `tools/gpu_check.sh --dry-run` resolves every
command through the CLI, validates every config, the checkpoint disk budget, every import and the wheels
directory, and exits 0; a bad wheels directory is reported; without the wheels the check stops within a second
naming every missing module."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the wheels docs/gpu.md downloads, by file name (the check reads names only)
GOOD = ["megatron_core-0.16.1-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "deepspeed-0.19.8-py3-none-any.whl", "webdataset-1.0.2-py3-none-any.whl",
        "braceexpand-0.1.7-py2.py3-none-any.whl", "submitit-1.5.4-py3-none-any.whl", "hjson-3.1.0-py3-none-any.whl",
        "pydantic-2.14.4-py3-none-any.whl",
        "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "annotated_types-0.8.0-py3-none-any.whl", "typing_inspection-0.4.5-py3-none-any.whl",
        "typing_extensions-4.16.0-py3-none-any.whl", "einops-0.8.2-py3-none-any.whl",
        "msgpack-1.2.4-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
        "psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.manylinux_2_12_x86_64.manylinux_2_28_x86_64.whl",
        "tqdm-4.70.1-py3-none-any.whl", "packaging-26.4-py3-none-any.whl", "fsspec-2026.9.0-py3-none-any.whl",
        "py_cpuinfo-9.0.0-py3-none-any.whl", "ninja-1.13.2-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "nvidia_ml_py-13.615.71-py3-none-any.whl", "cloudpickle-3.1.3-py3-none-any.whl",
        "sentencepiece-0.2.3-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"]


def _wheels(tmp_path: Path, names: list[str]) -> Path:
    d = tmp_path / "whl"
    d.mkdir()
    for name in names:
        (d / name).write_bytes(b"")
    return d


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_checks_the_plan_and_exits_0(tmp_path):
    wheels = _wheels(tmp_path, GOOD)
    proc = subprocess.run(["tools/gpu_check.sh", "--dry-run", "--wheels", str(wheels), "--out", str(tmp_path / "w")],
                          cwd=ROOT, env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] and report["problems"] == [] and report["dry_run"]
    assert report["wheels"]["present"] and len(report["wheels"]["wheels"]) == len(GOOD)
    commands = [step["command"] for step in report["plan"]]
    train = [step for step in report["plan"] if step["command"].startswith("nca-scale train ")]
    assert len(commands) == 8 and len(train) == 6  # 2 generators, then 3 backends x (30 steps, resume from step 25)
    assert {(s["backend"], s["precision"], s["seq_len"], s["steps"], s["layers"], s["d_model"]) for s in train} == {
        (b, "bf16", 2048, 30, 15, 1280) for b in ("torch", "megatron", "deepspeed")}  # the 400M preset
    assert all(s["checkpoint_gb_written"] <= 20 for s in train), train  # 3 saves of 419M parameters: 17.6 GB
    assert sum("resume=" in c and c.endswith("/full/checkpoints/step_00000025") for c in commands) == 3
    assert [s["device"] for s in report["plan"][:2]] == ["cuda", "cpu"]  # the NCA generator first
    assert all(s["band"] == [0.5, 1.0] for s in report["plan"][:2])  # configs/nca/paper.yaml: the 50 %+ band
    assert not (tmp_path / "w").exists()  # a dry run writes nothing


def test_good_wheels_pass(gpu_check, tmp_path):
    report, problems = gpu_check.check_wheels(_wheels(tmp_path, GOOD))
    assert problems == [] and report["wheels"]["megatron-core"] == "0.16.1"


@pytest.mark.parametrize("change, problem", [
    (lambda names: names + ["hjson-3.0.0-py3-none-any.whl"], "two versions of hjson (3.0.0, 3.1.0)"),
    (lambda names: [n.replace("cp312-cp312", "cp311-cp311") if n.startswith("megatron") else n for n in names],
     "megatron_core-0.16.1-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl does not install"),
    (lambda names: [n.replace("manylinux2014_x86_64.manylinux_2_17_x86_64", "macosx_11_0_arm64")
                    if n.startswith("pydantic_core") else n for n in names],
     "pydantic_core-2.50.5-cp312-cp312-macosx_11_0_arm64.whl does not install"),
    (lambda names: [n for n in names if not n.startswith("deepspeed")], "deepspeed is missing"),
    (lambda names: names + ["notes.txt"], "notes.txt is not a wheel"),
    (lambda names: [n.replace("hjson-3.1.0", "hjson-3.0.0") for n in names], "hjson 3.0.0, the check pins 3.1.0"),
])
def test_bad_wheels_are_reported(gpu_check, tmp_path, change, problem):
    _, problems = gpu_check.check_wheels(_wheels(tmp_path, change(list(GOOD))))
    assert len(problems) == 1 and problems[0].startswith("wheels: ") and problem in problems[0], problems


def test_the_wheels_pin_what_ci_runs(gpu_check):
    """The wheels carry the versions this environment (requirements/cpu.txt) runs and tests."""
    from importlib import metadata

    assert {n: v for n, (v, _) in gpu_check.WHEELS.items() if n not in gpu_check.OPTIONAL} == {
        n: metadata.version(n) for n in gpu_check.WHEELS if n not in gpu_check.OPTIONAL}


@pytest.fixture()
def bare_python(tmp_path):
    """An interpreter with the standard library only, as a GPU machine's before the wheels (even torch absent)."""
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("present", [[], ["deepspeed", "hjson", "megatron_core"]], ids=["empty", "incomplete"])
def test_without_the_wheels_it_stops_at_once_naming_every_missing_module(present, bare_python, tmp_path):
    wheels = _wheels(tmp_path, [n for n in GOOD if n.split("-")[0] in present])
    out = tmp_path / "out"
    t0 = time.perf_counter()
    proc = subprocess.run(["tools/gpu_check.sh", "--wheels", str(wheels), "--out", str(out)], cwd=ROOT,
                          env=dict(os.environ, PYTHON=bare_python), capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout + proc.stderr
    assert elapsed < 1.0, elapsed  # before any pip install or import
    modules = ["torch", "numpy", "yaml", "megatron.core", "deepspeed", "hjson", "pydantic", "braceexpand", "einops",
               "msgpack", "psutil", "tqdm", "packaging", "fsspec", "webdataset", "typing_extensions"]
    expected = {m for m in modules if not any(m.split(".")[0].startswith(p.split("_")[0]) for p in present)}
    named = proc.stderr.split(": ", 1)[1]
    assert all(f"{m} (" in named for m in expected), proc.stderr
    assert not any(f"{m} (" in named for m in set(modules) - expected), proc.stderr
    assert "pynvml" not in named  # optional: the memory figure is null without it
    assert "tools/gpu_wheels.sh" in proc.stderr
    assert not out.exists()  # nothing ran, nothing written



def _tiny_wheel(directory: Path) -> Path:
    """A minimal valid pure-Python wheel (one module), for pip to install offline."""
    import zipfile

    path = directory / "nca_scale_probe-1.0-py3-none-any.whl"
    files = {"nca_scale_probe.py": "", "nca_scale_probe-1.0.dist-info/METADATA":
             "Metadata-Version: 2.1\nName: nca_scale_probe\nVersion: 1.0\n",
             "nca_scale_probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                   "Tag: py3-none-any\n"}
    record = "".join(f"{name},,\n" for name in files) + "nca_scale_probe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in {**files, "nca_scale_probe-1.0.dist-info/RECORD": record}.items():
            z.writestr(name, text)
    return path


def test_the_trap_removes_the_installed_wheels_and_the_runs_but_keeps_the_logs(tmp_path):
    """A check that ends (here: no CUDA, exit 1) leaves neither its private site of installed wheels nor a run
    directory (checkpoints: up to 18 GB per backend); the logs stay."""
    import glob

    wheels = tmp_path / "whl"
    wheels.mkdir()
    _tiny_wheel(wheels)
    out = tmp_path / "out"
    (out / "megatron" / "full" / "checkpoints").mkdir(parents=True)
    (out / "megatron.log").write_text("kept\n")
    before = set(glob.glob("/tmp/nca_scale_site.*"))
    proc = subprocess.run(["tools/gpu_check.sh", "--wheels", str(wheels), "--out", str(out), "--budget", "5"],
                          cwd=ROOT, env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["problems"][0].startswith("no CUDA device visible to torch")
    site = proc.stderr.split(" installed into ")[1].split()[0]
    assert site.startswith("/tmp/nca_scale_site.") and not Path(site).exists()  # the site it installed into is gone
    assert set(glob.glob("/tmp/nca_scale_site.*")) == before
    assert not (out / "megatron").exists() and (out / "megatron.log").read_text() == "kept\n"
