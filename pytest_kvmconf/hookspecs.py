"""The extension API: how backends reach pytest-kvmconf.

A backend registers by implementing :func:`pytest_kvmconf_backends` in any
pytest plugin: a ``conftest.py``, a module named with ``-p``, or an installed
package's ``pytest_kvmconf`` entry point (the entry point may also name a
backend factory directly, ``name = "pkg.module:factory"``). A one-off backend
needs no registration at all: ``--kvm-backend=pkg.module:factory``.

Example ``conftest.py``::

    from mypkg import MyBackend

    def pytest_kvmconf_backends():
        return {"mine": MyBackend}   # name -> factory returning a Backend
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

#: Entry point group of installed backends.
ENTRY_POINT_GROUP = "pytest_kvmconf"


@pytest.hookspec
def pytest_kvmconf_backends() -> Mapping[str, Callable[[], Any]]:
    """Return backend factories by name; every plugin's answers are merged."""
    raise NotImplementedError
