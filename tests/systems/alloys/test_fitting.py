"""`metadns fit-ce`: a cluster expansion fitted to EMT reproduces EMT and loads in the CE backend."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT

from pipeline import cli
from systems.alloys.cluster_expansion import ClusterExpansionBackend
from systems.alloys.fcc import FCCLattice


@pytest.fixture()
def fitted(tmp_path, capsys):
    """(model path, cross-validation RMSE in eV/atom as printed by the command)."""
    out = tmp_path / "emt.ce"
    code = cli.main(["fit-ce", "--out", str(out), "--cutoffs", "5.5", "4.0", "--max-atoms", "6", "--quiet"])
    assert code == 0
    rmse = float(re.search(r"cross-validation ([0-9.]+) meV/atom", capsys.readouterr().out).group(1))
    return out, 1e-3 * rmse


def test_fitted_ce_predicts_emt_energies_of_new_cells_within_its_error(fitted):
    fitted, rmse = fitted
    lattice = FCCLattice((2, 2, 2), "conventional")  # 32 sites: larger than any training structure
    backend = ClusterExpansionBackend(fitted, lattice.reference_atoms(), ("Cu", "Au"))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (8, lattice.n_sites))
    predicted = backend.energy(torch.from_numpy(x)).numpy() / lattice.n_sites
    emt = np.array([EMT().get_potential_energy(lattice.to_atoms(row, ("Cu", "Au"))) for row in x]) / lattice.n_sites
    # 137 enumerated structures of ≤ 6 atoms; measured CV RMSE ≈ 1.1 meV/atom against a
    # spread of ≈ 90 meV/atom in these energies (fixed a = 3.8 Å compresses Au).
    assert 0 < rmse < 0.005
    np.testing.assert_allclose(predicted, emt, rtol=0, atol=5 * rmse)


def test_bad_fit_settings_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "m.ce"
    assert cli.main(["fit-ce", "--out", str(out), "--max-atoms", "40", "--quiet"]) == 2
    assert "max_atoms" in capsys.readouterr().err
    assert cli.main(["fit-ce", "--out", str(tmp_path / "m.json"), "--quiet"]) == 2
    assert cli.main(["fit-ce", "--out", str(out), "--label", "mace", "--model", str(tmp_path / "none.model"),
                     "--quiet"]) == 2
    assert "none.model" in capsys.readouterr().err
    assert not out.exists()
