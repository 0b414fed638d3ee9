"""Every example in CONTRIBUTING.md runs, so the guide cannot go stale.

Fenced blocks carry a role after the language (```toml spec file=x.toml pass=... fail=...):

* ``toml spec``: a spec file; it must pass on every ``pass`` backend (default: reference)
  and fail on every ``fail`` backend, with hypothesis' default budget and a fixed seed
  (``model=M``: under ``--kvm-memory-model=M``; ``profile=P``: the failing runs use ``--kvm-profile=P``);
* ``toml spec-error`` followed by ``text error``: loading it gives exactly that message
  (a trailing ``...`` marks where the guide cuts a long one);
* ``python backend file=x.py``: a module written beside the specs, named by ``module:factory``;
* ``python conftest backend=NAME``: a conftest.py with which ``--kvm-backend=NAME --kvm-list`` works;
* ``toml expectations``: an expectation file; its ids run as expected failures on its backend;
* ``text violation``: lines a failure report must contain, in order;
* ``toml fragment``: valid TOML (a piece of pyproject.toml).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_kvmconf.expectations import load as load_expectations
from pytest_kvmconf.spec.loader import SpecError, load_file

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parent.parent / "CONTRIBUTING.md"
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
ROLES = {"toml": {"spec", "spec-error", "expectations", "fragment"}, "python": {"backend", "conftest"},
         "text": {"error", "violation", ""}, "sh": {""}}
RUN = ("-p", "no:cacheprovider", "--kvm-no-bundled-specs")


@dataclass(frozen=True)
class Block:
    lang: str
    role: str
    attrs: dict[str, str]
    body: str
    line: int

    def names(self, key: str, default: str = "") -> list[str]:
        return [x for x in self.attrs.get(key, default).split(",") if x]


def blocks() -> list[Block]:
    text = DOC.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        words = m["info"].split()
        lang = words[0] if words else ""
        role = words[1] if len(words) > 1 and "=" not in words[1] else ""
        attrs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        body = textwrap.dedent("\n".join(ln[len(m["indent"]):] for ln in m["body"].splitlines())) + "\n"
        out.append(Block(lang, role, attrs, body, text.count("\n", 0, m.start()) + 1))
    return out


BLOCKS = blocks()


def of(lang: str, role: str) -> list[Block]:
    return [b for b in BLOCKS if b.lang == lang and b.role == role]


def ids(bs: list[Block]) -> list[str]:
    return [f"{b.attrs.get('file', b.role)}@{b.line}" for b in bs]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """Every backend and spec of the guide, written into one folder."""
    for b in of("python", "backend"):
        (pytester.path / b.attrs["file"]).write_text(b.body, encoding="utf-8")
    for b in of("toml", "spec"):
        (pytester.path / b.attrs["file"]).write_text(b.body, encoding="utf-8")
    pytester.syspathinsert()
    return pytester


def test_every_example_is_tested() -> None:
    assert of("toml", "spec") and of("python", "backend") and of("toml", "spec-error")
    for b in BLOCKS:
        assert b.lang in ROLES and b.role in ROLES[b.lang], \
            f"CONTRIBUTING.md line {b.line}: ```{b.lang} {b.role}: not a tested kind of block ({ROLES})"
    for i, b in enumerate(BLOCKS):
        if b.role == "spec-error":
            assert BLOCKS[i + 1].role == "error", f"line {b.line}: a spec-error block needs a ```text error after it"


@pytest.mark.parametrize("block", of("toml", "spec"), ids=ids(of("toml", "spec")))
def test_spec_example(project: pytest.Pytester, block: Block) -> None:
    n = len(load_file(project.path / block.attrs["file"]))
    spec = f"--kvm-specs={block.attrs['file']}"
    model = [f"--kvm-memory-model={block.attrs['model']}"] if "model" in block.attrs else []
    profile = [f"--kvm-profile={block.attrs['profile']}"] if "profile" in block.attrs else []
    for backend in block.names("pass", "reference"):
        result = project.runpytest(*RUN, spec, f"--kvm-backend={backend}", "--kvm-profile=quick", *model)
        assert result.parseoutcomes().get("passed") == n, f"not passing on {backend}:\n{result.stdout.str()}"
    for backend in block.names("fail"):
        result = project.runpytest(*RUN, spec, f"--kvm-backend={backend}", "--hypothesis-seed=0", *model, *profile)
        assert result.parseoutcomes().get("failed") == n, f"not failing on {backend}:\n{result.stdout.str()}"


@pytest.mark.parametrize("block", of("toml", "spec-error"), ids=ids(of("toml", "spec-error")))
def test_spec_error_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: Block) -> None:
    shown = BLOCKS[BLOCKS.index(block) + 1].body.strip()
    monkeypatch.chdir(tmp_path)
    Path(block.attrs["file"]).write_text(block.body, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_file(Path(block.attrs["file"]))
    if shown.endswith("..."):
        assert str(info.value).startswith(shown[:-3])
    else:
        assert str(info.value) == shown


@pytest.mark.parametrize("block", of("text", "violation"), ids=ids(of("text", "violation")))
def test_violation_example(project: pytest.Pytester, block: Block) -> None:
    result = project.runpytest(*RUN, f"--kvm-specs={block.attrs['spec']}", f"--kvm-backend={block.attrs['backend']}",
                               "--hypothesis-seed=0")
    lines = [ln for ln in block.body.splitlines() if ln.strip() and ln.strip() != "..."]
    result.stdout.re_match_lines([re.escape(ln).replace(re.escape("..."), ".*") for ln in lines])


@pytest.mark.parametrize("block", of("python", "conftest"), ids=ids(of("python", "conftest")))
def test_conftest_example(project: pytest.Pytester, block: Block) -> None:
    (project.path / "conftest.py").write_text(block.body, encoding="utf-8")
    # A conftest enabling the plugin itself stands for a vendored copy: no entry point then.
    extra = ("-p", "no:kvmconf") if "pytest_plugins" in block.body else ()
    result = project.runpytest(*extra, "-p", "no:cacheprovider", f"--kvm-backend={block.attrs['backend']}",
                               "--kvm-list")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([f"kvmconf catalogue: * guarantees; backend {block.attrs['backend']}, *"])


@pytest.mark.parametrize("block", of("toml", "expectations"), ids=ids(of("toml", "expectations")))
def test_expectations_example(project: pytest.Pytester, block: Block) -> None:
    path = project.path / block.attrs["file"]
    path.write_text(block.body, encoding="utf-8")
    expected = load_expectations(path)
    specs = [f"--kvm-specs={s}" for s in block.names("specs")]
    result = project.runpytest(*RUN, *specs, f"--kvm-backend={block.attrs['backend']}", f"--kvm-expect={path}",
                               "--hypothesis-seed=0", "-rx")
    assert result.ret == 0, result.stdout.str()
    assert result.parseoutcomes().get("xfailed") == len(expected)
    for e in expected.values():
        result.stdout.fnmatch_lines([f"XFAIL *::{e.id} - known violation ({path.name}): {e.reason}"])


def test_every_guarantee_key_is_documented() -> None:
    from pytest_kvmconf.spec.loader import CHECK_KEYS, GUARANTEE_KEYS, SEQUENCE_KEYS, THREAD_KEYS

    text = DOC.read_text(encoding="utf-8")
    spelled = {"params": "params.NAME", "thread": "[[guarantee.thread]]", "check": "[[guarantee.check]]",
               "locks": "[guarantee.locks]"}
    missing = [k for k in GUARANTEE_KEYS if f"`{spelled.get(k, k)}`" not in text]
    missing += [k for k in (*THREAD_KEYS, *CHECK_KEYS, *SEQUENCE_KEYS) if f"`{k}`" not in text]
    assert not missing, f"CONTRIBUTING.md does not explain the spec keys {missing}"


def test_every_lock_rule_is_documented() -> None:
    from pytest_kvmconf.spec.locks import LOCK_KEYS

    text = DOC.read_text(encoding="utf-8")
    missing = [k for k in LOCK_KEYS if f"| `{k}` |" not in text]
    assert not missing, f"CONTRIBUTING.md's [guarantee.locks] table lacks {missing}"


@pytest.mark.parametrize("block", of("toml", "fragment"), ids=ids(of("toml", "fragment")))
def test_fragment_is_valid_toml(block: Block) -> None:
    tomllib.loads(block.body)
