"""``make test-reference`` (CI's reference step) sets ``TUNELENS_REQUIRE_REFERENCES=1``: there a
``reference`` test that skips, or a test module that skips at import, fails the run; elsewhere a skip
stays a skip. Checked on a throwaway test folder that uses this suite's conftest.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CASES = """
import pytest

@pytest.mark.reference
def test_reference_that_skips():
    pytest.skip("mergekit is not installed")

def test_other_that_skips():
    pytest.skip("not a reference")

@pytest.mark.reference
def test_reference_that_runs():
    pass
"""
MODULE_SKIP = """
import pytest

pytestmark = pytest.mark.reference
lm_eval = pytest.importorskip("tunelens_no_such_module")

def test_never_collected():
    pass
"""


def _run(folder: Path, require: bool) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "TUNELENS_REQUIRE_REFERENCES"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    if require:
        env["TUNELENS_REQUIRE_REFERENCES"] = "1"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(folder),
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        timeout=300,
    )
    return res.returncode, res.stdout + res.stderr


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiers")
    (root / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    reference: cross-check\n    gpu: accelerator\n")
    (root / "test_cases.py").write_text(CASES)
    (root / "test_module_skip.py").write_text(MODULE_SKIP)
    return root


def test_required_references_fail_when_they_skip(folder: Path) -> None:
    code, out = _run(folder, require=True)
    assert code != 0, out
    assert "1 failed, 1 passed, 1 skipped, 1 error" in out, out
    assert "FAILED test_cases.py::test_reference_that_skips" in out
    assert "reference test skipped where it must run (TUNELENS_REQUIRE_REFERENCES=1): mergekit is not installed" in out
    assert "SKIPPED [1] test_cases.py" in out and "not a reference" in out  # other tests still skip
    assert "ERROR test_module_skip.py" in out and "test module skipped at import" in out, out


def test_elsewhere_a_skip_stays_a_skip(folder: Path) -> None:
    code, out = _run(folder, require=False)
    assert code == 0, out
    assert "FAILED" not in out and "ERROR" not in out
    assert re.search(r"1 passed, 3 skipped", out), out
