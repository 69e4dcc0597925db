"""`metadns energy`: structure files → energy table, against the calculator applied directly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from ase.calculators.emt import EMT
from ase.io import write

from pipeline import cli
from systems.alloys.fcc import FCCLattice

SPECIES = ("Cu", "Au")


@pytest.fixture()
def emt_config(tmp_path):
    path = tmp_path / "emt.yaml"
    path.write_text(yaml.safe_dump({"methods": ["metadns"], "system": {
        "name": "alloy", "size": [2, 2, 2], "cell": "conventional", "energy": {"name": "ase"}, "temperature": [1000]}}))
    return path


def random_frames(n: int, seed: int = 0):
    lattice = FCCLattice((2, 2, 2), "conventional")
    rng = np.random.default_rng(seed)
    occupations = rng.integers(0, 2, (n, lattice.n_sites))
    return lattice, occupations, [lattice.to_atoms(occ, SPECIES) for occ in occupations]


def test_energy_table_equals_emt_on_the_same_structures_from_several_formats(emt_config, tmp_path, capsys):
    lattice, occupations, frames = random_frames(3)
    write(tmp_path / "frames.xyz", frames, format="extxyz")
    shuffled = frames[1][np.random.default_rng(1).permutation(lattice.n_sites)]  # atom order must not matter
    write(tmp_path / "POSCAR", shuffled, format="vasp")
    write(tmp_path / "s.cif", frames[2], format="cif")
    out = tmp_path / "table.parquet"
    code = cli.main(["energy", "--config", str(emt_config), str(tmp_path / "frames.xyz"), str(tmp_path / "POSCAR"),
                     str(tmp_path / "s.cif"), "--out", str(out)])
    assert code == 0
    table = pd.read_parquet(out)
    assert table.frame.tolist() == [0, 1, 2, 0, 0]
    direct = [EMT().get_potential_energy(atoms) for atoms in frames]
    np.testing.assert_allclose(table.total_energy_eV, direct + direct[1:], rtol=0, atol=1e-9)
    np.testing.assert_allclose(table.x_Au, list(occupations.mean(1)) + list(occupations[1:].mean(1)))
    pure = [EMT().get_potential_energy(lattice.to_atoms(np.full(32, s), SPECIES)) / 32 for s in (0, 1)]
    n_au = occupations.sum(1)
    expected_formation = (np.array(direct) - (32 - n_au) * pure[0] - n_au * pure[1]) / 32
    np.testing.assert_allclose(table.formation_energy_eV_per_atom[:3], expected_formation, rtol=0, atol=1e-10)
    assert "formation_energy_eV_per_atom" in capsys.readouterr().out


def test_frames_off_the_lattice_and_unreadable_files_exit_2_writing_nothing(emt_config, tmp_path, capsys):
    lattice, _, frames = random_frames(2)
    moved = frames[1].copy()
    moved.positions[4] += [1.0, 0.0, 0.0]
    write(tmp_path / "bad.xyz", [frames[0], moved], format="extxyz")
    out = tmp_path / "table.parquet"
    assert cli.main(["energy", "--config", str(emt_config), str(tmp_path / "bad.xyz"), "--out", str(out)]) == 2
    assert "bad.xyz:1: atom 4" in capsys.readouterr().err
    (tmp_path / "junk.xyz").write_text("this is not a structure\n")
    assert cli.main(["energy", "--config", str(emt_config), str(tmp_path / "junk.xyz"), "--out", str(out)]) == 2
    assert "junk.xyz" in capsys.readouterr().err
    assert cli.main(["energy", "--config", str(emt_config), str(tmp_path / "absent.xyz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not out.exists()


def test_cluster_expansion_energy_is_the_same_from_files_and_from_occupations(tmp_path):
    """The paper's CE on the 64-site cell: a structure read back from POSCAR / extxyz (atoms
    shuffled, cell scaled) gets exactly the backend's energy of its occupation."""
    config = tmp_path / "ce.yaml"
    config.write_text(yaml.safe_dump({"methods": ["metadns"], "system": {"name": "alloy", "temperature": [500]}}))
    lattice = FCCLattice((4, 4, 4), "primitive")
    rng = np.random.default_rng(4)
    occupations = rng.integers(0, 2, (3, lattice.n_sites))
    frames = [lattice.to_atoms(occ, SPECIES, scale=1.02)[rng.permutation(lattice.n_sites)] for occ in occupations]
    write(tmp_path / "frames.xyz", frames, format="extxyz")
    write(tmp_path / "POSCAR", frames[0], format="vasp")
    out = tmp_path / "ce.parquet"
    assert cli.main(["energy", "--config", str(config), str(tmp_path / "frames.xyz"), str(tmp_path / "POSCAR"),
                     "--out", str(out)]) == 0
    from systems.alloys.alloy import BinaryAlloy
    system = BinaryAlloy()  # the defaults: the paper's CE on the 4×4×4 primitive cell
    expected = system.backend.energy(torch.from_numpy(occupations)).numpy()
    table = pd.read_parquet(out)
    np.testing.assert_allclose(table.total_energy_eV, list(expected) + [expected[0]], rtol=0, atol=1e-9)
