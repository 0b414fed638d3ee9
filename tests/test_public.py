"""The public surface tells the truth: what the guides import is exported, and it is importable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest_kvmconf
import pytest_kvmconf.spec

ROOT = Path(__file__).resolve().parent.parent


def test_every_exported_name_exists() -> None:
    for name in pytest_kvmconf.__all__:
        assert getattr(pytest_kvmconf, name) is not None, name
    assert pytest_kvmconf.EIO == 5 and pytest_kvmconf.wait_on.__name__ == "wait_on"


def test_spec_is_a_regular_package() -> None:
    assert pytest_kvmconf.spec.__file__ is not None  # not an implicit namespace package


def test_the_guide_imports_only_the_public_surface() -> None:
    # Backend authors copy these lines: what they import must be exported, except the bundled
    # backends themselves (subclassed by broken variants) and facet constants beyond the API's.
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    imported = re.findall(r"^from (pytest_kvmconf[\w.]*) import ([\w, ]+)$", text, re.M)
    assert imported
    for module, names in imported:
        if module.startswith("pytest_kvmconf.backends."):
            continue
        assert module == "pytest_kvmconf", f"CONTRIBUTING.md imports from {module}: use the package's exports"
        for name in (n.strip() for n in names.split(",")):
            assert name in pytest_kvmconf.__all__, name
