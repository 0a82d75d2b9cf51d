"""S3 as training data and checkpoint store, against a real S3 server (moto on loopback, tests/conftest.py):
`nca-scale generate` writes NCA shards to s3://, `nca-scale train` (a child process that finds the endpoint in
AWS_ENDPOINT_URL and the dummy credentials in its environment) trains from them exactly as from the stream,
publishes each checkpoint to checkpoint_url=s3://..., and a run on a machine without local checkpoints fetches
the newest one and continues the run exactly. A corrupt mirrored object is never fetched; an interrupted
upload is never read and the next publish removes it. Checkpoints with subdirectories (megatron's dist/,
DeepSpeed's ds/) round-trip as nested keys."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from test_shards import generate
from train_helpers import ROOT, losses, train

from nca_scale.data.urls import parse_location
from nca_scale.train import checkpoint
from nca_scale.train.checkpoint import commit as checkpoint_commit
from nca_scale.train.checkpoint import mirror
from nca_scale.train.checkpoint import verify as checkpoint_verify
from nca_scale.train.config import from_args

STEP2, STEP4 = checkpoint.step_dir("", 2).name, checkpoint.step_dir("", 4).name


@pytest.fixture
def endpoint(s3_endpoint, monkeypatch) -> str:
    """The moto endpoint in AWS_ENDPOINT_URL, as a user would set it: child processes inherit it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


def test_train_from_s3_shards_and_resume_from_an_s3_checkpoint_mirror(reference, endpoint, s3_bucket, tmp_path):
    shards, url = f"s3://{s3_bucket}/nca/train", f"s3://{s3_bucket}/checkpoints"
    generate(shards, "train", 4 * 8)
    # the reference streamed the same indices with the same schedule (10 steps): bitwise the same run
    run = ["schedule.total=10", "data.source=nca_shards", f"data.shards={shards}", "checkpoint.every=2",
           f"checkpoint.url={url}", "checkpoint.keep_last=1"]
    first = tmp_path / "first"
    train(first, *run, "steps=2")
    assert losses(first) == losses(reference)[:2]
    store = parse_location(url)
    assert store.read("latest") == f"{STEP2}\n".encode()
    local = checkpoint.step_dir(first, 2)
    meta = json.loads(store.sub(STEP2).read("meta.json"))
    assert meta == checkpoint.read_meta(local) and set(meta["files"]) == {"dcp/.metadata", "dcp/__0_0.distcp"}
    for name, entry in meta["files"].items():
        data = store.sub(STEP2).read(name)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])

    elsewhere = tmp_path / "elsewhere"  # a new machine: no local checkpoints, only the mirror
    proc = train(elsewhere, *run, "steps=4", "resume=auto")
    fetched = checkpoint.step_dir(elsewhere, 2)
    assert f"fetched {url}/{STEP2} -> {fetched}" in proc.stdout, proc.stdout
    assert f"resumed from {fetched} at step 2" in proc.stdout, proc.stdout
    assert losses(elsewhere) == losses(reference)[2:4]
    assert store.names() == {"latest", STEP4} and store.read("latest") == f"{STEP4}\n".encode()  # keep_last=1

    # a flipped byte in the mirrored copy: reported, nothing fetched, no staging directory left behind
    weights = "dcp/__0_0.distcp"
    state = store.sub(STEP4).read(weights)
    store.sub(STEP4).put_atomic(weights, state[:100] + bytes([state[100] ^ 0xFF]) + state[101:])
    third, lines = tmp_path / "third", []
    assert mirror.fetch_latest(url, third, lines.append) is None
    assert lines == [f"{url}/{STEP4} is unusable ({weights} does not match its sha256 in meta.json); not fetched"]
    assert list(checkpoint.root(third).iterdir()) == []

    # an upload interrupted before its manifest: never fetched, and the next publish removes it
    store.sub(STEP4).put_atomic(weights, state)
    store.sub("step_00000006").put_atomic("state.pt", b"partial")
    assert mirror.fetch_latest(url, third, lines.append) == checkpoint.step_dir(third, 4)
    assert checkpoint_verify.verify(checkpoint.step_dir(third, 4)) is None
    mirror.publish(checkpoint.step_dir(elsewhere, 4), url, keep=1)
    assert store.names() == {"latest", STEP4}


def test_checkpoints_with_subdirectories_round_trip_through_s3(endpoint, s3_bucket, tmp_path):
    """megatron (dist/) and DeepSpeed (ds/) keep their files in subdirectories: published as nested keys,
    pruned whole, fetched back into the same tree."""
    cfg = from_args([str(ROOT / "configs/train/cpu-tiny.yaml"), f"out={tmp_path / 'run'}"]).resolved()
    url = f"s3://{s3_bucket}/checkpoints"
    for step in (2, 4):
        staging = checkpoint_commit.begin(cfg.out, step)
        (staging / "dist").mkdir()
        (staging / "dist" / "__0_0.distcp").write_bytes(os.urandom(3000))
        (staging / "dist" / ".metadata").write_bytes(os.urandom(100))
        (staging / "latest").write_text("ds")
        mirror.publish(checkpoint_commit.commit(cfg, step, 0), url, keep=1)
    store = parse_location(url)
    assert store.names() == {"latest", STEP4} and store.sub(STEP4).names() == {"dist", "latest", "meta.json"}
    lines = []
    fetched = mirror.fetch_latest(url, tmp_path / "elsewhere", lines.append)
    assert fetched == checkpoint.step_dir(tmp_path / "elsewhere", 4) and checkpoint_verify.verify(fetched) is None, lines
    assert checkpoint.read_meta(fetched) == checkpoint.read_meta(checkpoint.step_dir(cfg.out, 4))
    assert sorted(checkpoint_verify.file_table(fetched)) == ["dist/.metadata", "dist/__0_0.distcp", "latest"]
