"""End to end through the CLI: tokenizer train -> corpus tokenize -> nca-scale train from text shards with
held-out perplexity, on the torch and megatron backends; Dyck as a training source; eval-only refusal."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nca_scale import cli
from nca_scale.errors import UserError
from nca_scale.train.config import from_args
from nca_scale.train.data import BatchLoader, build_source, target_mask

ROOT = Path(__file__).parents[3]
CLI = Path(sys.executable).parent / "nca-scale"


@pytest.fixture(scope="module")
def text_data(code_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    assert cli.main(["tokenizer", "train", str(code_dir), f"out={d / 'tok'}", "vocab_size=800",
                     "max_train_bytes=1500000", "threads=2"]) == 0
    for split in ("train", "val", "eval"):
        assert cli.main(["corpus", "tokenize", str(code_dir), f"tokenizer={d / 'tok'}", f"out={d / split}",
                         f"split={split}", "seq_len=64", "tokens=200000", "sequences_per_shard=512"]) == 0
    return d


def train(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={out}", "wandb=disabled", "progress=false",
           "model.n_layers=2", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def evals(out: Path) -> list[float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [m["eval_ppl"] for m in lines if "eval_ppl" in m]


def run_backend(text_data, out: Path, backend: str) -> list[float]:
    p = train(out, "data.source=text_shards", f"data.shards={text_data / 'train'}",
              f"data.val_shards={text_data / 'val'}", "steps=8", "eval_every=4", "eval_batches=4", f"backend={backend}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "vocab 800" in p.stdout and "seq 64" in p.stdout
    ppl = evals(out)
    assert len(ppl) == 2 and all(math.isfinite(x) for x in ppl)
    assert ppl[-1] < ppl[0] < 2 * 800  # learning; the start is near-uniform over 800 pieces
    return ppl


@pytest.fixture(scope="module")
def torch_ppl(text_data, tmp_path_factory) -> list[float]:
    return run_backend(text_data, tmp_path_factory.mktemp("torch-run"), "torch")


@pytest.mark.slow
def test_train_and_perplexity_torch(torch_ppl):
    assert torch_ppl  # the fixture ran the checks


@pytest.mark.slow
def test_train_and_perplexity_megatron(text_data, torch_ppl, tmp_path):
    assert np.allclose(run_backend(text_data, tmp_path, "megatron"), torch_ppl, rtol=1e-3)


def test_cli_summaries(text_data, code_dir, capsys, tmp_path):
    m = json.loads((text_data / "train" / "manifest.json").read_text())
    assert m["sequences"] == math.ceil(200000 / 65) and m["tokens"] == m["sequences"] * 65
    assert cli.main(["corpus", "build", "code", f"out={code_dir}"]) == 0
    assert "(cached)" in capsys.readouterr().out
    assert cli.main(["corpus", "tokenize", str(code_dir), f"tokenizer={text_data / 'tok'}"]) == 2
    assert "out= is required" in capsys.readouterr().err
    assert cli.main(["corpus", "tokenize", str(code_dir), f"tokenizer={tmp_path}", f"out={tmp_path}"]) == 2
    assert "tokenizer train" in capsys.readouterr().err
    assert cli.main(["corpus", "tokenize", str(tmp_path), f"tokenizer={text_data / 'tok'}", f"out={tmp_path}"]) == 2
    assert "corpus build" in capsys.readouterr().err
    assert cli.main(["corpus", "list"]) == 0 and "code" in capsys.readouterr().out


def test_eval_only_never_trained_on(text_data):
    with pytest.raises(UserError, match="evaluation-only"):
        from_args(["configs/train/cpu-tiny.yaml", "data.source=text_shards", f"data.shards={text_data / 'eval'}"])
    cfg = from_args(["configs/train/cpu-tiny.yaml", "data.source=text_shards", f"data.shards={text_data / 'train'}",
                     f"data.val_shards={text_data / 'eval'}"])  # evaluating on it is what it is for
    assert cfg.seq_len == 64 and cfg.resolved().model.vocab_size == 800
    with pytest.raises(UserError, match="needs data.shards"):
        from_args(["configs/train/cpu-tiny.yaml", "data.source=text_shards"])


def test_text_without_val_shards_trains_unless_it_evaluates(text_data, tmp_path):
    """No data.val_shards: a run that evaluates is refused before it starts; one with eval_every=0 trains (the
    trainer builds no val split it would never read)."""
    shards = ["configs/train/cpu-tiny.yaml", "data.source=text_shards", f"data.shards={text_data / 'train'}"]
    with pytest.raises(UserError, match=r"eval_every=2 evaluates on data.val_shards, which is not set"):
        from_args([*shards, "eval_every=2"])
    p = train(tmp_path / "run", *shards[1:], "steps=1", "eval_every=0")
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(evals(tmp_path / "run")) == 0 and (tmp_path / "run" / "checkpoints" / "latest").is_file()


def test_dyck_source():
    cfg = from_args(["configs/train/cpu-tiny.yaml", "data.source=dyck", "data.dyck.k=8", "data.dyck.seq_len=32",
                     "batch_size=4", "micro_batch=2"])
    assert cfg.seq_len == 32 and cfg.resolved().model.vocab_size == 16
    loader = BatchLoader(build_source(cfg.data, "train"), target_mask(cfg.data), 4, 2, 0, 1)
    b = loader.batch(3)
    assert [x.shape for x in b.inputs] == [torch.Size([2, 32])] * 2 and bool(b.masks[0].all())
    val = build_source(cfg.data, "val").sequences([0])
    assert not torch.equal(val, build_source(cfg.data, "train").sequences([0]))


def test_shipped_data_configs(repo_root):
    from nca_scale import config as config_io
    from nca_scale.data.text.tokenizer import TokenizerConfig
    from nca_scale.train.config import DataConfig

    cfg = from_args(["configs/train/cpu-tiny.yaml", "data=configs/data/dyck-paper.yaml"])
    assert cfg.data.source == "dyck" and cfg.resolved().model.vocab_size == 128 and cfg.seq_len == 1024
    for path in sorted((repo_root / "configs" / "data").glob("tokenizer-*.yaml")):
        config_io.load(TokenizerConfig, path)
    text = config_io.from_dict(DataConfig, config_io.read_yaml(repo_root / "configs/data/text-web.yaml"), source="x")
    assert text.source == "text_shards"


def test_batches_are_a_function_of_step(text_data, tmp_path, caplog):
    import shutil

    from nca_scale.data.text.shards import TextShardReader

    cfg = from_args(["configs/train/cpu-tiny.yaml", "data.source=text_shards", f"data.shards={text_data / 'train'}",
                     "batch_size=8", "micro_batch=2", "eval_every=0"])
    rows = TextShardReader(str(text_data / "train")).sequences(np.arange(40 * 8, 41 * 8)).astype(np.int64)
    for rank in (0, 1):  # two data-parallel ranks take contiguous halves of global batch 40
        b = BatchLoader(build_source(cfg.data, "train"), target_mask(cfg.data), 8, 2, rank, 2).batch(40)
        got = torch.cat([torch.cat([i, t[:, -1:]], dim=1) for i, t in zip(b.inputs, b.targets)])
        assert torch.equal(got, torch.from_numpy(rows[rank * 4 : rank * 4 + 4]))
    # a corrupt shard stops the run with its name, or is skipped and reported when asked
    d = tmp_path / "train"
    shutil.copytree(text_data / "train", d)
    (d / "train-000000.tar").write_bytes(b"garbage")
    bad = from_args(["configs/train/cpu-tiny.yaml", "data.source=text_shards", f"data.shards={d}", "eval_every=0"])
    with pytest.raises(UserError, match="train-000000.tar is corrupt"):
        build_source(bad.data, "train").sequences([0])
    skip = from_args(["configs/train/cpu-tiny.yaml", "data.source=text_shards", f"data.shards={d}",
                      "data.skip_corrupt=true", "eval_every=0"])
    with caplog.at_level(logging.WARNING, logger="nca_scale.train.data"):
        src = build_source(skip.data, "train")
    assert any("skipped 1 corrupt shards (512 sequences)" in m for m in caplog.messages), caplog.messages
    assert torch.equal(src.sequences([0]), torch.from_numpy(
        TextShardReader(str(text_data / "train")).sequences([512]).astype(np.int64)))


def test_too_little_data_is_refused_before_any_process_starts_and_epochs_allow_passes(text_data, capsys, caplog):
    """Issue 25: a run that needs more training or validation sequences than its shards hold is one line with the
    numbers and the fix before anything starts (it failed at step 22); data.epochs=N allows N passes, logged, and
    sequence i then reads row i mod the shards' length."""
    from nca_scale.train import data_check

    shards = ["configs/train/cpu-tiny.yaml", "data.source=text_shards", f"data.shards={text_data / 'train'}",
              f"data.val_shards={text_data / 'val'}", "wandb=disabled", "progress=false"]
    have, have_val = data_check.held("text_shards", str(text_data / "train")), \
        data_check.held("text_shards", str(text_data / "val"))
    steps = have // 8 + 3  # batch_size 8: 3 steps past the end
    capsys.readouterr()
    assert cli.main(["train", *shards, f"out={text_data / 'refused'}", f"steps={steps}"]) == 2
    err = capsys.readouterr().err
    assert (f"the run reads {steps * 8:,} training sequences ({steps:,} steps x batch_size 8: 8 per step on each of "
            f"the dp=1 data-parallel ranks) but data.shards={text_data / 'train'} holds {have:,}") in err, err
    assert f"train at most steps={have // 8}" in err and "data.epochs=2" in err, err
    assert not (text_data / "refused").exists()
    assert cli.main(["train", *shards, f"out={text_data / 'refused'}", "steps=1", "eval_every=1",
                     f"eval_batches={have_val // 8 + 1}"]) == 2
    err = capsys.readouterr().err
    assert (f"each evaluation reads {(have_val // 8 + 1) * 8:,} validation sequences (eval_batches={have_val // 8 + 1} "
            f"x batch_size 8) but data.val_shards={text_data / 'val'} holds {have_val:,}; set "
            f"eval_batches={have_val // 8} or fewer") in err, err

    cfg = from_args([*shards, f"steps={steps}", "data.epochs=2"])
    with caplog.at_level(logging.INFO, logger="nca_scale.train.data_check"):
        data_check.check(cfg)
    assert f"data: the run reads {have:,} training sequences {steps * 8 / have:.2f} times" in caplog.text
    loader = BatchLoader(build_source(cfg.data, "train"), target_mask(cfg.data), 8, 8, 0, 1)
    last = loader.source.sequences(np.arange(steps * 8 - 8, steps * 8))
    assert torch.equal(last, loader.source.sequences(np.arange(steps * 8 - 8, steps * 8) - have))
    with pytest.raises(UserError, match="data.source=nca_stream is generated on the fly and never runs out"):
        from_args(["configs/train/cpu-tiny.yaml", "data.epochs=2"])


@pytest.mark.slow
def test_node_local_copies_stay_under_their_cap_and_are_gone_after_the_run(text_data, tmp_path):
    """Two ranks on one node share node-local copies of the text shards (made by the node's first rank): in the
    job's own directory under TMPDIR, never more than the cap NCA_SCALE_NODE_CACHE_GB (plus the copy just made,
    before the oldest goes), and removed when the run ends (before, they stayed for ever: ENOSPC on long runs)."""
    import threading
    import time

    temp, copy_bytes = tmp_path / "tmp", 512 * 65 * 2  # a shard: 512 rows of 65 uint16 tokens
    temp.mkdir()
    cap = 3.5 * copy_bytes
    seen, most, done = set(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            copies = list(temp.glob("nca_scale_text_*/*/*.npy"))
            seen.update(p.name for p in copies)
            most[0] = max(most[0], sum(p.stat().st_size for p in copies if p.exists()))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(temp), NCA_SCALE_NODE_CACHE_GB=str(cap / 1e9))
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={tmp_path / 'run'}", "wandb=disabled",
           "progress=false", "model.n_layers=2", "data.source=text_shards", f"data.shards={text_data / 'train'}",
           "parallel.nproc=2", "batch_size=64", "steps=36", "eval_every=0"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        done.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(seen) >= 4, seen  # the run went through more shards than the cap holds
    assert 0 < most[0] <= cap + copy_bytes, (most[0], cap)
    assert not list(temp.glob("nca_scale_text_*/*")), list(temp.rglob("*"))  # the job's directory is gone
