"""Helpers shared by subcommands: splitting arguments into a config file, job keys and config overrides."""

from __future__ import annotations

import dataclasses

from nca_scale import config
from nca_scale.errors import UserError


def parse_job(job_cls, cfg_cls, args: list[str], *, config_required: bool = False):
    """(job, cfg) from `[CONFIG.yaml] key=value ...`.

    Keys naming a field of `job_cls` (command options such as out= or tokens=) set the job; every other key
    is a dotted override of the component config `cfg_cls` loaded from CONFIG (defaults when absent).
    """
    positional, overrides = config.split_overrides(args)
    if len(positional) > 1:
        raise UserError(f"expected at most one config file, got {positional}; overrides are written key=value")
    if config_required and not positional:
        raise UserError("a config file is required, e.g. configs/nca/paper.yaml")
    path = positional[0] if positional else None
    job_fields = {f.name for f in dataclasses.fields(job_cls)}
    job_over = [(k, v) for k, v in overrides if k.split(".")[0] in job_fields]
    cfg_over = [(k, v) for k, v in overrides if k.split(".")[0] not in job_fields]
    cfg = config.load(cfg_cls, path, cfg_over)
    job = config.load(job_cls, None, job_over)
    return job, cfg, path
