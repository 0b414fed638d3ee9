"""The searches of --kvm-search: each finds a broken variant, shrinks it to the minimal
timeline, replays exactly, and keeps hypothesis' seeds and database; the tape writes any
interleaving."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import Phase, settings
from hypothesis.database import InMemoryExampleDatabase

import pytest_kvmconf.engine.explore as explore_module
from pytest_kvmconf.backends.reference import ReferenceBackend
from pytest_kvmconf.engine.explore import ViolationFound, explore
from pytest_kvmconf.engine.runner import RunOptions, run_schedule
from pytest_kvmconf.engine.schedule import Chooser, Recording, Schedule
from pytest_kvmconf.engine.search import (
    DEFAULT_SEARCH,
    MIXED_DEPTH,
    MIXED_DEPTH_WEAK,
    MIXED_RANDOM_FIRST,
    MIXED_RANDOM_FIRST_WEAK,
    SEARCHES,
    PctPicker,
    RandomPicker,
    parse_search,
)
from pytest_kvmconf.engine.shrink import Shrinker, same_failure

from .bite import guarantees, verdict
from .broken.requests import backend
from .broken.spte import BROKEN as SPTE_BROKEN
from .broken.spte import backend as spte_backend
from .test_plugin import no_traceback, run

SEARCH_NAMES = ["mixed", "random", "pct:3", "hypothesis"]


def timeline(found: ViolationFound) -> list[tuple[str, tuple[str, ...]]]:
    return [(e.thread, e.texts) for e in found.outcome.timeline]


@pytest.fixture(scope="module")
def minimal_req15() -> ViolationFound:
    """CheckBeforeMode (the final kvm_request_pending() check before IN_GUEST_MODE) as
    hypothesis' shrinker leaves it: the reference every search must shrink to."""
    found = verdict("REQ-15", backend("CheckBeforeMode"), shrink=True, search="hypothesis")
    assert isinstance(found, ViolationFound)
    return found


@pytest.mark.parametrize("search", SEARCH_NAMES)
def test_each_search_finds_shrinks_and_replays(search: str, minimal_req15: ViolationFound) -> None:
    b = backend("CheckBeforeMode")
    found = verdict("REQ-15", b, shrink=True, search=search)
    assert isinstance(found, ViolationFound), f"{search} missed CheckBeforeMode within the default budget"
    first = found.stats.coverage.first_violation
    assert first is not None and first <= 100
    # Minimal: the same eight steps and two switches hypothesis' shrinker finds.
    assert timeline(found) == timeline(minimal_req15)
    assert found.outcome.schedule.params == minimal_req15.outcome.schedule.params
    # Exact replay, also from the replay string.
    again = run_schedule(guarantees()["REQ-15"], b, Schedule.decode(found.outcome.schedule.encode()),
                         RunOptions("6.18"))
    assert [(e.thread, e.texts) for e in again.timeline] == timeline(found)
    assert again.violation is not None and again.violation.kind == found.outcome.violation.kind


@pytest.mark.parametrize("search", ["mixed", "random", "pct:3"])
def test_a_shrunk_schedule_is_a_fixed_point_of_the_shrinker(search: str) -> None:
    """No simpler candidate of the shrinker's still fails the same way: minimal in its moves."""
    g, options = guarantees()["SPTE-05"], RunOptions("6.18")
    b = spte_backend(next(m for m in SPTE_BROKEN if m.__name__ == "NonAtomicRestore"))
    found = verdict("SPTE-05", b, shrink=True, search=search, max_examples=200)
    assert isinstance(found, ViolationFound)
    shrinker = Shrinker(g, b, options, found.outcome)
    for candidate in shrinker.candidates():
        out = run_schedule(g, b, candidate, options)
        simpler = shrinker.key(candidate) < shrinker.key(found.outcome.schedule)
        assert not (simpler and same_failure(out.violation, found.outcome.violation)), candidate


@pytest.mark.parametrize("search", ["mixed", "random", "pct:2"])
def test_the_same_seed_explores_the_same_schedules(search: str) -> None:
    b = backend("CheckBeforeMode")
    one = verdict("REQ-15", b, seed=7, search=search)
    two = verdict("REQ-15", b, seed=7, search=search)
    assert one is not None and two is not None
    assert one.stats.coverage.first_violation == two.stats.coverage.first_violation
    assert one.outcome.schedule == two.outcome.schedule


@pytest.fixture
def unseeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A seeded run (--hypothesis-seed of an in-process pytester run sets it) skips the database."""
    import hypothesis.core
    monkeypatch.setattr(hypothesis.core, "global_force_seed", None)


@pytest.mark.usefixtures("unseeded")
def test_a_found_failure_is_saved_and_replayed_first() -> None:
    g, b = guarantees()["REQ-15"], backend("CheckBeforeMode")
    db = InMemoryExampleDatabase()
    base = settings(max_examples=100, database=db, deadline=None, derandomize=False)
    with pytest.raises(ViolationFound) as first:
        explore(g, b, RunOptions("6.18"), base)
    saved = [Schedule.decode(v.decode()) for vs in db.data.values() for v in vs]
    assert saved == [first.value.outcome.schedule]
    # The next run replays the saved schedule before it searches: found in one schedule.
    with pytest.raises(ViolationFound) as second:
        explore(g, b, RunOptions("6.18"), base)
    assert second.value.stats.coverage.first_violation == 1
    assert second.value.outcome.schedule == first.value.outcome.schedule
    # Fixed since: the saved schedule passes, is forgotten, and the search runs its budget.
    fixed = ReferenceBackend()
    fixed.name = b.name  # the same backend, repaired: the database is keyed by guarantee and backend
    explore(g, fixed, RunOptions("6.18"), base)
    assert not any(db.data.values())


@pytest.mark.usefixtures("unseeded")
def test_damaged_database_entries_are_dropped() -> None:
    g = guarantees()["REQ-15"]
    db = InMemoryExampleDatabase()
    key = f"pytest-kvmconf:{g.id}@reference".encode()
    db.save(key, b"REQ-15:@@@")
    db.save(key, b"\xff\xfe")
    stats = explore(g, ReferenceBackend(), RunOptions("6.18"), settings(max_examples=5, database=db, derandomize=False))
    assert stats.examples == 5 and not list(db.fetch(key))


def test_without_the_generate_phase_nothing_is_searched() -> None:
    stats = explore(guarantees()["REQ-15"], backend("CheckBeforeMode"), RunOptions("6.18"),
                    settings(database=None, phases=[Phase.explicit]))
    assert stats.examples == 0


class Entity:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


@pytest.mark.parametrize("seed", range(20))
def test_the_tape_writes_any_interleaving_and_replays_it(seed: int) -> None:
    """Random picks among a changing set of runnable entities (some blocking, some appearing
    late, as a store buffer's drain would) are replayed exactly by the Chooser from the tape."""
    rng = random.Random(seed)
    pool = [Entity(f"t{i}") for i in range(rng.randint(1, 4))]
    late = Entity("drain")
    offers, current = [], None
    for step in range(rng.randint(0, 40)):
        runnable = [e for e in pool if rng.random() < 0.8] or [pool[0]]
        if step > 5 and rng.random() < 0.5:
            runnable.append(late)
        offers.append(runnable)
    picker = PctPicker(rng, 3, 20) if seed % 2 else RandomPicker(rng)
    rec, picks = Recording(picker), []
    for runnable in offers:
        current = rec.pick(runnable, current)
        picks.append(current)
    tape = rec.writer.tape()
    chooser, replayed, current = Chooser(tape), [], None
    for runnable in offers:
        current = chooser.pick(runnable, current)
        replayed.append(current)
    assert replayed == picks
    assert all(x >= 0 for x in tape)


def test_search_names_parse_and_bad_ones_list_the_known() -> None:
    assert DEFAULT_SEARCH == "mixed" and set(SEARCHES) == {"mixed", "random", "pct", "hypothesis"}
    assert str(parse_search("pct")) == "pct:3" and parse_search("pct:5").depth == 5
    assert str(parse_search(" random ")) == "random"
    for bad in ("nosuch", "pct:0", "pct:x", "random:2", ""):
        with pytest.raises(ValueError) as exc:
            parse_search(bad)
        assert "pct" in str(exc.value)
    with pytest.raises(ValueError, match="known searches: mixed .*random .*pct .*hypothesis"):
        parse_search("nosuch")


def test_kvm_search_option_and_ini(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--kvm-backend=reference", "--kvm-search=nosuch")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--kvm-search: unknown search 'nosuch'; known searches: mixed*random*pct*"])
    no_traceback(result)
    pytester.makeini("[pytest]\nkvm_search = pct:99\n")
    result = run(pytester, "--kvm-backend=reference")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*kvm_search in the ini file: search 'pct:99': pct's depth*"])
    no_traceback(result)
    pytester.makeini("[pytest]\nkvm_search = pct:2\n")
    result = run(pytester, "--kvm-backend=reference", "-k", "REQ-15", "--kvm-search=random")
    result.assert_outcomes(passed=1)


def _hunt_log(monkeypatch: pytest.MonkeyPatch, search: str, gid: str, examples: int, seed: int,
              memory_model: str = "sc") -> list[Schedule]:
    """The schedules a hunt ran, in order, each with the tape of the picks it made."""
    ran: list[Schedule] = []

    def recording(g, b, schedule, options, chooser=None):
        out = run_schedule(g, b, schedule, options, chooser)
        ran.append(replace(schedule, tape=chooser.writer.tape()))
        return out

    monkeypatch.setattr(explore_module, "run_schedule", recording)
    base = settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate])
    explore(guarantees()[gid], ReferenceBackend(), RunOptions("6.18", memory_model=memory_model), base,
            seed=seed, search=search)
    monkeypatch.undo()
    return ran


@pytest.mark.parametrize(("seed", "memory_model", "first"), [
    (0, "sc", MIXED_RANDOM_FIRST), (1, "sc", MIXED_RANDOM_FIRST), (2, "sc", MIXED_RANDOM_FIRST),
    (0, "lkmm", MIXED_RANDOM_FIRST_WEAK), (1, "tso", MIXED_RANDOM_FIRST_WEAK)])
def test_mixed_begins_with_exactly_the_random_searchs_schedules(monkeypatch: pytest.MonkeyPatch, seed: int,
                                                                memory_model: str, first: int) -> None:
    """The coupling bench_search relies on: a bug random finds within its first schedules,
    mixed finds at the same schedule (fewer of them under a weak memory model)."""
    n = first + 8
    mixed = _hunt_log(monkeypatch, "mixed", "REQ-15", n, seed, memory_model)
    rand = _hunt_log(monkeypatch, "random", "REQ-15", n, seed, memory_model)
    assert len(mixed) == len(rand) == n
    assert mixed[:first] == rand[:first]
    # and then it does something else (PCT, decks): otherwise it would be random under another name
    assert mixed[first] != rand[first]


@pytest.mark.parametrize(("memory_model", "first", "depth", "leaning"), [
    ("sc", MIXED_RANDOM_FIRST, MIXED_DEPTH, True),
    ("tso", MIXED_RANDOM_FIRST_WEAK, MIXED_DEPTH_WEAK, False),
    ("lkmm", MIXED_RANDOM_FIRST_WEAK, MIXED_DEPTH_WEAK, False)])
def test_mixed_pct_phase_follows_the_memory_model(memory_model: str, first: int, depth: int,
                                                   leaning: bool) -> None:
    """Under a weak model the PCT phase starts sooner, is shallower and never leans early."""
    search = parse_search("mixed").for_model(memory_model)
    rng = random.Random(0)
    assert isinstance(search.picker(rng, first - 1), RandomPicker)
    pickers = [search.picker(rng, first + i) for i in range(200)]
    assert all(isinstance(p, PctPicker) and p.depth == depth for p in pickers)
    # A change point among the first 1 % of 1,000 decisions: 2-3 % of unleaned pickers have
    # one, 27 % of leaning ones (u^2 < 0.01 for one of three points), so about 15 % under sc.
    search.steps = 1000
    pickers = [search.picker(rng, first + i) for i in range(400)]
    early = sum(min(p.changes) <= 10 for p in pickers) / len(pickers)
    assert (early > 0.08) == leaning
