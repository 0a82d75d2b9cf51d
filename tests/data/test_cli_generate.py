"""The installed console script, end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from nca_scale.data import ShardReader

SCRIPT = str(Path(sys.executable).parent / "nca-scale")


def test_console_script_generates_readable_shards(tmp_path, tiny_yaml, repo_root, reference):
    out = tmp_path / "shards"
    proc = subprocess.run(
        [SCRIPT, "generate", "configs/nca/tiny.yaml", f"out={out}", "tokens=50000"],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stdout and "388 sequences" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert (m["sequences"], m["tokens"], m["tokens_requested"]) == (388, 388 * 129, 50000)  # ceil(50000 / 129)
    reader = ShardReader(str(out))
    picks = [0, 1, 200, 387]
    np.testing.assert_array_equal(reader.sequences(picks).astype(np.int64), reference(picks)[0])


def test_console_script_reports_bad_input_in_one_line(tmp_path, repo_root):
    proc = subprocess.run(
        [SCRIPT, "generate", "configs/nca/tiny.yaml", "out=foo://x", "tokens=50000"],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nca-scale: error: out=foo://x: unsupported URL scheme 'foo'; use a local path, file://, s3:// or memory://"
    ]
