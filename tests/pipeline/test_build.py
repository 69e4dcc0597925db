"""pipeline.build: the composition root turns a validated config into objects, and names
the config field at fault when a component refuses its options."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline import build
from pipeline.build import build_system, check_buildable, derive_seed, restrict_to_run, walker_seed
from pipeline.config import ConfigError, config_from_dict, expand_runs
from systems.parameters import ParameterError

ISING = {"name": "b", "methods": ["metadns", "sw"], "system": {"name": "ising", "L": 4, "beta": [0.4, 0.6]},
         "training": {"outer_iterations": 2, "batch_size": 8, "threads": 1}}


def test_a_missing_energy_model_names_system_energy():
    config = config_from_dict({"name": "a", "methods": ["metadns"], "system": {
        "name": "alloy", "size": [2, 2, 2], "cell": "conventional", "temperature": 800,
        "energy": {"name": "cluster_expansion", "model": "/nonexistent/model.ce"}}})
    with pytest.raises(ConfigError) as error:
        build_system(config)
    assert error.value.field == "system.energy"


def test_a_cuda_config_builds_without_the_device_but_the_device_is_refused_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is about machines without a GPU")
    config = config_from_dict({**ISING, "training": {**ISING["training"], "device": "cuda"}})
    check_buildable(config, check_device=False)
    with pytest.raises(ConfigError) as error:
        check_buildable(config)
    assert error.value.field == "training.device"


def test_seeds_are_deterministic_and_differ_between_runs():
    assert derive_seed(3, "metadns_beta0.6000") == derive_seed(3, "metadns_beta0.6000")
    seeds = {derive_seed(3, name) for name in ("metadns_beta0.6000", "metadns_beta0.4000", "sw_beta0.6000")}
    assert len(seeds) == 3 and derive_seed(4, "metadns_beta0.6000") not in seeds


def test_restrict_to_run_keeps_one_method_and_one_temperature():
    config = config_from_dict(ISING)
    spec = next(s for s in expand_runs(config) if s.method == "metadns" and s.beta == 0.6)
    resolved = restrict_to_run(config, spec)
    assert resolved["methods"] == ["metadns"] and resolved["system"]["beta"] == [0.6]
    assert "tune" not in resolved
    one = config_from_dict(resolved)  # the run's config.yaml repeats exactly this run
    assert [(s.method, s.beta, s.run_name) for s in expand_runs(one)] == [("metadns", 0.6, spec.run_name)]


def with_params(config, **params):
    """The config with system parameters that bypassed config validation (as a component may still refuse)."""
    return dataclasses.replace(config, system=dataclasses.replace(config.system,
                                                                  params={**config.system.params, **params}))


@pytest.mark.parametrize("params, field", [({"L": 1}, "system.L"), ({"J": float("nan")}, "system.J"),
                                           ({"field": float("inf")}, "system.field")])
def test_a_value_the_system_refuses_names_its_key(params, field):
    with pytest.raises(ConfigError) as error:
        build_system(with_params(config_from_dict(ISING), **params))
    assert error.value.field == field


def test_a_parameter_error_of_the_system_names_its_parameter(monkeypatch):
    def refuse(name, **params):
        raise ParameterError("q", "must be at most 8 here")
    monkeypatch.setattr(build, "make_system", refuse)
    with pytest.raises(ConfigError) as error:
        build_system(config_from_dict(ISING))
    assert error.value.field == "system.q" and error.value.message == "must be at most 8 here"


def test_a_sampler_option_refused_at_build_time_names_its_key():
    raw = {**ISING, "sampler": {"sites_per_step": 100}}   # > the 16 sites: known only once built
    with pytest.raises(ConfigError) as error:
        check_buildable(config_from_dict(raw), check_device=False)
    assert error.value.field == "sampler.sites_per_step"


def test_walker_seeds_are_distinct_and_differ_from_the_run_seed():
    run = derive_seed(3, "metadns_beta0.6000")
    seeds = [walker_seed(run, w) for w in range(4)]
    assert len(set(seeds)) == 4 and run not in seeds and seeds == [walker_seed(run, w) for w in range(4)]
