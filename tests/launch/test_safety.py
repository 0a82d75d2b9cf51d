"""What submit refuses before anything reaches sbatch, a batch script or a pickled job (one error line, exit 2),
and a submitted training run that writes no secret anywhere: its run directory (metrics, checkpoints and
their manifests, wandb's offline files, submitit's pickled job folder and logs) and the job index are
searched for the planted values of WANDB_API_KEY, AWS_SECRET_ACCESS_KEY and HF_TOKEN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nca_scale.cli import main

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs/train/cpu-tiny.yaml")
SECRETS = {"WANDB_API_KEY": "planted-wandb-7c1f0e9d", "AWS_SECRET_ACCESS_KEY": "planted-aws-3b8e2a41",
           "HF_TOKEN": "planted-hf-5d6c7b8a"}


@pytest.mark.parametrize("args, message", [
    (["name=bad\nname"], "job name 'bad name': use 1-128 letters"),  # YAML folds the newline
    (["name=a;rm -rf ~"], "job name 'a;rm -rf ~'"),
    (["name=ok", "out=/tmp/run"], "out='/tmp/run\\n#SBATCH --uid=0' contains a control character"),
    (["name=ok", "out=/tmp/run_%j"], "out='/tmp/run_%j' contains '%', which Slurm expands"),
    (["wandb_project=p\nexport X=1"], "wandb_project='p\\nexport X=1' contains a control character"),
    (["cluster.setup=[\"echo a\\necho b\"]"], "cluster.srun_args/container/setup='echo a\\necho b' contains a control"),
    (["cluster.logs=/tmp/logs%u"], "cluster.logs='/tmp/logs%u' contains '%'"),
    (["wandb_project=planted-wandb-7c1f0e9d"], "wandb_project= holds the value of a secret environment variable"),
    ({"WANDB_API_KEY": "abc"}, "cluster env sets WANDB_API_KEY: a secret in the profile would be written"),
    ({"AWS_SECRET_ACCESS_KEY": "abc"}, "cluster env sets AWS_SECRET_ACCESS_KEY"),
    ({"X": "1\necho pwned"}, "cluster.env.X='1\\necho pwned' contains a control character"),
    ({"X; rm -rf ~; Y": "1"}, "cluster env key 'X; rm -rf ~; Y' is not a shell variable name"),
], ids=lambda v: None)
def test_unsafe_submissions_are_refused_before_anything_is_written(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NCA_SCALE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])
    monkeypatch.chdir(ROOT)
    if isinstance(args, dict):  # a profile file with this env
        profile = tmp_path / "profile.yaml"
        profile.write_text(json.dumps({"executor": "local", "env": args}))
        args = [f"cluster={profile}"]
    args = [a.replace("/tmp/run", str(tmp_path / "run")) + ("\n#SBATCH --uid=0" if a == "out=/tmp/run" else "")
            for a in args]
    out = [] if any(a.startswith("out=") for a in args) else [f"out={tmp_path / 'run'}"]
    assert main(["submit", CONFIG, *out, "dry_run=true", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message.replace("/tmp/run", str(tmp_path / "run")) in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "home").exists()


def test_a_submitted_run_writes_no_secret_anywhere(tmp_path):
    out, home = tmp_path / "run", tmp_path / "home"
    env = {**os.environ, **SECRETS, "NCA_SCALE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "nca-scale"), "submit", CONFIG, f"out={out}", "steps=2", "checkpoint.every=1",
           "model.n_layers=2", "data.nca.bank.size=8", "data.nca.bank.val_size=4", "wandb=offline", "progress=false",
           "eval_every=0", "wait=true"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    files = [p for p in [*out.rglob("*"), *home.rglob("*")] if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".pkl", ".distcp", ".json", ".jsonl", ".wandb"} <= kinds, kinds  # the job pickle, checkpoint, wandb run
    for path in files:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name} leaked into {path}"
    assert all(v not in proc.stdout + proc.stderr for v in SECRETS.values())
