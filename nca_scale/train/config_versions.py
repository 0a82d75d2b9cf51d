"""The versions of the training config's keys, and the migrations between them (docs/training.md, "Config versions").

A saved config (a checkpoint's meta.json, OUT/config.yaml) carries `config_version`: the version of its keys
(nca_scale.config.to_dict writes TrainConfig.CONFIG_VERSION). Reading one (`TrainConfig.upgrade`, through
nca_scale.config.from_dict, or `read_saved`) applies the migrations from its version to this one, each a function
of version N -> N + 1 in MIGRATIONS; a newer version than this release knows is refused with one line.

    1  the flat TrainConfig: tp, zero, checkpoint_every, ... at the top level (up to commit 8f40923, the parent of
       8973f4a), and every config saved before versions existed (the sectioned ones of later releases as well:
       the 1 -> 2 migration leaves them unchanged but for min_step_time, a test's key removed in issue 26)
    2  the sections parallel, checkpoint, megatron, deepspeed (issue 16, commit 8973f4a); config_version written

A user's YAML file or command line carries no version: its keys are read as version 1's onwards, so the flat names
still load, as deprecated aliases (one warning per key and process). FLAT_ALIASES is a fixed table of the names the
flat release had: a key added later never gets a flat alias.
"""

from __future__ import annotations

from collections.abc import Callable

from nca_scale import config
from nca_scale.errors import UserError

CONFIG_VERSION = 2

# version 1's top-level keys that moved into sections in version 2: the flat TrainConfig's fields at commit 8f40923
# (`git show 8f40923:nca_scale/train/config.py`) less those still top-level (tests/train/test_config_aliases.py)
FLAT_ALIASES: dict[str, str] = {
    "nproc": "parallel.nproc", "tp": "parallel.tp", "pp": "parallel.pp", "vpp": "parallel.vpp", "dp": "parallel.dp",
    "sequence_parallel": "parallel.sequence_parallel", "bucket_size": "parallel.bucket_size",
    "distributed_optimizer": "megatron.distributed_optimizer", "overlap_grad_reduce": "megatron.overlap_grad_reduce",
    "overlap_param_gather": "megatron.overlap_param_gather", "grad_accum_fusion": "megatron.grad_accum_fusion",
    "bias_swiglu_fusion": "megatron.bias_swiglu_fusion", "rope_fusion": "megatron.rope_fusion",
    "cross_entropy_fusion": "megatron.cross_entropy_fusion",
    "zero": "deepspeed.zero", "offload": "deepspeed.offload", "zero_init": "deepspeed.zero_init",
    "overlap_comm": "deepspeed.overlap_comm", "contiguous_gradients": "deepspeed.contiguous_gradients",
    "checkpoint_every": "checkpoint.every", "keep_last": "checkpoint.keep_last", "checkpoint_url": "checkpoint.url",
    "checkpoint_async": "checkpoint.asynchronous",
}


def v1_to_v2(data: dict, source: str, warn: bool) -> dict:
    """The flat keys moved to their sections (a user's are deprecated aliases: `warn`); sectioned ones stay.
    `min_step_time` (a test's step pacing, a key of the configs saved before version 2) is gone: dropped from a
    saved config or at its default (0), one line for a user's other value (issue 26: tests pace steps with
    faults.STEP_TIME_ENV)."""
    if "min_step_time" in data:
        if warn and data["min_step_time"]:  # a user asking for pacing (an old run's config.yaml holds 0.0)
            raise UserError(f"{source}: min_step_time was removed (tests pace steps with the environment variable "
                            "NCA_SCALE_TEST_STEP_TIME, nca_scale/train/faults.py); drop the key")
        data = {k: v for k, v in data.items() if k != "min_step_time"}
    return config.rename_aliases(data, FLAT_ALIASES, source=source, warn=warn)


# version N -> the migration of its keys to version N + 1; one entry per version below CONFIG_VERSION
MIGRATIONS: dict[int, Callable[[dict, str, bool], dict]] = {1: v1_to_v2}


def upgrade(data: dict, source: str, warn: bool = True) -> dict:
    """`data` (a TrainConfig mapping of any version; none = 1) in this version's keys, without `config_version`.
    `warn`: log a deprecation line per old key (a user's file); saved configs are migrated silently."""
    version = data.get("config_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{source}: config_version={version!r} is not a version (1, 2, ...); drop the key from a "
                        "config you write, it is for saved configs")
    if version > CONFIG_VERSION:
        raise UserError(f"{source}: config_version {version} was written by a newer nca-scale than this one, which "
                        f"reads versions up to {CONFIG_VERSION}; update nca-scale to read it")
    data = {k: v for k, v in data.items() if k != "config_version"}
    for v in range(version, CONFIG_VERSION):
        data = MIGRATIONS[v](data, source, warn)
    return data


def read_saved(data: dict, source: str) -> dict:
    """A saved config (meta.json's config, OUT/config.yaml) in this version's keys: migrated silently (the user did
    not write its old keys), `config_version` set to this one."""
    return {**upgrade(data, source, warn=False), "config_version": CONFIG_VERSION}
