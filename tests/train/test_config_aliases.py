"""The flat keys of the previous release (tp=2, zero: 3, checkpoint_every=...) still load, as deprecated aliases of
the sectioned ones: every shipped config and every planned sweep run gives the same TrainConfig in both spellings,
an alias logs one deprecation line per key and process, and an old key given with its new one is refused. The
aliases are the flat release's names, no more; saved configs carry config_version and older ones are migrated (an
unversioned flat checkpoint resumes), a newer one is refused with one line."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess

import pytest
import yaml
from train_helpers import ROOT, losses, train

from nca_scale import config
from nca_scale.errors import UserError
from nca_scale.launch.sweep import plan as sweep_plan
from nca_scale.launch.sweep import spec as sweep_spec
from nca_scale.train.config import TrainConfig, from_args
from nca_scale.train.config_versions import CONFIG_VERSION, FLAT_ALIASES, MIGRATIONS, read_saved, upgrade

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


def test_a_saved_flat_config_reads_in_sections(caplog):
    """Old checkpoints' meta.json and run folders' config.yaml hold flat configs without a version (version 1):
    migrated silently; an unversioned sectioned one (saved between the sections and the versions) is unchanged."""
    old = {"model": {"d_model": 8}, "tp": 2, "distributed_optimizer": False, "checkpoint_async": None, "steps": 3}
    with caplog.at_level(logging.WARNING):
        assert read_saved(old, "meta.json") == {
            "model": {"d_model": 8}, "steps": 3, "parallel": {"tp": 2}, "megatron": {"distributed_optimizer": False},
            "checkpoint": {"asynchronous": None}, "config_version": CONFIG_VERSION}
    assert not caplog.messages  # the user did not write these keys
    saved = config.to_dict(TrainConfig())
    assert saved["config_version"] == CONFIG_VERSION == 2 and list(saved)[0] == "config_version"
    unversioned = {k: v for k, v in saved.items() if k != "config_version"}
    assert read_saved(unversioned, "meta.json") == read_saved(saved, "meta.json") == saved
    assert config.from_dict(TrainConfig, saved, source="config.yaml") == TrainConfig()


def test_every_version_below_this_one_has_its_migration():
    assert sorted(MIGRATIONS) == list(range(1, CONFIG_VERSION))


@pytest.mark.parametrize("version", [CONFIG_VERSION + 1, 0, "2", True])
def test_a_saved_config_of_an_unknown_version_is_one_line(version):
    data = {"config_version": version, "steps": 3}
    with pytest.raises(UserError) as e:
        read_saved(data, "RUN/meta.json")
    assert "\n" not in str(e.value) and str(e.value).startswith("RUN/meta.json: config_version")
    if version == CONFIG_VERSION + 1:
        assert "newer nca-scale" in str(e.value) and f"versions up to {CONFIG_VERSION}" in str(e.value)


# the flat TrainConfig's fields at commit 8f40923 (8973f4a^, the last before the sections), from
# `git show 8f40923:nca_scale/train/config.py`; test_the_aliases_are_the_flat_release_names checks this list against
# git where the history is there
FLAT_RELEASE = "8f40923652b2a02bbecc0845d1ae9be5687a5928"
FLAT_FIELDS = """model data optim schedule transfer out steps tokens batch_size micro_batch auto_micro_batch seed precision
backend nproc tp pp vpp dp sequence_parallel distributed_optimizer recompute zero offload zero_init overlap_grad_reduce
overlap_param_gather grad_accum_fusion bias_swiglu_fusion rope_fusion cross_entropy_fusion overlap_comm
contiguous_gradients bucket_size eval_every eval_batches log_every checkpoint_every keep_last checkpoint_url
checkpoint_async dist_timeout_s rank0_timeout_s on_nonfinite max_rollbacks resume overwrite init_from wandb
wandb_project progress prefetch peak_flops min_step_time""".split()


def _fields_at(commit: str) -> list[str] | None:
    """TrainConfig's field names in nca_scale/train/config.py at `commit`; None without that history (a shallow clone)."""
    proc = subprocess.run(["git", "show", f"{commit}:nca_scale/train/config.py"], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode:
        return None
    body = proc.stdout.split("class TrainConfig:")[1].split("\nclass ")[0].split("\n    def ")[0]
    return re.findall(r"^    (\w+):", body, flags=re.M)


def test_the_aliases_are_the_flat_release_names():
    """A fixed table: each flat field of the release before the sections that is no longer top-level, mapped to an
    existing key; a key added since (megatron.optimizer_layout, checkpoint.every_minutes) has no flat alias."""
    at_commit = _fields_at(FLAT_RELEASE)
    assert at_commit in (None, FLAT_FIELDS), f"FLAT_FIELDS is not {FLAT_RELEASE[:7]}'s TrainConfig: {at_commit}"
    top_level = {f.name for f in dataclasses.fields(TrainConfig)}
    assert FLAT_ALIASES.keys() == set(FLAT_FIELDS) - top_level - {"min_step_time"}  # removed, not moved (issue 26)
    described = {key for key, *_ in config.describe_keys(TrainConfig)}
    assert set(FLAT_ALIASES.values()) <= described
    for new in ("megatron.optimizer_layout", "megatron.grad_reduce_in_fp32", "checkpoint.every_minutes"):
        assert new in described and new.split(".")[1] not in FLAT_ALIASES


def test_a_user_file_with_a_version_is_read_as_that_version(tmp_path):
    """OUT/config.yaml passed back to `nca-scale train` (it starts with config_version): no aliases, no warnings;
    a flat key in a version-2 file is an unknown key."""
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(config.to_dict(TrainConfig(steps=7))))
    assert config.load(TrainConfig, saved).steps == 7
    saved.write_text(yaml.safe_dump({"config_version": 2, "tp": 1}))
    with pytest.raises(UserError, match="unknown key 'tp'"):
        config.load(TrainConfig, saved)
    assert upgrade({"config_version": 1, "tp": 2}, "x", warn=False) == {"parallel": {"tp": 2}}


def _flat_v1(saved: dict) -> dict:
    """A saved sectioned config as the flat release wrote it: no version, the moved keys top-level under their old
    names, the keys added since left out."""
    flat = {k: v for k, v in saved.items() if k not in ("config_version", "parallel", "checkpoint", "megatron",
                                                         "deepspeed")}
    for old, new in FLAT_ALIASES.items():
        section, key = new.split(".")
        flat[old] = saved[section][key]
    return flat


@pytest.mark.parametrize("backend, key, was, now", [("deepspeed", "deepspeed.zero", 1, 2),
                                                    ("megatron", "megatron.distributed_optimizer", False, True)])
def test_a_flat_checkpoint_is_compared_in_sections(tmp_path, backend, key, was, now):
    """Resume's checks read an old checkpoint's flat keys in their sections: a flat `zero: 1` is deepspeed.zero, so
    resuming it with deepspeed.zero=2 is refused (unmigrated, the key would be missing and not compared)."""
    from nca_scale.train.checkpoint.select import check_resumable

    def cfg(value):
        return config.load(TrainConfig, None, [("backend", backend), (key, str(value).lower())], validate=False)

    layout = {"world": 1, "tp": 1, "pp": 1, "vpp": 1, "dp": 1, "zero": was if backend == "deepspeed" else 0}
    meta = {"step": 2, "tokens": 0, "backend": backend, "layout": layout, "config": _flat_v1(config.to_dict(cfg(was).resolved()))}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert check_resumable(cfg(was), tmp_path)["step"] == 2
    with pytest.raises(UserError, match=f"{key} is {str(was).lower()} in the checkpoint but {str(now).lower()} here"):
        check_resumable(cfg(now), tmp_path)


@pytest.mark.slow
def test_an_unversioned_flat_checkpoint_resumes_and_a_newer_one_is_refused(tmp_path):
    """A checkpoint whose meta.json holds a version-1 config (flat keys, no config_version) resumes and continues
    the run exactly; one whose config_version is newer than this release's stops with one line, exit 2."""
    whole = tmp_path / "whole"
    train(whole, "steps=4", "checkpoint.every=2")
    old = shutil.copytree(whole / "checkpoints/step_00000002", tmp_path / "old")
    meta_path = old / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["config"]["config_version"] == CONFIG_VERSION  # written by this release
    meta["config"] = _flat_v1(meta["config"])
    meta_path.write_text(json.dumps(meta, indent=1))
    rest = tmp_path / "rest"
    train(rest, "steps=4", f"resume={meta_path.parent}")
    assert losses(rest) == losses(whole)[2:]

    newer = tmp_path / "newer"
    shutil.copytree(meta_path.parent, newer)
    meta["config"] = {**meta["config"], "config_version": CONFIG_VERSION + 1}
    (newer / "meta.json").write_text(json.dumps(meta, indent=1))
    proc = train(tmp_path / "refused", "steps=4", f"resume={newer}", check=False)
    lines = [line for line in proc.stderr.splitlines() if "config_version" in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"config_version {CONFIG_VERSION + 1} was written by a newer nca-scale" in lines[0]


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

