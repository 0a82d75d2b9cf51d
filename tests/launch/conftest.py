"""Fixtures for the launch tests: a live Slurm cluster (tools/local_slurm.sh up) and an isolated environment.

Without a cluster the Slurm tests are skipped with the reason printed; under CI=true that skip is a failure
(tests/conftest.py): CI brings the cluster up itself (.ci/run), so a missing one is a broken CI.
"""

from __future__ import annotations

import os

import pytest
from launch_helpers import cluster_up


@pytest.fixture(scope="session")
def slurm():
    why = cluster_up()
    if why is not None:
        pytest.skip(f"no Slurm cluster is up ({why}); start one with `sudo tools/local_slurm.sh up` (.ci/run does)")


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("nca_home")
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", NCA_SCALE_HOME=str(home))


