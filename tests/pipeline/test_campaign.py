"""Campaigns (pipeline/campaign.py): the resume policy of existing run folders, refusals
before anything is written, run order and per-run seeds.

Unit level: configs are built in-process and run folders are faked (a config.yaml, no
training).  The command line's handling of the same cases, on real finished runs, is in
test_cli.py.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.build import derive_seed, restrict_to_run
from pipeline.campaign import (EXTENDABLE_SETTINGS, UNBIASED_REFERENCES, Campaign, RunFolderExists, prepare_campaign,
                               resume_change)
from pipeline.config import config_from_dict, expand_runs
from pipeline.errors import ConfigError, SetupError
from pipeline.registry import METHODS

BASE = {
    "name": "camp",
    "seed": 5,
    "methods": ["metadns", "sw"],
    "system": {"name": "ising", "L": 3, "beta": [0.4, 0.6]},
    "sampler": {"hidden": 4, "layers": 1, "sites_per_step": 3},
    "training": {"outer_iterations": 3, "batch_size": 8, "inner_steps": 1, "maskings": 1},
    "sampling": {"n_samples": 50, "batch_size": 50},
    "reference": {"chains": 2, "sweeps": 10, "burn_in": 2},
}


def patched(base: dict, **sections) -> dict:
    out = copy.deepcopy(base)
    for section, values in sections.items():
        if isinstance(values, dict):
            out[section] = {**out.get(section, {}), **values}
        else:
            out[section] = values
    return out


def run_dict(raw: dict, method: str, beta: float = 0.6) -> dict:
    """The resolved config.yaml content of one run of ``raw``."""
    config = config_from_dict(raw)
    spec = next(s for s in expand_runs(config) if s.method == method and s.beta == beta)
    return restrict_to_run(config, spec)


def files_under(folder):
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------- resume_change
def test_the_extendable_settings_are_the_documented_ones():
    assert set(EXTENDABLE_SETTINGS) == {("training", "outer_iterations"), ("sampling", "n_samples")}


@pytest.mark.parametrize("method", ["metadns", "sw"])
def test_identical_settings_are_the_same(method):
    saved = run_dict(BASE, method)
    assert resume_change(copy.deepcopy(saved), run_dict(BASE, method), method) == "same"


def test_more_outer_iterations_extend_a_trained_run():
    saved = run_dict(BASE, "metadns")
    wanted = run_dict(patched(BASE, training={"outer_iterations": 7}), "metadns")
    assert resume_change(saved, wanted, "metadns") == "extend"


@pytest.mark.parametrize("n_samples", [20, 500])
def test_another_number_of_samples_extends_a_trained_run(n_samples):
    saved = run_dict(BASE, "metadns")
    wanted = run_dict(patched(BASE, sampling={"n_samples": n_samples}), "metadns")
    assert resume_change(saved, wanted, "metadns") == "extend"


def test_fewer_outer_iterations_are_shorter():
    saved = run_dict(BASE, "metadns")
    wanted = run_dict(patched(BASE, training={"outer_iterations": 2}), "metadns")
    assert resume_change(saved, wanted, "metadns") == "shorter"
    # with more samples too, still a shrinking budget
    wanted = run_dict(patched(BASE, training={"outer_iterations": 2}, sampling={"n_samples": 80}), "metadns")
    assert resume_change(saved, wanted, "metadns") == "shorter"


def test_a_shorter_budget_with_other_changes_is_different():
    saved = run_dict(BASE, "metadns")
    wanted = run_dict(patched(BASE, training={"outer_iterations": 2}, bias={"gamma": 5}), "metadns")
    assert resume_change(saved, wanted, "metadns") == "different"


@pytest.mark.parametrize("patch", [{"bias": {"gamma": 5}}, {"training": {"learning_rate": 2e-3}},
                                   {"sampler": {"hidden": 8}}, {"seed": 6},
                                   {"training": {"outer_iterations": 7, "batch_size": 16}}])
def test_any_other_change_is_different(patch):
    saved = run_dict(BASE, "metadns")
    wanted = run_dict(patched(BASE, **patch), "metadns")
    assert resume_change(saved, wanted, "metadns") == "different"


@pytest.mark.parametrize("patch", [{"training": {"outer_iterations": 7}}, {"training": {"outer_iterations": 1}},
                                   {"sampling": {"n_samples": 500}}])
def test_reference_runs_ignore_the_training_budget_and_sample_count(patch):
    saved = run_dict(BASE, "sw")
    assert resume_change(saved, run_dict(patched(BASE, **patch), "sw"), "sw") == "same"
    assert resume_change(saved, run_dict(patched(BASE, reference={"sweeps": 20}), "sw"), "sw") == "different"


@pytest.mark.parametrize("method", ["metadns", "sw"])
def test_distributed_settings_do_not_matter(method):
    saved = run_dict(BASE, method)
    wanted = run_dict(patched(BASE, distributed={"evaluators": 2, "cpus_per_run": 0.5, "max_batch": 64}), method)
    assert wanted["distributed"] != saved["distributed"]
    assert resume_change(saved, wanted, method) == "same"
    saved.pop("distributed")            # a config.yaml written before the section existed
    assert resume_change(saved, wanted, method) == "same"


def test_keys_added_since_at_their_defaults_do_not_block():
    saved = run_dict(BASE, "metadns")
    for section, key in (("training", "device"), ("training", "walkers"), ("training", "initialise_from"),
                         ("sampling", "delta_mu_grid"), ("reference", "deposit_every")):
        del saved[section][key]         # an older run folder's config.yaml lacks them
    assert resume_change(saved, run_dict(BASE, "metadns"), "metadns") == "same"
    assert resume_change(saved, run_dict(patched(BASE, training={"outer_iterations": 9}), "metadns"),
                         "metadns") == "extend"
    # ... but a non-default value of such a key is a change
    assert resume_change(saved, run_dict(patched(BASE, training={"walkers": 2}), "metadns"), "metadns") == "different"


def test_an_unreadable_saved_config_is_different():
    saved = run_dict(BASE, "metadns")
    saved["bias"]["gamma"] = 0.5        # invalid under the current schema
    assert resume_change(saved, run_dict(BASE, "metadns"), "metadns") == "different"
    assert resume_change({"not": "a config"}, run_dict(BASE, "metadns"), "metadns") == "different"


def test_resume_change_leaves_the_wanted_settings_alone():
    saved = run_dict(BASE, "metadns")
    wanted = run_dict(patched(BASE, training={"outer_iterations": 7}, sampling={"n_samples": 9}), "metadns")
    before = copy.deepcopy(wanted)
    assert resume_change(saved, wanted, "metadns") == "extend"
    assert wanted == before


# --------------------------------------------------------------------------- prepare_campaign
def test_an_existing_run_folder_without_resume_is_refused_and_nothing_is_written(tmp_path):
    config = config_from_dict(BASE)
    existing = tmp_path / "camp" / "metadns_beta0.6000"
    existing.mkdir(parents=True)
    (existing / "notes.txt").write_text("keep")
    before = files_under(tmp_path)
    with pytest.raises(RunFolderExists) as error:
        prepare_campaign(config, tmp_path, resume=False)
    assert isinstance(error.value, SetupError)             # the command line exits 2 on it
    message = str(error.value)
    assert "metadns_beta0.6000" in message and "--resume" in message and str(tmp_path / "camp") in message
    assert "sw_beta0.6000" not in message                  # only the folders that exist are named
    assert files_under(tmp_path) == before and (existing / "notes.txt").read_text() == "keep"


def test_no_existing_folder_prepares_without_writing(tmp_path):
    campaign = prepare_campaign(config_from_dict(BASE), tmp_path, resume=False)
    assert campaign.root == tmp_path / "camp" and not campaign.resume and campaign.extended == frozenset()
    assert files_under(tmp_path) == []
    assert prepare_campaign(config_from_dict(BASE), tmp_path, resume=True, point="p").root == tmp_path / "camp" / "p"


def test_an_invalid_config_is_refused_before_the_folder_check(tmp_path):
    raw = patched(BASE, sampler={"sites_per_step": 100})     # more than the 9 sites: found when built
    (tmp_path / "camp" / "sw_beta0.4000").mkdir(parents=True)
    with pytest.raises(ConfigError) as error:
        prepare_campaign(config_from_dict(raw), tmp_path, resume=False)
    assert error.value.field == "sampler.sites_per_step"


def fake_run_folder(root, raw: dict, method: str, beta: float) -> None:
    folder = root / f"{method}_beta{beta:.4f}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(run_dict(raw, method, beta), sort_keys=False))


def test_resume_with_changed_settings_names_the_run(tmp_path):
    fake_run_folder(tmp_path / "camp", patched(BASE, bias={"gamma": 5}), "metadns", 0.6)
    fake_run_folder(tmp_path / "camp", BASE, "sw", 0.6)
    before = files_under(tmp_path)
    with pytest.raises(RunFolderExists) as error:
        prepare_campaign(config_from_dict(BASE), tmp_path, resume=True)
    message = str(error.value)
    assert str(tmp_path / "camp" / "metadns_beta0.6000") in message and "other settings" in message
    assert "sw_beta0.6000" not in message
    assert files_under(tmp_path) == before


def test_resume_with_a_shrinking_budget_is_refused(tmp_path):
    fake_run_folder(tmp_path / "camp", patched(BASE, training={"outer_iterations": 9}), "metadns", 0.4)
    with pytest.raises(RunFolderExists) as error:
        prepare_campaign(config_from_dict(BASE), tmp_path, resume=True)
    assert "metadns_beta0.4000" in str(error.value) and "outer_iterations" in str(error.value)


def test_resume_with_a_larger_budget_marks_the_run_extended(tmp_path):
    fake_run_folder(tmp_path / "camp", patched(BASE, training={"outer_iterations": 2}), "metadns", 0.4)
    fake_run_folder(tmp_path / "camp", BASE, "metadns", 0.6)
    fake_run_folder(tmp_path / "camp", patched(BASE, training={"outer_iterations": 2}), "sw", 0.4)
    campaign = prepare_campaign(config_from_dict(BASE), tmp_path, resume=True)
    assert campaign.resume and campaign.extended == frozenset({"metadns_beta0.4000"})


# --------------------------------------------------------------------------- run order and seeds
MANY = patched(BASE, methods=["metadns", "metropolis", "mdns", "sw"], system={"beta": [0.6, 0.3, 0.45]})


def test_unbiased_references_run_first_in_their_preference_order(tmp_path):
    config = config_from_dict(MANY)
    campaign = prepare_campaign(config, tmp_path, resume=False)
    assert UNBIASED_REFERENCES == METHODS.with_trait("unbiased_reference") and len(UNBIASED_REFERENCES) >= 2
    references = [m for m in UNBIASED_REFERENCES if m in config.methods]
    others = [m for m in config.methods if m not in UNBIASED_REFERENCES]
    method_order = list(dict.fromkeys(spec.method for spec in campaign.runs))
    assert method_order == references + others
    assert sorted(spec.run_name for spec in campaign.runs) == sorted(s.run_name for s in expand_runs(config))
    for method in config.methods:       # temperatures keep the config's order within a method
        assert [s.beta for s in campaign.runs if s.method == method] == list(config.system.beta)
    assert all(METHODS[s.method].traits.get("unbiased_reference") for s in campaign.runs[:2 * len(config.system.beta)])


def test_seeds_are_distinct_per_run_and_stable(tmp_path):
    config = config_from_dict(MANY)
    campaign = prepare_campaign(config, tmp_path, resume=False)
    seeds = [campaign.seed_of(spec) for spec in campaign.runs]
    assert len(set(seeds)) == len(seeds) == 12
    again = prepare_campaign(config_from_dict(MANY), tmp_path, resume=False)
    assert [again.seed_of(spec) for spec in again.runs] == seeds
    assert seeds == [derive_seed(config.seed, spec.run_name) for spec in campaign.runs]
    # a run's seed does not depend on which other runs the campaign holds
    alone = prepare_campaign(config_from_dict(patched(MANY, methods=["mdns"], system={"beta": [0.45]})),
                             tmp_path, resume=False)
    (spec,) = alone.runs
    assert alone.seed_of(spec) == campaign.seed_of(next(s for s in campaign.runs if s.run_name == spec.run_name))


def test_seeds_depend_on_the_config_seed_and_the_grid_point(tmp_path):
    config = config_from_dict(MANY)
    spec = expand_runs(config)[0]
    plain = Campaign(config, tmp_path, expand_runs(config), False).seed_of(spec)
    at_point = Campaign(config, tmp_path, expand_runs(config), False, point="delta_mu=0.1").seed_of(spec)
    other_point = Campaign(config, tmp_path, expand_runs(config), False, point="delta_mu=0.2").seed_of(spec)
    reseeded = config_from_dict(patched(MANY, seed=6))
    other_seed = Campaign(reseeded, tmp_path, expand_runs(reseeded), False).seed_of(spec)
    assert len({plain, at_point, other_point, other_seed}) == 4


def test_previous_temperature_follows_the_config_order_per_method(tmp_path):
    config = config_from_dict(MANY)
    campaign = prepare_campaign(config, tmp_path, resume=False)
    betas = list(config.system.beta)
    for method in config.methods:
        ladder = [s for s in expand_runs(config) if s.method == method]
        assert [s.beta for s in ladder] == betas
        assert campaign.previous_temperature(ladder[0]) is None
        for previous, spec in zip(ladder, ladder[1:]):
            assert campaign.previous_temperature(spec) == previous
