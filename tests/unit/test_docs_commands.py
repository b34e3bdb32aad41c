"""The audit commands README and the guides print, read as pytest would read them: every option
exists, and every path option is written `--option=PATH` (pytest finds its ini file before our
options exist, so in `--option PATH` the path is taken for a test path at that moment)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "audits" / "sd14" / "README.md",
        *sorted((REPO / "docs").glob("*.md"))]
PATH_OPTIONS = {"--erased-model", "--standard-model", "--concepts", "--erasure-report",
                "--erasure-junit", "--erasure-cache", "--junitxml", "--fuzz-database"}


def _commands(text: str) -> list[str]:
    """Every `pytest ...` command line, continuation lines (`\\`) joined, $COMMON expanded."""
    joined = re.sub(r"\\\n\s*", " ", text)
    common = re.search(r'COMMON="([^"]*)"', joined)
    commands = [m.group(0) for m in re.finditer(r"(?<![\w/.-])pytest audits/[^\n`]*", joined)]
    if common:
        commands = [c.replace("$COMMON", " ".join(common.group(1).split())) for c in commands]
    return commands


OPTION_STRINGS = """
import json
from _pytest.config import _prepareconfig
config = _prepareconfig(["-p", "no:cacheprovider"])
print(json.dumps(sorted(config._parser.optparser._option_string_actions)))
"""


@pytest.fixture(scope="module")
def known_options() -> set[str]:
    """Every option string pytest's parser accepts with this plugin loaded (ours, pytest's,
    aliases such as --junitxml that --help does not list), in a fresh interpreter. pytest has no
    public API for it; its version is pinned (constraints.txt)."""
    import json

    out = subprocess.run([sys.executable, "-c", OPTION_STRINGS], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_the_docs_have_audit_commands() -> None:
    counts = {str(doc.relative_to(REPO)): len(_commands(doc.read_text(encoding="utf-8"))) for doc in DOCS}
    assert counts["README.md"] >= 3 and sum(counts.values()) >= 10, counts


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_every_option_in_a_documented_command_exists(doc: Path, known_options: set[str]) -> None:
    for command in _commands(doc.read_text(encoding="utf-8")):
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command):
            assert flag in known_options, f"{doc.name}: {flag} is no option:\n{command}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_path_options_are_written_with_an_equals_sign(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for command in [*_commands(text), *re.findall(r"`(--[a-z-]+ [^`]+)`", text)]:
        for flag in PATH_OPTIONS:
            assert not re.search(rf"(?<![\w-]){flag} [^-\s]", command), \
                f"{doc.name}: write {flag}=PATH:\n{command}"


def test_the_headline_command_audits_one_concept_at_the_sd14_budget() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    headline = next(c for c in _commands(readme) if "cifar10.toml" in c)
    for needed in ("--erased-concept=", "--erasure-budget=sd14", "--irece"):
        assert needed in headline, headline
    assert "gates the **defended** model" in readme


def _module_commands(text: str) -> list[tuple[str, str]]:
    """Every `python -m pytest_erasure.X ...` line (continuations joined): (module, arguments)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"python -m (pytest_erasure(?:\.\w+)*)([^\n`|#]*)", joined)]


FORWARDS_AUDIT_FLAGS = {"pytest_erasure.table", "pytest_erasure.setup_check"}
"""Commands that take the audit's own flags beside theirs (the table passes them to each audit;
the setup check reads the ones it needs and ignores the rest)."""


def test_every_module_command_in_the_docs_runs_with_the_flags_it_is_shown_with(
        known_options: set[str]) -> None:
    commands = [c for doc in DOCS for c in _module_commands(doc.read_text(encoding="utf-8"))]
    modules = sorted({module for module, _args in commands})
    assert {"pytest_erasure.setup_check", "pytest_erasure.detectors.calibration",
            "pytest_erasure.table", "pytest_erasure.scaffold"} <= set(modules), modules
    helps = {}
    for module in modules:
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"python -m {module} --help: {done.stderr[-2000:]}"
        helps[module] = done.stdout
    for module, args in commands:
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", args):
            assert flag in helps[module] or (module in FORWARDS_AUDIT_FLAGS
                                             and flag in known_options), \
                f"python -m {module}: {flag} is no option of it:\n{args}"
