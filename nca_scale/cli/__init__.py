"""`nca-scale`: one command line for everything. Each subcommand is `nca-scale CMD [CONFIG] [key=value ...]`.

Subcommand modules are imported only when used, so `nca-scale nca stats` does not pay for importing
megatron-core. Any `UserError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

from nca_scale.errors import UserError, print_error

# command words -> (module:function, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("generate",): ("nca_scale.cli.generate:main", "write NCA sequences as WebDataset shards (file://, s3://, memory://)"),
    ("nca", "stats"): ("nca_scale.cli.nca_tools:stats", "complexity-score quantiles and band acceptance of random rules (JSON)"),
    ("train",): ("nca_scale.cli.train:main", "train a model on NCA data (torch, megatron or deepspeed backend; nproc=N)"),
    ("nca", "show"): ("nca_scale.cli.nca_tools:show", "PNG grids, GIFs and a score histogram of trajectories per band"),
    ("nca", "match"): ("nca_scale.cli.nca_tools:match", "gzip complexity of a text corpus, measured like NCA rules: the closest band"),
    ("submit",): ("nca_scale.cli.submit:main", "run any job through submitit: Slurm (cluster=PROFILE), arrays, dependencies"),
    ("status",): ("nca_scale.cli.status:main", "state, step, last loss, restarts and logs of submitted jobs"),
    ("corpus", "build"): ("nca_scale.cli.corpus:build", "build a text corpus (web, math, code, or a YAML: files/globs, HF)"),
    ("corpus", "list"): ("nca_scale.cli.corpus:list_", "the embedded corpora and whether they are built"),
    ("corpus", "tokenize"): ("nca_scale.cli.corpus:tokenize", "pack a corpus split into text token shards (WebDataset)"),
    ("tokenizer", "train"): ("nca_scale.cli.tokenizer:train", "train a SentencePiece tokenizer on one or more corpora"),
    ("export",): ("nca_scale.cli.export:export_main", "a checkpoint (any backend/layout) as a Hugging Face Llama directory"),
    ("import",): ("nca_scale.cli.export:import_main", "a Hugging Face Llama directory as an nca_scale checkpoint"),
    ("eval",): ("nca_scale.cli.eval:main", "perplexity, HumanEval, GSM8K, BIG-bench-Lite on a checkpoint (JSON)"),
    ("eval", "report"): ("nca_scale.cli.eval:report", "a table of every evaluation recorded under run/sweep directories"),
    ("sweep", "plan"): ("nca_scale.cli.sweep:plan", "the runs of a sweep spec: parameters, tokens, FLOPs, recipe, GPU-hours"),
    ("sweep", "launch"): ("nca_scale.cli.sweep:launch", "prepare data and submit a sweep's missing or failed runs"),
    ("sweep", "status"): ("nca_scale.cli.sweep:status", "state, step and losses of every run of a sweep"),
    ("sweep", "run"): ("nca_scale.cli.sweep:run", "one run of a launched sweep: train, then append its record"),
    ("sft-data",): ("nca_scale.cli.sft_data:main", "the paper's GSM8K / BBL fine-tuning documents as JSONL"),
    ("report",): ("nca_scale.cli.report:main", "a sweep's metrics, intervals, fits and plots (Markdown, HTML, JSON)"),
}


def usage() -> str:
    lines = ["usage: nca-scale COMMAND [CONFIG.yaml] [key=value ...]", "", "commands:"]
    for words, (_, text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {text}")
    return "\n".join(lines)


def resolve(argv: list[str]):
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            target = COMMANDS[words][0]
            module, _, fn = target.partition(":")
            return getattr(importlib.import_module(module), fn), argv[n:]
    raise UserError(f"unknown command {' '.join(argv[:2])!r}; run `nca-scale --help` to list the commands")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    try:
        fn, rest = resolve(argv)
        if rest[:1] in (["-h"], ["--help"]):
            print(fn.__doc__ or "")
            return 0
        return fn(rest) or 0
    except UserError as e:
        print_error(e)
        return 2
    except KeyboardInterrupt:
        print("nca-scale: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
