"""The prepared GPU check's plan, checked where there is no GPU: `tools/gpu_check.sh --dry-run` resolves every
command through the CLI, validates every config and the wheels directory, and exits 0; a bad wheels directory
is reported."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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
        "typing_extensions-4.16.0-py3-none-any.whl"]


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
    assert len(commands) == 8 and len(train) == 6  # 3 backends x (30 steps, resume from step 25) + 2 generators
    assert {(s["backend"], s["precision"], s["seq_len"], s["steps"], s["layers"], s["d_model"]) for s in train} == {
        (b, "bf16", 2048, 30, 15, 2048) for b in ("torch", "megatron", "deepspeed")}
    assert sum("resume=" in c and c.endswith("/full/checkpoints/step_00000025") for c in commands) == 3
    assert [s["device"] for s in report["plan"][6:]] == ["cuda", "cpu"]
    assert all(s["band"] == [0.5, 1.0] for s in report["plan"][6:])  # configs/nca/paper.yaml: the 50 %+ band
    assert not (tmp_path / "w").exists()  # a dry run writes nothing


def test_good_wheels_pass(gpu_check, tmp_path):
    report, problems = gpu_check.check_wheels(_wheels(tmp_path, GOOD))
    assert problems == [] and report["wheels"]["megatron-core"] == "0.16.1"


@pytest.mark.parametrize("change, problem", [
    (lambda names: names + ["hjson-3.0.0-py3-none-any.whl"], "two versions of hjson (3.0.0, 3.1.0)"),
    (lambda names: [n.replace("cp312-cp312", "cp311-cp311") if n.startswith("megatron") else n for n in names],
     "megatron_core-0.16.1-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl does not install"),
    (lambda names: [n.replace("manylinux2014_x86_64.manylinux_2_17_x86_64", "macosx_11_0_arm64") for n in names],
     "pydantic_core-2.50.5-cp312-cp312-macosx_11_0_arm64.whl does not install"),
    (lambda names: [n for n in names if not n.startswith("deepspeed")], "deepspeed is missing"),
    (lambda names: names + ["notes.txt"], "notes.txt is not a wheel"),
])
def test_bad_wheels_are_reported(gpu_check, tmp_path, change, problem):
    _, problems = gpu_check.check_wheels(_wheels(tmp_path, change(list(GOOD))))
    assert len(problems) == 1 and problems[0].startswith("wheels: ") and problem in problems[0], problems
