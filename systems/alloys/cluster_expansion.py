"""Cluster-expansion (CE) energies of binary alloys, batched in torch (docs/method.md §1).

A binary CE writes the property per site as

    E/N = Σ_α J_α · ⟨Π_{i∈c} φ(x_i)⟩_{c∈α}

with α the orbits (symmetry-equivalent clusters), J_α icet's parameters (ECI × multiplicity
in icet's wording; for a one-site primitive cell they equal CLEASE's ECIs) and φ the point
function of the species on site i (±1 for a binary; which species is +1 is read from icet).
The total energy of a supercell of N sites is N times that (mchammer's convention).

:func:`load_cluster_expansion` reads an icet ``.ce`` file or this project's JSON format;
:class:`ClusterExpansionBackend` evaluates a batch of occupations of one supercell from the
clusters of icet's own supercell orbit list, so its energies are icet's by construction.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import ase
import numpy as np
import torch
from ase.data import atomic_numbers

from .backends import EnergyBackend

__all__ = ["PAPER_CUAU_CE", "CE_JSON_FORMAT", "ClusterExpansionBackend", "load_cluster_expansion",
           "build_cluster_expansion", "icet_calculator", "quiet_self_interaction_warning", "from_options"]

PAPER_CUAU_CE = Path(__file__).resolve().parent / "data" / "cuau_paper_ce.json"
"""The MetaDNS paper's Cu–Au CE (FCC, a = 3.8 Å, cutoffs 6.0/4.5/4.5 Å); see data/README.md."""

CE_JSON_FORMAT = "metadns-cluster-expansion-v1"
"""Value of the ``format`` field of the project's JSON cluster-expansion files."""

_REQUIRED_JSON_FIELDS = ("primitive_cell", "positions", "chemical_symbols", "cutoffs", "parameters")


def build_cluster_expansion(model: dict, source: str = "model"):
    """icet ``ClusterExpansion`` from the project's JSON model (a dict).

    Fields: ``format`` (= :data:`CE_JSON_FORMAT`), ``primitive_cell`` (3×3 Å, rows),
    ``positions`` (fractional, one row per primitive site), ``chemical_symbols`` (the allowed
    species, e.g. ["Cu", "Au"]), ``cutoffs`` (Å, pairs, triplets, …), ``parameters`` (icet
    orbit order: constant, points, pairs by radius, …; eV per site); optional ``lattice_constant``
    (Å), ``orbits`` (per parameter ``order`` and ``radius`` in Å, checked against icet's),
    ``citation``, ``license``.  ``source`` names the model in error messages.
    """
    from icet import ClusterExpansion, ClusterSpace

    if not isinstance(model, dict):
        raise ValueError(f"{source}: a cluster-expansion JSON file must hold an object, got {type(model).__name__}")
    if model.get("format") != CE_JSON_FORMAT:
        raise ValueError(f"{source}: field 'format' must be {CE_JSON_FORMAT!r}, got {model.get('format')!r}")
    missing = [field for field in _REQUIRED_JSON_FIELDS if field not in model]
    if missing:
        raise ValueError(f"{source}: missing field(s) {missing}; a model needs {list(_REQUIRED_JSON_FIELDS)}")
    try:
        cell = np.asarray(model["primitive_cell"], dtype=np.float64)
        positions = np.asarray(model["positions"], dtype=np.float64)
        cutoffs = [float(c) for c in model["cutoffs"]]
        parameters = np.asarray(model["parameters"], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: primitive_cell, positions, cutoffs and parameters must be numbers ({error})") from error
    if cell.shape != (3, 3) or positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] < 1:
        raise ValueError(f"{source}: primitive_cell must be 3×3 and positions (n_sites, 3), got shapes "
                         f"{cell.shape} and {positions.shape}")
    if parameters.ndim != 1 or not np.all(np.isfinite(parameters)):
        raise ValueError(f"{source}: parameters must be a flat list of finite numbers (eV per site)")
    symbols = model["chemical_symbols"]
    flat = [s for entry in symbols for s in ([entry] if isinstance(entry, str) else entry)] \
        if isinstance(symbols, list) else [symbols]
    unknown = [s for s in flat if s not in atomic_numbers]
    if unknown:
        raise ValueError(f"{source}: chemical_symbols holds unknown element(s) {unknown}")
    primitive = ase.Atoms(numbers=[1] * positions.shape[0], cell=cell, scaled_positions=positions, pbc=True)
    try:
        space = ClusterSpace(primitive, cutoffs, symbols)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: icet cannot build a cluster space from it: {error}") from error
    if len(space) != parameters.shape[0]:
        raise ValueError(f"{source}: has {parameters.shape[0]} parameters but its cluster space (cutoffs {cutoffs} Å) "
                         f"has {len(space)} orbits incl. the constant; give one parameter per orbit in icet order")
    if "orbits" in model:
        _check_orbits(space, model["orbits"], source)
    metadata = {key: model[key] for key in ("citation", "license", "lattice_constant") if key in model}
    return ClusterExpansion(space, parameters, metadata=metadata)


def _check_orbits(space, orbits, source: str) -> None:
    """Compare the stored (order, radius) of every parameter with icet's orbit list."""
    expected = space.as_list
    if not isinstance(orbits, list) or len(orbits) != len(expected):
        raise ValueError(f"{source}: field 'orbits' must list {len(expected)} orbits (one per parameter)")
    for index, (stored, actual) in enumerate(zip(orbits, expected)):
        if int(stored["order"]) != actual["order"] or abs(float(stored["radius"]) - actual["radius"]) > 1e-4:
            raise ValueError(f"{source}: orbit {index} is stored as order {stored['order']}, radius {stored['radius']} Å "
                             f"but icet's orbit {index} has order {actual['order']}, radius {actual['radius']:.4f} Å")


def load_cluster_expansion(path):
    """icet ``ClusterExpansion`` from an icet ``.ce`` file or the project's JSON (``*.json``).

    Raises FileNotFoundError naming the path when it does not exist and ValueError when
    the file cannot be read or its parameters do not match its cluster space.
    """
    from icet import ClusterExpansion

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cluster-expansion file {str(path)!r} not found; give an icet .ce file or a "
                                f"project JSON model (e.g. {PAPER_CUAU_CE})")
    if path.suffix.lower() == ".json":
        try:
            model = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"cluster-expansion file {str(path)!r} is not valid JSON: {error}") from error
        return build_cluster_expansion(model, source=str(path))
    try:
        return ClusterExpansion.read(str(path))
    except Exception as error:  # icet raises tarfile/pickle/EOF errors of many kinds on a bad file
        raise ValueError(f"cannot read cluster-expansion file {str(path)!r} as an icet .ce file "
                         f"({type(error).__name__}: {error}); give an icet .ce file or a project *.json model") from error


class _SelfInteractionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "self-interacts" not in record.getMessage()


@contextlib.contextmanager
def quiet_self_interaction_warning():
    """Silence icet's "calculator self-interacts" log warning inside the block (nothing else)."""
    icet_logger = logging.getLogger("icet")
    silencer = _SelfInteractionFilter()
    handlers = [icet_logger, *icet_logger.handlers]
    for handler in handlers:
        handler.addFilter(silencer)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(silencer)


def icet_calculator(cluster_expansion, supercell: ase.Atoms):
    """mchammer ``ClusterExpansionCalculator`` (icet's own, total = per-site value × N) for a supercell."""
    from mchammer.calculators import ClusterExpansionCalculator

    # Cells shorter than twice the cutoff (the paper's 64-site cell at 6.0 Å) self-interact:
    # icet warns, but the energies are exactly the model's (checked in the tests), so it is expected here.
    with quiet_self_interaction_warning():
        return ClusterExpansionCalculator(supercell, cluster_expansion)


class ClusterExpansionBackend(EnergyBackend):
    """Total CE energy (eV per cell) of binary occupations of one supercell, batched in torch.

    Args:
        model_path: icet ``.ce`` file or project JSON model (see :func:`load_cluster_expansion`).
        supercell: ``ase.Atoms`` commensurate with the CE's primitive cell; site i = atom i.
        species: chemical symbols of occupation 0 and 1 (any order relative to the CE's).
        device: torch device of the cluster tables (copied to the occupations' device on demand).

    Attributes: ``point_values`` float64 ``(2,)``, φ of occupation 0 and 1 read from icet (±1);
    ``self_interacting`` (icet's verdict on the supercell; the energies are icet's either way).

    Evaluation: the clusters are those of icet's supercell orbit list for ``supercell``.  Cluster
    products of ±1 point functions are exact in int8, so each orbit's sum of products is an
    exact integer; the energy is J_0·N + Σ_α (J_α·N / n_α) · Σ_{c∈α} Π φ in float64.
    """

    name = "cluster_expansion"

    def __init__(self, model_path, supercell: ase.Atoms, species=("Cu", "Au"), device="cpu"):
        if not isinstance(supercell, ase.Atoms) or len(supercell) == 0 or not all(supercell.pbc):
            raise ValueError("supercell must be a periodic, non-empty ase.Atoms (site i = atom i)")
        species = tuple(species)
        if len(species) != 2 or len(set(species)) != 2 or any(s not in atomic_numbers for s in species):
            raise ValueError(f"species must be two different chemical symbols (occupation 0, 1), got {species!r}")
        self.model_path = Path(model_path)
        self.cluster_expansion = load_cluster_expansion(self.model_path)
        space = self.cluster_expansion.get_cluster_space_copy()
        if any(sorted(site) != sorted(species) for site in space.chemical_symbols):
            raise ValueError(f"species {list(species)} do not match the cluster expansion's "
                             f"{space.chemical_symbols} ({self.model_path}); give its two species")
        self.species = species
        self.supercell = supercell.copy()
        self.supercell.calc = None
        self.supercell.set_chemical_symbols([species[0]] * len(supercell))
        self.device = torch.device(device)
        self.point_values = torch.tensor(_point_values(space, species), dtype=torch.float64)
        if sorted(self.point_values.tolist()) != [-1.0, 1.0]:
            raise ValueError(f"{self.model_path}: point functions {self.point_values.tolist()} are not ±1; "
                             "only binary cluster expansions are supported")
        orbits, self._constant = self._supercell_orbits(space)
        self._tables = {self.device: self._make_tables(orbits)}

    # ------------------------------------------------------------------ construction
    def _supercell_orbits(self, space):
        """icet's supercell orbits as [(sites int64 (n_α, k), weight eV per cluster)] and J_0·N (eV).

        The weight J_α·N / n_α makes Σ over the orbit's n_α clusters equal N·J_α·(cluster vector element).
        """
        parameters = np.asarray(self.cluster_expansion.parameters, dtype=np.float64)
        n_sites = len(self.supercell)
        try:
            space.assert_structure_compatibility(self.supercell)
            supercell_orbits = space.orbit_list.get_supercell_orbit_list(
                self.supercell, fractional_position_tolerance=space.fractional_position_tolerance)
            self.self_interacting = bool(space.is_supercell_self_interacting(self.supercell))
        except Exception as error:  # icet reports incompatibility with ValueError/RuntimeError/Exception
            raise ValueError(f"supercell ({len(self.supercell)} atoms, cell {np.round(self.supercell.cell[:], 4).tolist()} Å) "
                             f"is not a supercell of the cluster expansion's primitive cell: {error}") from error
        parameter_index = {row["orbit_index"]: row["index"] for row in space.as_list if row["order"] > 0}
        orbits = []
        for orbit_index in range(len(supercell_orbits)):
            orbit = supercell_orbits.get_orbit(orbit_index)
            if len(orbit.cluster_vector_elements) != 1:
                raise ValueError(f"{self.model_path}: orbit {orbit_index} has several cluster functions; "
                                 "only binary cluster expansions are supported")
            sites = np.array([[site.index for site in cluster.lattice_sites] for cluster in orbit.clusters],
                             dtype=np.int64).reshape(-1, orbit.order)
            orbits.append((sites, float(parameters[parameter_index[orbit_index]]) * n_sites / sites.shape[0]))
        return orbits, float(parameters[0]) * n_sites

    def _make_tables(self, orbits) -> dict:
        """Torch tables: per orbit the sites ``(k, n_α)`` and weight; per site the flip table.

        Flipping site i changes Π φ of a cluster only when i occurs in it an odd number of times
        (φ_i² = 1), and then by (φ_new − φ_old)·Π_{j≠i} φ_j.  ``flip_partners`` ``(D, K, k_max − 1)``
        lists, for each site, the other sites of each such cluster (padded with D, whose φ is 1);
        ``flip_weights`` ``(D, K)`` float64 the clusters' weights (0 on padding).
        """
        n_sites = len(self.supercell)
        max_order = max((sites.shape[1] for sites, _ in orbits), default=1)
        partner_rows, weight_rows, site_rows = [], [], []
        for sites, weight in orbits:
            for position in range(sites.shape[1]):
                flipped = sites[:, position]
                occurrences = (sites == flipped[:, None]).sum(axis=1)
                first = (sites[:, :position] != flipped[:, None]).all(axis=1)  # each (cluster, site) once
                keep = (occurrences % 2 == 1) & first
                partners = np.where(sites[keep] == flipped[keep, None], n_sites, sites[keep])
                partners = np.sort(partners, axis=1)[:, :max_order - 1]  # D sorts last; ≥ 1 entry is D
                partner_rows.append(np.pad(partners, ((0, 0), (0, max_order - 1 - partners.shape[1])),
                                           constant_values=n_sites))
                weight_rows.append(np.full(partners.shape[0], weight))
                site_rows.append(flipped[keep])
        flip_site = np.concatenate(site_rows)
        order = np.argsort(flip_site, kind="stable")
        counts = np.bincount(flip_site, minlength=n_sites)
        slot = np.arange(order.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
        width = int(counts.max(initial=0))
        flip_partners = np.full((n_sites, width, max(max_order - 1, 1)), n_sites, dtype=np.int64)
        flip_weights = np.zeros((n_sites, width), dtype=np.float64)
        flip_partners[flip_site[order], slot, :max_order - 1] = np.concatenate(partner_rows)[order]
        flip_weights[flip_site[order], slot] = np.concatenate(weight_rows)[order]
        return {
            "orbits": [(torch.from_numpy(np.ascontiguousarray(sites.T)).to(self.device), weight)
                       for sites, weight in orbits],
            "flip_partners": torch.from_numpy(flip_partners).to(self.device),
            "flip_weights": torch.from_numpy(flip_weights).to(self.device),
            "point_values": self.point_values.to(self.device),
        }

    def _tables_on(self, device: torch.device) -> dict:
        if device not in self._tables:
            source = self._tables[self.device]
            self._tables[device] = {
                "orbits": [(sites.to(device), weight) for sites, weight in source["orbits"]],
                **{key: source[key].to(device) for key in ("flip_partners", "flip_weights", "point_values")},
            }
        return self._tables[device]

    # ------------------------------------------------------------------ evaluation
    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """x int64 ``(B, D)`` -> total energy float64 ``(B,)`` eV on x's device."""
        tables = self._tables_on(x.device)
        batch = x.shape[0]
        phi = tables["point_values"].to(torch.int8)[x.T.contiguous()]  # (D, B) ±1: sites in rows
        energy = torch.full((batch,), self._constant, dtype=torch.float64, device=x.device)
        chunk_elements = _CHUNK_ELEMENTS if x.device.type == "cpu" else _ACCELERATOR_CHUNK_ELEMENTS
        step = max(1, chunk_elements // max(batch, 1))
        for sites, weight in tables["orbits"]:  # loop over orbits (10 for the paper's CE)
            total = torch.zeros(batch, dtype=torch.int32, device=x.device)
            for start in range(0, sites.shape[1], step):  # cluster chunks that stay in cache
                chunk = sites[:, start:start + step]
                product = phi.index_select(0, chunk[0])
                for member in chunk[1:]:
                    product.mul_(phi.index_select(0, member))
                total += product.sum(dim=0, dtype=torch.int32)
            energy = energy + weight * total.to(torch.float64)
        return energy

    def _energy_change(self, x: torch.Tensor, sites: torch.Tensor, new_states: torch.Tensor) -> torch.Tensor:
        """E(x') − E(x) in eV for x' = x with x[b, sites[b]] = new_states[b]; only clusters at the site."""
        tables = self._tables_on(x.device)
        batch = x.shape[0]
        point_values = tables["point_values"]
        phi = torch.cat([point_values.to(torch.int8)[x], torch.ones(batch, 1, dtype=torch.int8, device=x.device)], 1)
        partners = tables["flip_partners"][sites]  # (B, K, k_max − 1)
        values = phi.gather(1, partners.view(batch, -1)).view(partners.shape)
        product = values[..., 0]
        for column in range(1, values.shape[2]):
            product = product * values[..., column]  # int8 ±1: exact
        field = (product.to(torch.float64) * tables["flip_weights"][sites]).sum(dim=1)
        old_states = x.gather(1, sites.view(batch, 1)).view(batch)
        return (point_values[new_states] - point_values[old_states]) * field


_CHUNK_ELEMENTS = 2 ** 20
"""int8 cluster products per chunk in :meth:`ClusterExpansionBackend._energy` on the CPU (1 MiB, cache-sized)."""
_ACCELERATOR_CHUNK_ELEMENTS = 2 ** 28
"""The same on a GPU (256 MiB): few large launches; a 64-site cell's orbits fit in one chunk for
batches up to ~10⁵ configurations."""


def _point_values(space, species: tuple[str, str]) -> list[float]:
    """φ(species[0]), φ(species[1]): icet's cluster function 0 in its own species enumeration."""
    species_map = space.species_maps[0]  # atomic number -> icet's internal species index
    return [space.evaluate_cluster_function(2, 0, species_map[atomic_numbers[s]]) for s in species]


def from_options(options: dict, lattice, species: tuple[str, str]) -> ClusterExpansionBackend:
    """The backend of ``system.energy: {name: cluster_expansion, model: …, device: …}`` on the
    cells of ``lattice`` (an FCCLattice); ``model: cuau_paper`` is the shipped Cu–Au CE."""
    options = dict(options)
    model = options.pop("model", None)
    if model is None:
        raise ValueError("the cluster_expansion backend needs `model`: a .ce/.json file or `cuau_paper`")
    path = PAPER_CUAU_CE if model == "cuau_paper" else Path(model)
    return ClusterExpansionBackend(path, lattice.reference_atoms(species[0]), species, **options)
