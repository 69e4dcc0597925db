"""Executing campaigns (pipeline/runner.py): one result per run in execution order, the
files that mark a finished run, finished runs handed back as they are, and temperature
ladders (``training.initialise_from: previous_temperature``).

Ising L = 3 (512 states, exact references), a 4-wide one-layer denoiser and one or two outer
iterations: every run takes well under a second on one thread.  The command-line view of
the same (file contents, kill and resume) is in test_cli.py.
"""

from __future__ import annotations

import copy
import importlib
import json

import pytest
import torch
import yaml

from pipeline.build import restrict_to_run
from pipeline.campaign import prepare_campaign
from pipeline.config import config_from_dict
from pipeline.errors import RunFailed, SetupError
from pipeline.registry import METHODS
from pipeline.runner import execute_run, run_campaign

TINY = {
    "name": "tiny",
    "seed": 2,
    "methods": ["metadns", "sw"],
    "system": {"name": "ising", "L": 3, "beta": [0.5]},
    "sampler": {"hidden": 4, "layers": 1, "sites_per_step": 3},
    "bias": {"gamma": 10, "sigma": 0.2, "height_per_cycle": 0.5},
    "training": {"outer_iterations": 2, "batch_size": 8, "inner_steps": 1, "maskings": 1, "threads": 1},
    "sampling": {"n_samples": 40, "batch_size": 40, "metropolis_hastings": False},
    "reference": {"chains": 2, "sweeps": 12, "burn_in": 2},
}


def patched(base: dict, **sections) -> dict:
    out = copy.deepcopy(base)
    for section, values in sections.items():
        out[section] = {**out[section], **values} if isinstance(values, dict) else values
    return out


def ladder(initialise_from: str, methods=("metadns",), **training) -> dict:
    return patched(TINY, methods=list(methods), system={"beta": [0.3, 0.6]},
                   training={"initialise_from": initialise_from, "outer_iterations": 1, **training})


def ema_state(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=False)["ema_sampler"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runner")
    campaign = prepare_campaign(config_from_dict(TINY), out, resume=False)
    results = run_campaign(campaign, progress=False)
    return campaign, results


def test_one_result_per_run_in_execution_order(finished):
    campaign, results = finished
    assert [r.spec for r in results] == campaign.runs
    assert [r.spec.method for r in results] == ["sw", "metadns"]   # the unbiased reference first
    assert [r.run_dir for r in results] == [campaign.root / spec.run_name for spec in campaign.runs]


def test_every_run_folder_holds_its_summary_and_config(finished):
    campaign, results = finished
    for result in results:
        summary = json.loads((result.run_dir / "summary.json").read_text())
        assert summary["run"] == result.spec.run_name == result.summary["run"]
        assert summary["method"] == result.spec.method and summary["beta"] == result.spec.beta
        assert summary["seed"] == campaign.seed_of(result.spec) == result.summary["seed"]
        assert summary["warnings"] == result.summary["warnings"]
        saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
        assert saved == restrict_to_run(campaign.config, result.spec)
        assert not list(result.run_dir.rglob("*.tmp"))
    trained = [r for r in results if METHODS[r.spec.method].traits["trained"]]
    assert trained and all((r.run_dir / "checkpoints" / "checkpoint.pt").exists() for r in trained)


def test_a_finished_run_is_handed_back_without_running_again(finished, monkeypatch):
    campaign, results = finished
    stamps = {r.run_dir: (r.run_dir / "summary.json").stat().st_mtime_ns for r in results}

    def must_not_run(ctx):
        raise AssertionError(f"{ctx.spec.run_name} ran again")

    for result in results:   # every method's entry point (looked up at each run) refuses to run
        module_name, attribute = METHODS[result.spec.method].factory.split(":")
        monkeypatch.setattr(importlib.import_module(module_name), attribute, must_not_run)
    again = run_campaign(campaign, progress=False)
    assert [r.summary for r in again] == [json.loads((r.run_dir / "summary.json").read_text()) for r in results]
    assert {r.run_dir: (r.run_dir / "summary.json").stat().st_mtime_ns for r in again} == stamps


# --------------------------------------------------------------------------- temperature ladders
def test_previous_temperature_starts_the_second_run_from_the_first(tmp_path):
    # a vanishing learning rate keeps the weights where they started: the colder run's EMA
    # sampler then equals the hotter run's, which it must have been started from
    campaign = prepare_campaign(config_from_dict(ladder("previous_temperature", learning_rate=1e-30)), tmp_path,
                                resume=False)
    first, second = run_campaign(campaign, progress=False)
    assert first.spec.beta == 0.3 and second.spec.beta == 0.6
    assert "initialised_from" not in first.summary
    assert second.summary["initialised_from"] == first.run_dir.name
    hot, cold = ema_state(first.run_dir), ema_state(second.run_dir)
    assert hot.keys() == cold.keys()
    for name, value in hot.items():
        torch.testing.assert_close(cold[name], value, rtol=0, atol=1e-12, msg=name)


def test_without_initialisation_the_second_run_starts_afresh(tmp_path):
    campaign = prepare_campaign(config_from_dict(ladder("none", learning_rate=1e-30)), tmp_path, resume=False)
    first, second = run_campaign(campaign, progress=False)
    assert "initialised_from" not in second.summary
    hot, cold = ema_state(first.run_dir), ema_state(second.run_dir)
    assert any(not torch.allclose(cold[name], value) for name, value in hot.items())


def test_a_missing_previous_run_fails_the_later_temperature(tmp_path):
    campaign = prepare_campaign(config_from_dict(ladder("previous_temperature", methods=("metadns", "sw"))),
                                tmp_path, resume=False)
    colder = next(s for s in campaign.runs if s.method == "metadns" and s.beta == 0.6)
    with pytest.raises(RunFailed) as error:
        execute_run(campaign, colder, progress=False)
    assert not isinstance(error.value, SetupError)          # a failed run (exit 1), not bad input
    assert "metadns_beta0.3000" in str(error.value) and "previous_temperature" in str(error.value)
    assert not (campaign.root / colder.run_name / "summary.json").exists()


def test_an_unfinished_previous_run_fails_the_later_temperature(tmp_path):
    campaign = prepare_campaign(config_from_dict(ladder("previous_temperature")), tmp_path, resume=False)
    hotter, colder = campaign.runs
    (campaign.root / hotter.run_name / "checkpoints").mkdir(parents=True)   # started, no summary.json
    with pytest.raises(RunFailed, match=hotter.run_name):
        execute_run(campaign, colder, progress=False)


def test_reference_runs_are_not_chained_along_the_ladder(tmp_path):
    campaign = prepare_campaign(config_from_dict(ladder("previous_temperature", methods=("sw",))), tmp_path,
                                resume=False)
    colder = next(s for s in campaign.runs if s.beta == 0.6)
    result = execute_run(campaign, colder, progress=False)   # its hotter run never ran
    assert (result.run_dir / "summary.json").exists() and "initialised_from" not in result.summary
