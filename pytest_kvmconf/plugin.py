"""pytest hooks only: options, backend choice, collection of spec files."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import conformance, expectations, hookspecs, profiles
from .collect import SpecFile, replay_schedule
from .registry import BackendError, bundled, entry_point_backends, resolve
from .session import KEY, RunState, state_of
from .spec.versions import KNOWN_VERSIONS, NEWEST, parse_version

DEFAULT_BACKEND = "reference"


def bundled_specs() -> Path | None:
    """The specs shipped with the plugin: in the wheel, or beside the package (source, vendored)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_specs", here.parent / "specs"):
        if candidate.is_dir():
            return candidate
    return None


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmconf", "KVM conformance (pytest-kvmconf)")
    group.addoption("--kvm-backend", dest="kvm_backend", default=None, metavar="NAME",
                    help="backend to check: a registered name (reference, threaded, kvm, ...) or "
                         "module:factory. Giving it runs the bundled specs. Default: reference.")
    group.addoption("--kvm-specs", dest="kvm_specs", action="append", default=[], metavar="DIR",
                    help="add a folder (or file) of spec files; repeatable")
    group.addoption("--kvm-no-bundled-specs", dest="kvm_no_bundled", action="store_true",
                    help="run only the spec folders given with --kvm-specs / kvm_specs")
    group.addoption("--kvm-doc-version", dest="kvm_doc_version", default=None, metavar="X.Y",
                    help=f"check the statements of this version of the documents "
                         f"(known texts: {', '.join(KNOWN_VERSIONS)}; default {NEWEST})")
    group.addoption("--kvm-replay", dest="kvm_replay", default=None, metavar="ID:SCHEDULE",
                    help="replay exactly one schedule printed by a failure")
    group.addoption("--kvm-schedule", dest="kvm_schedule", default="controlled",
                    choices=("controlled", "free"),
                    help="thread backends: engine-controlled interleavings (default) or free, "
                         "preemptive runs")
    group.addoption("--kvm-point-timeout", dest="kvm_point_timeout", type=float, default=5.0,
                    metavar="SECONDS",
                    help="thread backends: how long one step may take before it counts as a hang")
    parser.addini("kvm_specs", "folders of spec files to run", type="paths", default=[])
    parser.addini("kvm_backend", "default backend", default=DEFAULT_BACKEND)
    conformance.add_options(group)
    expectations.add_options(group)
    profiles.add_options(group, parser)


def _known_backends(config: pytest.Config) -> dict:
    known = dict(bundled())
    known.update(entry_point_backends())
    for answer in config.hook.pytest_kvmconf_backends():
        if answer:
            known.update(answer)
    return known


def _base_args(config: pytest.Config) -> list[str]:
    """The invocation's arguments minus selection and replay, for the replay command."""
    out, skip = [], False
    for a in config.invocation_params.args:
        if skip:
            skip = False
            continue
        if a in ("-k", "-m", "-n", "--kvm-replay", "--junitxml", "--kvm-report"):
            skip = True
            continue
        if a.startswith(("-k", "-m", "-n", "--kvm-replay", "--junitxml", "--kvm-report", "-x")) \
                and a not in ("-x",):
            continue
        if a == "-x":
            continue
        out.append(a)
    return out


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    opt = config.option
    doc_version = opt.kvm_doc_version or NEWEST
    try:
        parse_version(doc_version)
    except ValueError as exc:
        raise pytest.UsageError(f"--kvm-doc-version: {exc}") from None
    replay = None
    if opt.kvm_replay:
        try:
            replay = replay_schedule(opt.kvm_replay)
        except ValueError as exc:
            raise pytest.UsageError(f"--kvm-replay: {exc}") from None
    paths = [Path(p) for p in opt.kvm_specs] + list(config.getini("kvm_specs"))
    active = bool(opt.kvm_backend or opt.kvm_specs or replay or opt.kvm_list or opt.kvm_report)
    if active and not opt.kvm_no_bundled:
        b = bundled_specs()
        if b is not None:
            paths.insert(0, b)
    for p in paths:
        if not Path(p).exists():
            raise pytest.UsageError(f"--kvm-specs: {p} does not exist")
    state = RunState(
        backend_name=opt.kvm_backend or config.getini("kvm_backend") or DEFAULT_BACKEND,
        doc_version=doc_version,
        known_backends=_known_backends(config),
        spec_paths=paths,
        replay=replay,
        free=opt.kvm_schedule == "free",
        point_timeout=opt.kvm_point_timeout,
        base_args=_base_args(config),
        invocation_dir=str(config.invocation_params.dir),
    )
    config.stash[KEY] = state
    if active and getattr(config, "args_source", None) != pytest.Config.ArgsSource.ARGS:
        # `pytest --kvm-backend=X` means "run the conformance suite here": without paths on the
        # command line, the folder's own tests (or testpaths) are not collected beside it.
        config.args = []
    if paths:
        try:
            state.backend()  # fail early, with the list of known backends
        except BackendError as exc:
            raise pytest.UsageError(str(exc)) from None
    profiles.profile_name(config)  # a wrong kvm_profile ini value fails here, not per item
    expectations.configure(config, state.backend() if paths else None)
    conformance.configure(config)
    from .facets import all_capabilities

    for area in ("requests", "mp", "attr", "locking", "spte"):
        config.addinivalue_line("markers", f"{area}: guarantees of the {area} document area")
    for cap, doc in all_capabilities().items():
        config.addinivalue_line("markers", f"needs_{cap}: guarantees needing backend capability {cap} ({doc})")


def _spec_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        cands = [p] if p.is_file() else sorted(p.glob("*.toml"))
        for f in cands:
            if f.resolve() not in {x.resolve() for x in files}:
                files.append(f)
    return files


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    # Runs before -k/-m deselection, so spec items are selectable like any test.
    state = state_of(config)
    from _pytest.runner import collect_one_node

    for path in _spec_files(state.spec_paths):
        collector = SpecFile.from_parent(session, path=path.resolve())
        report = collect_one_node(collector)
        if report.failed:
            session.ihook.pytest_collectreport(report=report)
            continue
        items.extend(i for i in report.result if isinstance(i, pytest.Item))
    if state.replay is not None:
        keep = [i for i in items if getattr(i, "guarantee", None) is not None
                and i.guarantee.id == state.replay.guarantee]
        if not keep:
            raise pytest.UsageError(f"--kvm-replay: no guarantee {state.replay.guarantee} among the specs")
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


pytest_cmdline_main = conformance.pytest_cmdline_main  # --kvm-list


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(KEY, None)
    if state is None or not state.spec_paths:
        return []
    return [f"kvmconf: backend {state.backend_name}, document text {state.doc_version}, specs "
            + ", ".join(str(p) for p in state.spec_paths)]


__all__ = ["pytest_addoption", "pytest_configure", "resolve"]
