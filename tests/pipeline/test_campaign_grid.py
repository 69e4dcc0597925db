"""Grids of configurations (one YAML, many points) and temperature-ladder warm starts."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, config_from_dict, grid_points
from pipeline.campaign import prepare_campaign
from pipeline.runner import run_campaign

ALLOY = {
    "methods": ["metadns"],
    "system": {"name": "alloy", "size": [2, 2, 2], "temperature": [1600.0, 800.0],
               "energy": {"name": "cluster_expansion", "model": "cuau_paper"}},
    "sampler": {"hidden": 8, "layers": 1, "sites_per_step": 2},
    "training": {"outer_iterations": 2, "batch_size": 16, "inner_steps": 1, "maskings": 1},
    "sampling": {"n_samples": 100, "metropolis_hastings": False},
}


def test_grid_points_are_the_product_of_the_lists_first_key_outermost():
    config = config_from_dict({**ALLOY, "grid": {"system.delta_mu": [-0.05, 0.0, 0.1], "bias.sigma": [0.05, 0.1]}},
                              "g")
    points = grid_points(config)
    assert [tag for tag, _ in points] == [f"delta_mu={d},sigma={s}" for d in ("-0.05", "0", "0.1")
                                          for s in ("0.05", "0.1")]
    assert [(c.system.params["delta_mu"], c.bias.sigma) for _, c in points] == \
        [(d, s) for d in (-0.05, 0.0, 0.1) for s in (0.05, 0.1)]
    assert all(c.grid is None and c.name == "g" for _, c in points)
    assert grid_points(config_from_dict(ALLOY, "plain")) == [("", config_from_dict(ALLOY, "plain"))]
    # a key named twice by its last part is written in full; unnamed values by index
    twice = config_from_dict({**ALLOY, "grid": {"sampler.hidden": [8], "training.maskings": [1, 2],
                                                "system.energy": [{"name": "cluster_expansion",
                                                                   "model": "cuau_paper"}]}}, "t")
    assert [tag for tag, _ in grid_points(twice)] == ["hidden=8,maskings=1,energy=v0", "hidden=8,maskings=2,energy=v0"]


@pytest.mark.parametrize("grid,field,fragment", [
    ({"system.delta_mu": []}, "grid.system.delta_mu", "non-empty list"),
    ({"system.delta_mu": 0.1}, "grid.system.delta_mu", "non-empty list"),
    ({"system.dmu": [0.1]}, "grid.system.dmu", "unknown key 'dmu'"),
    ({"system.delta_mu": ["abc"]}, "grid.system.delta_mu", "must be a number"),
    ({"bias.gamma": [10, 1]}, "grid.bias.gamma", "point gamma=1"),
    ({"seed": [1, 2]}, "grid.seed", "cannot be swept"),
    ({"system.delta_mu": [0.1, 0.1]}, "grid", "same folder name"),
    ([1, 2], "grid", "must map dotted config keys"),
])
def test_bad_grids_name_the_field(grid, field, fragment):
    with pytest.raises(ConfigError) as error:
        config_from_dict({**ALLOY, "grid": grid}, "bad")
    assert error.value.field == field and fragment in error.value.message


def test_grid_points_get_their_own_folders_and_seeds(tmp_path):
    config = config_from_dict({**ALLOY, "grid": {"system.delta_mu": [-0.05, 0.05]}}, "g")
    campaigns = [prepare_campaign(c, tmp_path, False, tag) for tag, c in grid_points(config)]
    assert [c.root for c in campaigns] == [tmp_path / "g" / "delta_mu=-0.05", tmp_path / "g" / "delta_mu=0.05"]
    spec = campaigns[0].runs[0]
    assert campaigns[0].seed_of(spec) != campaigns[1].seed_of(spec)


def test_previous_temperature_initialises_the_colder_run_from_the_hotter_sampler(tmp_path):
    # A learning rate of ~0 keeps the trained weights at their start: the 800 K run's sampler
    # must then equal the 1600 K run's final EMA sampler, and differ from a cold start.
    frozen = {**ALLOY["training"], "learning_rate": 1e-30, "outer_iterations": 1}
    hot = config_from_dict({**ALLOY, "training": {**ALLOY["training"], "initialise_from": "previous_temperature"}}, "hot")
    run_campaign(prepare_campaign(hot, tmp_path, False), progress=False)
    ladder = config_from_dict({**ALLOY, "training": {**frozen, "initialise_from": "previous_temperature"}}, "hot")
    campaign = prepare_campaign(ladder, tmp_path / "ladder", False)
    (campaign.root / "metadns_T1600.0000").parent.mkdir(parents=True)
    # the hot run stands in as the first rung of the ladder
    (tmp_path / "hot" / "metadns_T1600.0000").rename(campaign.root / "metadns_T1600.0000")
    results = run_campaign(campaign, progress=False)
    cold_result = results[1]
    assert cold_result.summary["initialised_from"] == "metadns_T1600.0000"
    hot_state = torch.load(campaign.root / "metadns_T1600.0000" / "checkpoints" / "checkpoint.pt", weights_only=False)
    cold_state = torch.load(cold_result.run_dir / "checkpoints" / "checkpoint.pt", weights_only=False)
    for name, value in hot_state["ema_sampler"].items():
        np.testing.assert_allclose(cold_state["ema_sampler"][name].numpy(), value.numpy(), atol=1e-12, err_msg=name)
    scratch = config_from_dict({**ALLOY, "training": frozen}, "scratch")
    (scratch_result,) = [r for r in run_campaign(prepare_campaign(scratch, tmp_path, False), progress=False)
                         if r.spec.temperature == 800.0]
    scratch_state = torch.load(scratch_result.run_dir / "checkpoints" / "checkpoint.pt", weights_only=False)
    assert "initialised_from" not in scratch_result.summary
    assert any(not torch.equal(scratch_state["ema_sampler"][n], v) for n, v in hot_state["ema_sampler"].items())


def test_initialise_from_must_be_a_known_choice():
    with pytest.raises(ConfigError) as error:
        config_from_dict({**ALLOY, "training": {"initialise_from": "neighbour"}}, "x")
    assert error.value.field == "training.initialise_from"
