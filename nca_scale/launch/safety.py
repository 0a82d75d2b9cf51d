"""What `nca-scale submit` checks before anything reaches sbatch, a batch script or a pickled job.

Job names, paths and `key=value` overrides end up in `#SBATCH` lines, in `export` lines of the batch script
and in file names Slurm expands (`%j`, `%t`): a newline in any of them would add a directive or a shell
command, a `%` would be expanded. Profile `env` values are written into the batch script and the pickled
task, so a secret there (WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, tokens) would be stored in RUN/launch/ in the
clear: jobs inherit secrets from the submitting environment instead (Slurm exports it by default), and a
secret's value is refused anywhere in a command line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from nca_scale.errors import UserError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]-]*")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SECRET = re.compile(r"(API_?KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_?KEY|SESSION_?KEY)", re.IGNORECASE)


def secret_values() -> set[str]:
    """Values of this process's secret-looking environment variables (long enough to be recognisable)."""
    return {v for k, v in os.environ.items() if SECRET.search(k) and len(v) >= 8}


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise UserError(f"job name {name!r}: use 1-128 letters, digits, '.', '_', '+' or '-', starting with a "
                        "letter or digit (set name=...)")


def check_text(what: str, value: str, *, path: bool = False) -> None:
    """No control characters (a newline would start a new directive or command); no `%` in paths Slurm expands."""
    if _CONTROL.search(value):
        raise UserError(f"{what}={value!r} contains a control character (newline, tab, ...); remove it")
    if path and "%" in value:
        raise UserError(f"{what}={value!r} contains '%', which Slurm expands in file names; rename it")


def check_overrides(overrides: Iterable[tuple[str, str]]) -> None:
    secrets = secret_values()
    for key, value in overrides:
        if not _KEY.fullmatch(key):
            raise UserError(f"override key {key!r} is not a config key (letters, digits, '_', '.')")
        check_text(key, value, path=key in ("out", "logs") or key.endswith(".logs"))
        if any(s in value for s in secrets):
            raise UserError(f"{key}= holds the value of a secret environment variable; secrets must not go on a "
                            "command line (it is recorded in RUN/launch/): let the job inherit the variable")


def check_env(env: dict) -> None:
    for key, value in env.items():
        if not _ENV_KEY.fullmatch(str(key)):
            raise UserError(f"cluster env key {key!r} is not a shell variable name")
        if SECRET.search(str(key)):
            raise UserError(f"cluster env sets {key}: a secret in the profile would be written into the batch script "
                            "and the pickled job; export it in the submitting shell instead (Slurm passes it on)")
        check_text(f"cluster.env.{key}", str(value))


def check_profile(profile) -> None:
    """The profile's strings that reach sbatch and the batch script."""
    check_env(profile.env)
    for key, value in profile.sbatch.items():
        check_text(f"cluster.sbatch.{key}", f"{key}={value}")
    for what in ("partition", "account", "qos", "constraint", "time", "logs"):
        check_text(f"cluster.{what}", str(getattr(profile, what) or ""), path=what == "logs")
    for arg in (*profile.container, *profile.srun_args, *profile.setup):
        check_text("cluster.srun_args/container/setup", arg)


def check_submission(name: str, config_path: str, overrides: Iterable[tuple[str, str]], logs: str) -> None:
    """The job name, config path, overrides and log folder of one submission."""
    check_overrides(overrides)
    check_name(name)
    check_text("CONFIG", config_path, path=True)
    check_text("logs", logs, path=True)
