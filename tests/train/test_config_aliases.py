"""The flat keys of the previous release (tp=2, zero: 3, checkpoint_every=...) still load, as deprecated aliases of
the sectioned ones: every shipped config and every planned sweep run gives the same TrainConfig in both spellings,
an alias logs one deprecation line per key and process, and an old key given with its new one is refused."""

from __future__ import annotations

import logging

import pytest
import yaml
from train_helpers import ROOT

from nca_scale import config
from nca_scale.errors import UserError
from nca_scale.launch.sweep import plan as sweep_plan
from nca_scale.launch.sweep import spec as sweep_spec
from nca_scale.train.config import TrainConfig, from_args
from nca_scale.train.config_sections import FLAT_ALIASES, sectioned

TRAIN_CONFIGS = sorted((ROOT / "configs/train").glob("*.yaml"))
SWEEPS = sorted((ROOT / "configs/sweeps").glob("*.yaml"))
FLAT_OF = {new: old for old, new in FLAT_ALIASES.items()}


def flat_yaml(data: dict) -> dict:
    """A sectioned config mapping written with the previous release's flat keys."""
    out = {k: v for k, v in data.items() if not (isinstance(v, dict) and any(f"{k}.{x}" in FLAT_OF for x in v))}
    for section, values in data.items():
        if section not in out:
            out.update({FLAT_OF[f"{section}.{key}"]: value for key, value in values.items()})
    return out


def flat_arg(arg: str) -> str:
    key, eq, value = arg.partition("=")
    return f"{FLAT_OF.get(key, key)}{eq}{value}"


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_train_config_loads_the_same_in_both_spellings(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = config.read_yaml(path)
    flat = flat_yaml(data)
    assert flat != data, f"{path.name} uses no sectioned key: the test would compare a file with itself"
    old = tmp_path / path.name
    old.write_text(yaml.safe_dump(flat))
    assert config.from_dict(TrainConfig, flat, source=str(old)) == config.from_dict(TrainConfig, data, source=str(path))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_planned_sweep_run_loads_the_same_in_both_spellings(path, monkeypatch):
    """Each planned run's train arguments (the planner writes the sectioned keys) read back with flat keys."""
    monkeypatch.chdir(ROOT)
    runs = sweep_plan.plan(sweep_spec.load(str(path)))
    spellings = {tuple(r.train_args) for r in runs if any(flat_arg(a) != a for a in r.train_args)}
    if path.stem in ("nca-scaling", "paper-1.6b"):  # checkpoint.every in their overrides
        assert spellings, f"{path.name}: no run uses a sectioned key"
    for args in list(spellings)[:3]:  # the runs of a sweep share their keys; three cover the stages
        base, over = args[0], [a.partition("=")[::2] for a in args[1:]]
        flat = [(FLAT_OF.get(k, k), v) for k, v in over]
        assert config.load(TrainConfig, base, flat, validate=False) == config.load(TrainConfig, base, over, validate=False)


def test_an_alias_logs_one_deprecation_line_per_key(caplog, monkeypatch):
    monkeypatch.setattr(config, "_WARNED", set())
    cpu_tiny = str(ROOT / "configs/train/cpu-tiny.yaml")
    with caplog.at_level(logging.WARNING, logger="nca_scale.config"):
        cfg = from_args([cpu_tiny, "tp=1", "checkpoint_every=2"])
        from_args([cpu_tiny, "tp=1", "zero=0"])
    assert (cfg.parallel.tp, cfg.checkpoint.every) == (1, 2)
    assert caplog.messages == [
        "tp is deprecated: use parallel.tp (the flat name works until the next release)",
        "checkpoint_every is deprecated: use checkpoint.every (the flat name works until the next release)",
        "zero is deprecated: use deepspeed.zero (the flat name works until the next release)",
    ]


def test_an_old_key_with_its_new_one_is_refused(tmp_path):
    cpu_tiny = str(ROOT / "configs/train/cpu-tiny.yaml")
    with pytest.raises(UserError, match="both 'tp' and 'parallel.tp' are given; keep only 'parallel.tp'"):
        from_args([cpu_tiny, "tp=1", "parallel.tp=1"])
    both = tmp_path / "both.yaml"
    both.write_text("keep_last: 2\ncheckpoint:\n  keep_last: 2\n")
    with pytest.raises(UserError, match=f"{both}: both 'keep_last' and 'checkpoint.keep_last' are given"):
        config.load(TrainConfig, both)
    spec = sweep_spec.load(str(ROOT / "configs/sweeps/demo.yaml"))
    spec.overrides.update({"zero": 0, "deepspeed.zero": 0})
    with pytest.raises(UserError, match="sweep overrides: both 'zero' and 'deepspeed.zero' are given"):
        sweep_plan.plan(spec)


def test_a_saved_flat_config_reads_in_sections():
    """Old checkpoints' meta.json and run folders' config.yaml hold flat configs (checkpoint_select reads them)."""
    old = {"model": {"d_model": 8}, "tp": 2, "distributed_optimizer": False, "checkpoint_async": None, "steps": 3}
    assert sectioned(old) == {"model": {"d_model": 8}, "steps": 3, "parallel": {"tp": 2},
                              "megatron": {"distributed_optimizer": False}, "checkpoint": {"asynchronous": None}}
    assert sectioned(config.to_dict(TrainConfig())) == config.to_dict(TrainConfig())


def test_the_world_size_is_passed_in_not_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")  # ignored: a caller passes the launcher's world explicitly
    args = [str(ROOT / "configs/train/cpu-tiny.yaml"), "batch_size=8", "micro_batch=2"]
    assert (from_args(args).world, from_args(args).data_parallel) == (1, 1)
    assert (from_args(args, world=4).world, from_args(args, world=4).data_parallel) == (4, 4)
    with pytest.raises(UserError, match="batch_size=8 is not a multiple of micro_batch=4 x dp=4"):
        from_args([*args, "micro_batch=4"], world=4)


def test_the_help_lists_the_sectioned_keys():
    keys = {key for key, *_ in config.describe_keys(TrainConfig)}
    assert set(FLAT_ALIASES.values()) <= keys and not keys & FLAT_ALIASES.keys()

