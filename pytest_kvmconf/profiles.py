"""Search budgets and searches: how many schedules are explored per guarantee, and how.

Two hypothesis profiles are registered on import, so they also work with
hypothesis' own ``--hypothesis-profile``:

* ``kvmconf-quick``: a few schedules per guarantee, for editing a spec or a
  backend and getting an answer in seconds;
* ``kvmconf-thorough``: many schedules, for nightly runs.

``--kvm-profile=quick|default|thorough`` (or ``kvm_profile`` in the ini file)
chooses one for the guarantees only; ``default`` passes nothing, so the
guarantees get whatever hypothesis is configured with (its default budget of
100 examples unless ``--hypothesis-profile`` says otherwise).

``--kvm-search=NAME`` (or ``kvm_search`` in the ini file) chooses how schedules are
chosen (engine/search.py): ``mixed`` (the default), ``random``, ``pct:D`` or ``hypothesis``.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from .engine.search import DEFAULT_SEARCH, SEARCHES, Search, parse_search

QUICK = "kvmconf-quick"
THOROUGH = "kvmconf-thorough"
#: --kvm-profile value -> hypothesis profile name (None: hypothesis' current settings).
PROFILES: dict[str, str | None] = {"quick": QUICK, "default": None, "thorough": THOROUGH}

# The bite tests show every broken backend is caught within 100 examples, so
# 10 still catches the blatant breakages while a whole run takes seconds;
# 2000 is twenty times the default budget, for rare interleavings.
settings.register_profile(QUICK, max_examples=10)
settings.register_profile(THOROUGH, max_examples=2000)


def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    group.addoption("--kvm-profile", dest="kvm_profile", default=None, choices=tuple(PROFILES),
                    help="search budget per guarantee: quick (10 schedules), default (hypothesis' "
                         "settings, 100 unless --hypothesis-profile says otherwise) or thorough (2000). "
                         "Ini: kvm_profile")
    parser.addini("kvm_profile", "search budget per guarantee: quick, default or thorough", default="default")
    group.addoption("--kvm-search", dest="kvm_search", default=None, metavar="NAME",
                    help=f"how schedules are searched: {', '.join(SEARCHES)} (pct:D for depth D); "
                         f"default {DEFAULT_SEARCH}. Ini: kvm_search")
    parser.addini("kvm_search", f"how schedules are searched: {', '.join(SEARCHES)}", default=DEFAULT_SEARCH)


def profile_name(config: pytest.Config) -> str:
    """The chosen --kvm-profile value; a wrong ini value is a usage error."""
    name = config.getoption("kvm_profile", None) or config.getini("kvm_profile") or "default"
    if name not in PROFILES:
        raise pytest.UsageError(f"kvm_profile = {name!r} in the ini file: choose one of "
                                f"{', '.join(PROFILES)}")
    return name


def base_settings(config: pytest.Config) -> settings | None:
    """The settings to pass as ``base`` to engine.explore.explore (None keeps hypothesis' own)."""
    hypothesis_profile = PROFILES[profile_name(config)]
    if hypothesis_profile is None:
        return None
    # Only the budget is the profile's: everything else comes from the profile in force when the
    # run starts (--hypothesis-profile, --hypothesis-verbosity, hypothesis' own "ci" profile where
    # the CI variable is set), not from whichever profile was loaded when this module was imported.
    return settings(settings.default, max_examples=settings.get_profile(hypothesis_profile).max_examples)


def describe(config: pytest.Config) -> str:
    """The profile in force and its budget, as the header and the report name it."""
    from hypothesis import settings as current

    name = profile_name(config)
    base = base_settings(config)
    examples = (base or current.default).max_examples
    if name == "default":
        return f"default (hypothesis profile {current.get_current_profile_name()!r}, {examples} examples)"
    return f"{name} ({examples} examples)"


def search(config: pytest.Config) -> Search:
    """The chosen search; an unknown one is a usage error that lists the known searches."""
    text = config.getoption("kvm_search", None) or config.getini("kvm_search") or DEFAULT_SEARCH
    try:
        return parse_search(text)
    except ValueError as exc:
        where = "--kvm-search" if config.getoption("kvm_search", None) else "kvm_search in the ini file"
        raise pytest.UsageError(f"{where}: {exc}") from None
