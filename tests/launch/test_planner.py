"""launch/planner.py and what submit does with it: the two cases issue 23 names (the 1.6B recipe on 2 x 8 GPUs
is communication-bound and one node is faster; one H100 with the auto micro-batch needs more memory than it has),
on the shipped profile, without Slurm."""

from __future__ import annotations

import pytest

from nca_scale import cli
from nca_scale.errors import UserError
from nca_scale.launch.planner import Hardware, assess
from nca_scale.model.memory import GB
from nca_scale.train.config import from_args

RECIPE = "configs/train/paper-stage1.yaml"


def test_two_nodes_of_data_parallelism_are_communication_bound_and_one_node_is_faster():
    a = assess(from_args([RECIPE], world=16), Hardware(), nodes=2, gpus_per_node=8)
    own = a.own
    assert (own.layout.dp, own.layout.micro_batch, own.layout.grad_accum) == (16, 2, 1)
    assert a.replanned is None and own.fits
    # 7.5 GB of fp32 gradients reduce-scattered and 3.7 GB of bf16 parameters gathered over InfiniBand per step
    assert own.memory.grads == pytest.approx(7.49 * GB, rel=1e-3)
    assert own.memory.weights == 2 * own.memory.grads // 4
    step = own.step
    assert step.dp > 3 * step.compute and step.compute == pytest.approx(0.051, rel=0.05)
    assert step.mfu == pytest.approx(0.10, abs=0.02)
    one_node = a.fewer_nodes or a.faster
    assert one_node is not None and a.fewer_nodes.nodes == 1
    assert a.fewer_nodes.step.total < 0.5 * step.total
    text = "\n".join(a.lines())
    assert "communication-bound" in text and "on fewer nodes: 1 node(s) x 8 GPU(s)" in text and "cluster.nodes=1" in text


def test_one_h100_with_the_auto_micro_batch_is_replanned_with_the_reason():
    a = assess(from_args([RECIPE], world=1), Hardware(), nodes=1, gpus_per_node=1)
    assert (a.own.layout.micro_batch, a.own.layout.grad_accum) == (16, 2)
    assert not a.own.fits and a.own.memory.total > 85 * GB
    assert a.overrides == [("micro_batch", "8")]
    assert a.replanned.fits and (a.replanned.layout.micro_batch, a.replanned.layout.grad_accum) == (8, 4)
    reason = next(line for line in a.lines() if line.startswith("re-planned"))
    assert "micro-batch 16 x 2 accumulation would need 91.8 GB" in reason and "76 GB usable on H100" in reason
    # an H200's 141 GB hold it as it is
    assert assess(from_args([RECIPE], world=1), Hardware(gpu="H200", memory_gb=141), 1, 1).replanned is None


def test_a_fixed_micro_batch_that_cannot_fit_is_refused_with_the_numbers_and_a_layout_that_fits():
    with pytest.raises(UserError) as e:
        assess(from_args([RECIPE, "auto_micro_batch=false"], world=1), Hardware(), 1, 1)
    msg = str(e.value)
    assert "needs 91.8 GB" in msg and "more than the 76 GB usable of H100 80 GB" in msg
    assert "; fits: 1 node(s) x 1 GPU(s)" in msg and "micro_batch=" in msg


@pytest.fixture
def no_slurm(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_submit_dry_run_prints_layout_memory_and_estimate(no_slurm, tmp_path, capsys):
    rc = cli.main(["submit", RECIPE, "cluster=launchers/gpu-example.yaml", "dry_run=true", f"out={tmp_path / 'r'}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "#  layout: 2 node(s) x 8 GPU(s) = 16 ranks; tp 1 x pp 1 x dp 16" in out
    assert "#  memory per GPU: 19.9 GB (weights 3.75, grads 7.49, optimizer 1.40" in out
    assert "of 80 GB (H100; 76 GB usable)" in out and "#  estimate: ~" in out and "MFU 10%" in out
    assert "#  communication-bound:" in out and "#  on fewer nodes: 1 node(s) x 8 GPU(s)" in out


def test_submit_on_one_h100_replans_the_micro_batch_and_the_job_runs_it(no_slurm, tmp_path, capsys):
    rc = cli.main(["submit", RECIPE, "cluster=launchers/gpu-example.yaml", "cluster.nodes=1",
                   "cluster.gpus_per_node=1", "dry_run=true", f"out={tmp_path / 'r'}"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "micro_batch=8" in next(line for line in captured.out.splitlines() if line.startswith("#  nca-scale train"))
    assert "batch 32 = micro-batch 8 x 4 accumulation" in captured.out
    assert "#  re-planned (micro_batch=8): " in captured.out and "would need 91.8 GB" in captured.out
    # a profile for bigger GPUs keeps the recipe's micro-batch
    rc = cli.main(["submit", RECIPE, "cluster=launchers/gpu-example.yaml", "cluster.nodes=1",
                   "cluster.gpus_per_node=1", "cluster.hardware.memory_gb=141", "dry_run=true", f"out={tmp_path / 'r'}"])
    out = capsys.readouterr().out
    assert rc == 0 and "re-planned" not in out and "micro-batch 16 x 2 accumulation" in out


def test_submit_refuses_a_layout_that_cannot_fit(no_slurm, tmp_path, capsys):
    rc = cli.main(["submit", RECIPE, "cluster=launchers/gpu-example.yaml", "cluster.nodes=1",
                   "cluster.gpus_per_node=1", "auto_micro_batch=false", "dry_run=true", f"out={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "needs 91.8 GB" in err


def test_bad_hardware_is_one_line(no_slurm, tmp_path, capsys):
    rc = cli.main(["submit", RECIPE, "cluster=launchers/gpu-example.yaml", "cluster.hardware.memory_gb=0",
                   "dry_run=true", f"out={tmp_path / 'r'}"])
    assert rc == 2 and "cluster.hardware.memory_gb=0" in capsys.readouterr().err


def test_sweep_plan_prints_each_runs_layout_memory_and_step(tmp_path, capsys):
    rc = cli.main(["sweep", "plan", "configs/sweeps/paper-1.6b.yaml", "cluster=launchers/gpu-example.yaml",
                   f"out={tmp_path / 'sweep'}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[2].endswith("LAYOUT  GB/GPU  STEP-S  MFU")
    stage1 = next(line for line in lines if line.startswith("s1-paper-1.6b-nca-b50-t163840k-s0 "))
    assert stage1.endswith("1x1x16 m2x1    19.9   0.234  10%")  # the 32-sequence recipe on 2 x 8: dp-bound
    stage2 = next(line for line in lines if line.startswith("s2-web-paper-1.6b-scratch-"))
    assert stage2.endswith("1x1x16 m16x2    70.7   0.814  45%")  # 512 sequences: compute-bound, and it fits
    assert "# LAYOUT tp x pp x dp, micro-batch x accumulation on 2 x 8 H100" in out
