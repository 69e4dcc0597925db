"""Declared parameters of registered components (systems, energy backends, sampler families,
methods): name, kind, default, bounds and a one-line doc.

Registries hold these declarations next to the lazily imported factory, so a configuration
can be checked — types, bounds, unknown keys, defaults filled in — without importing torch
or the component itself; the README's configuration tables are checked against them.
This module imports nothing heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["REQUIRED", "Parameter", "ParameterError", "Entry", "Registry"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of a parameter that has none (the configuration must give it)."""

KINDS = ("int", "float", "bool", "str", "choice", "float_pair", "int_triple", "str_pair", "mapping", "registry")


@dataclass(frozen=True)
class Parameter:
    """One configuration option of a component.

    kind: ``int``, ``float``, ``bool``, ``str`` (non-empty; matching ``pattern`` when one is
    given, described by ``doc``), ``choice`` (one of ``choices``), ``float_pair`` (two
    numbers), ``int_triple`` (three integers, or one for all three), ``str_pair`` (two
    different strings), ``mapping`` (string keys, free-form values, checked by the component)
    or ``registry`` (a mapping with a ``name`` key selecting an entry of ``registry``, whose
    own parameters are checked in turn; options it leaves out are not filled in).
    Bounds ``ge``/``gt``/``lt`` apply to numbers (to each entry of pairs and triples);
    ``nullable`` admits None; ``example`` is shown in error messages.
    """

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    example: str = ""
    registry: "Registry | None" = None
    pattern: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name!r}: unknown kind {self.kind!r}; one of {KINDS}")
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"parameter {self.name!r}: a choice needs its choices")
        if self.kind == "registry" and self.registry is None:
            raise ValueError(f"parameter {self.name!r}: a registry parameter needs its registry")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class ParameterError(ValueError):
    """A rejected parameter value; ``parameter`` names it (dotted below the component)."""

    def __init__(self, parameter: str, message: str):
        self.parameter = parameter
        self.message = message
        super().__init__(f"{parameter}: {message}")


@dataclass(frozen=True)
class Entry:
    """A registered component: ``factory`` is ``"module:attribute"``, imported on first use.

    ``parameters`` are the options the factory takes (besides what the caller passes itself);
    ``traits`` are free-form facts other code may ask about (e.g. a method's ``trained``).
    """

    name: str
    factory: str
    doc: str
    parameters: tuple[Parameter, ...] = ()
    traits: Mapping[str, Any] = field(default_factory=dict)

    def load(self):
        """The factory object (imports its module)."""
        module, _, attribute = self.factory.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def parameter(self, name: str) -> Parameter:
        return next(p for p in self.parameters if p.name == name)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def defaults(self) -> dict[str, Any]:
        """Defaults of the parameters that have one."""
        return {p.name: p.default for p in self.parameters if not p.required}


class Registry(Mapping[str, Entry]):
    """Name → :class:`Entry` of one kind of component (``kind`` names it in messages)."""

    def __init__(self, kind: str, entries: tuple[Entry, ...]):
        self.kind = kind
        self._entries = {entry.name: entry for entry in entries}
        if len(self._entries) != len(entries):
            raise ValueError(f"{kind} registry: two entries share a name")

    def __getitem__(self, name: str) -> Entry:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self._entries)}")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def with_trait(self, trait: str, value: Any = True) -> tuple[str, ...]:
        """Names of the entries whose ``traits[trait]`` equals ``value``, in registry order."""
        return tuple(name for name, entry in self._entries.items() if entry.traits.get(trait) == value)
