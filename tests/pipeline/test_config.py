"""Tests for pipeline.config: defaults, round trip, validation errors, overrides, runs, hash."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    BiasConfig,
    Config,
    ConfigError,
    ReferenceConfig,
    SamplerConfig,
    SamplingConfig,
    TrainingConfig,
    apply_overrides,
    config_from_dict,
    config_hash,
    expand_runs,
    load_config,
    temperature_tag,
    validate_bias_grid,
)

MINIMAL = {"methods": ["metadns"], "system": {"name": "ising", "L": 4, "beta": 0.6}}


def minimal(**sections):
    """MINIMAL with sections merged in (a section value of None deletes the key)."""
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in MINIMAL.items()}
    for key, value in sections.items():
        if value is None:
            d.pop(key, None)
        elif isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return d


def expect_error(d, field, name="test"):
    with pytest.raises(ConfigError) as info:
        config_from_dict(d, name)
    assert info.value.field == field, str(info.value)
    assert field in str(info.value)
    return info.value


def write(tmp_path: Path, d, filename="campaign.yaml") -> Path:
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(d))
    return path


# ---------------------------------------------------------------- defaults and round trip


def test_defaults_are_filled():
    config = config_from_dict(MINIMAL, "run")
    assert config.name == "run"
    assert config.seed == 0
    assert config.methods == ("metadns",)
    assert config.system.params == {"L": 4, "J": 1.0, "field": 0.0}
    assert config.system.beta == (0.6,) and config.system.temperature is None
    assert config.sampler == SamplerConfig("masked_diffusion", {"denoiser": "lattice", "sites_per_step": 4, "schedule": "cosine",
                                                                "hidden": 64, "layers": 4, "heads": 4})
    assert config.bias == BiasConfig(gamma=10.0, sigma=0.05, height_per_cycle=0.5)
    assert config.bias.grid_points is None and config.bias.grid_min is None and config.bias.grid_max is None
    t = config.training
    assert (t.outer_iterations, t.batch_size, t.inner_steps, t.maskings) == (500, 128, 10, 16)
    assert (t.learning_rate, t.weight_decay, t.ema_decay_max) == (1e-3, 0.0, 0.9999)
    assert (t.replay_buffer_size, t.warmstart_beta, t.warmstart_iterations) == (0, 0.28, 200)
    assert (t.checkpoint_every, t.threads) == (1, None)
    assert config.sampling == SamplingConfig(n_samples=10000, batch_size=2000, metropolis_hastings=True)
    assert config.reference == ReferenceConfig(chains=64, sweeps=2000, burn_in=200, deposit_every=1)


def test_potts_gets_q_default_and_ising_has_no_q():
    potts = config_from_dict(minimal(system={"name": "potts"}), "p")
    assert potts.system.params["q"] == 3 and "field" not in potts.system.params
    assert "q" in potts.to_dict()["system"] and "field" not in potts.to_dict()["system"]
    ising = config_from_dict(MINIMAL, "i")
    assert "q" not in ising.to_dict()["system"] and ising.to_dict()["system"]["field"] == 0.0


def test_full_config_round_trips_through_dict_yaml_and_file(tmp_path):
    d = {
        "name": "full",
        "seed": 7,
        "methods": ["metadns", "mdns", "mdns-warmstart", "mcmc-metad", "sw", "metropolis"],
        "system": {"name": "potts", "L": 6, "J": 1.5, "q": 3, "temperature": [0.8, 1.2]},
        "sampler": {"denoiser": "transformer", "sites_per_step": 2, "hidden": 32, "layers": 2, "heads": 2},
        "bias": {"gamma": 8, "sigma": [0.05, 0.07], "height_per_cycle": 0.3, "grid_points": [40, 50],
                 "grid_min": [-0.5, -0.9], "grid_max": [1.0, 0.9]},
        "training": {"outer_iterations": 3, "batch_size": 16, "inner_steps": 2, "maskings": 4,
                     "learning_rate": 1e-4, "weight_decay": 0.01, "ema_decay_max": 0.999,
                     "replay_buffer_size": 100, "warmstart_beta": 0.2, "warmstart_iterations": 0,
                     "checkpoint_every": 5, "threads": 2},
        "sampling": {"n_samples": 100, "batch_size": 50, "metropolis_hastings": False},
        "reference": {"chains": 8, "sweeps": 100, "burn_in": 10, "deposit_every": 3},
    }
    config = config_from_dict(d, "ignored")
    assert config.name == "full"
    assert config.bias.sigma == (0.05, 0.07) and config.bias.gamma == 8.0
    assert isinstance(config.bias.gamma, float)
    resolved = config.to_dict()
    assert config_from_dict(resolved, "other") == config
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(resolved)), "other") == config
    path = write(tmp_path, resolved, "whatever.yaml")
    assert load_config(path) == config
    # every key given was kept
    for section in ("sampler", "bias", "training", "sampling", "reference"):
        for key, value in d[section].items():
            got = resolved[section][key]
            assert got == value, (section, key)


def test_name_defaults_to_file_stem_and_scalar_method_and_beta(tmp_path):
    path = write(tmp_path, {"methods": "sw", "system": {"name": "ising", "L": 3, "beta": 0.5}}, "my_run.yaml")
    config = load_config(path)
    assert config.name == "my_run"
    assert config.methods == ("sw",)
    assert config.system.betas == (0.5,)
    assert config.system.temperatures == (2.0,)


def test_integers_accepted_where_floats_expected_and_scientific_strings():
    config = config_from_dict(minimal(bias={"gamma": 5, "sigma": 1}, system={"beta": [1, 2]}), "x")
    assert config.bias.gamma == 5.0 and isinstance(config.bias.gamma, float)
    assert config.system.beta == (1.0, 2.0)
    # YAML 1.1 reads 1e-3 (no dot) as a string; it is accepted as a number
    raw = yaml.safe_load("training: {learning_rate: 1e-3, n: 1}")["training"]["learning_rate"]
    assert raw == "1e-3"
    config = config_from_dict(minimal(training={"learning_rate": raw, "batch_size": 1.0e2}), "x")
    assert config.training.learning_rate == 1e-3
    assert config.training.batch_size == 100 and isinstance(config.training.batch_size, int)


# ---------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    "d, field",
    [
        (minimal(bogus=1), "bogus"),
        (minimal(system={"colour": "red"}), "system.colour"),
        (minimal(bias={"gama": 3}), "bias.gama"),
        (minimal(training={"lr": 1e-3}), "training.lr"),
        (minimal(sampling={"n": 1}), "sampling.n"),
        (minimal(reference={"chain": 1}), "reference.chain"),
        (minimal(sampler={"width": 1}), "sampler.width"),
    ],
)
def test_unknown_key_lists_valid_keys(d, field):
    error = expect_error(d, field)
    assert "unknown key" in str(error)
    assert "Valid keys" in str(error)


def test_unknown_key_message_names_the_valid_keys_and_suggests():
    error = expect_error(minimal(bias={"gama": 3}), "bias.gama")
    for key in ("gamma", "sigma", "height_per_cycle", "grid_points", "grid_min", "grid_max"):
        assert key in str(error)
    assert "Did you mean 'gamma'" in str(error)


@pytest.mark.parametrize(
    "d, field",
    [
        (minimal(bias={"gamma": "ten"}), "bias.gamma"),
        (minimal(system={"L": True}), "system.L"),  # bool where an int is expected
        (minimal(training={"batch_size": 2.5}), "training.batch_size"),  # float for an int
        (minimal(seed=1.5), "seed"),
        (minimal(sampling={"metropolis_hastings": "yes please"}), "sampling.metropolis_hastings"),
        (minimal(sampling={"metropolis_hastings": 1}), "sampling.metropolis_hastings"),
        (minimal(bias={"gamma": True}), "bias.gamma"),  # bool where a float is expected
        (minimal(bias={"sigma": [0.05, "wide"]}), "bias.sigma"),
        (minimal(bias={"gamma": float("inf")}), "bias.gamma"),
        (minimal(bias={"gamma": float("nan")}), "bias.gamma"),
        (minimal(training={"threads": "all"}), "training.threads"),
        (minimal(system="ising"), "system"),
        (minimal(methods=[]), "methods"),
        (minimal(methods={"a": 1}), "methods"),
    ],
)
def test_wrong_types(d, field):
    expect_error(d, field)


def test_wrong_type_message_says_what_is_expected():
    error = expect_error(minimal(bias={"gamma": "ten"}), "bias.gamma")
    assert "number" in str(error) and "'ten'" in str(error)
    error = expect_error(minimal(training={"batch_size": 2.5}), "training.batch_size")
    assert "integer" in str(error)


@pytest.mark.parametrize(
    "d, field",
    [
        (minimal(bias={"gamma": 1}), "bias.gamma"),
        (minimal(bias={"gamma": 0.5}), "bias.gamma"),
        (minimal(bias={"sigma": 0}), "bias.sigma"),
        (minimal(bias={"sigma": -0.1}), "bias.sigma"),
        (minimal(bias={"sigma": [0.1, 0.0]}), "bias.sigma"),
        (minimal(bias={"height_per_cycle": 0}), "bias.height_per_cycle"),
        (minimal(bias={"grid_points": 1}), "bias.grid_points"),
        (minimal(bias={"grid_min": 1.0, "grid_max": -1.0}), "bias.grid_max"),
        (minimal(bias={"sigma": [0.1, 0.1], "grid_points": [10, 10, 10]}), "bias.sigma"),
        (minimal(system={"beta": 0}), "system.beta"),
        (minimal(system={"beta": [0.3, -0.6]}), "system.beta"),
        (minimal(system={"beta": [0.3, 0.3]}), "system.beta"),
        (minimal(system={"beta": None, "temperature": 0.0}), "system.temperature"),
        (minimal(system={"beta": None, "temperature": [-1.0]}), "system.temperature"),
        (minimal(system={"L": 1}), "system.L"),
        (minimal(system={"name": "potts", "q": 1}), "system.q"),
        (minimal(seed=-1), "seed"),
        (minimal(training={"ema_decay_max": 1.0}), "training.ema_decay_max"),
        (minimal(training={"learning_rate": 0}), "training.learning_rate"),
        (minimal(training={"weight_decay": -1e-3}), "training.weight_decay"),
        (minimal(training={"replay_buffer_size": -1}), "training.replay_buffer_size"),
        (minimal(training={"threads": 0}), "training.threads"),
        (minimal(sampler={"sites_per_step": 0}), "sampler.sites_per_step"),
        (minimal(sampler={"denoiser": "mlp"}), "sampler.denoiser"),
        (minimal(sampling={"n_samples": 0}), "sampling.n_samples"),
        (minimal(reference={"burn_in": -1}), "reference.burn_in"),
        (minimal(name="has space"), "name"),
    ],
)
def test_out_of_range_values(d, field):
    expect_error(d, field)


def test_gamma_must_exceed_one_message():
    error = expect_error(minimal(bias={"gamma": 1}), "bias.gamma")
    assert "> 1" in str(error)


def test_both_beta_and_temperature():
    error = expect_error(minimal(system={"beta": 0.5, "temperature": 2.0}), "system.beta")
    assert "temperature" in str(error) and "not both" in str(error)


def test_neither_beta_nor_temperature():
    d = minimal()
    del d["system"]["beta"]
    error = expect_error(d, "system.beta")
    assert "temperature" in str(error)


@pytest.mark.parametrize("system, example", [
    ({"name": "ising", "L": 4}, "beta: [0.28, 0.6]"),
    ({"name": "alloy"}, "temperature: [500, 680, 1200]"),
])
def test_exactly_one_of_beta_and_temperature_for_every_system(system, example):
    error = expect_error({"methods": ["metadns"], "system": {**system, "beta": 0.5, "temperature": 2.0}},
                         "system.beta")
    assert "not both" in str(error)
    error = expect_error({"methods": ["metadns"], "system": system}, "system.beta")
    assert "exactly one of system.beta or system.temperature" in str(error) and example in str(error)


def test_unknown_method():
    error = expect_error(minimal(methods=["metadns", "metadynamics"]), "methods")
    assert "metadynamics" in str(error) and "mcmc-metad" in str(error)
    expect_error(minimal(methods=["sw", "sw"]), "methods")


def test_missing_methods_is_required():
    error = expect_error(minimal(methods=None), "methods")
    assert "required" in str(error)


def test_unknown_system():
    error = expect_error(minimal(system={"name": "heisenberg"}), "system.name")
    assert "ising" in str(error) and "potts" in str(error)
    d = minimal()
    del d["system"]["name"]
    expect_error(d, "system.name")
    d = minimal()
    del d["system"]["L"]
    expect_error(d, "system.L")


def test_burn_in_not_below_sweeps():
    # at least two recorded sweeps are needed for an autocorrelation-aware error bar
    for burn_in in (99, 100):
        error = expect_error(minimal(reference={"sweeps": 100, "burn_in": burn_in}), "reference.burn_in")
        assert "sweeps" in str(error)
    assert config_from_dict(minimal(reference={"sweeps": 100, "burn_in": 98}), "x").reference.burn_in == 98


def test_a_parameter_of_another_system_is_refused_naming_its_owner():
    for value in (0.1, 0):
        error = expect_error(minimal(system={"name": "potts", "field": value}), "system.field")
        assert "parameter of ising" in str(error) and "not of potts" in str(error) and "L, J, q" in str(error)
    error = expect_error(minimal(system={"q": 3}), "system.q")  # q on ising
    assert "parameter of potts, not of ising" in str(error)


def test_name_required_without_file():
    with pytest.raises(ConfigError) as info:
        config_from_dict(MINIMAL, None)
    assert info.value.field == "name"


def test_duplicate_yaml_keys_rejected(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("methods: [sw]\nsystem: {name: ising, L: 4, beta: 0.5}\nbias:\n  gamma: 5\n  gamma: 6\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == "gamma"
    assert "twice" in str(info.value)


def test_invalid_yaml_and_non_mapping_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("methods: [sw\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_error_from_file_names_the_file(tmp_path):
    path = write(tmp_path, minimal(bias={"gamma": 0.5}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == "bias.gamma"
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- overrides


def test_overrides_scalar_list_and_new_section(tmp_path):
    path = write(tmp_path, MINIMAL)
    config = load_config(
        path,
        ["bias.gamma=5", "system.beta=[0.3, 0.6]", "training.batch_size=32", "methods=[sw, mdns]", "name=renamed",
         "bias.sigma=[0.1]"],
    )
    assert config.bias.gamma == 5.0
    assert config.system.beta == (0.3, 0.6)
    assert config.training.batch_size == 32
    assert config.methods == ("sw", "mdns")
    assert config.name == "renamed"
    assert config.bias.sigma == (0.1,)
    # the file is unchanged and the original dict is not mutated
    assert load_config(path).bias.gamma == 10.0
    raw = {"methods": ["sw"], "system": {"name": "ising", "L": 4, "beta": 0.5}}
    apply_overrides(raw, ["system.L=8"])
    assert raw["system"]["L"] == 4


def test_override_beta_replaces_file_temperature(tmp_path):
    path = write(tmp_path, minimal(system={"beta": None, "temperature": [2.0, 3.0]}))
    config = load_config(path, ["system.beta=0.5"])
    assert config.system.beta == (0.5,) and config.system.temperature is None
    with pytest.raises(ConfigError) as info:
        load_config(path, ["system.beta=0.5", "system.temperature=2.0"])
    assert info.value.field == "system.beta"


def test_override_value_is_validated(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["bias.gamma=ten"])
    assert info.value.field == "bias.gamma"


@pytest.mark.parametrize(
    "override, field",
    [
        ("bias.gama=5", "bias.gama"),
        ("biass.gamma=5", "biass.gamma"),
        ("bias.gamma.x=5", "bias.gamma.x"),
        ("seed.x=5", "seed.x"),
    ],
)
def test_override_of_unknown_key(tmp_path, override, field):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize("override, field", [("bias.gamma", "bias.gamma"), ("=5", ""), ("bias..gamma=1", "bias..gamma")])
def test_malformed_override(tmp_path, override, field):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert info.value.field == field
    assert "dotted.key=value" in str(info.value) or "like 'bias.gamma'" in str(info.value)


def test_override_value_with_equals_and_bad_yaml(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["name=a=b"])  # '=' is not allowed in a name; split happens at the first '='
    assert info.value.field == "name" and "'a=b'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["system.beta=[0.3"])
    assert info.value.field == "system.beta" and "YAML" in str(info.value)


def test_overrides_must_be_a_list(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError):
        load_config(path, "bias.gamma=5")


# ---------------------------------------------------------------- runs


def test_expand_runs_count_order_tags():
    config = config_from_dict(minimal(methods=["metadns", "sw"], system={"beta": [0.28, 0.4406867935, 0.6]}), "x")
    runs = expand_runs(config)
    assert len(runs) == 6
    assert [r.method for r in runs] == ["metadns"] * 3 + ["sw"] * 3
    assert [r.temperature_tag for r in runs[:3]] == ["beta0.2800", "beta0.4406867935", "beta0.6000"]
    assert runs[2].run_name == "metadns_beta0.6000"
    assert len({r.run_name for r in runs}) == 6
    for run in runs:
        assert math.isclose(run.beta * run.temperature, 1.0, rel_tol=1e-15)
        assert re.fullmatch(r"[A-Za-z0-9._-]+", run.run_name)


def test_expand_runs_with_temperatures_uses_T_tags():
    config = config_from_dict(minimal(system={"beta": None, "temperature": [2.269, 1.5]}), "x")
    runs = expand_runs(config)
    assert [r.temperature_tag for r in runs] == ["T2.2690", "T1.5000"]
    assert runs[0].temperature == 2.269
    assert math.isclose(runs[0].beta, 1 / 2.269, rel_tol=1e-15)


def test_temperature_tags_are_distinct_and_stable():
    values = [0.6, 0.60001, 0.600001, 0.6000000000000001, 1e-5, 1.2e-5, 123456.789, 0.44068679350977147]
    tags = [temperature_tag(v) for v in values]
    assert len(set(tags)) == len(values)
    assert all(re.fullmatch(r"beta[0-9.]+", t) for t in tags), tags
    # each tag reads back to its value exactly
    assert [float(t[len("beta"):]) for t in tags] == values
    assert temperature_tag(0.6) == "beta0.6000" == temperature_tag(0.6000)
    with pytest.raises(ValueError):
        temperature_tag(-1.0)


# ---------------------------------------------------------------- hash


def test_config_hash_stable_and_sensitive():
    a = config_from_dict(MINIMAL, "x")
    h = config_hash(a)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert config_hash(config_from_dict(MINIMAL, "x")) == h
    # same meaning written differently: same hash
    assert config_hash(config_from_dict(minimal(bias={"gamma": 10}, system={"beta": [0.6]}, seed=0), "x")) == h
    assert config_hash(a.to_dict()) == h
    # any change: different hash
    changed = [
        minimal(bias={"gamma": 9.99}),
        minimal(seed=1),
        minimal(system={"L": 5}),
        minimal(training={"threads": 1}),
        minimal(methods=["mdns"]),
    ]
    hashes = {config_hash(config_from_dict(d, "x")) for d in changed}
    assert h not in hashes and len(hashes) == len(changed)
    assert config_hash(config_from_dict(MINIMAL, "y")) != h


def test_config_hash_pinned_value():
    """Guards the canonical form: changing it silently would orphan existing outputs."""
    import hashlib
    import json

    d = config_from_dict(MINIMAL, "x").to_dict()
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    assert config_hash(d) == hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- bias grid


@dataclass(frozen=True)
class FakeCV:
    names: tuple
    lower: tuple
    upper: tuple
    spacing: tuple

    @property
    def dim(self):
        return len(self.names)


ISING_CV = FakeCV(("m",), (-1.0,), (1.0,), (2.0 / 16,))
POTTS_CV = FakeCV(("p1", "p2"), (-0.5, -math.sqrt(3) / 2), (1.0, math.sqrt(3) / 2), (3 / 72, math.sqrt(3) / 72))


def test_bias_grid_aligned_default():
    grid = validate_bias_grid(config_from_dict(MINIMAL, "x"), ISING_CV)
    assert grid.grid_points == (17,) and grid.lower == (-1.0,) and grid.upper == (1.0,) and grid.sigma == (0.05,)
    grid = validate_bias_grid(config_from_dict(minimal(system={"name": "potts"}), "x"), POTTS_CV)
    assert grid.grid_points == (37, 73)  # D = 36: 1.5 / (3/72) + 1 and sqrt(3) / (sqrt(3)/72) + 1
    assert grid.sigma == (0.05, 0.05)


def test_bias_grid_bounds_must_be_the_cv_range():
    """Bounds wider than the CV range (even at attainable values) are refused, naming the bound."""
    for bias, field in [({"grid_min": -1.25, "grid_max": 1.125}, "bias.grid_min"),
                        ({"grid_max": 1.125}, "bias.grid_max"),
                        ({"grid_min": -1.125, "grid_max": 1.125, "grid_points": 19}, "bias.grid_min")]:
        with pytest.raises(ConfigError) as info:
            validate_bias_grid(config_from_dict(minimal(bias=bias), "x"), ISING_CV)
        assert info.value.field == field, str(info.value)
        assert "-1.0" in str(info.value) and "1.0" in str(info.value)  # names the CV range
    # the CV range written out, within the tolerance, is the aligned grid
    grid = validate_bias_grid(config_from_dict(minimal(bias={"grid_min": -1.0 + 1e-12, "grid_max": 1.0}), "x"),
                              ISING_CV)
    assert grid == validate_bias_grid(config_from_dict(MINIMAL, "x"), ISING_CV)


def test_bias_grid_not_covering_cv():
    config = config_from_dict(minimal(bias={"grid_min": -0.5, "grid_points": 100}), "x")
    with pytest.raises(ConfigError) as info:
        validate_bias_grid(config, ISING_CV)
    assert info.value.field == "bias.grid_min" and "-1.0" in str(info.value)
    config = config_from_dict(minimal(bias={"grid_max": [1.0, 0.5], "grid_points": [37, 73]}), "x")
    with pytest.raises(ConfigError) as info:
        validate_bias_grid(config, POTTS_CV)
    assert info.value.field == "bias.grid_max" and "p2" in str(info.value)


def test_bias_grid_dimension_mismatch():
    config = config_from_dict(minimal(bias={"sigma": [0.05, 0.05]}), "x")
    with pytest.raises(ConfigError) as info:
        validate_bias_grid(config, ISING_CV)
    assert info.value.field == "bias.sigma" and "1 dimension" in str(info.value)
    config = config_from_dict(minimal(bias={"grid_points": [37, 73, 37]}), "x")
    with pytest.raises(ConfigError) as info:
        validate_bias_grid(config, POTTS_CV)
    assert info.value.field == "bias.grid_points"


def test_bias_grid_unaligned_bounds():
    config = config_from_dict(minimal(bias={"grid_min": -1.1}), "x")
    with pytest.raises(ConfigError) as info:
        validate_bias_grid(config, ISING_CV)
    assert info.value.field == "bias.grid_min"


@pytest.mark.parametrize("bias, cv, aligned", [
    ({"grid_points": 9}, ISING_CV, 17),           # coarser: several CV values share a node
    ({"grid_points": 16}, ISING_CV, 17),
    ({"grid_points": 18}, ISING_CV, 17),          # finer: nodes between the CV values
    ({"grid_points": 33}, ISING_CV, 17),          # twice as fine
    ({"grid_points": [37, 74]}, POTTS_CV, 73),
])
def test_explicit_grid_points_must_be_the_aligned_count(bias, cv, aligned):
    config = config_from_dict(minimal(bias=bias, system={"name": "ising" if cv is ISING_CV else "potts"}), "x")
    with pytest.raises(ConfigError) as info:
        validate_bias_grid(config, cv)
    assert info.value.field == "bias.grid_points"
    assert f"use grid_points: null (aligned) or exactly {aligned}" in str(info.value)


def test_explicit_aligned_grid_points_equal_the_default_grid():
    default = validate_bias_grid(config_from_dict(MINIMAL, "x"), ISING_CV)
    assert validate_bias_grid(config_from_dict(minimal(bias={"grid_points": 17}), "x"), ISING_CV) == default
    potts = config_from_dict(minimal(system={"name": "potts"}, bias={"grid_points": [37, 73]}), "x")
    assert validate_bias_grid(potts, POTTS_CV).grid_points == (37, 73)


def test_bias_hill_height():
    bias = config_from_dict(minimal(bias={"height_per_cycle": 0.5}), "x").bias
    assert bias.hill_height(kT=2.0, hills_per_cycle=128) == pytest.approx(0.5 * 2.0 / 128, rel=1e-15)
    with pytest.raises(ValueError):
        bias.hill_height(kT=0.0, hills_per_cycle=1)


def test_config_is_frozen():
    config = config_from_dict(MINIMAL, "x")
    with pytest.raises(Exception):
        config.seed = 3  # type: ignore[misc]
    assert isinstance(config, Config) and isinstance(config.training, TrainingConfig)


def test_profiles_apply_before_overrides(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "methods: [metadns]\n"
        "system: {name: ising, L: 8, beta: 0.6}\n"
        "training: {outer_iterations: 10}\n"
        "profiles:\n"
        "  cpu: {training.outer_iterations: 200, bias.sigma: 0.1}\n"
        "  gpu: {training.outer_iterations: 20000, training.batch_size: 256}\n")
    from pipeline.config import load_config
    assert load_config(path).training.outer_iterations == 10
    cpu = load_config(path, profile="cpu")
    assert (cpu.training.outer_iterations, cpu.bias.sigma) == (200, 0.1)
    gpu = load_config(path, ["training.outer_iterations=5"], profile="gpu")
    assert (gpu.training.outer_iterations, gpu.training.batch_size) == (5, 256)
    with pytest.raises(ConfigError) as error:
        load_config(path, profile="tpu")
    assert error.value.field == "profile" and "cpu, gpu" in str(error.value)


def test_profile_with_unknown_key_names_the_key(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("methods: [mdns]\nsystem: {name: ising, L: 4, beta: 0.6}\n"
                    "profiles: {cpu: {training.outer_iteration: 3}}\n")
    from pipeline.config import load_config
    with pytest.raises(ConfigError) as error:
        load_config(path, profile="cpu")
    assert error.value.field == "training.outer_iteration"


def test_reveal_schedule_defaults_to_cosine_and_is_validated():
    assert config_from_dict(minimal(), "x").sampler.options["schedule"] == "cosine"
    assert config_from_dict(minimal(sampler={"schedule": "uniform"}), "x").sampler.options["schedule"] == "uniform"
    error = expect_error(minimal(sampler={"schedule": "zigzag"}), "sampler.schedule")
    assert "cosine" in str(error)


ALLOY = {"name": "alloy", "temperature": [500, 1200]}


def test_alloy_section_fills_defaults_and_uses_kelvin():
    config = config_from_dict({"methods": ["metadns"], "system": ALLOY}, "cuau")
    params = config.system.system_params()
    assert params == {"size": [4, 4, 4], "cell": "primitive", "lattice_constant": 3.8, "species": ["Cu", "Au"],
                      "energy": {"name": "cluster_expansion", "model": "cuau_paper"}, "delta_mu": 0.0,
                      "cv": "composition"}
    k_b = 8.617333262e-5
    assert config.system.betas == pytest.approx((1 / (k_b * 500), 1 / (k_b * 1200)), rel=1e-15)
    assert config_from_dict({"methods": ["metadns"], "system": config.system.to_dict()}, "cuau") == config


@pytest.mark.parametrize("patch, field", [
    ({"L": 4}, "system.L"),
    ({"size": [4, 4]}, "system.size"),
    ({"size": [4, 0, 4]}, "system.size"),
    ({"cell": "hcp"}, "system.cell"),
    ({"lattice_constant": 0}, "system.lattice_constant"),
    ({"species": ["Cu", "Cu"]}, "system.species"),
    ({"energy": "emt"}, "system.energy"),
    ({"delta_mu": "lots"}, "system.delta_mu"),
    ({"cv": "order"}, "system.cv"),
    ({"temperature": None}, "system.beta"),
])
def test_bad_alloy_settings_name_the_field(patch, field):
    system = {k: v for k, v in {**ALLOY, **patch}.items() if v is not None}
    expect_error({"methods": ["metadns"], "system": system}, field)


def test_alloy_keys_on_lattice_models_and_sw_on_alloys_are_rejected():
    expect_error(minimal(system={"delta_mu": 0.1}), "system.delta_mu")
    expect_error({"methods": ["sw"], "system": ALLOY}, "methods")


# ---------------------------------------------------------------- alloy energy backend options


def alloy_with_energy(energy: dict) -> dict:
    return {"methods": ["metadns"], "system": {**ALLOY, "energy": energy}}


def test_misspelt_energy_option_suggests_the_valid_key():
    error = expect_error(alloy_with_energy({"name": "cluster_expansion", "model": "cuau_paper", "devise": "cpu"}),
                         "system.energy.devise")
    assert "unknown key 'devise'. Valid keys here: name, model, device." in str(error)
    assert "Did you mean 'device'?" in str(error)


@pytest.mark.parametrize("energy, field, text", [
    ({"name": "dft"}, "system.energy.name", "unknown energy backend 'dft'"),
    ({"name": "cluster_expansion"}, "system.energy.model", "is required"),
    ({"name": "cluster_expansion", "model": 3}, "system.energy.model", "3 (a int)"),
    ({"name": "cluster_expansion", "model": "cuau_paper", "device": "gpu"}, "system.energy.device", "cpu, cuda"),
    ({"name": "mace"}, "system.energy.model", "cuau_emt"),
    ({"name": "mace", "model": "cuau_emt", "dtype": "float16"}, "system.energy.dtype", "float64, float32"),
    ({"name": "mace", "model": "cuau_emt", "batch_size": 0}, "system.energy.batch_size", ">= 1"),
    ({"name": "mace", "model": "cuau_emt", "batch_size": 2.5}, "system.energy.batch_size", "integer"),
    ({"name": "mace", "model": "cuau_emt", "vegard_lattice_constants": [3.6]}, "system.energy.vegard_lattice_constants",
     "two lattice constants"),
    ({"name": "mace", "model": "cuau_emt", "vegard_lattice_constants": [3.6, -4.1]},
     "system.energy.vegard_lattice_constants", "entry 1"),
    ({"name": "ase", "calculator": "EMT"}, "system.energy.calculator", "package.module:ClassName"),
    ({"name": "ase", "parameters": [1, 2]}, "system.energy.parameters", "mapping"),
    ({"name": "ase", "model": "cuau_paper"}, "system.energy.model", "Valid keys here: name, calculator, parameters"),
])
def test_bad_energy_options_name_the_key(energy, field, text):
    error = expect_error(alloy_with_energy(energy), field)
    assert text in str(error)


def test_energy_options_are_checked_and_normalised():
    energy = {"name": "mace", "model": "cuau_emt", "device": "cuda:1", "dtype": "float32", "batch_size": 1.0e2,
              "vegard_lattice_constants": [4, 4.08]}
    parsed = config_from_dict(alloy_with_energy(energy), "x").system.params["energy"]
    assert parsed == {**energy, "batch_size": 100, "vegard_lattice_constants": [4.0, 4.08]}
    assert isinstance(parsed["batch_size"], int)
    ase = {"name": "ase", "calculator": "ase.calculators.emt:EMT", "parameters": {"fixed_cutoff": True},
           "vegard_lattice_constants": None}
    assert config_from_dict(alloy_with_energy(ase), "x").system.params["energy"] == ase
    assert config_from_dict(alloy_with_energy({"name": "ase"}), "x").system.params["energy"] == {"name": "ase"}


def test_energy_backend_registry_matches_the_backend_constructors():
    """Each registered backend declares exactly its constructor's keywords (``model`` is its
    ``model_path``; supercell, species and lattice_constant come from the system), requires
    exactly those without a default, declares the constructor's defaults, and a configuration
    that spells out every default is accepted unchanged."""
    import inspect

    from systems.alloys.ase_backend import ASECalculatorBackend
    from systems.alloys.cluster_expansion import ClusterExpansionBackend
    from systems.alloys.mace_backend import _DTYPES, MACEBackend
    from systems.registry import ENERGY_BACKENDS

    constructors = {"cluster_expansion": ClusterExpansionBackend, "mace": MACEBackend, "ase": ASECalculatorBackend}
    assert tuple(ENERGY_BACKENDS) == tuple(constructors)
    from_system = {"self", "supercell", "species", "lattice_constant"}
    models = {"cluster_expansion": "cuau_paper", "mace": "cuau_emt"}
    for name, backend in constructors.items():
        parameters = {("model" if key == "model_path" else key): parameter
                      for key, parameter in inspect.signature(backend.__init__).parameters.items()
                      if key not in from_system}
        entry = ENERGY_BACKENDS[name]
        assert set(entry.parameter_names) == set(parameters), name
        spelled_out = {"name": name, **({"model": models[name]} if name in models else {})}
        for declared in entry.parameters:
            has_default = parameters[declared.name].default is not inspect.Parameter.empty
            assert declared.required is not has_default, (name, declared.name)
            if has_default:
                assert declared.default == parameters[declared.name].default, (name, declared.name)
                spelled_out[declared.name] = declared.default
        assert config_from_dict(alloy_with_energy(spelled_out), "x").system.params["energy"] == spelled_out
    assert ENERGY_BACKENDS["mace"].parameter("dtype").choices == tuple(_DTYPES)


# ---------------------------------------------------------------- README configuration table


def readme_configuration_keys() -> set[str]:
    """Dotted keys of the README's "Configuration (YAML)" table: the first cell's backticked
    names; a name without a dot belongs to the section of the name before it."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = text.split("### Configuration (YAML)", 1)[1].split("\n### ", 1)[0]
    keys = set()
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        section = ""
        for name in re.findall(r"`([^`]+)`", line.split("|")[1]):
            name = name.split(":")[0].strip()
            if "." in name:
                section, name = name.split(".", 1)
            keys.add(f"{section}.{name}" if section else name)
            section = section or name
    return keys


def test_readme_configuration_table_lists_exactly_the_schema_keys():
    from pipeline.config import SECTION_KEYS, TOP_LEVEL_KEYS

    schema = {key for key in TOP_LEVEL_KEYS if key not in SECTION_KEYS}
    schema |= {f"{section}.{key}" for section, keys in SECTION_KEYS.items() for key in keys}
    documented = readme_configuration_keys()
    assert len(documented) > 40
    assert not documented - schema, f"README documents keys the schema lacks: {sorted(documented - schema)}"
    assert not schema - documented, f"README does not document: {sorted(schema - documented)}"
