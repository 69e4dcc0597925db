"""Checks of single configuration values, shared by every section's parser and by the
registry-declared options (systems.parameters.Parameter).

Each check takes the value, the dotted ``field`` it came from and an ``example``, and
returns the normalised value or raises :class:`~pipeline.errors.ConfigError` naming the
field, the bad value and a fix.  YAML 1.1 reads ``1e-3`` (no dot) as a string; such
strings are accepted as numbers.  Integers are accepted where floats are expected, and a
float with an integral value (``1.0e4``) where an integer is expected, but not ``2.5`` or
``true``.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.errors import ConfigError

__all__ = ["describe", "as_number", "check_float", "check_int", "check_bool", "check_choice", "list_entry",
           "float_list", "float_or_list", "int_or_list", "unknown_key_error", "parse_parameters", "parameter_value"]

_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def describe(value: Any) -> str:
    return f"{value!r} (a {type(value).__name__})"


def as_number(value: Any) -> float | int | None:
    """int/float (not bool), numpy numbers, or a YAML-1.1 scientific string; else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    return None


def _bound_text(gt=None, ge=None, lt=None) -> str:
    parts = []
    if gt is not None:
        parts.append(f"> {gt}")
    if ge is not None:
        parts.append(f">= {ge}")
    if lt is not None:
        parts.append(f"< {lt}")
    return " and ".join(parts)


def _check_bounds(x: float, field: str, kind: str, example: str, gt=None, ge=None, lt=None):
    ok = (gt is None or x > gt) and (ge is None or x >= ge) and (lt is None or x < lt)
    if not ok:
        raise ConfigError(field, f"must be {kind} {_bound_text(gt, ge, lt)}, got {x!r}; e.g. {example}")


def check_float(value: Any, field: str, *, gt=None, ge=None, lt=None, example: str = "") -> float:
    number = as_number(value)
    example = example or f"`{field.split('.')[-1]}: 1.0`"
    if number is None:
        raise ConfigError(field, f"must be a number, got {describe(value)}; e.g. {example}")
    x = float(number)
    if not math.isfinite(x):
        raise ConfigError(field, f"must be a finite number, got {x!r}; e.g. {example}")
    _check_bounds(x, field, "a number", example, gt, ge, lt)
    return x


def check_int(value: Any, field: str, *, ge=None, example: str = "") -> int:
    number = as_number(value)
    example = example or f"`{field.split('.')[-1]}: {max(ge or 0, 1)}`"
    if number is None or (isinstance(number, float) and not (math.isfinite(number) and number.is_integer())):
        raise ConfigError(field, f"must be an integer, got {describe(value)}; e.g. {example}")
    x = int(number)
    _check_bounds(x, field, "an integer", example, ge=ge)
    return x


def check_bool(value: Any, field: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(field, f"must be true or false, got {describe(value)}")


def check_choice(value: Any, field: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(field, f"must be one of {', '.join(choices)}; got {value!r}{hint}")
    return value


def list_entry(parse, value: Any, index: int, field: str, *args, **kwargs):
    """Parse entry ``index`` of a list-valued field; errors keep ``field`` and name the entry."""
    try:
        return parse(value, field, *args, **kwargs)
    except ConfigError as exc:
        raise ConfigError(field, f"entry {index}: {exc.message}") from None


def float_list(value: Any, field: str, *, gt=None, example: str = "") -> tuple[float, ...]:
    """A number or a non-empty list of numbers (each checked), as a tuple."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(field, f"must be a number or a non-empty list of numbers; e.g. {example}")
        return tuple(list_entry(check_float, v, i, field, gt=gt, example=example) for i, v in enumerate(value))
    return (check_float(value, field, gt=gt, example=example),)


def float_or_list(value: Any, field: str, *, gt=None, allow_none=False, example: str = ""):
    """None (if allowed), a number, or a list of numbers (returned as a tuple)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (list, tuple)):
        return float_list(value, field, gt=gt, example=example)
    return check_float(value, field, gt=gt, example=example)


def int_or_list(value: Any, field: str, *, ge=None, allow_none=False, example: str = ""):
    if value is None and allow_none:
        return None
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(field, f"must be an integer or a non-empty list of integers; e.g. {example}")
        return tuple(list_entry(check_int, v, i, field, ge=ge, example=example) for i, v in enumerate(value))
    return check_int(value, field, ge=ge, example=example)


def unknown_key_error(field: str, key: str, valid: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(field, f"unknown key {key!r}. Valid keys here: {', '.join(valid)}.{hint}")


def parse_parameters(values: Mapping, entry, prefix: str, owner: str = "") -> dict[str, Any]:
    """Validate ``values`` against the parameters ``entry`` (a registry Entry) declares:
    unknown keys are refused, required ones demanded, defaults filled in; errors name
    ``<prefix>.<key>``.  ``owner`` (e.g. "sampler.family autoregressive") says in messages
    whose options these are."""
    names = entry.parameter_names
    for key in values:
        if key not in names:
            error = unknown_key_error(f"{prefix}.{key}", key, names)
            raise ConfigError(error.field, f"{error.message}" + (f" (options of {owner})" if owner else ""))
    out = {}
    for parameter in entry.parameters:
        field = f"{prefix}.{parameter.name}"
        if parameter.name not in values:
            if parameter.required:
                example = f", e.g. {parameter.example}" if parameter.example else ""
                raise ConfigError(field, f"is required: {parameter.doc}{example}")
            out[parameter.name] = copy.deepcopy(parameter.default)
            continue
        out[parameter.name] = parameter_value(values[parameter.name], parameter, field)
    return out


def parameter_value(value: Any, parameter, field: str) -> Any:
    """One declared parameter's value, type- and bound-checked (see systems.parameters)."""
    if value is None and parameter.nullable:
        return None
    kind, example = parameter.kind, parameter.example
    if kind == "int":
        return check_int(value, field, ge=parameter.ge, example=example)
    if kind == "float":
        return check_float(value, field, gt=parameter.gt, ge=parameter.ge, lt=parameter.lt, example=example)
    if kind == "bool":
        return check_bool(value, field)
    if kind == "choice":
        return check_choice(value, field, parameter.choices)
    if kind == "str":
        if not isinstance(value, str) or not value.strip() or (parameter.pattern and not re.match(parameter.pattern, value)):
            wanted = parameter.doc if parameter.pattern else "a non-empty string"
            raise ConfigError(field, f"must be {wanted}; got {describe(value)}" + (f"; e.g. {example}" if example else ""))
        return value
    if kind == "int_triple":
        triple = [value] * 3 if as_number(value) is not None else value
        if not isinstance(triple, (list, tuple)) or len(triple) != 3:
            raise ConfigError(field, f"must be three integers ({parameter.doc}), e.g. {example}; got {describe(value)}")
        return [list_entry(check_int, v, i, field, ge=parameter.ge, example=example) for i, v in enumerate(triple)]
    if kind == "float_pair":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(field, f"must be {parameter.doc}; got {describe(value)}; e.g. {example}")
        return [list_entry(check_float, v, i, field, gt=parameter.gt, ge=parameter.ge, example=example) for i, v in enumerate(value)]
    if kind == "str_pair":
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, str) and v for v in value) \
                or value[0] == value[1]:
            raise ConfigError(field, f"must be {parameter.doc}, e.g. {example}; got {describe(value)}")
        return list(value)
    if kind == "mapping":
        if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
            raise ConfigError(field, f"must be a mapping with string keys ({parameter.doc}); got {describe(value)}; "
                                     f"e.g. {example}")
        return copy.deepcopy(dict(value))
    if kind == "registry":
        return _registry_value(value, parameter, field)
    raise ConfigError(field, f"parameters of kind {kind!r} are not supported here")


def _registry_value(value: Any, parameter, field: str) -> dict[str, Any]:
    """A ``{name: ..., **options}`` mapping selecting an entry of ``parameter.registry``; the
    options given are checked against the entry's parameters, the others are left out (the
    component keeps its own defaults, and the configuration stays as written)."""
    registry = parameter.registry
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise ConfigError(field, f"must be a mapping naming the {registry.kind}, e.g. {parameter.example}; "
                                 f"got {describe(value)}")
    name = value["name"]
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{field}.name", f"unknown {registry.kind} {name!r}; valid names: {', '.join(registry)}{hint}")
    entry = registry[name]
    options = {key: option for key, option in value.items() if key != "name"}
    for key in options:
        if key not in entry.parameter_names:
            raise unknown_key_error(f"{field}.{key}", key, ("name", *entry.parameter_names))
    for declared in entry.parameters:
        if declared.required and declared.name not in options:
            raise ConfigError(f"{field}.{declared.name}", f"is required by the {name} {registry.kind}; "
                                                          f"e.g. {declared.example}")
    return {"name": name, **{key: parameter_value(option, entry.parameter(key), f"{field}.{key}")
                             for key, option in options.items()}}
