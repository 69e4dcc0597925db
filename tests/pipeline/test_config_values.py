"""Checks of single configuration values (pipeline/config_values.py): numbers as YAML 1.1
reads them, integers, bounds, declared-parameter parsing and every parameter kind.

Config-level behaviour (whole sections, overrides) is in test_config.py; here the checks are
called directly, on made-up parameter declarations where that isolates one rule.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from pipeline.config_values import (check_bool, check_choice, check_float, check_int, parameter_value,
                                     parse_parameters)
from pipeline.errors import ConfigError
from systems.parameters import REQUIRED, Entry, Parameter
from systems.registry import ENERGY_BACKENDS, SYSTEMS


def raises_config_error(call, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        call(*args, **kwargs)
    return error.value


# --------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("text", ["1e-3", "1E-3", "+1e-3", "1.e-3", ".1e-2", " 1e-3 "])
def test_check_float_accepts_yaml_1_1_scientific_strings(text):
    assert isinstance(yaml.safe_load("x: 1e-3")["x"], str)   # why: PyYAML (YAML 1.1) gives a string
    value = check_float(text, "training.learning_rate")
    assert isinstance(value, float) and value == pytest.approx(1e-3, rel=0, abs=1e-18)


@pytest.mark.parametrize("value", ["abc", "1e", "e3", "0x10", None, [1.0], True, False])
def test_check_float_refuses_non_numbers_naming_the_field(value):
    error = raises_config_error(check_float, value, "bias.sigma")
    assert error.field == "bias.sigma" and "must be a number" in error.message
    assert str(error).startswith("bias.sigma: ")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "-1e999"])
def test_check_float_refuses_non_finite_numbers(value):
    error = raises_config_error(check_float, value, "bias.sigma")
    assert error.field == "bias.sigma" and "finite" in error.message


def test_check_float_accepts_integers_and_numpy_numbers_as_floats():
    for value, expected in ((3, 3.0), (np.int64(3), 3.0), (np.float32(0.5), 0.5), (-2, -2.0)):
        result = check_float(value, "x")
        assert type(result) is float and result == expected


@pytest.mark.parametrize("value, expected", [(1.0e4, 10000), ("1e4", 10000), ("1.0E+2", 100), (np.int32(7), 7),
                                             (np.float64(3.0), 3), (-0.0, 0), (12, 12)])
def test_check_int_accepts_integral_floats_and_scientific_strings(value, expected):
    result = check_int(value, "training.outer_iterations")
    assert type(result) is int and result == expected


@pytest.mark.parametrize("value", [2.5, "2.5e0", True, False, np.bool_(True), "10", float("inf"), float("nan"), None])
def test_check_int_refuses_fractions_booleans_and_plain_strings(value):
    error = raises_config_error(check_int, value, "training.batch_size")
    assert error.field == "training.batch_size" and "must be an integer" in error.message


def test_bound_violations_name_the_field_the_bound_and_the_value():
    error = raises_config_error(check_float, 1, "bias.gamma", gt=1)
    assert error.field == "bias.gamma" and "> 1" in error.message and "1.0" in error.message
    error = raises_config_error(check_float, 1.0, "x.y", lt=1)
    assert error.field == "x.y" and "< 1" in error.message
    error = raises_config_error(check_float, -0.5, "bias.sigma", ge=0)
    assert ">= 0" in error.message and "-0.5" in error.message
    error = raises_config_error(check_int, 0, "training.batch_size", ge=1)
    assert error.field == "training.batch_size" and ">= 1" in error.message and "got 0" in error.message
    # the default example names the last part of the field
    assert "batch_size:" in error.message


def test_bounds_are_inclusive_or_exclusive_as_named():
    assert check_float(0.0, "x", ge=0) == 0.0
    raises_config_error(check_float, 0.0, "x", gt=0)
    assert check_float(0.999, "x", lt=1) == 0.999
    raises_config_error(check_float, 1.0, "x", lt=1)
    assert check_int(1, "x", ge=1) == 1


def test_a_given_example_is_shown_in_the_message():
    error = raises_config_error(check_int, "many", "reference.sweeps", example="`sweeps: 2000`")
    assert "`sweeps: 2000`" in error.message


def test_check_bool_refuses_truthy_values():
    assert check_bool(True, "x") is True and check_bool(np.bool_(False), "x") is False
    for value in (1, 0, "true", "yes", None):
        assert raises_config_error(check_bool, value, "sampling.metropolis_hastings").field == \
            "sampling.metropolis_hastings"


def test_check_choice_suggests_the_closest_choice():
    assert check_choice("cosine", "sampler.schedule", ("uniform", "cosine")) == "cosine"
    error = raises_config_error(check_choice, "cosin", "sampler.schedule", ("uniform", "cosine"))
    assert error.field == "sampler.schedule" and "did you mean 'cosine'" in error.message
    assert "uniform" in error.message and "cosine" in error.message
    error = raises_config_error(check_choice, 3, "sampler.schedule", ("uniform", "cosine"))
    assert "did you mean" not in error.message


# --------------------------------------------------------------------------- parse_parameters
THING = Entry("thing", "json:dumps", "a made-up component", parameters=(
    Parameter("width", "int", 4, ge=1, doc="features"),
    Parameter("model", "str", REQUIRED, doc="the model file", example="`model: cuau_paper`"),
    Parameter("size", "int_triple", [4, 4, 4], ge=1, doc="repetitions"),
    Parameter("rate", "float", None, gt=0, nullable=True, doc="a rate"),
))


def test_parse_parameters_fills_defaults_and_normalises_given_values():
    out = parse_parameters({"model": "m", "width": "1e1"}, THING, "system")
    assert out == {"width": 10, "model": "m", "size": [4, 4, 4], "rate": None}
    assert type(out["width"]) is int
    assert list(out) == list(THING.parameter_names)   # one entry per declared parameter


def test_parse_parameters_defaults_are_copies():
    out = parse_parameters({"model": "m"}, THING, "system")
    out["size"].append(5)
    assert THING.parameter("size").default == [4, 4, 4]
    assert parse_parameters({"model": "m"}, THING, "system")["size"] == [4, 4, 4]


def test_parse_parameters_refuses_unknown_keys_with_a_hint_and_the_owner():
    error = raises_config_error(parse_parameters, {"model": "m", "widht": 3}, THING, "sampler",
                                owner="sampler.family thing")
    assert error.field == "sampler.widht"
    assert "Did you mean 'width'?" in error.message and "(options of sampler.family thing)" in error.message
    assert all(name in error.message for name in THING.parameter_names)   # the valid keys are listed


def test_parse_parameters_demands_required_parameters():
    error = raises_config_error(parse_parameters, {"width": 2}, THING, "system")
    assert error.field == "system.model"
    assert "is required" in error.message and "the model file" in error.message and "`model: cuau_paper`" in error.message


def test_parse_parameters_errors_name_prefix_and_key():
    error = raises_config_error(parse_parameters, {"model": "m", "width": 0}, THING, "sampler")
    assert error.field == "sampler.width" and ">= 1" in error.message


def test_parse_parameters_on_a_registered_system_uses_its_declared_defaults():
    entry = SYSTEMS["ising"]
    assert parse_parameters({"L": 4}, entry, "system") == {**entry.defaults(), "L": 4}


# --------------------------------------------------------------------------- parameter kinds
def test_int_triple_broadcasts_one_integer_to_three():
    p = Parameter("size", "int_triple", [4, 4, 4], ge=1, doc="repetitions", example="`size: [4, 4, 4]`")
    assert parameter_value(2, p, "system.size") == [2, 2, 2]
    assert parameter_value(2.0, p, "system.size") == [2, 2, 2]
    assert parameter_value((1, 2, 3), p, "system.size") == [1, 2, 3]
    assert all(type(v) is int for v in parameter_value("2e0", p, "system.size"))


@pytest.mark.parametrize("value, fragment", [([1, 2], "three integers"), ([1, 2, 3, 4], "three integers"),
                                             ("two", "three integers"), ([1, 0, 1], "entry 1"),
                                             ([1, 1, 2.5], "entry 2"), (0, "entry 0")])
def test_int_triple_refusals_name_the_field_and_entry(value, fragment):
    p = Parameter("size", "int_triple", [4, 4, 4], ge=1, doc="repetitions", example="`size: [4, 4, 4]`")
    error = raises_config_error(parameter_value, value, p, "system.size")
    assert error.field == "system.size" and fragment in error.message


def test_str_pair_needs_two_different_non_empty_strings():
    p = Parameter("species", "str_pair", ["Cu", "Au"], doc="two different chemical symbols")
    assert parameter_value(("Cu", "Ag"), p, "system.species") == ["Cu", "Ag"]
    for value in (["Cu", "Cu"], ["Cu"], ["Cu", ""], ["Cu", 3], "CuAu", ["Cu", "Au", "Ag"]):
        error = raises_config_error(parameter_value, value, p, "system.species")
        assert error.field == "system.species" and "two different chemical symbols" in error.message


def test_float_pair_checks_each_entry_and_names_it():
    p = Parameter("constants", "float_pair", None, gt=0, nullable=True, doc="two lattice constants")
    assert parameter_value([3.6, "4e0"], p, "system.energy.constants") == [3.6, 4.0]
    assert parameter_value(None, p, "system.energy.constants") is None
    error = raises_config_error(parameter_value, [3.6, -4.0], p, "system.energy.constants")
    assert error.field == "system.energy.constants" and "entry 1" in error.message and "> 0" in error.message
    error = raises_config_error(parameter_value, ["a", 4.0], p, "system.energy.constants")
    assert "entry 0" in error.message
    error = raises_config_error(parameter_value, [1.0], p, "system.energy.constants")
    assert "two lattice constants" in error.message


def test_none_is_refused_unless_nullable():
    p = Parameter("width", "int", 4, ge=1)
    error = raises_config_error(parameter_value, None, p, "sampler.width")
    assert error.field == "sampler.width"


def test_mapping_needs_string_keys_and_is_copied():
    p = Parameter("parameters", "mapping", None, nullable=True, doc="keyword arguments")
    given = {"a": {"b": [1, 2]}}
    out = parameter_value(given, p, "system.energy.parameters")
    assert out == given
    out["a"]["b"].append(3)
    assert given == {"a": {"b": [1, 2]}}
    for value in ({1: 2}, "fast", [("a", 1)]):
        error = raises_config_error(parameter_value, value, p, "system.energy.parameters")
        assert error.field == "system.energy.parameters" and "mapping" in error.message


def test_str_kind_refuses_empty_strings_and_pattern_mismatches():
    plain = Parameter("model", "str", REQUIRED, doc="the model")
    assert parameter_value("cuau_paper", plain, "system.energy.model") == "cuau_paper"
    for value in ("", "  ", 3, None):
        assert "non-empty string" in raises_config_error(parameter_value, value, plain, "f").message
    device = Parameter("device", "str", "cpu", pattern=r"^(cpu|cuda(:\d+)?)$", doc="a torch device")
    assert parameter_value("cuda:1", device, "system.energy.device") == "cuda:1"
    error = raises_config_error(parameter_value, "gpu", device, "system.energy.device")
    assert error.field == "system.energy.device" and "a torch device" in error.message


ENERGY = SYSTEMS["alloy"].parameter("energy")


def test_registry_value_keeps_only_the_options_given():
    value = {"name": "cluster_expansion", "model": "cuau_paper"}
    out = parameter_value(value, ENERGY, "system.energy")
    assert out == value   # device (declared, with a default) is not filled in
    assert "device" in ENERGY_BACKENDS["cluster_expansion"].parameter_names


def test_registry_value_checks_and_normalises_the_options_given():
    out = parameter_value({"name": "mace", "model": "m", "batch_size": "1e2"}, ENERGY, "system.energy")
    assert out == {"name": "mace", "model": "m", "batch_size": 100} and type(out["batch_size"]) is int
    error = raises_config_error(parameter_value, {"name": "mace", "model": "m", "dtype": "half"}, ENERGY,
                                "system.energy")
    assert error.field == "system.energy.dtype"


def test_registry_value_unknown_backend_names_the_valid_ones():
    error = raises_config_error(parameter_value, {"name": "dft"}, ENERGY, "system.energy")
    assert error.field == "system.energy.name"
    assert all(name in error.message for name in ENERGY_BACKENDS) and "'dft'" in error.message
    error = raises_config_error(parameter_value, {"name": "mac"}, ENERGY, "system.energy")
    assert "did you mean 'mace'" in error.message


def test_registry_value_refuses_unknown_options_and_demands_required_ones():
    error = raises_config_error(parameter_value, {"name": "cluster_expansion", "model": "m", "devise": "cpu"},
                                ENERGY, "system.energy")
    assert error.field == "system.energy.devise" and "Did you mean 'device'?" in error.message
    error = raises_config_error(parameter_value, {"name": "cluster_expansion"}, ENERGY, "system.energy")
    assert error.field == "system.energy.model" and "required" in error.message


@pytest.mark.parametrize("value", ["cluster_expansion", {"model": "m"}, {"name": 3}, None])
def test_registry_value_must_be_a_mapping_with_a_name(value):
    error = raises_config_error(parameter_value, value, ENERGY, "system.energy")
    assert error.field == "system.energy" and "energy backend" in error.message
