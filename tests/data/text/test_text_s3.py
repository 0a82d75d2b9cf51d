"""Text shards on S3 (a real moto server on loopback, tests/conftest.py): `nca-scale corpus tokenize` writes the
same shards to s3:// as to a local directory, and `nca-scale train` (a child process that finds the endpoint
in AWS_ENDPOINT_URL and the dummy credentials in its environment) trains and evaluates on them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nca_scale import cli
from nca_scale.data.urls import parse_location

ROOT = Path(__file__).parents[3]
CLI = Path(sys.executable).parent / "nca-scale"


def _curve(out: Path) -> list[tuple]:
    """(step, training loss, held-out loss) of each metrics line."""
    lines = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [(m["step"], m.get("loss"), m.get("eval_loss")) for m in lines]


@pytest.mark.slow  # tokenizes four times and trains in a child process: ~30 s
def test_train_from_text_shards_on_s3(code_dir, s3_endpoint, s3_bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    tok = tmp_path / "tok"
    assert cli.main(["tokenizer", "train", str(code_dir), f"out={tok}", "vocab_size=800", "max_train_bytes=300000",
                     "threads=2"]) == 0
    s3, local = f"s3://{s3_bucket}/text", tmp_path / "text"
    for split in ("train", "val"):
        for out in (f"{s3}/{split}", local / split):
            assert cli.main(["corpus", "tokenize", str(code_dir), f"tokenizer={tok}", f"out={out}", f"split={split}",
                             "seq_len=64", "tokens=20000", "sequences_per_shard=64"]) == 0
        remote, here = parse_location(f"{s3}/{split}"), parse_location(str(local / split))
        assert remote.names() == here.names() and len(here.names()) > 2  # several shards and the manifest
        for name in here.names() - {"manifest.json"}:
            assert remote.read(name) == here.read(name), name
        mine, theirs = (json.loads(loc.read("manifest.json")) for loc in (remote, here))
        assert mine.keys() == theirs.keys() and {k for k in mine if mine[k] != theirs[k]} <= {"created", "seconds"}

    # every shard is checked against the manifest's size and sha256 as it is read: the run sees these bytes
    out = tmp_path / "run"
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={out}", "wandb=disabled", "progress=false",
           "model.n_layers=2", "steps=2", "eval_every=2", "eval_batches=1", "data.source=text_shards",
           f"data.shards={s3}/train", f"data.val_shards={s3}/val"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vocab 800" in proc.stdout and "seq 64" in proc.stdout, proc.stdout
    curve = _curve(out)
    assert [(step, loss is None, held_out is None) for step, loss, held_out in curve] == [
        (1, False, True), (2, False, True), (2, True, False)]
    assert abs(curve[0][1] - math.log(800)) < 0.3, curve  # the small init predicts near-uniformly over 800 pieces
