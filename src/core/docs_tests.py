"""The docs tell the truth: every make target, variable, path, test, command, SQL
statement, constant and ``module.name`` reference they name exists, and the README's
tables match the Makefile and the settings.

No database is needed: these tests read files and run ``make help`` and
``manage.py`` commands that do not connect to anything.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import run_manage

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"
SETTINGS = SRC / "core" / "settings.py"
DOCUMENTS = [README, *sorted((ROOT / "docs").rglob("*.md"))]
FAILURE_MODES = ROOT / "docs" / "failure-modes.md"

# Paths the reader creates; they are named in the docs but are not in the repository.
CREATED_BY_THE_READER = {"src/core/.env"}
REPO_PATH = re.compile(r"^(?:src|docs|scripts|docker|\.github|\.ci)/[\w./*-]*$")
TEST_NAME = re.compile(r"\btest_[a-z0-9_]+")
ENV_READ = re.compile(
    r"os\.environ(?:\.get|\.setdefault)?[(\[]\s*[\"']([A-Z][A-Z0-9_]+)[\"']",
)
CONSTANT = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
# Capitalised words in backticks that name nothing in the code: SQL and ClickHouse
# vocabulary, log levels, the shell's PATH.
NOT_CODE = {
    "CHECK",
    "CRITICAL",
    "DELETE",
    "ERROR",
    "FINAL",
    "INFO",
    "INSERT",
    "PATH",
    "TOO_MANY_PARTS",
    "UUID",
    "VIOLATED_CONSTRAINT",
    "WARNING",
}
FILE_NAME = re.compile(r"\.(?:lock|md|py|sh|sql|toml|txt|xml|ya?ml)$")
DOTTED = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(\))?")
TOOLING = ["Makefile", "Procfile", "docker-compose.yml", "scripts", "docker", ".github"]


# -- reading the documents --------------------------------------------------------


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _split_code(text: str) -> tuple[list[str], list[str]]:
    """(fenced blocks, inline code spans) of a Markdown text."""
    fence = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", flags=re.MULTILINE | re.DOTALL)
    fenced = fence.findall(text)
    prose = fence.sub("", text)
    inline = re.findall(r"`([^`\n]+)`", prose)
    return fenced, inline


def _command_lines(text: str) -> list[str]:
    """Every line of code in a document (fenced lines and inline spans), comments cut."""
    fenced, inline = _split_code(text)
    lines = [line for block in fenced for line in block.splitlines()] + inline
    return [line.split(" #", 1)[0].strip() for line in lines]


def _section(text: str, heading: str) -> str:
    """The body under a Markdown heading, up to the next heading of any level."""
    match = re.search(
        rf"^#+ {re.escape(heading)}\s*$\n(.*?)(?=^#+ |\Z)", text, flags=re.MULTILINE | re.DOTALL
    )
    assert match, f"README has no heading {heading!r}"
    return match.group(1)


def _table(section: str) -> dict[str, str]:
    """First-column variable names of a Markdown table → the row's default cell."""
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("| ---"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
            rows[name] = cells[1]
    return rows


def _service_table() -> dict[str, str]:
    return _table(_section(_text(README), "Service settings"))


def _tooling_table() -> dict[str, str]:
    return _table(_section(_text(README), "Tooling variables"))


# -- reading the code -------------------------------------------------------------


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9_-]*)\s*:(?!=)", _text(MAKEFILE), flags=re.MULTILINE))


def _documented_targets() -> set[str]:
    """Targets with a ``## `` help comment: what ``make help`` lists."""
    return set(re.findall(r"^([a-z][a-z0-9-]*):.*## ", _text(MAKEFILE), flags=re.MULTILINE))


def _make_mentions(text: str) -> set[str]:
    """Targets of every ``make …`` command in the code of a document."""
    targets = set()
    for line in _command_lines(text):
        for match in re.finditer(r"(?:^|[\s;&|(])make\s+([^;&|)]*)", line):
            words = [w for w in match.group(1).split() if not w.startswith("-") and "=" not in w]
            if words and re.fullmatch(r"[a-z][a-z0-9-]*", words[0]):
                targets.add(words[0])
    return targets


def _constant(node: ast.expr) -> object:
    """The value of a literal default (numbers, strings, lists, ``64 * 1024``), else None."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Add | ast.Sub):
        left, right = _constant(node.left), _constant(node.right)
        if isinstance(left, int) and isinstance(right, int):
            ops = {ast.Mult: int.__mul__, ast.Add: int.__add__, ast.Sub: int.__sub__}
            return ops[type(node.op)](left, right)
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


REQUIRED = object()


def _settings_reads() -> dict[str, list[object]]:
    """Variables read by settings.py through ``core.env`` → their defaults.

    A default is the literal value, ``REQUIRED`` when there is none and the accessor
    refuses a missing value, or None when it is computed (``not DEBUG``).
    """
    reads: dict[str, list[object]] = {}
    for node in ast.walk(ast.parse(_text(SETTINGS))):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "env"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            continue
        keywords = {keyword.arg: keyword.value for keyword in node.keywords}
        if "default" in keywords:
            default = _constant(keywords["default"])
        elif node.func.attr in {"required", "url", "clickhouse_url"}:
            default = REQUIRED
        else:
            default = None
        reads.setdefault(node.args[0].value, []).append(default)
    return reads


def _service_sources() -> dict[Path, str]:
    """Service code under src/, tests excluded."""
    return {
        path: _text(path)
        for path in SRC.rglob("*.py")
        if not path.name.endswith("_tests.py") and path.name != "conftest.py"
    }


def _rendered(value: object) -> str | None:
    """How a literal default is written in the README's table, or None to skip it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or None
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value or None
    return None


@functools.cache
def _test_functions() -> dict[str, set[str]]:
    """Test function name → the test files (relative paths) that define it."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*_tests.py"):
        for name in re.findall(r"^\s*(?:async )?def (test_\w+)", _text(path), flags=re.MULTILINE):
            found.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return found


def _manage(*args: str) -> subprocess.CompletedProcess[str]:
    env_file = None
    if "ENV_FILE" not in os.environ and not (SRC / "core" / ".env").is_file():
        env_file = str(SRC / "core" / ".env.ci")
    return run_manage(*args, env={"ENV_FILE": env_file} if env_file else {})


@functools.cache
def _manage_help(*args: str) -> str:
    result = _manage(*args, "--help")
    assert result.returncode == 0, f"manage.py {' '.join(args)} --help failed:\n{result.stderr}"
    return result.stdout


def _manage_mentions() -> list[tuple[Path, list[str]]]:
    """Every ``manage.py <command> …`` in the code of the documents, as argument lists."""
    mentions = []
    for document in DOCUMENTS:
        for line in _command_lines(_text(document)):
            for match in re.finditer(r"manage\.py\s+([a-z_][^;&|)\]\"]*)", line):
                words = shlex.split(match.group(1))
                if words and re.fullmatch(r"[a-z_]+", words[0]):
                    mentions.append((document, words))
    return mentions


@functools.cache
def _source_trees() -> dict[str, ast.Module]:
    """Every Python file under src/ (tests included), parsed, by dotted module name."""
    trees = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        trees[name] = ast.parse(_text(path))
    return trees


def _top_level_names(tree: ast.Module | ast.ClassDef) -> set[str]:
    """Names a module or class body defines: functions, classes, assignments, imports."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        else:
            names |= {
                target.id
                for target in ast.walk(node)
                if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store)
            }
    return names


@functools.cache
def _classes() -> dict[str, set[str]]:
    """Class name → the names it defines or inherits from classes defined in src/."""
    bodies: dict[str, tuple[set[str], list[str]]] = {}
    for tree in _source_trees().values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [
                    base.id
                    for base in (b.value if isinstance(b, ast.Subscript) else b for b in node.bases)
                    if isinstance(base, ast.Name)
                ]
                bodies[node.name] = (_top_level_names(node), bases)

    def members(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        own, bases = bodies[name]
        inherited = [members(b, seen | {name}) for b in bases if b in bodies and b not in seen]
        return own.union(*inherited)

    return {name: members(name) for name in bodies}


@functools.cache
def _string_literals() -> set[str]:
    return {
        node.value
        for tree in _source_trees().values()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


@functools.cache
def _defined_constants() -> set[str]:
    """Capitalised names the code defines or reads, and the words of the tooling files."""
    names = set(_string_literals())
    for tree in _source_trees().values():
        names |= {
            node.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
        }
    for entry in TOOLING:
        path = ROOT / entry
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            names |= set(CONSTANT.findall(file.read_text(encoding="utf-8", errors="replace")))
    return names


def _resolves(reference: str) -> bool | None:
    """Whether ``a.b.c`` names something in src/; None when it does not look like code."""
    parts = reference.split(".")
    classes = _classes()
    if parts[0] in classes:
        return len(parts) == 2 and parts[1] in classes[parts[0]]
    modules = _source_trees()
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        found = [name for name in modules if name == prefix or name.endswith("." + prefix)]
        if len(found) != 1:
            continue
        rest = parts[cut:]
        if not rest:
            return True
        if rest[0] not in _top_level_names(modules[found[0]]):
            return False
        return len(rest) == 1 or (rest[0] in classes and rest[1] in classes[rest[0]])
    return None


def _inline_code() -> list[tuple[Path, str]]:
    """Every inline code span of the documents, and the words with an underscore in
    their Mermaid diagrams (which name statements and settings)."""
    spans = []
    for document in DOCUMENTS:
        text = _text(document)
        spans += [(document, span.strip()) for span in _split_code(text)[1]]
        for diagram in re.findall(r"^```mermaid\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
            spans += [(document, word) for word in re.findall(r"\b[A-Z]\w*_\w+\b", diagram)]
    return spans


# -- make ---------------------------------------------------------------------------


def test_every_make_target_the_docs_mention_exists():
    targets = _makefile_targets()
    for document in DOCUMENTS:
        missing = _make_mentions(_text(document)) - targets
        assert not missing, f"{document.name} mentions make targets that do not exist: {missing}"


def test_every_documented_make_target_is_in_the_readme():
    missing = _documented_targets() - _make_mentions(_text(README))
    assert not missing, f"Makefile targets missing from README.md: {sorted(missing)}"


def test_make_help_lists_every_target_the_readme_mentions():
    result = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    missing = _make_mentions(_text(README)) - listed
    assert not missing, f"make help does not list {sorted(missing)}"


# -- environment variables ------------------------------------------------------------


def test_every_variable_in_the_readme_table_is_read_by_the_service():
    sources = "\n".join(_service_sources().values())
    unread = [name for name in _service_table() if f'"{name}"' not in sources]
    assert not unread, f"README lists variables that nothing in src/ reads: {unread}"


def test_every_variable_the_service_reads_is_in_the_readme_table():
    table = _service_table()
    read = set(_settings_reads())
    for text in _service_sources().values():
        read |= set(ENV_READ.findall(text))
    missing = sorted(read - set(table))
    assert not missing, f"variables read in src/ but missing from the README table: {missing}"


def test_the_readme_states_each_literal_default_and_each_required_variable():
    table = _service_table()
    for name, defaults in _settings_reads().items():
        cell = table[name].replace("`", "")
        for default in defaults:
            if default is REQUIRED:
                assert "required" in cell, f"{name} is required; README says {cell!r}"
                continue
            expected = _rendered(default)
            if expected is not None:
                assert expected in cell, f"{name} defaults to {expected!r}; README says {cell!r}"


def test_every_tooling_variable_is_used_by_the_tooling():
    files = [MAKEFILE, ROOT / "Procfile", ROOT / "docker-compose.yml"]
    tooling = "\n".join(_text(path) for path in [*files, *sorted((ROOT / "scripts").iterdir())])
    unused = [name for name in _tooling_table() if not re.search(rf"\b{name}\b", tooling)]
    assert not unused, f"README lists tooling variables that no tooling file uses: {unused}"


# -- paths and links ---------------------------------------------------------------------


def _exists(path: str) -> bool:
    if "*" in path:
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


def test_every_repository_path_in_backticks_exists():
    missing = []
    for document in DOCUMENTS:
        for span in _split_code(_text(document))[1]:
            path = span.strip().split("::", 1)[0].rstrip(".,:;")
            if REPO_PATH.match(path) and path not in CREATED_BY_THE_READER and not _exists(path):
                missing.append(f"{document.relative_to(ROOT)}: {path}")
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_every_relative_link_and_named_doc_exists():
    missing = []
    for document in DOCUMENTS:
        text = _text(document)
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not re.match(r"[a-z]+:", target) and not (document.parent / target).exists():
                missing.append(f"{document.relative_to(ROOT)}: link {target}")
        for named in re.findall(r"\b(docs/[\w./-]+\.md)\b", text):
            if not (ROOT / named).exists():
                missing.append(f"{document.relative_to(ROOT)}: {named}")
    assert not missing, "\n".join(missing)


# -- tests cited as evidence ------------------------------------------------------------


def test_every_test_cited_in_failure_modes_exists():
    known = _test_functions()
    cited = set(TEST_NAME.findall(_text(FAILURE_MODES)))

    assert cited, "docs/failure-modes.md cites no test"
    missing = sorted(cited - set(known))
    assert not missing, f"docs/failure-modes.md cites tests that do not exist: {missing}"


def test_every_test_cited_with_its_file_is_in_that_file():
    known = _test_functions()
    wrong = []
    for document in DOCUMENTS:
        for span in (raw.strip() for raw in _split_code(_text(document))[1]):
            match = re.fullmatch(r"([\w/.-]+_tests\.py)::(test_\w+)", span)
            if match:
                found = match.group(1) in known.get(match.group(2), set())
            else:
                found = not TEST_NAME.fullmatch(span) or span in known
            if not found:
                wrong.append(f"{document.relative_to(ROOT)}: {span}")
    assert not wrong, "cited tests not found where the docs say:\n" + "\n".join(wrong)


# -- commands ----------------------------------------------------------------------------


def test_manage_py_check_passes():
    result = _manage("check")

    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_every_manage_py_command_the_docs_mention_exists():
    listing = _manage("help", "--commands")
    assert listing.returncode == 0, listing.stderr
    commands = set(listing.stdout.split())

    unknown = sorted(
        {f"{doc.name}: {words[0]}" for doc, words in _manage_mentions() if words[0] not in commands}
    )
    assert not unknown, f"unknown manage.py commands: {unknown}"


@pytest.mark.parametrize(
    "command",
    sorted({words[0] for _, words in _manage_mentions() if words[0] != "help"}),
)
def test_every_option_the_docs_give_a_manage_py_command_exists(command):
    for document, words in _manage_mentions():
        if words[0] != command:
            continue
        sub = [words[1]] if len(words) > 1 and re.fullmatch(r"[a-z]+", words[1]) else []
        options = [word.split("=", 1)[0] for word in words[1:] if word.startswith("--")]
        if not options:
            continue
        text = _manage_help(command, *sub)
        missing = [option for option in options if option not in text]
        assert not missing, f"{document.name}: manage.py {' '.join(words)}: unknown {missing}"


# -- names of code ----------------------------------------------------------------------


def test_every_capitalised_name_the_docs_give_is_defined_in_the_code():
    """SQL statements, settings, constants and variables: a renamed one fails here."""
    defined = _defined_constants() | NOT_CODE
    unknown = sorted(
        {
            f"{document.relative_to(ROOT)}: {span}"
            for document, span in _inline_code()
            if CONSTANT.fullmatch(span) and span not in defined
        }
    )
    assert not unknown, "names that nothing defines:\n" + "\n".join(unknown)


def test_every_dotted_reference_to_the_code_resolves():
    """``Relay.finish``, ``sql.STATUS``, ``event_log.tasks.relay_outbox`` … exist."""
    literals = _string_literals()
    unknown = []
    for document, span in _inline_code():
        match = DOTTED.fullmatch(span)
        if not match or FILE_NAME.search(span) or _resolves(match.group(1)) is not False:
            continue
        parts = match.group(1).split(".")
        if parts[0] not in _classes() and (
            match.group(1) in literals  # a Sentry tag, span op or check id
            or all(part in literals for part in parts)  # a key path of JSON the code produces
        ):
            continue
        unknown.append(f"{document.relative_to(ROOT)}: {span}")
    assert not unknown, "references to code that does not exist:\n" + "\n".join(unknown)
