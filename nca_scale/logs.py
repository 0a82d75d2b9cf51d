"""nca_scale's messages: standard `logging` under the "nca_scale" logger, one rank-aware format.

Library modules log through `logging.getLogger(__name__)` and never print, so an application silences or
redirects them as it does torch's or megatron's (`logging.getLogger("nca_scale").setLevel(logging.WARNING)`).
The `nca-scale` command (and each rank of a job) calls `setup()`: records appear on stdout as
`[nca-scale] ...`, INFO from global rank 0 only (one line per job, not one per rank), warnings and errors from
every rank. An application that configured the logger itself is left alone. Progress bars stay tqdm's.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "nca_scale"
PREFIX = "[nca-scale] "


class _Stdout(logging.StreamHandler):
    """A StreamHandler on whatever sys.stdout is at the time of the record (pytest's capture, a redirect).
    StreamHandler writes a record and its newline in one write, so ranks sharing a pipe do not split lines."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ and setStream assign it
        pass


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def setup() -> None:
    """Show nca_scale's records on stdout as `[nca-scale] ...` (see the module docstring). Idempotent."""
    logger = logging.getLogger(ROOT)
    if logger.handlers:
        return
    handler = _Stdout()
    handler.setFormatter(logging.Formatter(PREFIX + "%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank() == 0 else logging.WARNING)


def every_rank_at_info() -> None:
    """INFO from every rank (a Slurm task writes a log file of its own)."""
    setup()
    logging.getLogger(ROOT).setLevel(logging.INFO)
