"""What the evaluation tests and their fixtures share: the console script and the environment it runs in.

A module of its own (imported by name, like train_helpers), not conftest: `from conftest import ...` picks
whichever conftest.py was imported last, e.g. tests/data/text/conftest.py when both folders are collected.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CLI = str(Path(sys.executable).parent / "nca-scale")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
