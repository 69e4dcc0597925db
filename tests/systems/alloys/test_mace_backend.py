"""MACE backend: batched energies against mace's own MACECalculator, against EMT, errors, spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import bulk
from mace.calculators import MACECalculator

from systems.alloys.backends import decorate, vegard_scale
from systems.alloys.mace_backend import SHIPPED_MACE_MODEL, TRAINING_SCRIPT, MACEBackend

A = 3.8
SPECIES = ("Cu", "Au")
METADATA = json.loads(SHIPPED_MACE_MODEL.with_suffix(".json").read_text())
EMT_VEGARD = (METADATA["emt_lattice_constants_angstrom"]["Cu"], METADATA["emt_lattice_constants_angstrom"]["Au"])
SUPERCELLS = {
    "4x4x4 primitive (64)": bulk("Cu", "fcc", a=A).repeat(4),
    "2x2x2 conventional (32)": bulk("Cu", "fcc", a=A, cubic=True).repeat(2),
}


def random_occupations(n_configs: int, n_sites: int, rng: np.random.Generator) -> torch.Tensor:
    """int64 (n_configs, n_sites): pure Cu, pure Au, then random cells at Au fractions c ~ U(0, 1)."""
    rows = [np.zeros(n_sites, dtype=np.int64), np.ones(n_sites, dtype=np.int64)]
    for _ in range(n_configs - 2):
        row = np.zeros(n_sites, dtype=np.int64)
        row[rng.permutation(n_sites)[:round(rng.uniform() * n_sites)]] = 1
        rows.append(row)
    return torch.from_numpy(np.stack(rows))


@pytest.fixture(scope="module")
def calculator():
    return MACECalculator(model_paths=str(SHIPPED_MACE_MODEL), device="cpu", default_dtype="float64")


def test_shipped_model_and_metadata():
    backend = MACEBackend(SHIPPED_MACE_MODEL, SUPERCELLS["4x4x4 primitive (64)"], SPECIES, lattice_constant=A)
    assert sorted(int(z) for z in backend.model.atomic_numbers) == [29, 79]
    assert backend.r_max == METADATA["model"]["r_max"]
    assert METADATA["data"]["n_training"] > 0 and METADATA["data"]["n_validation"] > 0
    assert 0 < METADATA["rmse_mev_per_atom"]["validation"] < 20
    assert SHIPPED_MACE_MODEL.stat().st_size < 1_000_000


@pytest.mark.parametrize("vegard", [None, EMT_VEGARD], ids=["fixed-a", "vegard"])
@pytest.mark.parametrize("cell_name", list(SUPERCELLS))
def test_batched_energies_equal_mace_calculator(cell_name, vegard, calculator):
    supercell = SUPERCELLS[cell_name]
    backend = MACEBackend(SHIPPED_MACE_MODEL, supercell, SPECIES, lattice_constant=A,
                          vegard_lattice_constants=vegard, batch_size=3)  # 6 rows: two model calls
    x = random_occupations(6, len(supercell), np.random.default_rng(7))
    energies = backend.energy(x)
    assert energies.dtype == torch.float64 and energies.shape == (6,) and bool(torch.isfinite(energies).all())
    scales = vegard_scale(x, A, vegard)
    reference = []
    for occupation, scale in zip(x.numpy(), scales.tolist()):
        atoms = decorate(supercell, occupation, SPECIES, scale)
        atoms.calc = calculator
        reference.append(atoms.get_potential_energy())
    np.testing.assert_allclose(energies.numpy(), reference, rtol=0, atol=1e-6)
    if vegard is not None:  # the scale really varies (pure Cu and pure Au cells differ by > 10 %)
        assert scales.max() / scales.min() > 1.1


def test_energies_agree_with_emt_within_validation_error():
    """Fresh random 64-site cells at EMT's Vegard lattice constants: |error| ≤ 5 × validation RMSE per atom."""
    from systems.alloys.ase_backend import ASECalculatorBackend
    supercell = SUPERCELLS["4x4x4 primitive (64)"]
    x = random_occupations(10, len(supercell), np.random.default_rng(2024))
    backend = MACEBackend(SHIPPED_MACE_MODEL, supercell, SPECIES, lattice_constant=A,
                          vegard_lattice_constants=EMT_VEGARD)
    emt = ASECalculatorBackend(supercell, SPECIES, lattice_constant=A, vegard_lattice_constants=EMT_VEGARD)
    error_per_atom = (backend.energy(x) - emt.energy(x)).numpy() / len(supercell)
    tolerance = 5 * METADATA["rmse_mev_per_atom"]["validation"] * 1e-3
    assert np.abs(error_per_atom).max() <= tolerance, (error_per_atom, tolerance)


def test_batch_size_does_not_change_energies():
    supercell = SUPERCELLS["2x2x2 conventional (32)"]
    x = random_occupations(9, len(supercell), np.random.default_rng(3))
    whole = MACEBackend(SHIPPED_MACE_MODEL, supercell, SPECIES, A, EMT_VEGARD).energy(x)
    chunked = MACEBackend(SHIPPED_MACE_MODEL, supercell, SPECIES, A, EMT_VEGARD, batch_size=2).energy(x)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-9)
    assert MACEBackend(SHIPPED_MACE_MODEL, supercell, SPECIES, A).energy(x[:0]).shape == (0,)


def test_float32_close_to_float64():
    supercell = SUPERCELLS["4x4x4 primitive (64)"]
    x = random_occupations(4, len(supercell), np.random.default_rng(5))
    double = MACEBackend(SHIPPED_MACE_MODEL, supercell, SPECIES, A, EMT_VEGARD).energy(x)
    single = MACEBackend(SHIPPED_MACE_MODEL, supercell, SPECIES, A, EMT_VEGARD, dtype="float32").energy(x)
    assert single.dtype == torch.float64
    torch.testing.assert_close(single, double, rtol=0, atol=1e-3)


def test_missing_model_file_names_path_and_script(tmp_path):
    missing = tmp_path / "absent.model"
    with pytest.raises(FileNotFoundError) as error:
        MACEBackend(missing, SUPERCELLS["2x2x2 conventional (32)"], SPECIES, A)
    assert str(missing) in str(error.value) and TRAINING_SCRIPT in str(error.value)


def test_corrupt_or_foreign_model_file_is_a_value_error(tmp_path):
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=str(corrupt)):
        MACEBackend(corrupt, SUPERCELLS["2x2x2 conventional (32)"], SPECIES, A)
    not_a_model = tmp_path / "tensors.model"
    torch.save({"weights": torch.zeros(3)}, not_a_model)
    with pytest.raises(ValueError, match="not a mace-torch model"):
        MACEBackend(not_a_model, SUPERCELLS["2x2x2 conventional (32)"], SPECIES, A)


def test_species_missing_from_model_is_a_value_error():
    with pytest.raises(ValueError, match=r"has no parameters for \['Ag'\]") as error:
        MACEBackend(SHIPPED_MACE_MODEL, SUPERCELLS["2x2x2 conventional (32)"], ("Cu", "Ag"), A)
    assert str(SHIPPED_MACE_MODEL) in str(error.value)


@pytest.mark.parametrize("options, field", [
    ({"lattice_constant": -1.0}, "lattice_constant"),
    ({"vegard_lattice_constants": (3.6,)}, "vegard_lattice_constants"),
    ({"vegard_lattice_constants": (3.6, 0.0)}, r"vegard_lattice_constants\[1\]"),
    ({"batch_size": 0}, "batch_size"),
    ({"dtype": "float16"}, "dtype"),
    ({"species": ("Cu", "Cu")}, "species"),
])
def test_invalid_settings_name_the_field(options, field):
    settings = {"species": SPECIES, "lattice_constant": A, **options}
    with pytest.raises(ValueError, match=field):
        MACEBackend(SHIPPED_MACE_MODEL, SUPERCELLS["2x2x2 conventional (32)"], **settings)
