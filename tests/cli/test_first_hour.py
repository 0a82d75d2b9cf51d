"""A new user's first hour (issue 17), through the real CLI entry point: run folders that cannot be mixed up,
export that cannot shadow a run, keys the data source ignores, help generated from the config dataclasses,
and one line (exit 2, nothing created) instead of a traceback."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from nca_scale import cli
from nca_scale.config import load
from nca_scale.train import checkpoint
from nca_scale.train.config import TrainConfig, from_args

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs/train/cpu-tiny.yaml")
NCA = str(REPO / "configs/nca/tiny.yaml")
NCA_SCALE = Path(sys.executable).parent / "nca-scale"
# one tiny step after another: small rule banks (bank building dominates start-up), no wandb, no bar
FAST = ["data.nca.bank.size=8", "data.nca.bank.val_size=4", "wandb=disabled", "progress=false", "eval_every=0",
        "prefetch=false"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def refused(capsys, *args: str) -> str:
    """The one error line of a command that must be refused."""
    rc, _, err = run(capsys, *args)
    assert rc == 2, (args, err)
    assert err.startswith("nca-scale: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def train(out: Path, *args: str) -> str:
    """A training run in a child process (training in-process would leave its process group, RANK and log
    handlers behind for the rest of the suite); its stdout."""
    proc = subprocess.run([str(NCA_SCALE), "train", CONFIG, f"out={out}", *FAST, *args], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def listing(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


FIRST = ["steps=2", "checkpoint.every=1", "resume=auto"]


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> tuple[Path, str]:
    """A run of 2 steps with a checkpoint after each, started with resume=auto in a new folder: (its folder,
    its stdout). Tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("first_hour") / "run"
    return out, train(out, *FIRST)


@pytest.fixture(scope="module")
def finished(first) -> Path:
    return first[0]


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


# ---- run folders ------------------------------------------------------------------------------------------
def test_training_into_a_folder_that_holds_a_run_is_refused_and_changes_nothing(finished, capsys):
    before = listing(finished)
    err = refused(capsys, "train", CONFIG, f"out={finished}", *FAST, "steps=1")
    assert f"out={finished} already holds a run" in err and "resume=auto" in err and "overwrite=true" in err
    assert listing(finished) == before


def test_overwrite_moves_the_old_run_aside_whole(run_copy):
    before = listing(run_copy)
    stdout = train(run_copy, "steps=1", "overwrite=true")
    aside = [p for p in run_copy.parent.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and listing(aside[0]) == before  # the old run, untouched, in one place
    assert f"moved the old run in {run_copy} to {aside[0]}" in stdout
    steps = [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1] and [p.name for p in checkpoint.complete_checkpoints(run_copy)] == ["step_00000001"]


def test_overwrite_and_resume_auto_contradict(run_copy, capsys):
    err = refused(capsys, "train", CONFIG, f"out={run_copy}", *FAST, "overwrite=true", "resume=auto")
    assert "overwrite=true" in err and "resume=auto" in err


def test_resume_auto_follows_latest_not_the_newest_directory(run_copy):
    """A stale step_5 of an older run beside this run's step 2 (`latest`): resume=auto continues step 2."""
    stale = checkpoint.step_dir(run_copy, 5)
    shutil.copytree(checkpoint.step_dir(run_copy, 2), stale)  # committed before `latest` last moved
    os.utime(stale / checkpoint.META, ns=(1, 1))
    stdout = train(run_copy, "steps=3", "resume=auto")
    assert f"resumed from {checkpoint.step_dir(run_copy, 2)} at step 2" in stdout, stdout
    assert checkpoint.latest_name(run_copy) == "step_00000003"


def test_resume_auto_without_a_checkpoint_says_so(first):
    out, stdout = first
    assert f"resume=auto: no checkpoint in {out / 'checkpoints'}; starting from step 0" in stdout


def test_a_run_ends_with_a_summary_line_also_without_the_progress_bar(first):
    """progress=false (FAST): the last line says how the run ended, its step of total, loss and checkpoint."""
    out, stdout = first
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(f"[nca-scale] {out}: finished, step 2/2, loss ") and "checkpoint step_00000002" in last


def test_init_from_takes_a_run_folder_and_its_latest_like_export_and_eval(finished, tmp_path):
    """Issue 25: init_from=RUN was refused ("incomplete (no meta.json)") and RUN/checkpoints/latest was "not a
    checkpoint directory", while export and eval took run folders. One resolver (transfer.checkpoint_named) now
    serves all three."""
    from nca_scale.analysis.eval.model_io import resolve
    from nca_scale.train import transfer

    step2 = checkpoint.step_dir(finished, 2)
    for named in (finished, finished / "checkpoints", finished / "checkpoints/latest", step2):
        assert transfer.source(from_args([CONFIG, f"init_from={named}"])) == step2
        assert resolve(named) == step2
    stdout = train(tmp_path / "next", "steps=1", f"init_from={finished / 'checkpoints/latest'}")
    assert f"init_from={finished / 'checkpoints/latest'}: the run's latest checkpoint, {step2}" in stdout


def test_every_run_folder_holds_its_resolved_config(finished):
    written = load(TrainConfig, finished / "config.yaml")
    expected = from_args([CONFIG, f"out={finished}", *FAST, *FIRST]).resolved()
    assert dataclasses.asdict(written) == dataclasses.asdict(expected)
    assert written.model.vocab_size is not None and written.precision in ("fp32", "bf16")  # resolved, not auto


def test_unwritable_out_is_one_line_and_creates_nothing(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    err = refused(capsys, "train", CONFIG, f"out={blocker / 'run'}", *FAST, "steps=1")
    assert f"{blocker} is a file, not a directory" in err
    err = refused(capsys, "train", CONFIG, f"out={blocker}", *FAST, "steps=1")
    assert f"out={blocker} is a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# ---- export ---------------------------------------------------------------------------------------------
def test_export_refuses_run_checkpoint_nonempty_and_file_outs(finished, tmp_path, capsys):
    before = listing(finished)
    assert "is a run or checkpoint folder" in refused(capsys, "export", str(finished), f"out={finished}")
    step = checkpoint.step_dir(finished, 2)
    assert "is a run or checkpoint folder" in refused(capsys, "export", str(finished), f"out={step}")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    assert "is not empty" in refused(capsys, "export", str(finished), f"out={tmp_path / 'notes'}")
    (tmp_path / "model.bin").write_text("x")
    assert "is an existing file" in refused(capsys, "export", str(finished), f"out={tmp_path / 'model.bin'}")
    assert listing(finished) == before and (tmp_path / "model.bin").read_text() == "x"
    assert listing(tmp_path / "notes") == {"a.txt": b"mine"}


def test_export_with_a_bad_tokenizer_leaves_no_folder(finished, tmp_path, capsys):
    out = tmp_path / "hf"
    err = refused(capsys, "export", str(finished), f"out={out}", f"tokenizer={tmp_path / 'missing.model'}")
    assert "tokenizer=" in err and not out.exists() and list(tmp_path.iterdir()) == []


# ---- keys the data source does not read, bad values --------------------------------------------------------
@pytest.mark.parametrize("args, named", [
    (["data.shards=/data/nca"], ("data.shards", "data.source=nca_stream")),
    (["data.source=dyck", "data.val_shards=/data/val"], ("data.val_shards", "data.source=dyck")),
    (["data.skip_corrupt=true"], ("data.skip_corrupt", "data.source=nca_stream")),
    (["optim.lr=-1"], ("optim.lr=-1.0 must be > 0",)),
    (["optim.beta2=1.5"], ("optim.beta2=1.5",)),
])
def test_bad_keys_name_themselves_and_create_nothing(args, named, tmp_path, capsys):
    err = refused(capsys, "train", CONFIG, f"out={tmp_path / 'run'}", *args)
    assert all(n in err for n in named), err
    assert list(tmp_path.iterdir()) == []


# ---- S3 without credentials -----------------------------------------------------------------------------------
def _no_credentials_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # a closed local port: nothing may leave the machine, and credentials are looked for before any request
    return env | {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_EC2_METADATA_DISABLED": "true",
                  "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}


@pytest.mark.parametrize("command", [
    ["train", CONFIG, "checkpoint.url=s3://bucket/ckpt", "steps=1", *FAST],
    ["generate", NCA, "out=s3://bucket/shards", "tokens=100"],
])
def test_s3_without_credentials_is_one_line_naming_the_fix(command, tmp_path):
    args = [*command, f"out={tmp_path / 'run'}"] if command[0] == "train" else command
    proc = subprocess.run([str(NCA_SCALE), *args], env=_no_credentials_env(), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "credentials" in err and "AWS_ENDPOINT_URL" in err and "does not exist" not in err, err
    assert list(tmp_path.iterdir()) == []


# ---- help -------------------------------------------------------------------------------------------------
def _leaf_keys(cls, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        elif f.init:
            keys.append(prefix + f.name)
    return keys


@pytest.mark.parametrize("words", list(cli.COMMANDS), ids=lambda w: "-".join(w))
def test_every_command_has_help_with_usage_example_and_every_key(words, capsys):
    rc, text, err = run(capsys, *words, "--help")
    assert rc == 0 and err == "" and text.startswith("nca-scale"), (words, text[:200], err)
    command = cli.COMMANDS[words]
    assert f"example:\n  {command.example}" in text
    assert run(capsys, "help", *words)[1] == text
    lines = text.partition("\nkeys of ")[2].splitlines()  # the key tables, after the usage text
    assert bool(lines) == bool(command.keys)
    for spec in command.keys:
        target, _, prefix = spec.partition(" ")
        for key in _leaf_keys(cli._load(target), prefix):
            row = next((line for line in lines if line.startswith(f"  {key} ")), None)
            assert row is not None, f"{' '.join(words)} --help does not list {key}"
            meaning, _, typed = row[len(key) + 2:].strip().rpartition("  [")
            assert meaning and ", default " in typed, f"{key}: no meaning, type or default in {row!r}"


def test_train_help_shows_types_and_defaults_from_the_dataclasses(capsys):
    text = run(capsys, "train", "--help")[1]
    assert "  optim.lr " in text and "peak learning rate  [float, default 0.001]" in text
    assert "[int | None, default 100]" in text.split("\n  steps ")[1].splitlines()[0]


def test_no_arguments_exits_2_with_the_usage_on_stderr(capsys):
    rc, out, err = run(capsys)
    assert rc == 2 and out == "" and err.startswith("usage: nca-scale COMMAND")


@pytest.mark.parametrize("args, hint", [
    (["train", CONFIG, "--out", "runs/x"], "--out: options are written key=value, e.g. out=runs/x"),
    (["export", "runs/r1", "--out=hf"], "--out=hf: options are written key=value, e.g. out=hf"),
    (["nca", "frobnicate"], "use one of: nca stats, nca show, nca match"),
])
def test_dashed_options_and_unknown_subcommands_get_a_hint(args, hint, capsys):
    assert hint in refused(capsys, *args)


def test_help_into_a_closed_pipe_is_quiet():
    """`nca-scale status --help | head -1`: the reader is gone before the help is written."""
    proc = subprocess.Popen([str(NCA_SCALE), "status", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == "", err


# ---- the small ones of issue 25 ----------------------------------------------------------------------------
@pytest.mark.parametrize("args, fix", [(["steps", "=", "20"], "'steps = 20': write key=value as one word"),
                                       (["steps=", "20"], "'steps= 20': write key=value as one word"),
                                       (["steps", "=20"], "'steps =20': write key=value as one word")])
def test_a_key_written_with_spaces_gets_its_own_message(args, fix, capsys):
    err = refused(capsys, "train", CONFIG, *args)
    assert fix in err and err.rstrip().endswith("steps=20"), err


@pytest.mark.parametrize("argv", [["sweep", "--help"], ["corpus", "--help"], ["nca", "-h"], ["help", "tokenizer"]])
def test_a_command_group_has_help(argv, capsys):
    rc, out, _ = run(capsys, *argv)
    group = argv[0] if argv[0] != "help" else argv[1]
    assert rc == 0 and out.startswith(f"usage: nca-scale {group} SUBCOMMAND") and f"  {group} " in out, out


def test_another_backends_key_is_refused_not_ignored(capsys):
    err = refused(capsys, "train", CONFIG, "megatron.distributed_optimizer=false")
    assert "megatron.distributed_optimizer=false is a megatron setting and backend=torch does not read it" in err


def test_more_cpu_ranks_than_cores_is_said(caplog):
    from nca_scale.train import entry

    cores = len(os.sched_getaffinity(0))
    with caplog.at_level("WARNING", logger="nca_scale.train.entry"):
        entry._warn_oversubscribed(cores)
        assert caplog.text == ""
        entry._warn_oversubscribed(cores + 2)
    assert f"parallel.nproc={cores + 2} CPU ranks on {cores} CPU cores: the ranks share the cores" in caplog.text
