"""The two tiers: the lecture never imports the lab, no modules import each other in a circle, and every
command the README, docs and course quote exists and accepts its settings."""

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

import configurable

ROOT = Path(__file__).resolve().parents[1]
LECTURE = ("model", "train", "sample", "prepare_data", "configurable")


def project_modules():
    """{module name: path} of every Python module of the project (tests aside)."""
    paths = [*ROOT.glob("*.py"), *ROOT.glob("lab/**/*.py"), *ROOT.glob("course/**/*.py")]
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in paths}


def imports_of(path, modules):
    """The project modules that the file at `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in modules)
    return found


def test_the_lecture_imports_only_itself():
    modules = project_modules()
    assert set(LECTURE) <= set(modules)
    for name in LECTURE:
        outside = imports_of(modules[name], modules) - set(LECTURE)
        assert not outside, f"{name}.py imports {sorted(outside)}: the lecture may import only {LECTURE}"


def test_no_modules_import_each_other_in_a_circle():
    modules = project_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}  # a package's __init__
    done, on_path = set(), []

    def visit(name):
        if name in on_path:
            raise AssertionError(f"import cycle: {' -> '.join(on_path[on_path.index(name):] + [name])}")
        if name in done:
            return
        on_path.append(name)
        for dependency in sorted(graph[name]):
            visit(dependency)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


# ---------------------------------------------------------------------------
# Every command in the documents
# ---------------------------------------------------------------------------

DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/**/*.md")),
             *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("course/**/*.md"))]
COMMAND = re.compile(r"python3? (-m [\w.]+|[\w./-]+\.py)((?: +(?:--?[\w.-]+(?:=(?:\"[^\"]*\"|'[^']*'|[^\s`;|&)#]+))?"
                     r"|[^\s`;|&)#-][^\s`;|&)#]*))*)")


def document_commands():
    """(document, line number, script, arguments) for each `python ...` command quoted in the documents."""
    found = []
    for doc in DOCUMENTS:
        text = (ROOT / doc).read_text(encoding="utf-8").replace("\\\n", " ")
        for number, line in enumerate(text.splitlines(), 1):
            line = re.sub(r"\s#.*", "", line)  # a shell comment after the command
            for match in COMMAND.finditer(line):
                found.append((doc, number, match[1], match[2]))
    return found


def settle(argument):
    """A shell variable ($seed) stands for a value; FILE: prompts and paths are passed as they are."""
    return re.sub(r"\$\{?\w+\}?", "1", argument)


class Parsed(Exception):
    """Raised once a script's settings have been parsed and checked: nothing more runs."""


def check_command(script, arguments, monkeypatch):
    if script.startswith("-m course.check"):
        from course import check
        ids = [a for a in shlex.split(arguments) if a != "--solutions"]
        assert check.select(check.all_exercises(), ids or ["all"])  # SystemExit names an unknown exercise
        return
    name = script[3:] if script.startswith("-m ") else script.removesuffix(".py").replace("/", ".")
    if name == "pytest":
        return
    module = importlib.import_module(name)
    parse = configurable.parse_args

    def parse_then_stop(*args, **kwargs):
        parse(*args, **kwargs)
        raise Parsed

    monkeypatch.setattr(module, "parse_args", parse_then_stop)
    argv = [settle(a) for a in shlex.split(arguments)]
    with pytest.raises(Parsed):
        module.main(argv)


def test_the_documents_quote_commands():
    scripts = {script for _, _, script, _ in document_commands()}
    assert {"train.py", "sample.py", "prepare_data.py", "-m lab.compare"} <= scripts


@pytest.mark.parametrize("doc, line, script, arguments", document_commands(),
                         ids=lambda value: value if isinstance(value, str) and len(value) < 40 else None)
def test_every_quoted_command_exists_and_takes_its_settings(doc, line, script, arguments, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    try:
        check_command(script, arguments, monkeypatch)
    except configurable.ConfigError as e:
        pytest.fail(f"{doc}:{line}: python {script}{arguments}: {e}")
