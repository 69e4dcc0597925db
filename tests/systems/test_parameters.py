"""systems.parameters: declared parameters, registry entries and registries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from systems.parameters import REQUIRED, Entry, Parameter, Registry

ROOT = Path(__file__).resolve().parents[2]


def test_parameter_declarations_are_checked():
    with pytest.raises(ValueError, match="unknown kind 'vector'"):
        Parameter("x", "vector")
    with pytest.raises(ValueError, match="needs its choices"):
        Parameter("x", "choice", "a")
    with pytest.raises(ValueError, match="needs its registry"):
        Parameter("energy", "registry", {"name": "ase"})
    assert Parameter("L", "int").required and Parameter("L", "int").default is REQUIRED
    assert not Parameter("J", "float", 1.0).required


def test_registry_lookup_traits_and_duplicates():
    entries = (Entry("a", "math:sqrt", "first", traits={"fast": True}), Entry("b", "math:floor", "second"))
    registry = Registry("widget", entries)
    assert list(registry) == ["a", "b"] and len(registry) == 2
    assert registry.with_trait("fast") == ("a",)
    with pytest.raises(KeyError, match="unknown widget 'c'; valid names: a, b"):
        registry["c"]
    with pytest.raises(ValueError, match="two entries share a name"):
        Registry("widget", (*entries, Entry("a", "math:ceil", "again")))


def test_entry_loads_its_factory_on_first_use_and_reports_defaults():
    entry = Entry("sqrt", "math:sqrt", "square root",
                  parameters=(Parameter("x", "float"), Parameter("y", "float", 2.0)))
    assert entry.load()(9.0) == 3.0
    assert entry.parameter_names == ("x", "y") and entry.defaults() == {"y": 2.0}
    assert entry.parameter("y").default == 2.0


def test_the_system_registry_imports_no_torch():
    """Configuration checks must stay torch-free: the registries name factories lazily."""
    code = "import sys, systems.registry, pipeline.registry, pipeline.config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr
