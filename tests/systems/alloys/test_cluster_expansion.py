"""Cluster-expansion backend: batched torch energies against icet itself, flips, the paper's CE, errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.data import atomic_numbers
from icet import ClusterExpansion, ClusterSpace

from systems.alloys.cluster_expansion import (PAPER_CUAU_CE, ClusterExpansionBackend,
                                              icet_calculator, load_cluster_expansion)

A = 3.8
CUTOFFS = [6.0, 4.5, 4.5]
SUPERCELLS = {
    "4x4x4 primitive (64)": bulk("Cu", "fcc", a=A).repeat(4),
    "2x2x2 conventional (32)": bulk("Cu", "fcc", a=A, cubic=True).repeat(2),
    "3x3x3 conventional (108)": bulk("Cu", "fcc", a=A, cubic=True).repeat(3),
    "3x4x5 primitive (60, non-cubic)": bulk("Cu", "fcc", a=A).repeat((3, 4, 5)),
}
AU_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def random_occupations(n_sites: int, rng: np.random.Generator, per_fraction: int = 2) -> np.ndarray:
    """int64 (len(AU_FRACTIONS)·per_fraction, n_sites): random cells with round(c·n) sites of occupation 1."""
    rows = []
    for fraction in AU_FRACTIONS:
        for _ in range(per_fraction):
            row = np.zeros(n_sites, dtype=np.int64)
            row[rng.permutation(n_sites)[:round(fraction * n_sites)]] = 1
            rows.append(row)
    return np.stack(rows)


@pytest.fixture(scope="module", params=[("Cu", "Au"), ("Au", "Cu")], ids=["ce-Cu-Au", "ce-Au-Cu"])
def random_ce_file(request, tmp_path_factory):
    """An icet .ce file with random parameters, its ClusterSpace built with the given species order."""
    space = ClusterSpace(bulk("Cu", "fcc", a=A), CUTOFFS, list(request.param))
    parameters = np.random.default_rng(7).normal(scale=0.02, size=len(space))
    path = tmp_path_factory.mktemp("ce") / "random.ce"
    ClusterExpansion(space, parameters).write(str(path))
    return path


@pytest.mark.parametrize("species", [("Cu", "Au"), ("Au", "Cu")], ids=["occ0-Cu", "occ0-Au"])
@pytest.mark.parametrize("cell_name", list(SUPERCELLS))
def test_energies_equal_icet_predict_and_mchammer(random_ce_file, species, cell_name):
    supercell = SUPERCELLS[cell_name]
    n_sites = len(supercell)
    backend = ClusterExpansionBackend(random_ce_file, supercell, species=species)
    ce = load_cluster_expansion(random_ce_file)
    calculator = icet_calculator(ce, supercell)
    occupations = random_occupations(n_sites, np.random.default_rng(n_sites))
    energies = backend.energy(torch.from_numpy(occupations))
    assert energies.dtype == torch.float64 and energies.shape == (occupations.shape[0],)
    numbers = np.array([atomic_numbers[s] for s in species])
    for row, energy in zip(occupations, energies.tolist()):
        atoms = supercell.copy()
        atoms.set_chemical_symbols([species[s] for s in row])
        assert energy / n_sites == pytest.approx(ce.predict(atoms), abs=1e-9)
        assert energy / n_sites == pytest.approx(calculator.calculate_total(occupations=numbers[row]) / n_sites, abs=1e-9)


@pytest.mark.parametrize("cell_name", ["4x4x4 primitive (64)", "2x2x2 conventional (32)"])
def test_energy_change_equals_energy_difference(random_ce_file, cell_name):
    supercell = SUPERCELLS[cell_name]
    backend = ClusterExpansionBackend(random_ce_file, supercell)
    generator = torch.Generator().manual_seed(3)
    batch = 500
    x = (torch.rand(batch, len(supercell), generator=generator) < torch.rand(batch, 1, generator=generator)).long()
    sites = torch.randint(len(supercell), (batch,), generator=generator)
    new_states = torch.randint(2, (batch,), generator=generator)  # some rows keep their state: ΔE = 0
    flipped = x.clone()
    flipped[torch.arange(batch), sites] = new_states
    expected = backend.energy(flipped) - backend.energy(x)
    change = backend.energy_change(x, sites, new_states)
    assert change.dtype == torch.float64
    torch.testing.assert_close(change, expected, rtol=0, atol=1e-11)
    assert torch.all(change[new_states == x[torch.arange(batch), sites]] == 0)


def conventional_sublattice(atoms) -> np.ndarray:
    """Sublattice 0..3 of the conventional cubic cell from site coordinates: h = r/(a/2), h mod 2."""
    parity = np.rint(atoms.positions / (A / 2)).astype(np.int64) % 2
    return 2 * parity[:, 0] + parity[:, 1]  # (0,0,0)→0, (0,1,1)→1, (1,0,1)→2, (1,1,0)→3


def test_paper_ce_formation_energies_in_the_64_site_cell():
    supercell = SUPERCELLS["4x4x4 primitive (64)"]
    backend = ClusterExpansionBackend(PAPER_CUAU_CE, supercell)
    assert backend.self_interacting  # icet's warning case; energies still match below
    sublattice = conventional_sublattice(supercell)
    assert np.bincount(sublattice).tolist() == [16, 16, 16, 16]
    phases = {"Cu3Au L1_2": ([0], -34.1672), "CuAu L1_0": ([0, 3], -36.1825), "CuAu3 L1_2": ([0, 1, 2], -18.7544)}
    x = np.stack([np.zeros(64), np.ones(64)] + [np.isin(sublattice, au) for au, _ in phases.values()]).astype(np.int64)
    energy = backend.energy(x).numpy() / 64
    fraction = x.mean(axis=1)
    formation_mev = 1000 * (energy - (1 - fraction) * energy[0] - fraction * energy[1])
    for (name, (_, paper)), value in zip(phases.items(), formation_mev[2:]):
        assert value == pytest.approx(paper, abs=1e-3), name
    ce = load_cluster_expansion(PAPER_CUAU_CE)
    atoms = supercell.copy()
    atoms.set_chemical_symbols(np.where(x[2] == 1, "Au", "Cu"))
    assert energy[2] == pytest.approx(ce.predict(atoms), abs=1e-12)
    assert "MIT License" in ce.metadata["license"] and "arXiv:2605.21722" in ce.metadata["citation"]


def test_written_model_file_gives_the_same_energies(tmp_path):
    supercell = SUPERCELLS["2x2x2 conventional (32)"]
    backend = ClusterExpansionBackend(PAPER_CUAU_CE, supercell)
    ce_path = tmp_path / "paper.ce"
    load_cluster_expansion(PAPER_CUAU_CE).write(str(ce_path))
    x = random_occupations(32, np.random.default_rng(0))
    torch.testing.assert_close(ClusterExpansionBackend(ce_path, supercell).energy(x), backend.energy(x), rtol=0, atol=1e-12)


def test_icet_calculator_silences_only_the_self_interaction_warning():
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    icet_logger = logging.getLogger("icet")
    icet_logger.addHandler(handler)
    try:
        icet_calculator(load_cluster_expansion(PAPER_CUAU_CE), SUPERCELLS["4x4x4 primitive (64)"])
        icet_logger.warning("another warning")
    finally:
        icet_logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["another warning"]


def test_file_errors(tmp_path):
    supercell = SUPERCELLS["2x2x2 conventional (32)"]
    missing = tmp_path / "nowhere.ce"
    with pytest.raises(FileNotFoundError, match="nowhere.ce"):
        load_cluster_expansion(missing)
    with pytest.raises(FileNotFoundError, match="nowhere.ce"):
        ClusterExpansionBackend(missing, supercell)
    corrupt = tmp_path / "corrupt.ce"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ValueError, match="corrupt.ce"):
        load_cluster_expansion(corrupt)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"format": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_cluster_expansion(bad_json)
    model = json.loads(PAPER_CUAU_CE.read_text())
    for field, value, message in [("parameters", model["parameters"][:-1], "10 parameters but its cluster space"),
                                  ("format", "something-else", "field 'format'"),
                                  ("cutoffs", [6.0, 4.5], "orbits"),
                                  ("chemical_symbols", ["Cu", "Xx"], "unknown element")]:
        broken = tmp_path / f"broken_{field}.json"
        broken.write_text(json.dumps({**model, field: value}))
        with pytest.raises(ValueError, match=message):
            load_cluster_expansion(broken)
    missing_field = tmp_path / "missing_field.json"
    missing_field.write_text(json.dumps({k: v for k, v in model.items() if k != "cutoffs"}))
    with pytest.raises(ValueError, match="missing field.*cutoffs"):
        load_cluster_expansion(missing_field)


def test_backend_input_errors():
    with pytest.raises(ValueError, match="species"):
        ClusterExpansionBackend(PAPER_CUAU_CE, SUPERCELLS["2x2x2 conventional (32)"], species=("Cu", "Ag"))
    with pytest.raises(ValueError, match="not a supercell"):
        ClusterExpansionBackend(PAPER_CUAU_CE, bulk("Cu", "fcc", a=4.0).repeat(2))
    backend = ClusterExpansionBackend(PAPER_CUAU_CE, SUPERCELLS["2x2x2 conventional (32)"])
    with pytest.raises(ValueError, match=r"shape \(B, 32\)"):
        backend.energy(torch.zeros(3, 31, dtype=torch.long))
