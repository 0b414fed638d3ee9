"""Load spec files and validate them into :mod:`.model` objects.

Every error names the file, the guarantee id and the key path, and says what
is allowed, because the reader is a KVM engineer writing a spec, not someone
debugging this loader.
"""

from __future__ import annotations

import difflib
import re
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .. import facets
from ..errors import ExprError, SpecError
from .expr import Expr, parse
from .locks import parse_lock_rules
from .model import (
    CHECK_KINDS,
    MEMORY_MODELS,
    OBLIGATIONS,
    USERSPACE_CAPABILITY,
    Check,
    Guarantee,
    Param,
    Sequence,
    Step,
    Thread,
)
from .versions import COMMIT_RE, VersionRange, parse_version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

ID_RE = re.compile(r"[A-Z]{1,12}-[0-9]{2,3}(\.[a-z0-9]{1,8})?", re.ASCII)
#: Largest spec file read (bounded memory; the bundled ones are below 100 KB).
MAX_FILE_BYTES = 4 << 20
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}", re.ASCII)

DOCUMENT_KEYS = {"file": "document file in docs/kvm", "area": "marker name of the area",
                 "title": "human title"}
GUARANTEE_KEYS = {
    "id": "catalogue id, e.g. REQ-15 or REQ-15.a",
    "title": "one line saying what is guaranteed",
    "section": "section of the document",
    "quote": "the sentence of the document this checks",
    "versions": "{ since = 'X.Y', until = 'X.Y', since_commit = '<hex>', until_commit = '<hex>' } the "
                "releases whose text states it, and the kernel commits that made and ended the statement",
    "quote_until": "{ 'X.Y' = 'older words' }: the quote as texts up to release X.Y word it",
    "needs": "extra backend capabilities (operations already imply their facets)",
    "arch": "architecture the statement is about (x86_64, arm64, riscv)",
    "vcpus": "number of vCPUs: an integer or the name of a parameter",
    "machine": "table of machine options (values may name parameters)",
    "params": "table of generated parameters",
    "thread": "array of threads",
    "check": "array of checks",
    "max_steps": "bound on scheduling points of one schedule",
    "locks": "documented locking rules judged by lockdep (order, leaves, not_in_srcu, protects...)",
    "memory_models": "memory models the document's statement assumes: a list of sc, tso, lkmm (default all)",
}
PARAM_KINDS = {"range": "[low, high] integers", "choice": "[values...]",
               "from": "name of a named set", "bool": "true"}
THREAD_KEYS = {"name": "thread name", "vcpu": "the vCPU this thread is the thread of",
               "per_vcpu": "one copy of the thread per vCPU, `vcpu` bound to its index",
               "steps": "array of steps", "sequence": "generated steps"}
SEQUENCE_KEYS = {"length": "[min, max] number of steps", "choose": "array of step templates"}
CHECK_KEYS = {**{k: "condition" for k in CHECK_KINDS}, "when": "filter for `always`",
              "message": "what a violation means",
              "obligation": "who the sentence obliges: 'kvm' (KVM enforces it, the default) or 'userspace' "
                            "(userspace must; judged only on backends with userspace_obligations)"}
#: Limits of what a spec field can mean.
MAX_VCPUS = 64
MAX_FIXED_STEPS = 200
MAX_MAX_STEPS = 100_000
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1
ENGINE_NAMES = {"threads", "step", "nr_vcpus"}


T = TypeVar("T")


def clip(value: Any) -> str:
    """A value as an error message shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a misspelt name, else nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


class SpecErrors(SpecError):
    """Several errors of one spec file; ``str()`` lists them, one per line."""

    def __init__(self, errors: list[SpecError]):
        first = errors[0]
        super().__init__(first.file, first.gid, first.key, first.message)
        self.errors = errors
        self.args = (f"{len(errors)} errors:\n" + "\n".join(f"  {e}" for e in errors),)

    def __str__(self) -> str:
        return str(self.args[0])


def load_files(paths: Iterable[Path]) -> list[Guarantee]:
    """Load several files; ids must be unique across all of them."""
    out: list[Guarantee] = []
    seen: dict[str, Path] = {}
    for path in paths:
        for g in load_file(path):
            if g.id in seen:
                raise SpecError(path, g.id, "id",
                                f"id {g.id} is already used in {seen[g.id]}; ids must be unique")
            seen[g.id] = path
            out.append(g)
    return out


def spec_files(dirs: Iterable[Path]) -> list[Path]:
    """The spec files of these folders (or files), each once, in order. Entries that are no
    regular file (a FIFO, a symlink loop) are left out: reading them could block or fail;
    :func:`unusable_files` says which they are."""
    files: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        d = Path(d)
        for f in [d] if d.is_file() else sorted(d.glob("*.toml")):
            key = resolved(f)
            if f.is_file() and key not in seen:
                seen.add(key)
                files.append(f)
    return files


def unusable_files(dirs: Iterable[Path]) -> list[tuple[Path, str]]:
    """``*.toml`` entries of these folders that are not regular files, with the reason."""
    out = []
    for d in map(Path, dirs):
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.toml")):
            if not f.is_file():
                out.append((f, _not_regular(f)))
    return out


def resolved(path: Path) -> Path:
    """``path.resolve()``, or the absolute path where resolving fails (a symlink loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _not_regular(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISFIFO(mode):
        return "a FIFO, not a regular file (reading it would block)"
    if stat.S_ISDIR(mode):
        return "a folder, not a spec file"
    return "not a regular file"


def load_file(path: Path) -> list[Guarantee]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(path, None, None, _not_regular(path))
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SpecError(path, None, None, f"a spec file may be at most {MAX_FILE_BYTES} bytes "
                                              f"(this one has {path.stat().st_size})")
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SpecError(path, None, None, f"not valid UTF-8: byte {exc.object[exc.start]:#04x} at offset "
                                          f"{exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, None, None, f"not valid TOML: {exc}") from None
    except (RecursionError, MemoryError):
        raise SpecError(path, None, None, "not usable TOML: its arrays or tables nest too deeply") from None
    except OSError as exc:
        raise SpecError(path, None, None, f"cannot read: {exc.strerror or exc}") from None
    # Every part is checked, so one run shows all of a file's errors (each once: a part that is
    # wrong is not checked further, so it causes no second error downstream).
    errors: list[SpecError] = []
    misspelt = _unknown_keys(path, None, "", data, {"document": "", "guarantee": ""}, errors)
    doc = data.get("document")
    if not isinstance(doc, dict):
        if "document" not in misspelt:
            errors.append(SpecError(path, None, "document", "a [document] table with file and area is required"))
        doc = {}
    else:
        misspelt_doc = _unknown_keys(path, None, "document", doc, DOCUMENT_KEYS, errors)
        for k in ("file", "area"):
            if (not isinstance(doc.get(k), str) or not doc[k]) and k not in misspelt_doc:
                errors.append(SpecError(path, None, f"document.{k}", "required string"))
    raw = data.get("guarantee", [])
    if not isinstance(raw, list) or not raw:
        if "guarantee" not in misspelt:
            errors.append(SpecError(path, None, "guarantee", "at least one [[guarantee]] is required"))
        raw = []
    out, ids = [], set()
    for i, g in enumerate(raw):
        if not isinstance(g, dict):
            errors.append(SpecError(path, None, f"guarantee[{i}]", "must be a table"))
            continue
        gid = g.get("id")
        where = ""
        if not isinstance(gid, str) or not ID_RE.fullmatch(gid):
            shown = repr(gid) if len(repr(gid)) <= 40 else f"{repr(gid)[:37]}..."
            errors.append(SpecError(path, None, f"guarantee[{i}].id",
                                    f"required, of the form AREA-NN or AREA-NN.x (got {shown})"))
            gid, where = None, f"guarantee[{i}]"  # the rest of it is still checked
        elif gid in ids:
            errors.append(SpecError(path, gid, "id", f"id {gid} appears twice in this file"))
        ids.add(gid)
        built = _Builder(path, doc, gid, g, where).build()
        if isinstance(built, Guarantee):
            out.append(built)
        else:
            errors.extend(built)
    raise_all(errors)
    return out


def raise_all(errors: list[SpecError]) -> None:
    """Raise the errors found (one as itself, several as SpecErrors), each once."""
    unique: list[SpecError] = []
    seen: set[str] = set()
    for e in errors:
        for one in getattr(e, "errors", [e]):
            if str(one) not in seen:
                seen.add(str(one))
                unique.append(one)
    if len(unique) == 1:
        raise unique[0]
    if unique:
        raise SpecErrors(unique)


def _keys(path: Path, gid: str | None, where: str, table: Mapping[str, Any],
          allowed: Mapping[str, str]) -> None:
    """Raise the unknown keys of ``table``, all of them."""
    errors: list[SpecError] = []
    _unknown_keys(path, gid, where, table, allowed, errors)
    raise_all(errors)


def _unknown_keys(path: Path, gid: str | None, where: str, table: Mapping[str, Any],
                  allowed: Mapping[str, str], errors: list[SpecError]) -> set[str]:
    """Add an error per unknown key of ``table`` to ``errors``; return the allowed keys they look
    like misspellings of (a missing required key among them is that typo, not a second error)."""
    meant = set()
    for key in table:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            guess = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.75)
            meant.update(guess)
            errors.append(SpecError(path, gid, f"{prefix}{key}", f"unknown key {key!r}"
                                    f"{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"))
    return meant


class _Builder:
    """Validates one [[guarantee]] table."""

    def __init__(self, path: Path, doc: Mapping[str, Any], gid: str | None, raw: Mapping[str, Any],
                 where: str = ""):
        self.path, self.doc, self.gid, self.raw = path, doc, gid, raw
        #: without a usable id, keys are named from the file: ``guarantee[2].title``
        self.prefix = f"{where}." if where else ""
        self.constants = facets.all_constants()
        self.ops = facets.all_ops()
        self.params: dict[str, Param] = {}
        self.bindings: set[str] = set()
        #: names declared but wrong (a parameter that failed): known to conditions, so a condition
        #: using one is not reported a second time as naming an unknown name
        self.declared: set[str] = set()
        self.max_vcpus = MAX_VCPUS
        # A spec that creates vCPUs at run time may address ones beyond `vcpus` (ATTR-08 does).
        self.creates_vcpus = any(str(s.get("op", "")).endswith("create_vcpu") for s in _raw_steps(raw))
        self.roots = {re.split(r"[\[.]", n)[0] for n in facets.all_observables()} | ENGINE_NAMES
        self.errors: list[SpecError] = []

    def err(self, key: str | None, message: str) -> SpecError:
        return SpecError(self.path, self.gid, self.prefix + key if key else self.prefix[:-1] or None, message)

    def attempt(self, check: Callable[..., T], *args: Any, default: Any = None) -> T | Any:
        """``check(*args)``; a spec error is kept and ``default`` returned, so the parts that do
        not depend on this one are still checked and every error is reported in one run."""
        try:
            return check(*args)
        except SpecError as exc:
            self.errors.extend(getattr(exc, "errors", [exc]))
            return default

    def keys(self, where: str, table: Mapping[str, Any], allowed: Mapping[str, str]) -> set[str]:
        """Keep an error per unknown key; return the allowed keys they look like typos of."""
        return _unknown_keys(self.path, self.gid, self.prefix + where if where else self.prefix[:-1], table,
                             allowed, self.errors)

    def build(self) -> Guarantee | list[SpecError]:
        """The guarantee, or every error found in it."""
        raw = self.raw
        meant = self.keys("", raw, GUARANTEE_KEYS)
        for k in ("title", "section", "quote"):
            if (not isinstance(raw.get(k), str) or not raw[k].strip()) and k not in meant:
                self.errors.append(self.err(k, "required, a non-empty string"))
        versions = None if "versions" in meant else self.attempt(self.versions, raw.get("versions"))
        quote_until = self.attempt(self.quote_until, raw.get("quote_until"), versions, default=())
        for name, spec in self.attempt(self.table, "params", default={}).items():
            param = self.attempt(self.param, f"params.{name}", name, spec)
            if param is None:
                self.declared.add(name)
            else:
                self.params[name] = param
        vcpus = self.attempt(self.vcpus, raw.get("vcpus", 1))
        self.max_vcpus = vcpus if isinstance(vcpus, int) else MAX_VCPUS
        threads = self.attempt(self.threads, raw.get("thread"), "thread" in meant, default=())
        machine = tuple((k, self.attempt(self.value, f"machine.{k}", v, set()))
                        for k, v in self.attempt(self.table, "machine", default={}).items())
        checks = () if "check" in meant else self.attempt(self.checks, raw.get("check"), default=())
        needs = set()
        for t in threads:
            for s in t.steps + (t.sequence.choose if t.sequence else ()):
                if s.op.facet != "core":
                    needs.add(s.op.facet)
        caps = facets.all_capabilities()
        extra = raw.get("needs", [])
        if not isinstance(extra, list) or not all(isinstance(n, str) for n in extra):
            self.errors.append(self.err("needs", "a list of capability names"))
            extra = []
        for n in extra:
            if n not in caps:
                self.errors.append(self.err("needs", f"unknown capability {n!r}{did_you_mean(n, caps)}; "
                                                     f"known: {', '.join(sorted(caps))}"))
        needs.update(extra)
        judged = [c.obligation for c in checks if c.kind != "exists"]
        if judged and set(judged) == {"userspace"} and raw.get("locks") is None:
            needs.add(USERSPACE_CAPABILITY)  # nothing in it is KVM's to enforce
        arch = raw.get("arch")
        if arch is not None and arch not in ("x86_64", "arm64", "riscv", "s390"):
            self.errors.append(self.err("arch", f"unknown architecture {arch!r}; allowed: x86_64, arm64, "
                                                "riscv, s390"))
        max_steps = raw.get("max_steps", 2000)
        if not _is_int(max_steps) or not 1 <= max_steps <= MAX_MAX_STEPS:
            self.errors.append(self.err("max_steps", f"an integer from 1 to {MAX_MAX_STEPS}"))
        memory_models = self.attempt(self.memory_models, raw.get("memory_models", list(MEMORY_MODELS)))
        locks = self.attempt(parse_lock_rules, self, raw.get("locks"))
        if self.errors or self.gid is None or not all(isinstance(self.doc.get(k), str) for k in ("file", "area")):
            return self.errors  # (a [document] that is wrong is the file's error, said once)
        area = self.doc["area"]
        return Guarantee(
            id=self.gid, title=raw["title"].strip(), file=self.path, document=self.doc["file"],
            area=area, section=raw["section"].strip(), quote=" ".join(raw["quote"].split()),
            versions=versions, needs=frozenset(needs), arch=arch, vcpus=vcpus, machine=machine,
            params=tuple(self.params.values()), threads=threads, checks=checks,
            max_steps=max_steps, markers=(area, *sorted(f"needs_{n}" for n in needs)),
            locks=locks,
            memory_models=memory_models,
            quote_until=quote_until,
        )

    def memory_models(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
            raise self.err("memory_models", f"a non-empty list of memory models ({', '.join(MEMORY_MODELS)})")
        for m in value:
            if m not in MEMORY_MODELS:
                raise self.err("memory_models", f"unknown memory model {m!r}; known: {', '.join(MEMORY_MODELS)}")
        return tuple(m for m in MEMORY_MODELS if m in value)

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.raw.get(key, {})
        if not isinstance(value, dict):
            raise self.err(key, "must be a table")
        return value

    def versions(self, value: Any) -> VersionRange:
        if not isinstance(value, dict) or "since" not in value:
            raise self.err("versions", "required: { since = 'X.Y' } and optionally until = 'X.Y'")
        errors: list[SpecError] = []
        _unknown_keys(self.path, self.gid, self.prefix + "versions", value,
                      {"since": "", "until": "", "since_commit": "", "until_commit": ""}, errors)
        for k in ("since", "until"):
            if k in value:
                if not isinstance(value[k], str):
                    errors.append(self.err(f"versions.{k}", f"a version string such as '6.12' (got {value[k]!r})"))
                    continue
                try:
                    parse_version(value[k])
                except ValueError as exc:
                    errors.append(self.err(f"versions.{k}", str(exc)))
        for k in ("since_commit", "until_commit"):
            if k in value and (not isinstance(value[k], str) or not COMMIT_RE.match(value[k])):
                errors.append(self.err(f"versions.{k}", f"a kernel commit id of 12 to 40 lower-case hex digits "
                                                        f"(got {value[k]!r})"))
        if "until_commit" in value and "until" not in value:
            errors.append(self.err("versions.until_commit", "until_commit cites the end of the range: give until too"))
        raise_all(errors)
        rng = VersionRange(str(value["since"]), value.get("until"), value.get("since_commit"),
                           value.get("until_commit"))
        if rng.until is not None and parse_version(rng.until) < parse_version(rng.since):
            raise self.err("versions", f"until {rng.until} is before since {rng.since}")
        return rng

    def quote_until(self, value: Any, versions: VersionRange | None) -> tuple[tuple[str, str], ...]:
        """Older wordings of the quote: (last release with these words, words), oldest first."""
        if value is None:
            return ()
        if not isinstance(value, dict) or not value:
            raise self.err("quote_until", "a table { 'X.Y' = 'the words of texts up to release X.Y' }")
        out = []
        for k, words in value.items():
            try:
                v = parse_version(k)
            except ValueError as exc:
                raise self.err(f"quote_until.{k}", str(exc)) from None
            if not isinstance(words, str) or not words.strip():
                raise self.err(f"quote_until.{k}", "the older words, a non-empty string")
            if versions is not None and (not versions.contains(k) or k == versions.until):
                raise self.err(f"quote_until.{k}", f"{k} must be a release inside the range {versions} "
                                                   f"and before its end")
            out.append((v, k, " ".join(words.split())))
        return tuple((k, w) for _, k, w in sorted(out))

    def param(self, key: str, name: str, spec: Any) -> Param:
        if not NAME_RE.fullmatch(name) or name in self.constants:
            raise self.err(key, "a parameter name must be an identifier and not a constant's name")
        if isinstance(spec, bool):
            spec = {"bool": spec}
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in PARAM_KINDS:
            allowed = "; ".join(f"{k} = {d}" for k, d in PARAM_KINDS.items())
            raise self.err(key, f"a parameter is a table with exactly one of: {allowed}")
        kind, v = next(iter(spec.items()))
        if kind == "range":
            if (not isinstance(v, list) or len(v) != 2 or not all(_is_int(x) for x in v)
                    or v[0] > v[1]):
                raise self.err(f"{key}.range", "[low, high] with integers low <= high")
            if not all(INT_MIN <= x <= INT_MAX for x in v):
                raise self.err(f"{key}.range", f"bounds must lie in [{INT_MIN}, {INT_MAX}] (64-bit values)")
            return Param(name, "range", low=v[0], high=v[1])
        if kind == "choice":
            if not isinstance(v, list) or not v:
                raise self.err(f"{key}.choice", "a non-empty list")
            for x in v:
                if not isinstance(x, (bool, int, str)) or _is_int(x) and not INT_MIN <= x <= INT_MAX:
                    raise self.err(f"{key}.choice", f"values are integers (64-bit), booleans or names of "
                                                    f"constants (got {x!r})")
            vals = tuple(self.constants.get(x, x) if isinstance(x, str) else x for x in v)
            return Param(name, "choice", values=vals)
        if kind == "from":
            sets = facets.all_named_sets()
            if v not in sets:
                raise self.err(f"{key}.from", f"unknown named set {v!r}{did_you_mean(str(v), sets)}; "
                                              f"known: {', '.join(sorted(sets))}")
            return Param(name, "set", set_name=v)
        if v is not True:
            raise self.err(f"{key}.bool", "write bool = true")
        return Param(name, "bool", values=(False, True))

    def vcpus(self, value: Any) -> int | Expr:
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64:
            return value
        if isinstance(value, str):
            expr = self.expr("vcpus", value, set())
            p = self.params.get(expr.source)
            if p is not None:  # a parameter's whole domain must be a vCPU count
                if p.kind == "range":
                    ok = 1 <= p.low and p.high <= MAX_VCPUS
                else:
                    ok = p.kind == "choice" and all(_is_int(x) and 1 <= x <= MAX_VCPUS for x in p.values)
                if not ok:
                    raise self.err("vcpus", f"parameter {p.name} can take values outside 1..{MAX_VCPUS}; "
                                            f"a vCPU count needs range = [low, high] with 1 <= low <= high <= "
                                            f"{MAX_VCPUS} (or a choice of such integers)")
            return expr
        raise self.err("vcpus", "an integer from 1 to 64, or an expression naming a parameter")

    def expr(self, key: str, source: Any, extra: set[str]) -> Expr:
        known = self.params.keys() | self.declared | self.constants.keys() | self.bindings | extra | {"nr_vcpus"}
        try:
            return parse(source, known.__contains__)
        except ExprError as exc:
            message, hint = str(exc), ""
            if "unknown name" in message:
                m = re.match(r"unknown name '([^']+)'", message)
                if m:  # the guess goes right after the misspelt name
                    guess = did_you_mean(m[1], known)
                    message = message.replace(repr(m[1]), repr(m[1]) + guess, 1)
                hint = f"; known names: parameters ({', '.join([*self.params, *self.declared]) or 'none'}), bindings " \
                       f"({', '.join(sorted(self.bindings)) or 'none'}), observables " \
                       f"({', '.join(sorted(extra)) or 'none'}) and the facets' constants"
            raise self.err(key, f"{message}{hint}") from None

    def value(self, key: str, v: Any, extra: set[str]) -> Any:
        return self.expr(key, v, extra) if isinstance(v, str) else v

    def threads(self, raw: Any, misspelt: bool = False) -> tuple[Thread, ...]:
        if not isinstance(raw, list) or not raw:
            if misspelt:
                return ()
            raise self.err("thread", "at least one [[guarantee.thread]] is required")
        # Bindings are visible everywhere (as None until their step ran).
        for ti, t in enumerate(raw):
            if not isinstance(t, dict):
                continue  # said below
            for si, s in enumerate(t.get("steps", []) if isinstance(t.get("steps", []), list) else []):
                if isinstance(s, dict) and isinstance(s.get("as"), str):
                    b = s["as"]
                    if not NAME_RE.fullmatch(b) or b in self.params or b in self.constants or b in self.bindings:
                        self.errors.append(self.err(f"thread[{ti}].steps[{si}].as",
                                                    f"binding {b!r} must be a new identifier"))
                    else:
                        self.bindings.add(b)
        out, names = [], set()
        for ti, t in enumerate(raw):
            thread = self.attempt(self.thread, f"thread[{ti}]", t, names)
            if thread is not None:
                out.append(thread)
        return tuple(out)

    def thread(self, key: str, t: Any, names: set[str]) -> Thread | None:
        """One thread, every error of it (None when it had some)."""
        if not isinstance(t, dict):
            raise self.err(key, "must be a table")
        before = len(self.errors)
        meant = self.keys(key, t, THREAD_KEYS)
        name = t.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in names:
            if "name" not in meant:
                self.errors.append(self.err(f"{key}.name", "a unique identifier is required"))
        else:
            names.add(name)
        # Whose thread it is decides which calls are allowed in it: when that is wrong, the
        # steps are still checked, but not against it (no second error for the same mistake).
        sure = True
        vcpu = t.get("vcpu")
        per_vcpu = t.get("per_vcpu", False)
        if not isinstance(per_vcpu, bool):
            self.errors.append(self.err(f"{key}.per_vcpu", f"true or false (got {per_vcpu!r})"))
            per_vcpu, sure = False, False
        if vcpu is not None and (not _is_int(vcpu) or not 0 <= vcpu < self.max_vcpus):
            self.errors.append(self.err(f"{key}.vcpu", f"a vCPU index from 0 to {self.max_vcpus - 1} "
                                                       f"(got {vcpu!r})"))
            vcpu, sure = None, False
        if per_vcpu and vcpu is not None:
            self.errors.append(self.err(f"{key}.per_vcpu", "per_vcpu threads get their vcpu from the copy; "
                                                           "drop `vcpu`"))
            sure = False
        raw_steps = t.get("steps", [])
        if not isinstance(raw_steps, list):
            self.errors.append(self.err(f"{key}.steps", f"an array of step tables (got {clip(raw_steps)})"))
            raw_steps = []
        elif len(raw_steps) > MAX_FIXED_STEPS:
            self.errors.append(self.err(f"{key}.steps", f"at most {MAX_FIXED_STEPS} steps per thread "
                                                        f"(this one has {len(raw_steps)})"))
            raw_steps = []  # not checked one by one: the count is the mistake
        loop = {"vcpu"} if per_vcpu or not sure else set()
        steps = tuple(self.attempt(self.step, f"{key}.steps[{si}]", s, loop, vcpu, per_vcpu, sure)
                      for si, s in enumerate(raw_steps))
        seq = self.attempt(self.sequence, f"{key}.sequence", t["sequence"], loop, vcpu, per_vcpu, sure) \
            if "sequence" in t else None
        if "steps" not in t and "sequence" not in t and not meant & {"steps", "sequence"}:
            self.errors.append(self.err(key, "a thread needs steps or a sequence"))
        if len(self.errors) > before:
            return None
        if not steps and not seq:
            raise self.err(key, "a thread needs steps or a sequence")
        return Thread(name, vcpu, per_vcpu, steps, seq)

    def step(self, key: str, raw: Any, loop: set[str], vcpu: int | None, per_vcpu: bool,
             sure: bool = True, allow_params: bool = False, local: set[str] | None = None) -> Step:
        """One step, every error of it. ``sure``: the thread's vcpu is known (else a call that
        must run on a vCPU's own thread is not judged: the thread's error says it already)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("op"), str):
            raise self.err(key, "a step is a table with op = '<operation>'")
        name = raw["op"]
        op = self.ops.get(name)
        if op is None:
            raise self.err(f"{key}.op", f"unknown operation {name!r}{did_you_mean(name, self.ops)}; "
                                        f"known: {', '.join(sorted(self.ops))}")
        errors: list[SpecError] = []
        args: dict[str, Any] = {}
        wrong: set[str] = set()
        for k, v in raw.items():
            if k in ("op", "as") or (allow_params and k == "params"):
                continue
            a = op.arg(k)
            if a is None:
                allowed = ", ".join(x.name for x in op.args) or "none"
                guess = difflib.get_close_matches(k, [x.name for x in op.args], n=1, cutoff=0.75)
                wrong.update(guess)  # the typo of an argument: not also reported missing
                errors.append(self.err(f"{key}.{k}", f"{name} takes no argument {k!r}"
                                       f"{did_you_mean(k, [x.name for x in op.args])}; its arguments: {allowed}"))
                continue
            try:
                if isinstance(v, str) and a.type != "str":
                    args[k] = self.expr(f"{key}.{k}", v, loop | (local or set()))
                elif not facets.ARG_TYPES[a.type](v):
                    raise self.err(f"{key}.{k}", f"{name}.{k} must be of type {a.type} (got {clip(v)})")
                elif a.type == "vcpu" and v >= (MAX_VCPUS if self.creates_vcpus else self.max_vcpus):
                    raise self.err(f"{key}.{k}", f"vCPU index {v} is out of range: the guarantee has "
                                                 f"{self.max_vcpus} vCPU(s), numbered from 0")
                elif _is_int(v) and not INT_MIN <= v <= INT_MAX:
                    raise self.err(f"{key}.{k}", f"{v} does not fit in 64 bits")
                else:
                    args[k] = v
            except SpecError as exc:
                errors.append(exc)
                wrong.add(k)
        for a in op.args:
            if a.name not in args and a.name not in wrong:
                if not a.optional:
                    errors.append(self.err(key, f"{name} needs argument {a.name!r} ({a.doc or a.type})"))
                args[a.name] = a.default
        if op.vcpu_thread and sure and "vcpu" not in wrong:
            target = args.get("vcpu")
            ok = per_vcpu and isinstance(target, Expr) and target.source == "vcpu" \
                or (vcpu is not None and target == vcpu)
            if not ok:
                errors.append(self.err(key, f"{name} runs on the vCPU's own thread: call it from a thread "
                                            f"declared with vcpu = {target!r} (or per_vcpu with vcpu = 'vcpu')"))
        raise_all(errors)
        bind = raw.get("as")
        return Step(op, tuple(args.items()), bind, key)

    def sequence(self, key: str, raw: Any, loop: set[str], vcpu: int | None, per_vcpu: bool,
                 sure: bool = True) -> Sequence | None:
        if not isinstance(raw, dict):
            raise self.err(key, "a table with length and choose")
        before = len(self.errors)
        meant = self.keys(key, raw, SEQUENCE_KEYS)
        length = raw.get("length")
        if not (isinstance(length, list) and len(length) == 2 and all(_is_int(x) for x in length)
                and 0 <= length[0] <= length[1] <= 200) and "length" not in meant:
            self.errors.append(self.err(f"{key}.length", "[min, max] with 0 <= min <= max <= 200"))
        choose = raw.get("choose")
        if not isinstance(choose, list) or not choose:
            if "choose" not in meant:
                self.errors.append(self.err(f"{key}.choose", "a non-empty array of step templates"))
            choose = []
        steps, params = [], []
        for ci, c in enumerate(choose):
            ckey = f"{key}.choose[{ci}]"
            local_params = c.get("params", {}) if isinstance(c, dict) else {}
            if not isinstance(local_params, dict):
                self.errors.append(self.err(f"{ckey}.params", "must be a table"))
                local_params = {}
            ps = tuple(p for p in (self.attempt(self.param, f"{ckey}.params.{n}", n, s_)
                                   for n, s_ in local_params.items()) if p is not None)
            if isinstance(c, dict) and "as" in c:
                self.errors.append(self.err(f"{ckey}.as", "generated steps cannot bind results"))
            local = set(local_params)  # a wrong parameter is still declared: no unknown-name error
            steps.append(self.attempt(self.step, ckey, c, loop, vcpu, per_vcpu, sure, True, local))
            params.append(ps)
        if len(self.errors) > before:
            return None  # its errors are kept
        return Sequence(length[0], length[1], tuple(steps), tuple(params))

    def checks(self, raw: Any) -> tuple[Check, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.err("check", "at least one [[guarantee.check]] is required")
        out = []
        for i, c in enumerate(raw):
            check = self.attempt(self.check, f"check[{i}]", c)
            if check is not None:
                out.append(check)
        return tuple(out)

    def check(self, key: str, c: Any) -> Check | None:
        """One check, every error of it (None when it had some)."""
        if not isinstance(c, dict):
            raise self.err(key, "must be a table")
        before = len(self.errors)
        meant = self.keys(key, c, CHECK_KEYS)
        kinds = [k for k in CHECK_KINDS if k in c]
        expr = when = None
        if len(kinds) != 1:
            if not (not kinds and meant & set(CHECK_KINDS)):
                self.errors.append(self.err(key, f"exactly one of {', '.join(CHECK_KINDS)} is required"))
            kind = kinds[0] if kinds else ""
        else:
            kind = kinds[0]
            names = self.roots | ({"old"} if kind == "always" else set())
            expr = self.attempt(self.expr, f"{key}.{kind}", c[kind], names)
            if "when" in c:
                if kind != "always":
                    self.errors.append(self.err(f"{key}.when", "only `always` checks take `when`"))
                else:
                    when = self.attempt(self.expr, f"{key}.when", c["when"], names)
        message = c.get("message", "")
        if not isinstance(message, str):
            self.errors.append(self.err(f"{key}.message", "a string"))
        obligation = c.get("obligation", "kvm")
        if obligation not in OBLIGATIONS:
            self.errors.append(self.err(f"{key}.obligation",
                                        f"one of {', '.join(map(repr, OBLIGATIONS))} (got {clip(obligation)})"))
        elif obligation == "userspace" and kind == "exists":
            self.errors.append(self.err(f"{key}.obligation", "an `exists` check says what the workload reaches; "
                                                             "only always/final/never checks carry an obligation"))
        if len(self.errors) > before or expr is None:
            return None
        return Check(kind, expr, when, message, obligation)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _raw_steps(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every step table of a raw guarantee (fixed and sequence choices), before validation."""
    out = []
    for t in raw.get("thread", []) if isinstance(raw.get("thread"), list) else []:
        if not isinstance(t, dict):
            continue
        seq = t.get("sequence")
        choose = seq.get("choose") if isinstance(seq, dict) else None
        for part in (t.get("steps"), choose):
            if isinstance(part, list):
                out.extend(s for s in part if isinstance(s, dict))
    return out
