"""srun gets the profile's cpus_per_task: since Slurm 22.05 a job step does not inherit the job's
--cpus-per-task, so the batch script exports SRUN_CPUS_PER_TASK before srun (the dry run prints the script; no
Slurm client needed)."""

from __future__ import annotations

from nca_scale.cli import main

CONFIG = "configs/train/cpu-tiny.yaml"


def _script(tmp_path, capsys, monkeypatch, *extra: str) -> list[str]:
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))
    assert main(["submit", CONFIG, "cluster=launchers/gpu-example.yaml", "cluster.nodes=1", "batch_size=64",
                 "dry_run=true", f"out={tmp_path / 'run'}", *extra]) == 0
    return capsys.readouterr().out.splitlines()


def test_srun_tasks_get_the_profiles_cpus(tmp_path, capsys, monkeypatch):
    lines = _script(tmp_path, capsys, monkeypatch, "cluster.cpus_per_task=7")
    exported = [i for i, line in enumerate(lines) if line == "export SRUN_CPUS_PER_TASK=7"]
    srun = [i for i, line in enumerate(lines) if line.startswith("srun ")]
    assert "#SBATCH --cpus-per-task=7" in lines
    assert len(exported) == 1 and len(srun) == 1 and exported[0] < srun[0], lines
