"""`nca-scale`: one command line for everything. Each subcommand is `nca-scale CMD [CONFIG] [key=value ...]`.

Subcommand modules are imported only when used, so `nca-scale nca stats` does not pay for importing
megatron-core. Any `UserError` (and an S3 store without credentials or endpoint) becomes one line on stderr and
exit status 2, and an out= folder a refused command created is removed while still empty. `nca-scale CMD
--help` (or `nca-scale help CMD`) prints the usage, an example and every key of the command's config
dataclasses with its type, default and meaning, generated from the dataclasses (config.describe_keys).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import NamedTuple

from nca_scale import logs
from nca_scale.config import describe_keys
from nca_scale.errors import UserError, print_error


class Command(NamedTuple):
    target: str  # module:function
    summary: str  # one line, for the command list
    example: str  # a command line as typed
    # for --help: "module:dataclass [prefix]" of the job and config keys it takes (prefix: how they are written)
    keys: tuple[str, ...] = ()


_TRAIN_KEYS = ("nca_scale.train.config:TrainConfig",)
_NCA_KEYS = "nca_scale.nca.config:NCAConfig"

COMMANDS: dict[tuple[str, ...], Command] = {
    ("generate",): Command("nca_scale.cli.generate:main", "write NCA sequences as WebDataset shards (file://, s3://, memory://)",
                           "nca-scale generate configs/nca/paper.yaml out=shards/paper tokens=8000000",
                           ("nca_scale.cli.generate:GenerateJob", _NCA_KEYS)),
    ("nca", "stats"): Command("nca_scale.cli.nca_tools:stats", "complexity-score quantiles and band acceptance of random rules (JSON)",
                              "nca-scale nca stats rules=4000 seed=123", ("nca_scale.cli.nca_tools:StatsJob", _NCA_KEYS)),
    ("train",): Command("nca_scale.cli.train:main", "train a model on NCA data (torch, megatron or deepspeed backend; parallel.nproc=N)",
                        "nca-scale train configs/train/cpu-tiny.yaml out=runs/r1 steps=20", _TRAIN_KEYS),
    ("nca", "show"): Command("nca_scale.cli.nca_tools:show", "PNG grids, GIFs and a score histogram of trajectories per band",
                             "nca-scale nca show configs/nca/paper.yaml out=figures/nca",
                             ("nca_scale.cli.nca_tools:ShowJob", _NCA_KEYS)),
    ("nca", "match"): Command("nca_scale.cli.nca_tools:match", "gzip complexity of a text corpus, measured like NCA rules: the closest band",
                              "nca-scale nca match web tokenizer=bytes", ("nca_scale.cli.nca_tools:MatchJob",)),
    ("submit",): Command("nca_scale.cli.submit:main", "run any job through submitit: Slurm (cluster=PROFILE), arrays, dependencies",
                         "nca-scale submit configs/train/cpu-tiny.yaml cluster=local-slurm steps=20 dry_run=true",
                         ("nca_scale.launch.profile:ClusterProfile cluster.",)),
    ("status",): Command("nca_scale.cli.status:main", "state, step, last loss, restarts and logs of submitted jobs",
                         "nca-scale status runs/r1"),
    ("corpus", "build"): Command("nca_scale.cli.corpus:build", "build a text corpus (web, math, code, or a YAML: files/globs, HF)",
                                 "nca-scale corpus build code", ("nca_scale.data.text.prepare:BuildJob",)),
    ("corpus", "list"): Command("nca_scale.cli.corpus:list_", "the embedded corpora and whether they are built",
                                "nca-scale corpus list"),
    ("corpus", "tokenize"): Command("nca_scale.cli.corpus:tokenize", "pack a corpus split into text token shards (WebDataset)",
                                    "nca-scale corpus tokenize web tokenizer=runs/tok out=shards/web",
                                    ("nca_scale.data.text.prepare:TokenizeJob",)),
    ("tokenizer", "train"): Command("nca_scale.cli.tokenizer:train", "train a SentencePiece tokenizer on one or more corpora",
                                    "nca-scale tokenizer train web out=runs/tok configs/data/tokenizer-8k.yaml",
                                    ("nca_scale.data.text.tokenizer:TokenizerConfig",)),
    ("export",): Command("nca_scale.cli.export:export_main", "a checkpoint (any backend/layout) as a Hugging Face Llama directory",
                         "nca-scale export runs/r1 out=runs/r1-hf", ("nca_scale.cli.export:ExportJob",)),
    ("import",): Command("nca_scale.cli.export:import_main", "a Hugging Face Llama directory as an nca_scale checkpoint",
                         "nca-scale import runs/r1-hf out=runs/r1-imported", ("nca_scale.cli.export:ImportJob",)),
    ("eval",): Command("nca_scale.cli.eval:main", "perplexity, HumanEval, GSM8K, BIG-bench-Lite on a checkpoint (JSON)",
                       "nca-scale eval runs/r1 task=ppl data=nca", ("nca_scale.analysis.eval.runner:EvalConfig",)),
    ("eval", "report"): Command("nca_scale.cli.eval:report", "a table of every evaluation recorded under run/sweep directories",
                                "nca-scale eval report runs"),
    ("sweep", "plan"): Command("nca_scale.cli.sweep:plan", "the runs of a sweep spec: parameters, tokens, FLOPs, recipe, GPU-hours",
                               "nca-scale sweep plan configs/sweeps/paper-1.6b.yaml"),
    ("sweep", "launch"): Command("nca_scale.cli.sweep:launch", "prepare data and submit a sweep's missing or failed runs",
                                 "nca-scale sweep launch configs/sweeps/demo.yaml"),
    ("sweep", "status"): Command("nca_scale.cli.sweep:status", "state, step and losses of every run of a sweep",
                                 "nca-scale sweep status configs/sweeps/demo.yaml"),
    ("sweep", "run"): Command("nca_scale.cli.sweep:run", "one run of a launched sweep: train, then append its record",
                              "nca-scale sweep run runs/sweeps/demo run=NAME   (NAME: a run of `sweep plan`)"),
    ("sft-data",): Command("nca_scale.cli.sft_data:main", "the paper's GSM8K / BBL fine-tuning documents as JSONL",
                           "nca-scale sft-data gsm8k out=runs/sft/gsm8k-train.jsonl", ("nca_scale.cli.sft_data:SFTJob",)),
    ("report",): Command("nca_scale.cli.report:main", "a sweep's metrics, intervals, fits and plots (Markdown, HTML, JSON)",
                         "nca-scale report runs/sweeps/demo", ("nca_scale.analysis.report:ReportConfig",)),
}
HELP = ("-h", "--help")


def usage() -> str:
    lines = ["usage: nca-scale COMMAND [CONFIG.yaml] [key=value ...]",
             "       nca-scale COMMAND --help   (or nca-scale help COMMAND): its keys, types, defaults and an example",
             "", "commands:"]
    for words, cmd in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {cmd.summary}")
    return "\n".join(lines)


def _load(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def group_help(word: str) -> str | None:
    """The subcommands of a command group (`nca-scale sweep --help`), None if `word` is not a group or is a
    command itself (`nca-scale eval --help` is eval's own help; `eval report` has its own)."""
    if (word,) in COMMANDS:
        return None
    rows = [(" ".join(w), cmd.summary) for w, cmd in COMMANDS.items() if w[0] == word and len(w) > 1]
    if not rows:
        return None
    return "\n".join([f"usage: nca-scale {word} SUBCOMMAND [CONFIG.yaml] [key=value ...]", "", "subcommands:",
                      *(f"  {name:<16} {summary}" for name, summary in rows), "",
                      f"`nca-scale {rows[0][0]} --help` (or any subcommand's) lists its keys"])


def _spaced_keys(args: list[str]) -> UserError | None:
    """`steps = 20`, `steps= 20` or `steps =20` (a shell splits them into words): the key=value it meant. A
    `key=` followed by another key=value (or by nothing) is an empty value, not a spaced one."""
    for i, a in enumerate(args):
        before = args[i - 1] if i and "=" not in args[i - 1] else None  # a bare word: the key
        after = args[i + 1] if i + 1 < len(args) and "=" not in args[i + 1] else None  # a bare word: the value
        if a == "=":
            key, value = before or "key", after or "VALUE"
            words = args[i - (before is not None):i + 1 + (after is not None)]
        elif a.endswith("=") and "=" not in a[:-1] and after is not None:
            key, value, words = a[:-1], after, args[i:i + 2]
        elif a.startswith("=") and len(a) > 1 and before is not None:
            key, value, words = before, a[1:], args[i - 1:i + 1]
        else:
            continue
        return UserError(f"{' '.join(words)!r}: write key=value as one word, without spaces: "
                         f"{key}={value}")
    return None


def _find(argv: list[str]) -> tuple[tuple[str, ...], list[str]]:
    for n in (2, 1):
        if tuple(argv[:n]) in COMMANDS:
            return tuple(argv[:n]), argv[n:]
    group = [" ".join(w) for w in COMMANDS if w[0] == argv[0] and len(w) > 1] if argv else []
    if group:
        raise UserError(f"{' '.join(argv[:2])!r} is not a command; use one of: {', '.join(group)}")
    raise UserError(f"unknown command {' '.join(argv[:2])!r}; run `nca-scale --help` to list the commands")


def resolve(argv: list[str]):
    words, rest = _find(argv)
    return _load(COMMANDS[words].target), rest


def command_help(words: tuple[str, ...]) -> str:
    """Usage, an example and every key (type, default, meaning), from the command's docstring and dataclasses."""
    cmd = COMMANDS[words]
    fn = _load(cmd.target)
    text = (fn.__doc__ or importlib.import_module(fn.__module__).__doc__ or cmd.summary).strip("\n")
    parts = [inspect.cleandoc(text), f"example:\n  {cmd.example}"]
    for spec in cmd.keys:
        target, _, prefix = spec.partition(" ")
        cls = _load(target)
        rows = describe_keys(cls, prefix)
        width = max(len(k) for k, *_ in rows)
        lines = [f"  {key:<{width}}  {meaning}  [{tp}, default {default}]" for key, tp, default, meaning in rows]
        parts.append(f"keys of {cls.__name__} (key=value on the command line; in a YAML file key: value, nested "
                     "keys as sub-mappings):\n" + "\n".join(lines))
    return "\n\n".join(parts)


def _write(text: str, stream=None) -> None:
    (stream or sys.stdout).write(text + "\n")
    (stream or sys.stdout).flush()


def _not_an_option(arg: str, following: str | None, words: tuple[str, ...]) -> UserError:
    key = arg.lstrip("-").partition("=")[0] or "key"
    value = arg.partition("=")[2] or (following if following and "=" not in following else "VALUE")
    return UserError(f"{arg}: options are written key=value, e.g. {key}={value}; "
                     f"`nca-scale {' '.join(words)} --help` lists the keys")


def _missing_dirs(args: list[str]) -> list[Path]:
    """The local folders out= names that do not exist yet (the folder and its missing parents, deepest first)."""
    outs = [a.partition("=")[2] for a in args if a.startswith("out=")]
    if not outs or "://" in outs[-1].removeprefix("file://") or not outs[-1].strip():
        return []
    path = Path(outs[-1].removeprefix("file://")).expanduser().absolute()
    return [p for p in (path, *path.parents) if not p.exists()]


def _remove_if_empty(dirs: list[Path]) -> None:
    for d in dirs:
        try:
            d.rmdir()  # only an empty folder; anything a command wrote stays
        except OSError:
            return


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except BrokenPipeError:  # `nca-scale ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at interpreter exit
        return 0


def _main(argv: list[str]) -> int:
    logs.setup()  # the library's messages as `[nca-scale] ...` lines (nca_scale/logs.py)
    if not argv:
        _write(usage(), sys.stderr)
        return 2
    if argv[0] in (*HELP, "help") and len(argv) == 1:
        _write(usage())
        return 0
    try:
        if argv[0] in (*HELP, "help"):  # nca-scale help train, nca-scale --help train, nca-scale help sweep
            if len(argv) == 2 and (group := group_help(argv[1])):
                _write(group)
                return 0
            words, _ = _find(argv[1:])
            _write(command_help(words))
            return 0
        if len(argv) == 2 and argv[1] in HELP and (group := group_help(argv[0])):  # nca-scale sweep --help
            _write(group)
            return 0
        words, rest = _find(argv)
        if spaced := _spaced_keys(rest):
            raise spaced
        if any(a in HELP for a in rest):
            _write(command_help(words))
            return 0
        for i, a in enumerate(rest):
            if a.startswith("-"):
                raise _not_an_option(a, rest[i + 1] if i + 1 < len(rest) else None, words)
        new_dirs = _missing_dirs(rest)
        try:
            return _load(COMMANDS[words].target)(rest) or 0
        except BaseException:
            _remove_if_empty(new_dirs)  # a refusal (or a crash) leaves no empty out= folder behind
            raise
    except UserError as e:
        print_error(e)
        return 2
    except KeyboardInterrupt:
        print("nca-scale: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # S3 without credentials or endpoint, from any command: one line, not a traceback
        from nca_scale.data.urls import access_problem

        problem = access_problem(e)
        if problem is None:
            raise
        print_error(UserError(problem))
        return 2


if __name__ == "__main__":
    sys.exit(main())
