"""MACE (mace-torch) machine-learned potential as a batched alloy energy backend.

Every configuration of a supercell puts its atoms on the same ideal lattice sites (isotropically
scaled per configuration when Vegard's law is on), so the graph MACE needs — which pairs of
atoms are closer than the cutoff and through which periodic image — is one fixed *topology*:
``(sender, receiver, unit_shift)`` triples found once on the reference supercell.  A batch of B
configurations is then B copies of that topology with node offsets, positions and shift
vectors multiplied by each configuration's scale, and node attributes (the species one-hot)
read from the occupations; the model is called once per chunk of configurations.

The topology is found with the cutoff ``r_max / s_min`` (``s_min`` the smallest scale any
configuration can have), so it holds every pair that can be within ``r_max`` at any scale.  Pairs
farther than ``r_max`` at a configuration's own scale carry exactly zero weight in MACE (its
radial cutoff envelope is multiplied by ``r < r_max``), so energies equal those of
``mace.calculators.MACECalculator`` on the same structures (tested to 1e-6 eV).

Energies: the model's total potential energy (eV per cell) at ideal lattice positions, float64.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import ase
import numpy as np
import torch
from ase.data import atomic_numbers as ATOMIC_NUMBERS
from ase.neighborlist import neighbor_list

from .backends import EnergyBackend, vegard_scale

__all__ = ["MACEBackend", "SHIPPED_MACE_MODEL", "TRAINING_SCRIPT", "load_mace_model", "from_options"]

SHIPPED_MACE_MODEL = Path(__file__).resolve().parent / "data" / "mace_cuau_emt.model"
"""Small Cu–Au MACE model trained on ASE EMT energies (metadata in ``mace_cuau_emt.json``)."""

TRAINING_SCRIPT = "workflows/models/train_mace_emt.py"
"""The script (relative to the repository root) that writes :data:`SHIPPED_MACE_MODEL`."""

_DTYPES = {"float64": torch.float64, "float32": torch.float32}

# Configurations per model call when ``batch_size`` is None: about this many atoms per call.  On
# CPU the shipped model is fastest at 256–1024 atoms per call (mace_speed.py: 64-site cells,
# batch 8 ≈ 135/s, batch 128 ≈ 40/s): larger calls allocate edge tensors of hundreds of MB and
# become memory-bound, smaller ones pay Python overhead per module.
_DEFAULT_ATOMS_PER_CALL = 512


def load_mace_model(path, device: str = "cpu", dtype: str = "float64") -> torch.nn.Module:
    """Load a mace-torch model file (a pickled ``torch.nn.Module``, what MACECalculator reads).

    Returns the model in eval mode on ``device`` in ``dtype`` with gradients off.
    Raises FileNotFoundError when the file is missing and ValueError when it is not a MACE model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MACE model file {path} does not exist; the shipped Cu–Au model is made by "
            f"`python {TRAINING_SCRIPT}` (writes {SHIPPED_MACE_MODEL}), or set `model` to your own MACE model file")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    import mace  # noqa: F401  (imported before e3nn: mace sets the environment e3nn's import needs)

    try:
        # mace-torch stores a whole pickled nn.Module (code references included), which torch's
        # default weights_only=True loader refuses.  weights_only=False unpickles arbitrary
        # objects, i.e. it can run code from the file: it is used here deliberately and only for
        # model files the project ships or the user names in their own configuration.
        model = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # any unpickling failure means "not a model file we can read"
        raise ValueError(f"MACE model file {path} cannot be read by torch.load ({type(error).__name__}: {error}); "
                         f"it is corrupt or not a mace-torch model file") from error
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "atomic_numbers") or not hasattr(model, "r_max"):
        raise ValueError(f"MACE model file {path} holds a {type(model).__name__}, not a mace-torch model "
                         f"(a torch.nn.Module with `atomic_numbers` and `r_max`)")
    model = model.to(device=device, dtype=_DTYPES[dtype]).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class MACEBackend(EnergyBackend):
    """Total potential energy (eV per cell) of a MACE model at ideal (Vegard-scaled) lattice sites.

    Args:
        model_path: mace-torch model file (e.g. :data:`SHIPPED_MACE_MODEL`).
        supercell: reference ``ase.Atoms``, periodic; site i = atom i, ideal positions at ``lattice_constant``.
        species: chemical symbols of occupation 0 and 1; both must be among the model's elements.
        lattice_constant: the supercell's lattice constant a in Å.
        vegard_lattice_constants: (a_0, a_1) in Å of pure species[0] and species[1]; each cell is
            then scaled isotropically to a(c) = (1 − c)·a_0 + c·a_1 (see ``vegard_scale``).
            None: every cell at ``lattice_constant``.
        device: torch device of the model (``"cpu"``, ``"cuda"``, …).
        dtype: ``"float64"`` (default; matches MACECalculator to ~1e-10 eV) or ``"float32"``.
        batch_size: configurations per model call; None picks about 512 atoms per call.

    Attributes: ``model`` (the torch module), ``r_max`` (Å), ``configurations_per_call``,
    ``n_edges`` (directed edges of one cell's graph).
    """

    name = "mace"

    def __init__(self, model_path, supercell: ase.Atoms, species=("Cu", "Au"), lattice_constant: float = 3.8,
                 vegard_lattice_constants: tuple[float, float] | None = None, device: str = "cpu",
                 dtype: str = "float64", batch_size: int | None = None):
        self.species = _check_species(species)
        self.lattice_constant = _positive_length(lattice_constant, "lattice_constant")
        if vegard_lattice_constants is None:
            self.vegard_lattice_constants = None
        else:
            if len(vegard_lattice_constants) != 2:
                raise ValueError("vegard_lattice_constants must be two lattice constants (a_0, a_1) in Å, "
                                 f"got {vegard_lattice_constants!r}")
            self.vegard_lattice_constants = tuple(
                _positive_length(a, f"vegard_lattice_constants[{k}]") for k, a in enumerate(vegard_lattice_constants))
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        if not isinstance(supercell, ase.Atoms) or len(supercell) == 0 or not supercell.pbc.all():
            raise ValueError("supercell must be a periodic ase.Atoms with at least one atom "
                             "(pbc = True along all axes)")
        self.model_path = Path(model_path)
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = load_mace_model(self.model_path, self.device, dtype)
        model_elements = [int(z) for z in self.model.atomic_numbers]
        missing = [s for s in self.species if ATOMIC_NUMBERS[s] not in model_elements]
        if missing:
            raise ValueError(f"MACE model file {self.model_path} has no parameters for {missing}: its elements are "
                             f"{[ase.data.chemical_symbols[z] for z in model_elements]}")
        self.supercell = supercell.copy()
        self.supercell.calc = None
        self.batch_size = None if batch_size is None else int(batch_size)
        self.configurations_per_call = self.batch_size or max(1, _DEFAULT_ATOMS_PER_CALL // len(self.supercell))

        float_dtype = _DTYPES[dtype]
        # Row k of the one-hot table is the node attribute of occupation k (columns: model's elements).
        columns = torch.tensor([model_elements.index(ATOMIC_NUMBERS[s]) for s in self.species])
        self._node_attributes = torch.nn.functional.one_hot(columns, len(model_elements)).to(self.device, float_dtype)
        self.r_max = float(self.model.r_max)
        sender, receiver, unit_shifts = neighbor_list("ijS", self.supercell, self.r_max / self._smallest_scale())
        cell = np.array(self.supercell.cell[:], dtype=np.float64)
        self._edge_index = torch.from_numpy(np.stack([sender, receiver]).astype(np.int64)).to(self.device)
        self._unit_shifts = torch.from_numpy(unit_shifts.astype(np.float64)).to(self.device, float_dtype)
        self._shifts = torch.from_numpy(unit_shifts @ cell).to(self.device, float_dtype)
        positions = np.array(self.supercell.positions, dtype=np.float64)
        self._positions = torch.from_numpy(positions).to(self.device, float_dtype)
        self._cell = torch.from_numpy(cell).to(self.device, float_dtype)

    @property
    def n_edges(self) -> int:
        """Directed edges of one cell's graph (pairs within r_max at the smallest possible scale)."""
        return int(self._edge_index.shape[1])

    def _smallest_scale(self) -> float:
        if self.vegard_lattice_constants is None:
            return 1.0
        return min(self.vegard_lattice_constants) / self.lattice_constant

    def graph(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """MACE's input dict for occupations x int ``(B, D)`` on the model's device.

        Keys as in mace-torch's batched AtomicData: positions ``(B·D, 3)`` Å, node_attrs
        ``(B·D, n_elements)``, edge_index ``(2, B·E)`` (sender, receiver), shifts ``(B·E, 3)`` Å,
        unit_shifts, cell ``(3B, 3)``, batch ``(B·D,)``, ptr ``(B+1,)``, head ``(B,)``.
        """
        x = x.to(self.device)
        n_configs, n_sites, n_edges = x.shape[0], self.n_sites, self.n_edges
        scale = vegard_scale(x, self.lattice_constant, self.vegard_lattice_constants).to(self._positions.dtype)
        scale = scale[:, None, None]
        node_offsets = torch.arange(n_configs, device=self.device) * n_sites
        return {
            "positions": (scale * self._positions).reshape(n_configs * n_sites, 3),
            "node_attrs": self._node_attributes[x.reshape(-1)],
            "edge_index": (self._edge_index[:, None, :] + node_offsets[None, :, None]).reshape(2, n_configs * n_edges),
            "shifts": (scale * self._shifts).reshape(n_configs * n_edges, 3),
            "unit_shifts": self._unit_shifts.repeat(n_configs, 1),
            "cell": (scale * self._cell).reshape(n_configs * 3, 3),
            "batch": torch.arange(n_configs, device=self.device).repeat_interleave(n_sites),
            "ptr": torch.arange(n_configs + 1, device=self.device) * n_sites,
            "head": torch.zeros(n_configs, dtype=torch.int64, device=self.device),
        }

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.float64, device=x.device)
        energies = []
        with torch.no_grad():
            for chunk in torch.split(x, self.configurations_per_call):  # one model call per chunk of configurations
                output = self.model(self.graph(chunk), training=False, compute_force=False,
                                    compute_virials=False, compute_stress=False)
                energies.append(output["energy"].detach().to(torch.float64))
        return torch.cat(energies).to(x.device)


def _check_species(species) -> tuple[str, str]:
    species = tuple(species)
    if len(species) != 2 or len(set(species)) != 2 or not all(s in ATOMIC_NUMBERS for s in species):
        raise ValueError(f"species must be two different chemical symbols, e.g. ('Cu', 'Au'), got {species!r}")
    return species


def _positive_length(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field} must be a positive length in Å (e.g. 3.8), got {value!r}")
    return float(value)


def from_options(options: dict, lattice, species: tuple[str, str]) -> MACEBackend:
    """The backend of ``system.energy: {name: mace, model: …, …}`` on the cells of ``lattice``
    (an FCCLattice); ``model: cuau_emt`` is the shipped model (:data:`TRAINING_SCRIPT`)."""
    options = dict(options)
    model = options.pop("model", None)
    if model is None:
        raise ValueError("the mace backend needs `model`: a MACE model file or `cuau_emt`")
    path = SHIPPED_MACE_MODEL if model == "cuau_emt" else Path(model)
    return MACEBackend(path, lattice.reference_atoms(species[0]), species, lattice_constant=lattice.lattice_constant,
                       **options)
