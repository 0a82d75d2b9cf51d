"""Bad input: one `nca-scale: error:` line, exit status 2, and nothing written. Bad shards: UserError naming them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nca_scale import cli
from nca_scale.data import ShardReader
from nca_scale.errors import UserError

SEQ_TOKENS = 129  # tiny.yaml: seq_len 128 + 1


def run_cli(args, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(["generate", *args])
    return rc, capsys.readouterr().err


BAD_CONFIG = {
    "band lo >= hi": (["complexity.lo=0.7", "complexity.hi=0.6"], "complexity band"),
    "grid not divisible by patch": (["grid=13"], "not divisible by patch"),
    "vocab too large for uint16": (["states=300", "patch=2", "token_dtype=uint16"], "does not fit token_dtype"),
    "unknown key": (["sequences_per_shrd=5"], "unknown key"),
}
BAD_JOB = {
    "tokens = 0": (["tokens=0"], "tokens=0 must be > 0"),
    "tokens < 0": (["tokens=-5"], "must be > 0"),
    "tokens not a number": (["tokens=lots"], "expects int"),
    "split unknown": (["tokens=100", "split=test"], "split"),
    "start < 0": (["tokens=100", "start=-1"], "start=-1"),
    "device unknown": (["tokens=100", "device=abacus"], "not a torch device"),
    "sequences_per_shard = 0": (["tokens=100", "sequences_per_shard=0"], "sequences_per_shard"),
    "tar_workers < 0": (["tokens=100", "tar_workers=-1"], "tar_workers=-1"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIG) + list(BAD_JOB))
def test_bad_input_writes_nothing(case, tiny_yaml, tmp_path, capsys):
    args, message = {**BAD_CONFIG, **BAD_JOB}[case]
    out = tmp_path / "out"
    tokens = [] if case in BAD_JOB else ["tokens=1000"]
    rc, err = run_cli([tiny_yaml, f"out={out}", *tokens, *args], capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("nca-scale: error:"), err
    assert message in err
    assert not out.exists()  # rejected before even the directory is created


@pytest.mark.parametrize(
    "out, message",
    [
        ("/proc/forbidden/x", "not writable"),
        ("foo://x", "unsupported URL scheme 'foo'"),
        ("", "out= is required"),
        ("   ", "out= is required"),
        ("s3://", "no bucket"),
        ("memory://", "give a name"),
        ("gs://bucket/x", "unsupported URL scheme 'gs'"),
    ],
)
def test_bad_out(out, message, tiny_yaml, capsys):
    rc, err = run_cli([tiny_yaml, f"out={out}", "tokens=1000"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda(tiny_yaml, tmp_path, capsys):
    rc, err = run_cli([tiny_yaml, f"out={tmp_path / 'o'}", "tokens=100", "device=cuda"], capsys)
    assert rc == 2 and "CUDA is not available" in err and not (tmp_path / "o").exists()


def test_missing_out_and_config(tiny_yaml, capsys):
    rc, err = run_cli([tiny_yaml, "tokens=1000"], capsys)
    assert rc == 2 and "out= is required" in err
    rc, err = run_cli(["out=/tmp/x", "tokens=1000"], capsys)
    assert rc == 2 and "config file is required" in err


def test_out_is_a_file(tiny_yaml, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, err = run_cli([tiny_yaml, f"out={f}", "tokens=1000"], capsys)
    assert rc == 2 and "not writable" in err and len(err.strip().splitlines()) == 1


@pytest.mark.s3
def test_missing_bucket(tiny_yaml, s3_endpoint, capsys):
    rc, err = run_cli([tiny_yaml, "out=s3://no-such-bucket/x", "tokens=1000", f"endpoint_url={s3_endpoint}"], capsys)
    assert rc == 2 and "no-such-bucket" in err and len(err.strip().splitlines()) == 1, err


# ---- reading damaged or foreign directories ------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_yaml):
    out = tmp_path_factory.mktemp("pristine") / "d"
    args = [tiny_yaml, f"out={out}", f"tokens={100 * SEQ_TOKENS}", "sequences_per_shard=64", "progress=false"]
    assert cli.main(["generate", *args]) == 0
    return out


@pytest.fixture
def dataset(pristine, tmp_path):
    """A fresh copy of one small generated directory (2 shards: 64 + 36 sequences) to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "d"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_shard_is_named(dataset, damage):
    shard = dataset / "train-000001.tar"
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        shard.write_bytes(data[:3000] + bytes([data[3000] ^ 1]) + data[3001:])
    else:
        shard.unlink()
    reader = ShardReader(str(dataset))
    reader[0]  # the intact shard still reads
    with pytest.raises(UserError, match="train-000001.tar"):
        reader[70]
    with pytest.raises(UserError, match="train-000001.tar"):
        list(reader.samples())


def test_streaming_never_yields_from_a_corrupt_shard(dataset):
    shard = dataset / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-512])
    it = ShardReader(str(dataset)).samples()
    with pytest.raises(UserError, match="train-000000.tar"):
        next(it)


def test_unlisted_shards_are_ignored(dataset):
    (dataset / "train-000009.tar").write_bytes((dataset / "train-000000.tar").read_bytes())
    reader = ShardReader(str(dataset))
    assert [s["name"] for s in reader.shards] == ["train-000000.tar", "train-000001.tar"]
    assert len(list(reader.samples())) == 100


def test_missing_or_foreign_manifest(tmp_path, dataset):
    with pytest.raises(UserError, match="manifest.json does not exist"):
        ShardReader(str(tmp_path / "empty"))
    (dataset / "manifest.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(UserError, match="not an nca_scale shard manifest"):
        ShardReader(str(dataset))
    (dataset / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        ShardReader(str(dataset))
