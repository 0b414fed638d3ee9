"""Vendoring: pytest_kvmconf/ and specs/ copied into another project's tree, not installed.

The copy is enabled with ``-p pytest_kvmconf.plugin`` (vendored folder on
PYTHONPATH) or with ``pytest_plugins`` in conftest.py (folder in the ``pythonpath``
ini key); the installed package's entry point is disabled with ``-p no:kvmconf``,
and every run checks that the vendored copy (not the installed one) is what
pytest used, specs included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.toy import BACKEND, CONFTEST, SPEC

REPO = Path(__file__).resolve().parent.parent
WHERE = '''
import pytest_kvmconf


def pytest_report_header():
    return [f"kvmconf package: {pytest_kvmconf.__file__}"]
'''


def vendor(root: Path) -> Path:
    """A project with the plugin copied into third_party/kvmconf; returns that folder."""
    dest = root / "third_party" / "kvmconf"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "pytest_kvmconf", dest / "pytest_kvmconf", ignore=ignore)
    shutil.copytree(REPO / "specs", dest / "specs", ignore=ignore)
    (root / "specs").mkdir()
    (root / "specs" / "toy.toml").write_text(SPEC)
    (root / "toy_backend.py").write_text(BACKEND)
    return dest


def run(root: Path, pythonpath: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def verdicts(out: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "::" in parts[0] and parts[1] in ("PASSED", "FAILED", "SKIPPED"):
            found[parts[0].rsplit("::", 1)[-1]] = parts[1]
    return found


def assert_vendored(out: str, vendored: Path) -> None:
    assert f"kvmconf package: {vendored / 'pytest_kvmconf' / '__init__.py'}" in out
    assert f"specs {vendored / 'specs'}" in out  # plugin.bundled_specs() found the copy's specs
    assert str(REPO / "pytest_kvmconf") not in out


def test_vendored_with_p_option(tmp_path: Path) -> None:
    vendored = vendor(tmp_path)
    (tmp_path / "conftest.py").write_text(WHERE)
    result = run(tmp_path, vendored, "-p", "no:kvmconf", "-p", "pytest_kvmconf.plugin", "--kvm-backend=reference",
                 "-k", "REQ-15")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_vendored(result.stdout, vendored)
    assert verdicts(result.stdout) == {"REQ-15": "PASSED"}


def test_vendored_with_ini_pytest_plugins_and_own_backend(tmp_path: Path) -> None:
    # As CONTRIBUTING.md section 6 says: pythonpath in the ini file, pytest_plugins in conftest.py.
    vendored = vendor(tmp_path)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["pytest_kvmconf.plugin"]\n' + CONFTEST + WHERE)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\npythonpath = ["third_party/kvmconf"]\naddopts = "-p no:kvmconf"\n'
        'kvm_backend = "toy-broken"\nkvm_specs = ["specs"]\nkvm_profile = "quick"\n')
    result = run(tmp_path, None, "--kvm-backend=toy-broken", "-k", "TOY or REQ-15")
    assert result.returncode == 1, result.stdout + result.stderr
    assert_vendored(result.stdout, vendored)
    assert verdicts(result.stdout) == {"REQ-15": "SKIPPED", "TOY-01": "PASSED", "TOY-02": "FAILED",
                                       "TOY-03": "SKIPPED"}
    assert "TOY-02 violated: kvm_test_request sees a made request" in result.stdout


def test_package_needs_nothing_outside_itself() -> None:
    # Vendoring copies exactly two folders: nothing in the package may import the project's tests.
    for path in (REPO / "pytest_kvmconf").rglob("*.py"):
        text = path.read_text()
        assert "from tests" not in text and "import tests" not in text, path


def _ids(out: str) -> set[str]:
    """Guarantee ids of a --collect-only listing, or of a --kvm-list's catalogue lines."""
    ids = {ln.rsplit("::", 1)[1] for ln in out.splitlines() if ".toml::" in ln}
    ids |= {ln.split()[0] for ln in out.splitlines() if ln[:1].isupper() and ln.split()[0].count("-") == 1
            and len(ln.split()) > 3 and ln.split()[3] in ("check", "skip", "xfail")}
    return ids


def test_ini_configured_project_collects_one_set_of_specs(tmp_path: Path) -> None:
    # CONTRIBUTING.md section 6, copied as it is: its conftest line, its ini fragment, and the
    # backend of section 5 the fragment names.
    from tests.test_contributing import of

    vendored = vendor(tmp_path)
    fragment = next(b.body for b in of("toml", "fragment") if "pythonpath" in b.body)
    plugins = next(b.body for b in of("python", "conftest") if "pytest_plugins" in b.body)
    registration = next(b.body for b in of("python", "conftest") if "bitmap" in b.body)
    backend = next(b.body for b in of("python", "backend") if b.attrs["file"] == "bitmap_backend.py")
    (tmp_path / "pyproject.toml").write_text(fragment)
    (tmp_path / "conftest.py").write_text(plugins + registration + WHERE)
    (tmp_path / "bitmap_backend.py").write_text(backend)
    (tmp_path / "kvm-specs").mkdir()
    (tmp_path / "specs" / "toy.toml").rename(tmp_path / "kvm-specs" / "toy.toml")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_unit.py").write_text("def test_unit():\n    pass\n")
    seen = {}
    for args in ((), ("--kvm-list",), ("--kvm-backend=reference",), ("tests",)):
        listing = () if "--kvm-list" in args else ("--collect-only", "-qq")
        result = run(tmp_path, None, *listing, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        seen[args] = _ids(result.stdout)
        unit = "tests/test_unit.py::test_unit" in result.stdout
        assert unit == (args in ((), ("tests",))), (args, result.stdout)
    assert_vendored(run(tmp_path, None, "--kvm-list").stdout, vendored)
    everything = seen[("--kvm-list",)]
    assert {"TOY-01", "REQ-15"} <= everything
    assert all(ids == everything for ids in seen.values()), seen
