"""Layering rules of the code base, checked on the source (``ast``; nothing is imported).

1. ``systems/`` (physics) never imports ``pipeline`` (method, CLI, Ray layer);
2. ``ray`` is imported only under ``pipeline/distributed/``;
3. ``argparse`` is imported only by ``pipeline/cli.py``;
4. no module uses a private name (leading underscore) of another project module, neither by
   ``from pipeline.runner import _name`` nor by ``runner._name`` on an imported module;
5. test file names are unique under ``tests/`` (with the default ``prepend`` import mode two
   test files of the same basename clash as soon as a folder lacks its ``__init__.py``).

Imports anywhere in a file count (module level, inside functions, under ``TYPE_CHECKING``),
relative imports are resolved, and ``importlib.import_module("literal")`` counts as an import.
Each rule's checker is also run on a small violating and a small clean snippet, so a checker
that silently stopped reporting would fail here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("systems", "pipeline")


# --------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Import:
    line: int
    module: str                  # absolute name of the module imported (from)
    names: tuple[str, ...] = ()  # names of ``from module import a, b``; () for ``import module``


@dataclass(frozen=True)
class Module:
    path: str                    # repository-relative, POSIX separators
    name: str                    # dotted module name (a package's __init__ is the package)
    imports: tuple[Import, ...]
    attributes: tuple[tuple[int, str, str], ...]  # (line, module, private attribute) of ``alias._x``


def module_name(path: str) -> tuple[str, bool]:
    """Dotted name of a repository-relative .py path, and whether it is a package __init__."""
    parts = PurePosixPath(path).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _resolve(level: int, module: str | None, importer: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    if level - 1 > len(package):
        return "<beyond top-level package>"
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything that is not a plain attribute chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def parse_module(path: str, source: str, known_modules: Iterable[str] = ()) -> Module:
    """Imports and private attribute uses of one file.  ``known_modules``: dotted names of the
    project's modules, so that ``from pipeline import runner`` is known to bind a module."""
    name, is_package = module_name(path)
    known = set(known_modules)
    tree = ast.parse(source, filename=path)
    imports: list[Import] = []
    bound: dict[str, str] = {}  # local name -> project module it refers to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports.append(Import(node.lineno, alias.name))
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.level, node.module, name, is_package)
            imports.append(Import(node.lineno, base, tuple(alias.name for alias in node.names)))
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif (isinstance(node, ast.Call) and _dotted(node.func) in (["importlib", "import_module"], ["import_module"],
                                                                     ["__import__"])
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            imports.append(Import(node.lineno, node.args[0].value))
    attributes = []
    for node in ast.walk(tree):
        chain = _dotted(node) if isinstance(node, ast.Attribute) else None
        if not chain or chain[0] not in bound or not _is_private(chain[-1]):
            continue
        target = ".".join([bound[chain[0]], *chain[1:-1]])
        if _is_project(target) and target != name and (target in known or target == bound[chain[0]]):
            attributes.append((node.lineno, target, chain[-1]))
    return Module(path, name, tuple(imports), tuple(sorted(set(attributes))))


def project_modules() -> list[Module]:
    paths = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    relative = [p.relative_to(ROOT).as_posix() for p in paths]
    known = {module_name(path)[0] for path in relative}
    return [parse_module(path, (ROOT / path).read_text(encoding="utf-8"), known) for path in relative]


# --------------------------------------------------------------------------- rules
def _imports_of(module: Module, top_level: str):
    return [i for i in module.imports if i.module == top_level or i.module.startswith(top_level + ".")]


def systems_importing_pipeline(modules: Iterable[Module]) -> list[str]:
    return [f"{m.path}:{i.line}: imports {i.module}" for m in modules if m.path.startswith("systems/")
            for i in _imports_of(m, "pipeline")]


def ray_outside_distributed(modules: Iterable[Module]) -> list[str]:
    return [f"{m.path}:{i.line}: imports {i.module}" for m in modules
            if not m.path.startswith("pipeline/distributed/") for i in _imports_of(m, "ray")]


def argparse_outside_cli(modules: Iterable[Module]) -> list[str]:
    return [f"{m.path}:{i.line}: imports {i.module}" for m in modules if m.path != "pipeline/cli.py"
            for i in _imports_of(m, "argparse")]


def private_name_uses(modules: Iterable[Module]) -> list[str]:
    found = []
    for m in modules:
        for i in m.imports:
            if _is_project(i.module) and i.module != m.name:
                found += [f"{m.path}:{i.line}: imports private name {n!r} from {i.module}"
                          for n in i.names if _is_private(n)]
        found += [f"{m.path}:{line}: uses private name {attr!r} of {target}" for line, target, attr in m.attributes]
    return found


def duplicate_test_file_names(paths: Iterable[str]) -> list[str]:
    by_name: dict[str, list[str]] = {}
    for path in paths:
        name = PurePosixPath(path).name
        if name.startswith("test_") or name.endswith("_test.py"):
            by_name.setdefault(name, []).append(path)
    return [f"{name}: {', '.join(sorted(found))}" for name, found in sorted(by_name.items()) if len(found) > 1]


def _report(problems: list[str], rule: str) -> str:
    return f"{len(problems)} violation(s) of '{rule}':\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------- the project
@pytest.fixture(scope="module")
def modules() -> list[Module]:
    found = project_modules()
    assert len(found) > 20 and {"pipeline.cli", "systems.base"} <= {m.name for m in found}
    return found


def test_systems_do_not_import_pipeline(modules):
    problems = systems_importing_pipeline(modules)
    assert not problems, _report(problems, "systems/ never imports pipeline")


def test_ray_is_imported_only_by_the_distributed_layer(modules):
    problems = ray_outside_distributed(modules)
    assert not problems, _report(problems, "ray only under pipeline/distributed/")


def test_argparse_is_imported_only_by_the_cli(modules):
    problems = argparse_outside_cli(modules)
    assert not problems, _report(problems, "argparse only in pipeline/cli.py")


def test_no_module_uses_private_names_of_another_module(modules):
    problems = private_name_uses(modules)
    assert not problems, _report(problems, "no private names of other project modules")


def test_test_file_names_are_unique():
    paths = [p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("*.py")]
    problems = duplicate_test_file_names(paths)
    assert not problems, _report(problems, "unique test file names under tests/")


# --------------------------------------------------------------------------- the checkers themselves
KNOWN = {"pipeline", "pipeline.runner", "pipeline.distributed", "pipeline.distributed.tune", "systems",
         "systems.alloys", "systems.alloys.alloy", "systems.base"}


def _parse(path: str, source: str) -> list[Module]:
    return [parse_module(path, source, KNOWN)]


@pytest.mark.parametrize("checker,path,bad,good,expected", [
    (systems_importing_pipeline, "systems/alloys/alloy.py",
     "import numpy\n\ndef f():\n    from pipeline.outputs import atomic_path\n",
     "import numpy\nfrom ..base import CVSpec\nfrom systems.units import BOLTZMANN_EV_PER_K\n",
     ["systems/alloys/alloy.py:4: imports pipeline.outputs"]),
    (systems_importing_pipeline, "systems/base.py",
     "import importlib\nimportlib.import_module('pipeline.config')\n", "import importlib\n",
     ["systems/base.py:2: imports pipeline.config"]),
    (ray_outside_distributed, "pipeline/runner.py",
     "import os\nimport ray.util.queue as queue\n", "from pipeline.distributed.session import ray_session\n",
     ["pipeline/runner.py:2: imports ray.util.queue"]),
    (argparse_outside_cli, "pipeline/distributed/tune.py",
     "from argparse import Namespace\n", "import sys\n",
     ["pipeline/distributed/tune.py:1: imports argparse"]),
    (private_name_uses, "pipeline/distributed/tune.py",
     "from pipeline.runner import _exact_reference, run\nfrom ..runner import _summary\n",
     "from pipeline.runner import run\nfrom . import tune\n_local = 1\n",
     ["pipeline/distributed/tune.py:1: imports private name '_exact_reference' from pipeline.runner",
      "pipeline/distributed/tune.py:2: imports private name '_summary' from pipeline.runner"]),
    (private_name_uses, "pipeline/distributed/tune.py",
     "from pipeline import runner\nimport systems.base\n\nx = runner._exact_reference\ny = systems.base._counts\n",
     "from pipeline import runner\nx = runner.run\ny = runner.__name__\n",
     ["pipeline/distributed/tune.py:4: uses private name '_exact_reference' of pipeline.runner",
      "pipeline/distributed/tune.py:5: uses private name '_counts' of systems.base"]),
], ids=["systems-from-import", "systems-import_module", "ray", "argparse", "private-from-import", "private-attribute"])
def test_checker_reports_a_violating_snippet_and_passes_a_clean_one(checker, path, bad, good, expected):
    assert checker(_parse(path, bad)) == expected
    assert checker(_parse(path, good)) == []


def test_checkers_respect_their_exemptions():
    assert ray_outside_distributed(_parse("pipeline/distributed/walkers.py", "import ray\n")) == []
    assert argparse_outside_cli(_parse("pipeline/cli.py", "import argparse\n")) == []
    assert systems_importing_pipeline(_parse("pipeline/runner.py", "import pipeline.config\n")) == []
    # a module's own private names, and private names of third-party packages, are fine
    assert private_name_uses(_parse("pipeline/runner.py", "from numpy import _NoValue\n")) == []
    assert private_name_uses(_parse("pipeline/sampler/__init__.py", "from . import _impl\n")) == []


def test_duplicate_test_file_names_are_reported():
    paths = ["tests/pipeline/test_sampler.py", "tests/pipeline/sampler/test_sampler.py", "tests/test_cli.py",
             "tests/conftest.py", "tests/pipeline/conftest.py"]
    assert duplicate_test_file_names(paths) == [
        "test_sampler.py: tests/pipeline/sampler/test_sampler.py, tests/pipeline/test_sampler.py"]
