"""Fixtures for the evaluation tests: a tiny BIG-bench-shaped archive, a sentencepiece model, a trained run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from eval_helpers import CLI, ENV


def bigbench_tar(path: Path) -> Path:
    """The layout of bigbench-1.0.0.tar.gz: a generative task, a multiple-choice task with its own prefixes,
    a task with subtasks, one too small to keep, and noise (a task.py-only task, other files)."""
    tasks = {
        "toy_copy": {"name": "toy_copy", "description": "copy", "keywords": ["x"],
                     "examples": [{"input": f"say w{i}", "target": f"w{i}"} for i in range(40)]},
        "toy_choice": {"name": "toy_choice", "task_prefix": "Pick one.\n", "example_input_prefix": "\nQuestion: ",
                       "example_output_prefix": "\nAnswer: ",
                       "examples": [{"input": f"{i} is", "target_scores": {"even": int(i % 2 == 0), "odd": int(i % 2 == 1)}}
                                    for i in range(30)]},
        "toy_tiny": {"name": "toy_tiny", "examples": [{"input": "a", "target": "b"}] * 3},
    }
    subtasks = {"toy_sub/one": {"examples": [{"input": f"1+{i}", "target": [str(1 + i), f"{1 + i}.0"]} for i in range(20)]},
                "toy_sub/two": {"examples": [{"input": f"2+{i}", "target": str(2 + i)} for i in range(20)]}}
    base = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    with tarfile.open(path, "w:gz") as tar:
        def add(name, data: bytes):
            info = tarfile.TarInfo(base + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("README.md", b"not a task")
        add("toy_gen_py/task.py", b"# programmatic")
        for name, spec in tasks.items():
            add(f"{name}/task.json", json.dumps(spec).encode())
        add("toy_sub/task.json", json.dumps({"name": "toy_sub", "subtasks": ["one", "two"]}).encode())
        for name, spec in subtasks.items():
            add(f"{name}/task.json", json.dumps(spec).encode())
    return path


@pytest.fixture(scope="session")
def tiny_bigbench(tmp_path_factory) -> Path:
    return bigbench_tar(tmp_path_factory.mktemp("bb") / "bigbench-1.0.0.tar.gz")


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    """nca_scale.data.text's sentencepiece settings, trained on a few KB of stdlib source."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spm")
    stdlib = Path(os.__file__).parent
    (d / "c.txt").write_text("".join(p.read_text() for p in sorted((stdlib / "json").glob("*.py"))))
    spm.SentencePieceTrainer.train(
        input=str(d / "c.txt"), model_prefix=str(d / "tokenizer"), vocab_size=500, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True, user_defined_symbols=["\n"], unk_id=0, eos_id=1,
        bos_id=-1, pad_id=-1, num_threads=1, minloglevel=2, max_sentence_length=16384)
    return d / "tokenizer.model"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, repo_root) -> Path:
    """A tiny model trained for a few steps with `nca-scale train` (torch backend), evaluated by the trainer on
    the first batch (8 sequences) of the NCA val split at its last step."""
    out = tmp_path_factory.mktemp("run") / "run"
    r = subprocess.run([CLI, "train", "configs/train/cpu-tiny.yaml", f"out={out}", "steps=3", "eval_every=3",
                        "progress=false", "wandb=disabled", "data.nca.bank.size=8", "data.nca.bank.val_size=4"],
                       cwd=repo_root, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def text_run(tmp_path_factory, repo_root) -> Path:
    """A tiny model trained on text shards by the project's own pipeline: corpus build -> tokenizer train ->
    corpus tokenize (train and val) -> nca-scale train data.source=text_shards, evaluated at its last step."""
    d = tmp_path_factory.mktemp("text")
    stdlib = Path(os.__file__).parent
    files = sorted(str(p) for p in (stdlib / "json").glob("*.py")) + [str(stdlib / n) for n in ("textwrap.py", "csv.py",
                                                                                             "shlex.py", "glob.py")]
    (d / "corpus.yaml").write_text(json.dumps({"name": "tiny-code", "domain": "code", "val_fraction": 0.3,
                                               "sources": [{"files": files, "min_chars": 100}]}))
    steps = [
        ["corpus", "build", str(d / "corpus.yaml"), f"out={d / 'corpus'}"],
        ["tokenizer", "train", str(d / "corpus"), f"out={d / 'tok'}", "vocab_size=400"],
        ["corpus", "tokenize", str(d / "corpus"), f"tokenizer={d / 'tok'}", f"out={d / 'train'}", "seq_len=64"],
        ["corpus", "tokenize", str(d / "corpus"), f"tokenizer={d / 'tok'}", f"out={d / 'val'}", "split=val", "seq_len=64"],
        ["train", "configs/train/cpu-tiny.yaml", f"out={d / 'run'}", "data.source=text_shards", f"data.shards={d / 'train'}",
         f"data.val_shards={d / 'val'}", "steps=3", "eval_every=3", "eval_batches=1", "progress=false", "wandb=disabled"],
    ]
    for args in steps:
        r = subprocess.run([CLI, *args], cwd=repo_root, env=ENV, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"`nca-scale {' '.join(args[:2])}` failed: {r.stderr.strip()[-3000:]}"
    return d / "run"
