"""Entry point of one rank: `python -m nca_scale.train.worker CONFIG key=value ...` (what the CLI starts under
torchrun for nproc=N, and what cluster launchers run per rank).

The `__main__` guard matters: megatron's dist_checkpointing.save spawns a process that re-imports __main__.
"""

from __future__ import annotations

import sys

from nca_scale.errors import UserError, print_error
from nca_scale.train.config import from_args


def main(args: list[str]) -> int:
    from nca_scale.train.preemption import die_with_parent
    from nca_scale.train.trainer import run

    die_with_parent()  # a rank never outlives its launcher

    try:
        run(from_args(args))
    except UserError as e:  # a bad config, or a run stopped on a non-finite loss
        print_error(e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
