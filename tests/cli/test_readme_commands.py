"""The README's commands are real ones: every `nca-scale ...` line names a command, files that exist and keys
the command takes; every `nca_scale.train.worker` line (torchrun by hand) a valid training command line."""

from __future__ import annotations

import shlex
from pathlib import Path

from nca_scale import cli
from nca_scale.config import describe_keys, split_overrides
from nca_scale.train.config import TrainConfig, from_args

REPO = Path(__file__).resolve().parents[2]
SUBMIT_KEYS = {"cluster", "dry_run", "wait", "name", "after"}  # submit's own; the rest goes to the command


def _commands(marker: str) -> list[list[str]]:
    """The command lines in the README's code blocks that contain `marker`, as argv."""
    lines, fenced = [], False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        line = line.split("   #")[0].strip()
        if fenced and marker in line:
            lines.append(shlex.split(line))
    return lines


def _keys(words: tuple[str, ...]) -> set[str]:
    specs = cli.COMMANDS[words].keys
    if words == ("submit",):
        specs = (*specs, "nca_scale.train.config:TrainConfig")
    keys = set()
    for spec in specs:
        target, _, prefix = spec.partition(" ")
        keys |= {k for k, *_ in describe_keys(cli._load(target), prefix)}
    return keys


def test_every_readme_command_exists_with_its_files_and_keys():
    commands = [c for c in _commands("nca-scale ") if c[0] == "nca-scale"]
    assert len(commands) > 15
    for argv in commands:
        words, rest = cli._find(argv[1:])
        positional, overrides = split_overrides(rest)
        for p in positional:
            if p.startswith(("configs/", "launchers/")):
                assert (REPO / p).is_file(), (argv, p)
        keys = _keys(words)
        for key, _ in overrides:
            if keys and key not in SUBMIT_KEYS:
                assert key in keys or key.split(".")[0] == "cluster", (argv, key)
        if words == ("train",):
            from_args([str(REPO / positional[0]), *(f"{k}={v}" for k, v in overrides)])  # validates the layout


def test_readme_torchrun_lines_are_valid_training_command_lines():
    lines = [c for c in _commands("nca_scale.train.worker") if any("torchrun" in a for a in c)]
    assert len(lines) == 2
    train_keys = {k for k, *_ in describe_keys(TrainConfig)}
    for argv in lines:
        if argv[0] == "srun":  # srun ... bash -c 'torchrun ...'
            argv = shlex.split(argv[-1])
        nodes = int(argv[argv.index("--nnodes") + 1]) if "--nnodes" in argv else 1
        world = nodes * int(argv[argv.index("--nproc_per_node") + 1])
        args = argv[argv.index("nca_scale.train.worker") + 1:]
        positional, overrides = split_overrides(args)
        assert len(positional) == 1 and all(k in train_keys for k, _ in overrides), argv
        from_args([str(REPO / positional[0]), *args[1:], f"parallel.nproc={world}"])  # the layout of that world size
