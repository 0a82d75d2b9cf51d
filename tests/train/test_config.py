"""Bad input gets one clear error line (exit 2) from the CLI before any process or process group starts."""

import subprocess
import sys

import pytest
from train_helpers import ROOT

from nca_scale.cli import main
from nca_scale.train.config import from_args


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["backend=megatron", "parallel.nproc=3", "parallel.tp=2"], "does not divide the world size 3"),
        (["backend=megatron", "parallel.nproc=4", "parallel.tp=2", "parallel.pp=2", "parallel.dp=2"], "dp=2 x tp=2 x pp=2 = 8 != world size 4"),
        (["backend=megatron", "parallel.nproc=2", "parallel.tp=2", "model.n_heads=4", "model.d_model=66"], "not divisible by model.n_heads"),
        (["backend=megatron", "parallel.nproc=2", "parallel.tp=2", "model.n_heads=1", "model.d_model=64"], "n_heads=1 (kv heads 1) is not divisible by tp=2"),
        (["backend=megatron", "parallel.nproc=2", "parallel.pp=2", "model.n_layers=3"], "n_layers=3 is not divisible by pp=2 x vpp=1"),
        (["backend=megatron", "parallel.nproc=2", "parallel.pp=2", "parallel.vpp=2", "model.n_layers=2"], "n_layers=2 is not divisible by pp=2 x vpp=2"),
        (["backend=jax"], "unknown backend 'jax'"),
        (["backend=torch", "parallel.tp=2", "parallel.nproc=2"], "need backend=megatron"),
        (["resume=/nonexistent/ckpt"], "resume=/nonexistent/ckpt"),
        (["batch_size=6", "micro_batch=4"], "batch_size=6 is not a multiple"),
        (["deepspeed.zero=4", "backend=deepspeed"], "ZeRO stages are 0, 1, 2, 3"),
    ],
)
def test_layout_errors(overrides, message, capsys):
    assert main(["train", str(ROOT / "configs/train/cpu-tiny.yaml"), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_incomplete_checkpoint_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints" / "step_00000010"
    ckpt.mkdir(parents=True)  # a save that died before meta.json
    assert main(["train", str(ROOT / "configs/train/cpu-tiny.yaml"), f"resume={ckpt}"]) == 2
    assert "is incomplete" in capsys.readouterr().err


def test_errors_come_before_any_process_starts():
    # nproc=3 with tp=2 must fail in the parent: no torchrun, so it is fast and prints no launcher output
    proc = subprocess.run([sys.executable, "-c", "import sys; from nca_scale.cli import main; sys.exit(main(sys.argv[1:]))",
                           "train", "configs/train/cpu-tiny.yaml", "backend=megatron", "parallel.nproc=3", "parallel.tp=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "torch.distributed" not in proc.stderr and proc.stdout == ""


def test_derived_layout():
    cfg = from_args([str(ROOT / "configs/train/cpu-tiny.yaml"), "backend=megatron", "parallel.nproc=4", "parallel.tp=2", "batch_size=8", "micro_batch=2"])
    assert (cfg.data_parallel, cfg.grad_accum, cfg.tokens_per_step) == (2, 2, 8 * 128)
    assert from_args([str(ROOT / "configs/train/cpu-tiny.yaml"), "steps=100", "tokens=10000"]).total_steps == 10


def test_distributed_optimizer_checkpoint_refuses_a_tp_change(tmp_path, capsys):
    import json

    from nca_scale.config import to_dict

    ckpt = tmp_path / "checkpoints" / "step_00000003"
    ckpt.mkdir(parents=True)
    saved = from_args([str(ROOT / "configs/train/cpu-tiny.yaml"), "backend=megatron", "parallel.nproc=2", "parallel.tp=2",
                       "megatron.optimizer_layout=dp_reshardable"])  # fully_reshardable, the default at tp=2, reshards
    saved = to_dict(saved.resolved())
    meta = {"step": 3, "tokens": 0, "backend": "megatron", "config": saved, "layout": {"tp": 2, "pp": 1, "vpp": 1}}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert main(["train", str(ROOT / "configs/train/cpu-tiny.yaml"), "backend=megatron", f"resume={ckpt}"]) == 2
    assert "reshards over DP only, but tp changed" in capsys.readouterr().err
