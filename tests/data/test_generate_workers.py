"""`workers=`: bad values are refused before anything is written; a run split over generating processes
resumes and extends runs of any other worker count (shards are the same bytes, tests/data/test_roundtrip.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nca_scale import cli
from nca_scale.data import ShardReader

SEQ_TOKENS = 129  # tiny.yaml: seq_len 128 + 1


@pytest.mark.parametrize("args, message", [
    (["workers=-1"], "workers=-1 must be >= 0"),
    (["workers=2", "device=cuda"], "workers=2 is for CPU generation; use workers=1 with device=cuda"),
])
def test_bad_workers_are_refused(tmp_path, tiny_yaml, capsys, args, message):
    out = tmp_path / "d"
    capsys.readouterr()
    rc = cli.main(["generate", tiny_yaml, f"out={out}", "tokens=1000", "progress=false", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_resume_with_another_worker_count(tmp_path, generate, reference):
    out = tmp_path / "d"
    assert generate(str(out), 40 * SEQ_TOKENS, "sequences_per_shard=16", "workers=1") == 0
    first = json.loads((out / "manifest.json").read_text())["shards"]
    assert generate(str(out), 70 * SEQ_TOKENS, "sequences_per_shard=16", "workers=2", "batch_size=5") == 0
    shards = json.loads((out / "manifest.json").read_text())["shards"]
    assert shards[:2] == first[:2]  # full shards kept; the short last one rewritten whole
    reader = ShardReader(str(out))
    np.testing.assert_array_equal(reader.sequences(range(70)).astype(np.int64), reference(range(70))[0])
