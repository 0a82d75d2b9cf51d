"""A seeded fuzz of the command line (issue 17): random commands, config files, keys, values and paths, run
in-process. Every case must exit 0 or 2; a 2 prints exactly one `nca-scale: error:` line, never a traceback,
and creates nothing. Training itself is replaced by a recorder (everything before it runs: config, layout and
run-folder checks, the folder and its config.yaml). Bounded by CASES and SECONDS, whichever ends first."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from nca_scale import cli
from nca_scale.config import describe_keys
from nca_scale.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
CASES, SECONDS, SEED = 3000, 20.0, 17
KEYS = [key for key, *_ in describe_keys(TrainConfig)]
RUN_KEYS = ["out", "resume", "init_from", "overwrite", "checkpoint.url", "parallel.nproc", "steps", "model", "data.nca"]
WORDS = ["train", "train", "train", "export", "help", "status", "nca", "corpus", "sweep", "trian", "--help", "-x",
         "eval report"]
YAML_TEXTS = ["steps: 3\n", "model: {n_layers: 1}\n", "model: model.yaml\n", "data:\n  source: dyck\n", "- a\n- b\n",
              "steps: [1\n", "optim: 3\n", "", "nca: nope.yaml\n", "\t- :\n", "bogus_key: 1\n", "out: 5\n"]


def _path(rng: random.Random, work: Path) -> str:
    return rng.choice([
        str(work / "runs" / f"r{rng.randint(0, 3)}"), str(work / "new" / f"n{rng.randint(0, 10**6)}"),
        str(work / "a_file"), str(work / "a_file" / "x"), str(work / "a_dir"), str(work / "held"),
        str(work / "held" / "checkpoints" / "step_00000001"), "/proc/nope/x", "s3://", "memory://", "memory://ck",
        "gs://b/x", "file://", "configs/model/cpu-tiny.yaml", "model.yaml", str(work / "missing.yaml"), "",
    ])


def _value(rng: random.Random, work: Path) -> str:
    return rng.choice([
        str(rng.randint(-3, 10**6)), "-1", "0", "1", "2", "1e-3", "-1e9", "nan", "inf", "", " ", "true", "false", "no",
        "[1, 2]", "[", "{a: 1}", "null", "~", "auto", "never", "torch", "megatron", "deepspeed", "dyck", "text_shards",
        "nca_shards", "ü∆ x", "a=b", _path(rng, work), _path(rng, work),
    ])


def _args(rng: random.Random, work: Path, configs: list[str]) -> list[str]:
    words = rng.choice(WORDS).split()
    shipped = words == ["train"] and rng.random() < 0.6
    if shipped:  # the shipped config with a few run-level keys: mostly valid runs, refused late or started
        words += [configs[0], "steps=1", f"out={work / 'runs' / f'r{rng.randint(0, 3)}'}"]
    elif rng.random() < 0.8:
        words.append(rng.choice([*configs, str(work / "a_dir"), str(work / "a_file"), "missing.yaml", "--out", "-h"]))
    for _ in range(rng.randint(0, 2 if shipped else 5)):
        if shipped and rng.random() < 0.7:
            key = rng.choice(RUN_KEYS)
            words.append(f"{key}={rng.choice([_path(rng, work), 'auto', 'never', 'true', '2'])}")
            continue
        key = rng.choice([*KEYS, *KEYS, "out", "resume", "overwrite", "tokenizer", "format", "stps", "model.nope",
                          "data.nca.grid.x", "", "--out", ".", "a..b"])
        words.append(f"{key}={_value(rng, work)}" if not key.startswith("--") else key)
    return words


def _tree(work: Path) -> set[str]:
    return {p.relative_to(work).as_posix() for p in work.rglob("*")}


def test_cli_fuzz(tmp_path, monkeypatch, capsys):
    import nca_scale.train.entry as entry
    import nca_scale.train.trainer as trainer

    started = []
    monkeypatch.setattr(trainer, "run", lambda cfg, chosen=None: started.append(cfg.out) or trainer.FitOutcome(0))
    monkeypatch.setattr(entry, "_launch", lambda cmd, env: started.append(cmd) or entry.Outcome(0))  # nproc > 1
    monkeypatch.chdir(tmp_path)
    work = tmp_path
    (work / "a_dir").mkdir()
    (work / "a_file").write_text("not yaml: [")
    (work / "held" / "checkpoints" / "step_00000001").mkdir(parents=True)  # a run (an unfinished save)
    (work / "held" / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    (work / "model.yaml").write_text("n_layers: 1\nd_model: 32\nn_heads: 2\n")
    configs = [str(REPO / "configs/train/cpu-tiny.yaml"), str(REPO / "configs/nca/tiny.yaml")]
    for i, text in enumerate(YAML_TEXTS):
        (work / f"c{i}.yaml").write_text(text)
        configs.append(str(work / f"c{i}.yaml"))
    rng = random.Random(SEED)
    outcomes = {0: 0, 2: 0}
    deadline = time.monotonic() + SECONDS
    for case in range(CASES):
        if time.monotonic() > deadline:
            break
        args = _args(rng, work, configs)
        before = _tree(work)
        capsys.readouterr()
        try:
            rc = cli.main(args)
        except BaseException as e:  # noqa: BLE001 - any escape is the failure this test looks for
            pytest.fail(f"case {case} {args}: {type(e).__name__}: {e}")
        out, err = capsys.readouterr()
        assert rc in (0, 2), (case, args, rc, err)
        assert "Traceback" not in err, (case, args, err)
        outcomes[rc] += 1
        if rc == 2:
            assert err.startswith("nca-scale: error: ") and len(err.strip().splitlines()) == 1, (case, args, err)
            assert _tree(work) == before, (case, args, sorted(_tree(work) - before))
    print(f"cli fuzz: {sum(outcomes.values())} cases, {outcomes[0]} exit 0 ({len(started)} trainings started), "
          f"{outcomes[2]} exit 2")
    assert outcomes[2] > 500 and outcomes[0] > 100 and len(started) > 30, outcomes
