"""A dry run never needs a live Slurm (issue 25): with a Slurm client that cannot reach its cluster (or belongs
to another one), `submit ... dry_run=true` and `sweep launch ... dry_run=true` check everything offline, call no
Slurm command and say which live checks they skipped; check_cluster=true asks for them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from nca_scale import cli

SLURM = ("sinfo", "squeue", "sacct", "sbatch", "scontrol", "srun", "scancel")


@pytest.fixture
def unreachable_slurm(tmp_path, monkeypatch) -> Path:
    """A Slurm client whose every command fails as one without its controller does, and logs that it ran."""
    bin_dir, calls = tmp_path / "slurm-bin", tmp_path / "slurm-calls"
    bin_dir.mkdir()
    for name in SLURM:
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho {name} >> {calls}\n"
                          "echo 'slurm_load_partitions: Unable to contact slurm controller (connect failure)' >&2\n"
                          "exit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return calls


def test_submit_dry_run_is_offline_and_check_cluster_asks_the_live_cluster(unreachable_slurm, tmp_path, capsys):
    args = ["submit", "configs/train/paper-stage1.yaml", "cluster=launchers/gpu-example.yaml", "dry_run=true",
            f"out={tmp_path / 'run'}"]
    assert cli.main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "# offline dry run: config, profile and layout checked here; skipped the live checks (sinfo" in out
    assert "layout: 2 node(s) x 8 GPU(s) = 16 ranks" in out and "#SBATCH" in out
    assert not unreachable_slurm.exists()  # no Slurm command ran
    assert cli.main([*args, "check_cluster=true"]) == 2
    assert "Unable to contact slurm controller" in capsys.readouterr().err
    assert unreachable_slurm.read_text().split() == ["sinfo"]


def test_sweep_launch_dry_run_needs_no_slurm(unreachable_slurm, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="nca_scale.launch.sweep")
    rc = cli.main(["sweep", "launch", "configs/sweeps/paper-1.6b.yaml", "cluster=launchers/gpu-example.yaml",
                   "dry_run=true", f"out={tmp_path / 'sweep'}"])
    assert rc == 0, capsys.readouterr().err
    assert "offline dry run: skipped the live checks" in caplog.text and "nca-scale train" in caplog.text
    assert not unreachable_slurm.exists()
