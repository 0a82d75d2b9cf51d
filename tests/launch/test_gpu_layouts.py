"""Every shipped GPU recipe on every shipped GPU profile at 1, 2 and 4 nodes: `nca-scale submit ... dry_run=true`
on a machine without the Slurm client (PATH holds no sinfo/srun), as on a laptop. The layout is checked, the
batch script printed, nothing queued or written; the global batch (the recipe) is the same on every layout.

configs/train/cpu-*.yaml are CPU recipes; every other shipped train config is meant for GPUs.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from launch_helpers import CLI, ROOT

from nca_scale import cli, config
from nca_scale.launch import profile
from nca_scale.train.config import from_args

GPU_CONFIGS = sorted(p.name for p in (ROOT / "configs/train").glob("*.yaml") if not p.name.startswith("cpu-"))
GPU_PROFILES = sorted(str(p.relative_to(ROOT)) for d in ("configs/cluster", "launchers") for p in (ROOT / d).glob("*.yaml")
                      if profile.load(str(p))[0].gpus_per_node > 0)
NODES = (1, 2, 4)
# (micro-batch, accumulation) per GPU count, worked out by hand from each recipe's batch_size / micro_batch:
# a rank's share is batch_size / GPUs, run as the largest micro-batch <= micro_batch that divides it
EXPECTED = {
    "paper-stage1.yaml": {8: (4, 1), 16: (2, 1), 32: (1, 1)},  # batch 32, micro <= 16
    "ft-bbl.yaml": {8: (8, 1), 16: (4, 1), 32: (2, 1)},  # batch 64, micro <= 16
    "ft-gsm8k.yaml": {8: (16, 4), 16: (16, 2), 32: (16, 1)},  # batch 512, micro <= 16
}
LAYOUT = re.compile(r"layout: (\d+) node\(s\) x (\d+) GPU\(s\) = (\d+) ranks; tp (\d+) x pp (\d+) x dp (\d+); "
                    r"batch (\d+) = micro-batch (\d+) x (\d+) accumulation")


@pytest.fixture(scope="module")
def text_shards(tmp_path_factory) -> str:
    """A small packed-text shard set (real corpus -> tokenizer -> shards) for the fine-tuning recipes, which
    read their vocabulary and sequence length from it."""
    from nca_scale.data.text.corpus import Corpus, CorpusConfig, SourceConfig, build_corpus
    from nca_scale.data.text.shards import PackConfig, pack
    from nca_scale.data.text.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

    d = tmp_path_factory.mktemp("text")
    words = "the model reads a grid of cells and learns the rule that moves them one step".split()
    rng = random.Random(0)
    with open(d / "docs.jsonl", "w") as f:
        for _ in range(200):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(120))}) + "\n")
    corpus = CorpusConfig(name="tiny", domain="web", sources=[SourceConfig(files=[str(d / "docs.jsonl")])],
                          val_fraction=0.1)
    build_corpus(corpus, str(d / "corpus"))
    built = Corpus(str(d / "corpus"))
    train_tokenizer([built], TokenizerConfig(vocab_size=300, threads=1), str(d / "tok"))
    pack(built, "train", Tokenizer(str(d / "tok")), str(d / "shards"), PackConfig(seq_len=64, threads=1))
    return str(d / "shards")


@pytest.fixture
def no_slurm(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_there_are_gpu_recipes_and_profiles():
    assert "paper-stage1.yaml" in GPU_CONFIGS and "launchers/gpu-example.yaml" in GPU_PROFILES


@pytest.mark.parametrize("nodes", NODES)
@pytest.mark.parametrize("prof", GPU_PROFILES)
@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_recipe_dry_run_without_slurm(name, prof, nodes, text_shards, no_slurm, tmp_path, capsys):
    path = f"configs/train/{name}"
    needs_text = config.read_yaml(ROOT / path)["data"].get("source") == "text_shards"
    data = [f"data.shards={text_shards}"] if needs_text else []  # the fine-tunes name their data on the command line
    out = tmp_path / "run"
    rc = cli.main(["submit", path, f"cluster={prof}", f"cluster.nodes={nodes}", "dry_run=true", f"out={out}", *data])
    text = capsys.readouterr().out
    assert rc == 0, text
    gpus = profile.load(prof)[0].gpus_per_node
    m = LAYOUT.search(text)
    assert m, text
    got_nodes, per_node, world, tp, pp, dp, batch, micro, accum = map(int, m.groups())
    assert (got_nodes, per_node, world) == (nodes, gpus, nodes * gpus)
    assert tp * pp * dp == world
    recipe = from_args([path, *data])  # as written, on one process
    assert batch == recipe.batch_size and micro <= recipe.micro_batch
    assert micro * accum * dp == recipe.batch_size  # the global batch is kept
    if name in EXPECTED and (tp, pp) == (1, 1):
        assert (micro, accum) == EXPECTED[name][world]
    assert f"#SBATCH --nodes={nodes}" in text and f"#SBATCH --gpus-per-node={gpus}" in text
    assert f"#SBATCH --ntasks-per-node={gpus}" in text and "nothing queued" in text
    assert not out.exists()  # nothing written


def test_paper_stage1_dry_run_exits_0_with_no_slurm_installed(tmp_path):
    """The command a user runs on a laptop, exactly; only the virtualenv on PATH."""
    launch = ROOT / "runs/paper-stage1/launch"
    existed = launch.exists()
    proc = subprocess.run([str(CLI), "submit", "configs/train/paper-stage1.yaml", "cluster=launchers/gpu-example.yaml",
                           "dry_run=true"], cwd=ROOT, env={"PATH": str(Path(sys.executable).parent),
                                                           "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "layout: 2 node(s) x 8 GPU(s) = 16 ranks; tp 1 x pp 1 x dp 16; batch 32 = micro-batch 2 x 1 " \
        "accumulation x dp 16" in proc.stdout
    assert "#!/bin/bash" in proc.stdout and "srun" in proc.stdout
    assert launch.exists() == existed


def test_a_batch_that_cannot_be_kept_is_refused_with_the_fix(no_slurm, tmp_path, capsys):
    # 8 nodes x 8 GPUs of data parallelism for a 32-sequence batch: one line naming the fix, exit 2
    rc = cli.main(["submit", "configs/train/paper-stage1.yaml", "cluster=launchers/gpu-example.yaml",
                   "cluster.nodes=8", "dry_run=true", f"out={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "batch_size=32 (the recipe's global batch) cannot be split evenly over dp=64" in err
    # the fix it names: tensor parallelism brings dp to 32
    rc = cli.main(["submit", "configs/train/paper-stage1.yaml", "cluster=launchers/gpu-example.yaml",
                   "cluster.nodes=8", "parallel.tp=2", "dry_run=true", f"out={tmp_path / 'run'}"])
    assert rc == 0 and "tp 2 x pp 1 x dp 32; batch 32 = micro-batch 1 x 1" in capsys.readouterr().out


def test_auto_micro_batch_keeps_the_interleaved_schedule_valid(no_slurm):
    # share 12 per rank, micro <= 4: 4 would give 3 micro-batches, not a multiple of pp=2; 3 gives 4
    cfg = from_args(["configs/train/cpu-tiny.yaml", "backend=megatron", "parallel.nproc=2", "parallel.pp=2", "parallel.vpp=2", "model.n_layers=4",
                     "batch_size=12", "micro_batch=4", "auto_micro_batch=true"])
    assert (cfg.chosen_micro_batch(), cfg.grad_accum) == (3, 4)
    assert cfg.resolved().micro_batch == 3  # what the backends read
    plain = from_args(["configs/train/cpu-tiny.yaml", "batch_size=12", "micro_batch=4", "parallel.nproc=1"])
    assert (plain.chosen_micro_batch(), plain.grad_accum) == (4, 3)  # without auto_micro_batch, micro_batch is exact
