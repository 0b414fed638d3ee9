"""pytest hooks only: options, backend choice, collection of spec files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from . import backend_check, conformance, expectations, hookspecs, profiles, progress
from . import replay as replays
from .collect import SpecFile
from .registry import BackendError, bundled, entry_point_backends, resolve
from .session import KEY, RunState, state_of
from .spec.loader import spec_files, unusable_files
from .spec.model import MEMORY_MODELS
from .spec.versions import KNOWN_VERSIONS, NEWEST, check_doc_version

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
                         f"(texts change at {', '.join(KNOWN_VERSIONS)}; default {NEWEST})")
    group.addoption("--kvm-replay", dest="kvm_replay", default=None, metavar="ID@FINGERPRINT:SCHEDULE",
                    help="replay exactly one schedule printed by a failure")
    group.addoption("--kvm-schedule", dest="kvm_schedule", default="controlled",
                    choices=("controlled", "free"),
                    help="thread backends: engine-controlled interleavings (default) or free, "
                         "preemptive runs")
    group.addoption("--kvm-point-timeout", dest="kvm_point_timeout", type=float, default=5.0,
                    metavar="SECONDS",
                    help="thread backends: how long one step may take before it counts as a hang")
    group.addoption("--kvm-memory-model", dest="kvm_memory_model", default=None, choices=MEMORY_MODELS,
                    help="how the backend's modelled shared accesses behave: sc (sequentially "
                         "consistent, default), tso (x86 store buffers) or lkmm (the Linux kernel "
                         "memory model, the subset in docs/memory-models.md). Ini: kvm_memory_model")
    parser.addini("kvm_memory_model", "memory model: sc, tso or lkmm", default="sc")
    parser.addini("kvm_specs", "folders of spec files to run", type="paths", default=[])
    parser.addini("kvm_backend", f"default backend ({DEFAULT_BACKEND} when unset)", default="")
    parser.addini("kvm_bundled_specs", "run the bundled specs beside kvm_specs (default true)", type="bool",
                  default=True)
    conformance.add_options(group)
    expectations.add_options(group)
    profiles.add_options(group, parser)
    progress.add_options(group)


def _known_backends(config: pytest.Config) -> dict:
    known = dict(bundled())
    known.update(entry_point_backends())
    for answer in config.hook.pytest_kvmconf_backends():
        if answer:
            known.update(answer)
    return known


def _base_args(config: pytest.Config) -> list[str]:
    """The invocation's options minus selection, paths and reports, for the replay command."""
    positional = set(config.args) if getattr(config, "args_source", None) == pytest.Config.ArgsSource.ARGS else set()
    out, skip = [], False
    for a in config.invocation_params.args:
        if skip:
            skip = False
            continue
        if a in ("-k", "-m", "-n", "--kvm-replay", "--junitxml", "--kvm-report", "--dist", "--maxfail"):
            skip = True
            continue
        if a.startswith(("-k", "-m", "-n", "--kvm-replay", "--junitxml", "--kvm-report", "--dist", "--maxfail",
                         "-x", "--lf", "--last-failed", "--ff", "--failed-first", "--sw", "--stepwise")) \
                or a in positional:
            continue
        out.append(a)
    return out


KVM_OPTIONS = ("--kvm-",)


def _engaged(config: pytest.Config) -> bool:
    """The one rule for whether the specs run: a ``--kvm-*`` option on the command line, or the
    ini file configuring the plugin (``kvm_specs`` or ``kvm_backend``)."""
    return _kvm_on_command_line(config) or bool(config.getini("kvm_specs")) or bool(config.getini("kvm_backend"))


def _kvm_on_command_line(config: pytest.Config) -> bool:
    return any(a.startswith(KVM_OPTIONS) for a in config.invocation_params.args)


def _spec_set(config: pytest.Config) -> list[Path]:
    """Every spec folder of the run, the same whatever the command: bundled, ini, command line."""
    opt = config.option
    for p in opt.kvm_specs:
        if not Path(config.invocation_params.dir, p).exists():
            raise pytest.UsageError(f"--kvm-specs: {p} does not exist")
    for p in config.getini("kvm_specs"):
        if not Path(p).exists():
            raise pytest.UsageError(f"kvm_specs = {p} in the ini file does not exist")
    paths = list(config.getini("kvm_specs")) + [Path(config.invocation_params.dir, p) for p in opt.kvm_specs]
    if not (opt.kvm_no_bundled or not config.getini("kvm_bundled_specs")):
        b = bundled_specs()
        if b is not None:
            paths.insert(0, b)
    out: list[Path] = []
    for p in paths:
        if Path(p).resolve() not in {x.resolve() for x in out}:
            out.append(Path(p))
    return out


def _resolve_spec_args(config: pytest.Config, folders: list[Path]) -> bool:
    """Let command-line paths name specs as the progress lines show them.

    ``vcpu-requests.toml::REQ-15`` (the bundled file, wherever it is installed) becomes its full
    path, so pytest's own selection by node id works; returns whether any argument names a spec
    file or folder (then only those specs run)."""
    files = {f.resolve(): f for f in _spec_files(folders)}
    by_name = {_display_name(f, folders, config.rootpath): f for f in files.values()}
    named = False
    args = []
    for arg in config.args:
        path, sep, rest = arg.partition("::")
        full = Path(config.invocation_params.dir, path)
        if not full.exists() and path in by_name:
            full = by_name[path].resolve()
            arg = f"{full}{sep}{rest}"
        if full.exists() and (full.resolve() in files or any(
                f.is_relative_to(full.resolve()) for f in files) and full.resolve() != config.rootpath):
            named = True
        args.append(arg)
    config.args[:] = args
    return named


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    opt = config.option
    doc_version = opt.kvm_doc_version or NEWEST
    try:
        doc_version = check_doc_version(doc_version)
    except ValueError as exc:
        raise pytest.UsageError(f"--kvm-doc-version: {exc}") from None
    memory_model = opt.kvm_memory_model or config.getini("kvm_memory_model") or "sc"
    if memory_model not in MEMORY_MODELS:
        raise pytest.UsageError(f"kvm_memory_model = {memory_model!r} in the ini file: choose one of "
                                f"{', '.join(MEMORY_MODELS)}")
    if doc_version not in KNOWN_VERSIONS:
        raise pytest.UsageError(f"--kvm-doc-version={doc_version} names no known document text; "
                                f"known texts: {', '.join(KNOWN_VERSIONS)}")
    replay = None
    if opt.kvm_replay is not None:  # an empty --kvm-replay= is a mistake too, not "no replay"
        try:
            replay = replays.decode(opt.kvm_replay)
        except replays.ReplayError as exc:
            raise pytest.UsageError(f"--kvm-replay: {exc}") from None
    engaged = _engaged(config)
    paths = _spec_set(config) if engaged else []
    state = RunState(
        backend_name=opt.kvm_backend or config.getini("kvm_backend") or DEFAULT_BACKEND,
        doc_version=doc_version,
        known_backends=_known_backends(config),
        spec_paths=paths,
        replay=replay,
        free=opt.kvm_schedule == "free",
        point_timeout=opt.kvm_point_timeout,
        memory_model=memory_model,
        base_args=_base_args(config),
        environ=dict(os.environ),
        bundled_folder=bundled_specs() if not (opt.kvm_no_bundled or not config.getini("kvm_bundled_specs"))
        else None,
        invocation_dir=str(config.invocation_params.dir),
    )
    config.stash[KEY] = state
    if engaged:
        # Which specs run is one rule (README, "Which specs run"): the spec set is always the
        # bundled, ini and --kvm-specs folders; paths on the command line add to it, unless one
        # of them names a spec file or folder, which narrows it; a --kvm-* option without paths
        # means "run the conformance suite here", without the folder's own tests.
        from_command_line = getattr(config, "args_source", None) == pytest.Config.ArgsSource.ARGS
        narrowed = from_command_line and _resolve_spec_args(config, paths)
        if not from_command_line and _kvm_on_command_line(config):
            config.args = []
        if not narrowed:
            config.args = [*config.args, *(str(p) for p in paths)]
        state.collect = {f.resolve() for f in _spec_files(paths)}
        try:
            backend = state.backend()  # fail early, with the list of known backends
        except BackendError as exc:
            raise pytest.UsageError(str(exc)) from None
        errors, warnings = backend_check.problems(backend)
        if errors:
            raise pytest.UsageError("\n".join(errors))
        for text in warnings:
            config.issue_config_time_warning(backend_check.BackendWarning(text), stacklevel=2)
        # A backend that declares no execution style is checked when its first machine runs.
        execution = getattr(backend, "execution", None) or getattr(getattr(backend, "machine_class", None),
                                                                   "execution", "threads")
        if state.free and execution != "threads":
            raise pytest.UsageError(
                f"--kvm-schedule=free runs a thread backend's OS threads preemptively; backend "
                f"{state.backend_name!r} runs its machines as generators (execution = {execution!r}), "
                "whose interleavings the engine chooses itself")
        for unusable, why in unusable_files(paths):
            config.issue_config_time_warning(
                pytest.PytestWarning(f"spec folder: {unusable} is left out: {why}"), stacklevel=2)
    profiles.profile_name(config)  # a wrong kvm_profile ini value fails here, not per item
    profiles.search(config)  # and so does an unknown --kvm-search
    expectations.configure(config, state.backend() if paths else None)
    conformance.configure(config)
    from .facets import all_capabilities

    for area in ("requests", "mp", "attr", "locking", "spte"):
        config.addinivalue_line("markers", f"{area}: guarantees of the {area} document area")
    for cap, doc in all_capabilities().items():
        config.addinivalue_line("markers", f"needs_{cap}: guarantees needing backend capability {cap} ({doc})")


def _spec_files(paths: list[Path]) -> list[Path]:
    return spec_files(paths)  # each regular file once; FIFOs and symlink loops are left out (warned)


def _display_name(path: Path, folders: list[Path], rootpath: Path) -> str:
    """A spec file's node id part: relative to the rootdir when inside it, else relative to its
    spec folder (``vcpu-requests.toml``, not a site-packages path)."""
    path = path.resolve()
    if path.is_relative_to(rootpath):
        return path.relative_to(rootpath).as_posix()
    for folder in folders:
        folder = Path(folder).resolve()
        if folder.is_file() and folder == path:
            return path.name
        if folder.is_dir() and path.is_relative_to(folder):
            return path.relative_to(folder).as_posix()
    return path.name


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    state = parent.config.stash.get(KEY, None)
    if state is None or file_path.suffix != ".toml" or file_path.resolve() not in state.collect:
        return None
    if file_path.resolve().is_relative_to(parent.config.rootpath):
        return SpecFile.from_parent(parent, path=file_path)
    return SpecFile.from_parent(parent, path=file_path,
                                nodeid=_display_name(file_path, state.spec_paths, parent.config.rootpath))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    state = state_of(config)
    if state.replay is not None:
        keep = [i for i in items if getattr(i, "guarantee", None) is not None
                and i.guarantee.id == state.replay.guarantee]
        if not keep:
            raise pytest.UsageError(f"--kvm-replay: no guarantee {state.replay.guarantee} among the specs")
        try:
            replays.check(state.replay, keep[0].guarantee)
        except replays.ReplayError as exc:
            raise pytest.UsageError(f"--kvm-replay: {exc}") from None
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


pytest_cmdline_main = conformance.pytest_cmdline_main  # --kvm-list


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from .engine import leftover, workers

    left = workers.abandoned()
    if left:
        terminalreporter.write_line(
            f"kvmconf: {len(left)} backend thread(s) abandoned after a hang are still running: "
            f"{', '.join(left)} (daemon threads: they do not keep pytest from exiting)", yellow=True)
    theirs = leftover.report()
    if theirs:
        terminalreporter.write_line(
            f"kvmconf: {len(theirs)} thread(s) a backend started are still running: {'; '.join(theirs)}. "
            "pytest exits without waiting for them (see pytest_kvmconf.engine.leftover)", yellow=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    from .engine import leftover

    leftover.note_session(session)  # its exit status, should the exit guard end the process


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    from .engine import leftover, workers

    workers.shutdown()  # no pooled worker outlives the session
    leftover.release()  # nor does a non-daemon thread a backend left running hold up the exit


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(KEY, None)
    if state is None or not state.spec_paths:
        return []
    mode = "free (preemptive)" if state.free else "controlled"
    model = "" if state.memory_model == "sc" else f", memory model {state.memory_model}"
    return [f"kvmconf: backend {state.backend_name}, document text {state.doc_version}, "
            f"profile {profiles.describe(config)}, schedule {mode}{model}",
            "kvmconf: specs " + ", ".join(str(p) for p in state.spec_paths)]


__all__ = ["pytest_addoption", "pytest_configure", "resolve"]
