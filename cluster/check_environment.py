#!/usr/bin/env python3
"""Check that environment.yml agrees with pyproject.toml (no conda needed; nothing is solved).

    python cluster/check_environment.py [--env environment.yml] [--pyproject pyproject.toml]

Exit 0 when they agree; otherwise 1, with one line per problem naming the package and both specs:
- environment.yml or pyproject.toml does not parse;
- a dependency of pyproject.toml (runtime and the ``test`` extra) is missing from environment.yml
  (its conda or its pip section; conda's ``pytorch`` is PyPI's ``torch``);
- the two version ranges differ (compared as PEP 440 specifier sets), or the extras differ;
- a version range, in either file, has no upper bound;
- pytorch does not come from conda with a CUDA build (``cuda*``), or ``cuda-version`` is missing;
- environment.yml's ``python`` is outside pyproject.toml's ``requires-python``.

Conda specs read here: ``name``, ``name>=1,<2``, ``name=1.2`` (conda: 1.2.*), ``name=VERSION=BUILD``
and ``name VERSION BUILD``. Needs PyYAML and ``packaging`` (a dependency of ray).
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"pytorch": "torch"}
UNVERSIONED = {"pip"}               # the installer itself
UPPER_OPS = {"<", "<=", "==", "===", "~="}
# build strings of conda-forge pytorch; the pytorch entry's build must match the first only
CUDA_BUILD, CPU_BUILD = "cuda129_mkl_py311h0000000_300", "cpu_mkl_py311h0000000_100"


@dataclass
class Dep:
    name: str                       # canonical PyPI name
    spec: SpecifierSet
    text: str                       # as written
    section: str                    # "conda" or "pip"
    extras: frozenset = frozenset()
    build: str = ""


def conda_dep(text: str) -> Dep:
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", text.strip())
    if not m:
        raise ValueError(f"unreadable conda spec {text!r}")
    name, rest = m.group(1), m.group(2).strip()
    build = ""
    if rest.startswith("=") and not rest.startswith("=="):   # name=VERSION[=BUILD]
        version, _, build = rest[1:].partition("=")
        version = "" if version in ("", "*") else "==" + (version if "*" in version else version + ".*")
    else:                                                      # name[ ]VERSION[ BUILD]
        version, _, build = rest.partition(" ")
    try:
        spec = SpecifierSet(version)
    except InvalidSpecifier as exc:
        raise ValueError(f"{name}: version {version!r} in {text!r}: {exc}") from exc
    pypi = CONDA_TO_PYPI.get(name, name)
    return Dep(canonicalize_name(pypi), spec, text, "conda", build=build.strip())


def pip_dep(text: str) -> Dep | None:
    if text.strip().startswith("-"):                           # -e ., --index-url ...
        return None
    req = Requirement(text)
    return Dep(canonicalize_name(req.name), req.specifier, text, "pip", frozenset(req.extras))


def has_upper(spec: SpecifierSet) -> bool:
    return any(s.operator in UPPER_OPS for s in spec)


def read_env(path: Path) -> list[Dep]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("dependencies"), list):
        raise ValueError("no 'dependencies' list")
    deps = []
    for item in data["dependencies"]:
        if isinstance(item, dict):
            deps += [d for d in map(pip_dep, item.get("pip") or []) if d]
        else:
            deps.append(conda_dep(str(item)))
    return deps


def check(env_path: Path, pyproject_path: Path) -> list[str]:
    try:
        env = read_env(env_path)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        return [f"{env_path.name} does not parse: {exc}"]
    try:
        project = tomllib.loads(pyproject_path.read_text())["project"]
        wanted = [(r, Requirement(r)) for r in project["dependencies"]
                  + project.get("optional-dependencies", {}).get("test", [])]
        requires_python = SpecifierSet(project["requires-python"])
    except (OSError, tomllib.TOMLDecodeError, KeyError, ValueError) as exc:
        return [f"{pyproject_path.name} does not parse: {exc}"]

    problems = []
    by_name = {d.name: d for d in env}
    for pp, req in wanted:                                     # pp: as written in pyproject.toml
        name = canonicalize_name(req.name)
        if not has_upper(req.specifier):
            problems.append(f"{name}: no upper bound in pyproject.toml ({pp!r})")
        dep = by_name.get(name)
        if dep is None:
            problems.append(f"{name}: pyproject.toml has {pp!r} but environment.yml has no {name}")
        elif dep.spec != req.specifier:
            problems.append(f"{name}: environment.yml has {dep.text!r}, pyproject.toml has {pp!r}")
        elif dep.section == "pip" and dep.extras != frozenset(req.extras):
            problems.append(f"{name}: extras differ: environment.yml has {dep.text!r}, "
                            f"pyproject.toml has {pp!r}")
    for dep in env:
        if dep.name not in UNVERSIONED and not has_upper(dep.spec):
            problems.append(f"{dep.name}: no upper bound in environment.yml ({dep.text!r})")

    torch = by_name.get("torch")
    if torch is not None and not (torch.section == "conda" and torch.build
                                  and fnmatch.fnmatch(CUDA_BUILD, torch.build)
                                  and not fnmatch.fnmatch(CPU_BUILD, torch.build)):
        problems.append(f"torch: environment.yml's {torch.text!r} does not select a CUDA build "
                        f"of conda-forge's pytorch (want a build string 'cuda*', as in "
                        f"'pytorch >=2.4,<3 cuda*')")
    if torch is not None and "cuda-version" not in by_name:
        problems.append("cuda-version: missing from environment.yml (it picks the CUDA major "
                        "version of pytorch's CUDA build)")

    python = by_name.get("python")
    versions = [s.version.removesuffix(".*") for s in (python.spec if python else [])
                if s.operator in ("==", ">=", "~=", "===")]
    if not versions or any(v not in requires_python for v in versions):
        problems.append(f"python: environment.yml has {python.text if python else 'no python'!r}, "
                        f"pyproject.toml has requires-python {str(requires_python)!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", type=Path, default=ROOT / "environment.yml")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args(argv)
    problems = check(args.env, args.pyproject)
    for line in problems:
        print(f"check_environment: {line}", file=sys.stderr)
    if not problems:
        print(f"check_environment: {args.env.name} agrees with {args.pyproject.name}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
