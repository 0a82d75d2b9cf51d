"""The CI skip rule of tests/conftest.py, run on a small test tree by pytester with the real conftest: under
CI=true a skip fails (in a test, a fixture, a skipif mark, a module-level importorskip), an allow-listed skip
passes and its reason is printed at the end; without CI=true skips stay skips."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = "pytester"

CONFTEST = Path(__file__).resolve().parent / "conftest.py"

TESTS = {
    "tests/test_some.py": '''
import pytest

@pytest.fixture
def service():
    pytest.skip("no service here")

def test_passes():
    pass

def test_skips_in_body():
    pytest.skip("no data here")

@pytest.mark.skipif(True, reason="a skipif mark")
def test_skipif():
    pass

def test_skips_in_a_fixture(service):
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_xfail():
    assert False
''',
    # an allow-listed node id of the real suite (tests/conftest.py CI_ALLOWED_SKIPS)
    "tests/nca/test_nca_stream.py": '''
import pytest

def test_cuda_matches_cpu():
    pytest.skip("needs CUDA")
''',
}


@pytest.fixture
def tree(pytester):
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    for name, text in TESTS.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    shutil.copy(CONFTEST, pytester.path / "tests" / "conftest.py")
    return pytester


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_under_ci_a_skip_fails_unless_allow_listed(tree, monkeypatch, workers):
    """Also with the 2 pytest-xdist workers of `make test`: the rule acts in the workers, and the allowed skips
    are printed by the controller."""
    monkeypatch.setenv("CI", "true")
    result = tree.runpytest_subprocess("-rA", *workers, "tests")
    # skips in setup (a skipif mark, a fixture) are errors, one in the test's body a failure
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=1, xfailed=1)
    out = result.stdout.str()
    for name, reason in (("test_skips_in_body", "no data here"), ("test_skipif", "a skipif mark"),
                         ("test_skips_in_a_fixture", "no service here")):
        assert f"test_some.py::{name} - skipped under CI=true" in out and f"allowed: {reason}\n" in out, out
    # the allowed one stays a skip, printed at the end with both reasons
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    summary = out[out.index("skips allowed under CI=true"):]
    assert ("tests/nca/test_nca_stream.py::test_cuda_matches_cpu: needs CUDA (allowed: needs CUDA; the CI "
            "machines are CPU-only)") in summary


def test_without_ci_skips_stay_skips(tree, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = tree.runpytest_subprocess("tests")
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert result.ret == 0 and "skips allowed under CI=true" not in result.stdout.str()


def test_a_module_level_importorskip_fails_collection_under_ci(tree, monkeypatch):
    (tree.path / "tests" / "test_needs_module.py").write_text(
        'import pytest\nnumpy_like = pytest.importorskip("no_such_module_anywhere")\n\ndef test_x():\n    pass\n')
    monkeypatch.setenv("CI", "true")
    result = tree.runpytest_subprocess("tests/test_needs_module.py")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*skipped under CI=true*could not import 'no_such_module_anywhere'*"])


def test_allow_list_names_real_tests(ci_allowed_skips):
    root = CONFTEST.parents[1]
    for nodeid in ci_allowed_skips:
        path, name = nodeid.split("::")
        assert f"\ndef {name}(" in (root / path).read_text(), nodeid
