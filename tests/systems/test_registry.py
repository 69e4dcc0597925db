"""Registry: names, parameter checks, config round trips; CVSpec validation."""

import pytest
import torch

from systems.base import CVSpec, LatticeSystem
from systems.registry import SYSTEMS, make_system

# Small parameters per registered system; a newly registered system must add its own here.
SMALL_PARAMETERS = {
    "ising": {"L": 3},
    "potts": {"L": 3, "q": 3},
    "triangular_ising": {"L": 3},
    "alloy": {"size": [2, 2, 2], "cell": "conventional", "energy": {"name": "ase"}},
}


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_every_registered_system_builds_under_its_registry_name(name):
    if name not in SMALL_PARAMETERS:
        pytest.fail(f"system {name!r} is registered but has no small test parameters; add them to SMALL_PARAMETERS")
    system = make_system(name, **SMALL_PARAMETERS[name])
    assert isinstance(system, LatticeSystem)
    assert system.name == name and system.to_config()["name"] == name
    x = torch.randint(0, system.n_states, (5, system.n_sites), generator=torch.Generator().manual_seed(1))
    energy, cv = system.energy(x), system.cv(x)
    assert energy.shape == (5,) and energy.dtype == torch.float64 and bool(torch.isfinite(energy).all())
    assert cv.shape == (5, system.cv_spec.dim)


@pytest.mark.parametrize("config", [
    {"name": "ising", "L": 4, "J": 0.5, "field": 0.1},
    {"name": "potts", "L": 3, "q": 4, "J": 2.0},
    {"name": "alloy", "size": [2, 2, 2], "cell": "conventional", "lattice_constant": 3.9, "species": ["Cu", "Au"],
     "energy": {"name": "ase"}, "delta_mu": 0.05, "cv": "composition_order"},
])
def test_to_config_rebuilds_an_equivalent_system(config):
    system = make_system(**config)
    assert system.to_config() == config
    rebuilt = make_system(**system.to_config())
    x = torch.randint(0, system.n_states, (50, system.n_sites), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rebuilt.energy(x), system.energy(x))


def test_unknown_name_lists_valid_names():
    assert "xy" not in SYSTEMS
    with pytest.raises(ValueError, match="unknown system 'xy'") as error:
        make_system("xy", L=4)
    assert all(repr(name) in str(error.value) for name in SYSTEMS), str(error.value)


def test_unknown_parameter_lists_valid_parameters():
    with pytest.raises(ValueError, match=r"does not accept parameter\(s\) \['q'\].*\['L', 'J', 'field'\]"):
        make_system("ising", L=4, q=3)


def test_missing_parameter_is_named():
    with pytest.raises(ValueError, match=r"needs parameter\(s\) \['L'\]"):
        make_system("potts", q=3)


@pytest.mark.parametrize("kwargs,match", [
    ({"names": (), "lower": (), "upper": (), "spacing": ()}, "at least one"),
    ({"names": ("a",), "lower": (0.0, 1.0), "upper": (1.0,), "spacing": (0.1,)}, "one value per CV"),
    ({"names": ("a",), "lower": (1.0,), "upper": (0.0,), "spacing": (0.1,)}, "lower < upper"),
    ({"names": ("a",), "lower": (0.0,), "upper": (1.0,), "spacing": (0.0,)}, "positive"),
])
def test_cvspec_rejects_inconsistent_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CVSpec(**kwargs)


def test_cvspec_grid_index_rejects_values_outside_range():
    spec = CVSpec(("m",), (-1.0,), (1.0,), (0.5,))
    assert spec.grid_index([[-1.0], [0.49], [1.0]]).ravel().tolist() == [0, 3, 4]
    with pytest.raises(ValueError, match="outside"):
        spec.grid_index([[1.5]])
