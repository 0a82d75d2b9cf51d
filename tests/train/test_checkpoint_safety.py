"""Checkpoint integrity: the commit protocol, verification on load, fallback past a corrupt newest
checkpoint, keep-last-k, refused resumes, weights-only loading, and a mirror on an fsspec URL."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import CLI, FAST, ROOT, state, train

from nca_scale.cli import main
from nca_scale.errors import UserError
from nca_scale.train import checkpoint
from nca_scale.train.checkpoint import commit as checkpoint_commit
from nca_scale.train.checkpoint import select as checkpoint_select
from nca_scale.train.checkpoint import verify as checkpoint_verify
from nca_scale.train.config import from_args
from nca_scale.train.launch_record import LAUNCH_ENV

CONFIG = str(ROOT / "configs/train/cpu-tiny.yaml")


def _cfg(tmp_path: Path, *overrides: str):
    return from_args([CONFIG, f"out={tmp_path / 'run'}", *overrides]).resolved()  # as the trainer holds it


def _save(cfg, step: int, value: float | None = None) -> Path:
    """A committed torch checkpoint at `step` the way Checkpointer.save makes one (one rank)."""
    staging = checkpoint_commit.begin(cfg.out, step)
    torch.save({"model": {"w": torch.full((64,), float(step if value is None else value))}}, staging / "state.pt")
    return checkpoint_commit.commit(cfg, step, step * cfg.tokens_per_step)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_commit_publishes_whole_directories_and_moves_latest_last(tmp_path):
    cfg = _cfg(tmp_path, "checkpoint.keep_last=5")
    first = _save(cfg, 2)
    assert checkpoint.latest_name(cfg.out) == first.name and checkpoint_verify.verify(first) is None
    assert set(checkpoint.read_meta(first)["files"]) == {"state.pt"}
    leftover = checkpoint_commit.begin(cfg.out, 4)  # a save killed before its commit
    (leftover / "state.pt").write_bytes(b"partial")
    assert checkpoint.complete_checkpoints(cfg.out) == [first]  # staging directories are never listed
    assert checkpoint_select.latest_verified(cfg.out) == first
    second = _save(cfg, 4)  # the next save clears the leftovers first
    assert sorted(p.name for p in checkpoint.root(cfg.out).iterdir()) == ["latest", first.name, second.name]
    assert checkpoint.latest_name(cfg.out) == second.name


@pytest.mark.parametrize("damage, problem", [
    (lambda p: _flip_byte(p / "state.pt"), "state.pt does not match its sha256 in meta.json"),
    (lambda p: (p / "state.pt").write_bytes((p / "state.pt").read_bytes()[:100]), "state.pt has 100 bytes"),
    (lambda p: (p / "state.pt").unlink(), "state.pt is missing"),
    (lambda p: (p / "meta.json").write_text('{"step": '), "unreadable meta.json"),
])
def test_auto_resume_reports_a_corrupt_newest_checkpoint_and_uses_the_previous(tmp_path, damage, problem):
    cfg = _cfg(tmp_path)
    older, newer = _save(cfg, 2), _save(cfg, 4)
    damage(newer)
    lines = []
    assert checkpoint_select.resolve(cfg, "auto", report=lines.append) == older
    assert len(lines) == 1 and problem in lines[0] and "falling back to the previous one" in lines[0], lines


def _point_latest_at(cfg, name: str, before: Path) -> None:
    """`latest` names `name`, last written before checkpoint `before` was committed."""
    pointer = checkpoint.root(cfg.out) / "latest"
    pointer.write_text(f"{name}\n")
    t = (before / "meta.json").stat().st_mtime_ns - 10**9
    os.utime(pointer, ns=(t, t))


def test_a_checkpoint_committed_but_not_yet_pointed_to_is_used(tmp_path):
    cfg = _cfg(tmp_path)
    _save(cfg, 2)
    newer = _save(cfg, 4)
    _point_latest_at(cfg, "step_00000002", before=newer)  # killed between rename and pointer
    assert checkpoint_select.resolve(cfg, "auto") == newer


def test_auto_resume_follows_latest_past_a_newer_checkpoint_of_an_older_run(tmp_path):
    """An older run's step 5 left beside a new run whose `latest` names step 2: resume=auto takes step 2."""
    cfg = _cfg(tmp_path)
    old = _save(cfg, 5)
    ours = _save(cfg, 2)
    assert checkpoint.latest_name(cfg.out) == ours.name and old.is_dir()
    assert checkpoint_select.resolve(cfg, "auto") == ours


def test_auto_resume_without_a_checkpoint_says_so(tmp_path):
    cfg = _cfg(tmp_path)
    lines = []
    assert checkpoint_select.resolve(cfg, "auto", report=lines.append) is None
    assert lines == [f"resume=auto: no checkpoint in {checkpoint.root(cfg.out)}; starting from step 0"]


def test_explicit_resume_of_a_corrupt_checkpoint_is_refused(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    bad = _save(cfg, 2)
    _flip_byte(bad / "state.pt")
    assert main(["train", CONFIG, f"out={cfg.out}", f"resume={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is corrupt: state.pt does not match its sha256" in err and len(err.splitlines()) == 1


def test_keep_last_never_removes_the_checkpoint_latest_names(tmp_path):
    cfg = _cfg(tmp_path, "checkpoint.keep_last=1")
    _save(cfg, 2)
    _save(cfg, 4)
    assert [p.name for p in checkpoint.complete_checkpoints(cfg.out)] == ["step_00000004"]
    (checkpoint.root(cfg.out) / "latest").write_text("step_00000004\n")
    shutil.copytree(checkpoint.step_dir(cfg.out, 4), checkpoint.step_dir(cfg.out, 6))  # committed, not pointed to
    checkpoint_commit.prune(cfg.out, 1)
    assert [p.name for p in checkpoint.complete_checkpoints(cfg.out)] == ["step_00000004", "step_00000006"]


def test_deepspeed_zero_resume_under_another_dp_size_is_refused(tmp_path, capsys):
    saved = _cfg(tmp_path, "backend=deepspeed", "deepspeed.zero=2", "parallel.nproc=2")
    path = checkpoint_commit.begin(saved.out, 3)
    (path / "ds").mkdir()
    checkpoint_commit.commit(saved, 3, 0)
    ckpt = checkpoint.step_dir(saved.out, 3)
    assert main(["train", CONFIG, f"out={saved.out}", "backend=deepspeed", "deepspeed.zero=2", "parallel.nproc=1", f"resume={ckpt}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds DeepSpeed ZeRO-2 state partitioned over dp=2, but this run has dp=1; resume with parallel.nproc=2" in err


# ---- weights-only loading ----------------------------------------------------------------------------
class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/nca_scale_pwned",))


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for path in (ROOT / "nca_scale").rglob("*.py"):
        text = path.read_text()
        calls += [(path, m.group(0)) for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text)]
    assert calls and all("weights_only=True" in c for _, c in calls), calls


def test_a_pickled_exploit_in_a_checkpoint_is_refused_even_by_deepspeed(tmp_path):
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    target = Path("/tmp/nca_scale_pwned")
    target.unlink(missing_ok=True)
    evil = tmp_path / "state.pt"
    torch.save({"model": _Exploit()}, evil)
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    with checkpoint.weights_only_loads("deepspeed"), pytest.raises(pickle.UnpicklingError, match="Weights only"):
        TorchCheckpointEngine().load(str(evil))  # upstream passes weights_only=False
    assert not target.exists()
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before  # restored: nothing leaks into the process


def test_forcing_unsafe_loads_is_refused(monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UserError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set"):
        with checkpoint.weights_only_loads("torch"):
            pass


# ---- end to end: a real run, a corrupted newest checkpoint, a mirror ----------------------------------
RUN = [*FAST, "model.n_layers=2", "checkpoint.every=2", "schedule.total=6"]


def test_resume_skips_a_corrupt_checkpoint_and_a_mirror_restores_lost_ones(tmp_path):
    url = f"file://{tmp_path / 'mirror'}"
    out = tmp_path / "run"
    train(out, *RUN, "steps=4", f"checkpoint.url={url}")
    mirrored = tmp_path / "mirror"
    assert (mirrored / "latest").read_text().strip() == "step_00000004"
    assert json.loads((mirrored / "step_00000004" / "meta.json").read_text())["step"] == 4
    _flip_byte(checkpoint.step_dir(out, 4) / "dcp/__0_0.distcp")
    proc = train(out, *RUN, "steps=6", "resume=auto")  # no mirror: falls back to step 2 and redoes 3-4
    assert "step_00000004 is unusable (dcp/__0_0.distcp does not match its sha256" in proc.stdout
    assert "resumed from" in proc.stdout and "step_00000002 at step 2" in proc.stdout
    elsewhere = tmp_path / "elsewhere"  # a new machine: no local checkpoints, only the mirror
    proc = train(elsewhere, *RUN, "steps=6", "resume=auto", f"checkpoint.url={url}")
    assert "fetched" in proc.stdout and "at step 4" in proc.stdout
    final = state(checkpoint.step_dir(elsewhere, 6))
    assert all(torch.equal(final[k], v) for k, v in state(checkpoint.step_dir(out, 6)).items())


@pytest.mark.parametrize("overrides, message", [
    (["checkpoint.url=gs://b/x"], "checkpoint.url=gs://b/x: unsupported URL scheme 'gs'; use a local path, file://"),
    (["checkpoint.url=s3://"], "checkpoint.url=s3://: no bucket given; write s3://bucket/prefix"),
    (["on_nonfinite=skip"], "key 'on_nonfinite' must be one of 'stop', 'rollback', got 'skip'"),
], ids=["url-scheme", "url-bucket", "on-nonfinite"])
def test_bad_reliability_settings_are_one_line_errors(overrides, message, tmp_path, capsys):
    assert main(["train", CONFIG, f"out={tmp_path / 'run'}", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


# Imported by every Python process of a run (PYTHONPATH): logs each file checksummed, with the process id.
SITECUSTOMIZE = """
import os
from nca_scale.train.checkpoint import verify as checkpoint_verify
_inner = checkpoint_verify.sha256
def _logged(path):
    with open(os.environ["SHA_LOG"], "a") as f:
        f.write(f"{os.getpid()} {path}\\n")
    return _inner(path)
checkpoint_verify.sha256 = _logged
"""


def test_a_resumed_checkpoint_is_checksummed_once_per_job(tmp_path):
    """Verifying a checkpoint reads all of it: the `nca-scale train` that starts the ranks verifies it and hands
    it over, and ranks started by an outside launcher (torchrun here, srun on a cluster) let rank 0 verify and
    broadcast its choice, instead of every process reading every file again."""
    out = tmp_path / "run"
    run = ["parallel.nproc=2", "checkpoint.every=2", "eval_every=0"]
    train(out, *run, "steps=2")
    saved = checkpoint.step_dir(out, 2)
    files = len(checkpoint.read_meta(saved)["files"])
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)

    def resume(log: Path, cmd: list[str]) -> list[str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(hook), "SHA_LOG": str(log)}
        env.pop(LAUNCH_ENV, None)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"resumed from {saved} at step 2" in proc.stdout, proc.stdout
        return [line.split()[0] for line in log.read_text().splitlines() if str(saved) in line]

    by_cli = resume(tmp_path / "cli.log", [str(CLI), "train", CONFIG, f"out={out}", *FAST, *run, "steps=3", "resume=auto"])
    assert len(by_cli) == files and len(set(by_cli)) == 1  # each file once, by one process
    shutil.rmtree(checkpoint.step_dir(out, 3), ignore_errors=True)
    worker = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
              "nca_scale.train.worker", CONFIG, f"out={out}", *FAST, *run, "steps=3", "resume=auto"]
    by_ranks = resume(tmp_path / "ranks.log", worker)
    assert len(by_ranks) == files and len(set(by_ranks)) == 1
