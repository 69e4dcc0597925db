"""Systems and energy backends by name, with their declared parameters.

``make_system("ising", L=16)`` or ``make_system(**system.to_config())`` builds a system;
the configuration's ``system.*`` section is checked against :data:`SYSTEMS` (and
``system.energy.*`` against :data:`ENERGY_BACKENDS`) without importing torch: the entries
name their factories as ``"module:attribute"``, imported on first use.

Adding a system is one new module under ``systems/`` plus one :class:`Entry` here (see
docs/architecture.md).  Traits other code asks about:

* ``boltzmann_constant``: k_B in the system's energy unit per temperature unit (1 for the
  lattice models, whose temperatures are in J/k_B; eV/K for alloys, temperatures in K);
* ``temperature_example``: shown when neither ``beta`` nor ``temperature`` is given;
* ``cluster_moves``: Swendsen–Wang applies (method ``sw`` requires it);
* ``chemical_potential``: semi-grand-canonical, so ``sampling.delta_mu_grid`` applies and
  campaigns at several Δμ make a phase diagram;
* ``structures``: configurations are atomic structures (``metadns energy``, exports).

This module imports nothing heavy.
"""

from __future__ import annotations

import inspect

from .parameters import REQUIRED, Entry, Parameter, Registry
from .units import BOLTZMANN_EV_PER_K

__all__ = ["SYSTEMS", "ENERGY_BACKENDS", "make_system"]

_DEVICE = Parameter("device", "str", "cpu", pattern=r"^(cpu|cuda(:\d+)?)$", example="`device: cpu` (or cuda)",
                    doc="a torch device: cpu, cuda or cuda:<index>")
_VEGARD = Parameter("vegard_lattice_constants", "float_pair", None, gt=0, nullable=True,
                    example="`vegard_lattice_constants: [3.5898, 4.0562]` (Å)",
                    doc="two lattice constants in Å (pure species[0], pure species[1]) for Vegard's law, or null")

ENERGY_BACKENDS = Registry("energy backend", (
    Entry("cluster_expansion", "systems.alloys.cluster_expansion:from_options",
          "icet cluster expansion, evaluated as a vectorised torch correlation-matrix product",
          parameters=(
              Parameter("model", "str", REQUIRED, example="`model: cuau_paper` (shipped) or an icet .ce / project "
                                                          ".json file", doc="the cluster-expansion model"),
              _DEVICE,
          )),
    Entry("mace", "systems.alloys.mace_backend:from_options", "MACE machine-learned force field (mace-torch)",
          parameters=(
              Parameter("model", "str", REQUIRED, example="`model: cuau_emt` (shipped) or a MACE model file",
                        doc="the MACE model"),
              _DEVICE,
              Parameter("dtype", "choice", "float64", choices=("float64", "float32"), example="`dtype: float64`",
                        doc="floating-point type of the model"),
              Parameter("batch_size", "int", None, ge=1, nullable=True,
                        example="`batch_size: null` (automatic) or `batch_size: 64`", doc="structures per model call"),
              _VEGARD,
          )),
    Entry("ase", "systems.alloys.ase_backend:from_options", "any ASE calculator, one structure at a time",
          parameters=(
              Parameter("calculator", "str", "ase.calculators.emt:EMT", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
                        example="`calculator: ase.calculators.emt:EMT` (the default)",
                        doc="'package.module:ClassName' of the calculator"),
              Parameter("parameters", "mapping", None, nullable=True, example="`parameters: {}`",
                        doc="the calculator's keyword arguments"),
              _VEGARD,
          )),
))
"""Energy backends of the alloys (``system.energy.name``).  Their options are the backend
constructors' keywords (``model`` is ``model_path``); options left out of a configuration
keep the constructor's default and are not written into it."""

_L = Parameter("L", "int", REQUIRED, ge=2, example="`L: 16`", doc="linear lattice size (L × L sites, periodic)")
_J = Parameter("J", "float", 1.0, example="`J: 1.0`", doc="nearest-neighbour coupling (J)")
_FIELD = Parameter("field", "float", 0.0, example="`field: 0.0`", doc="external field h (J)")
_LATTICE_MODEL = {"boltzmann_constant": 1.0, "temperature_example": "`beta: [0.28, 0.6]`", "cluster_moves": True}

SYSTEMS = Registry("system", (
    Entry("ising", "systems.ising:IsingModel", "Ising model on the periodic square lattice (energies in J)",
          parameters=(_L, _J, _FIELD), traits=_LATTICE_MODEL),
    Entry("potts", "systems.potts:PottsModel", "q-state Potts model on the periodic square lattice (energies in J)",
          parameters=(_L, _J, Parameter("q", "int", 3, ge=2, example="`q: 3`", doc="number of states")),
          traits=_LATTICE_MODEL),
    Entry("triangular_ising", "systems.triangular_ising:TriangularIsingModel",
          "ferromagnetic Ising model on the periodic triangular lattice (energies in J; β_c J = ln 3 / 4)",
          parameters=(Parameter("L", "int", REQUIRED, ge=3, example="`L: 12`",
                                doc="linear lattice size (L × L sites, periodic; L ≥ 3: six distinct neighbours)"),
                      _J, _FIELD),
          traits={**_LATTICE_MODEL, "temperature_example": "`beta: [0.2, 0.2747, 0.4]`"}),
    Entry("alloy", "systems.alloys.alloy:BinaryAlloy",
          "binary alloy on an FCC supercell, semi-grand-canonical (energies in eV, temperatures in K)",
          parameters=(
              Parameter("size", "int_triple", [4, 4, 4], ge=1, example="`size: [4, 4, 4]`",
                        doc="cell repetitions along the three lattice vectors"),
              Parameter("cell", "choice", "primitive", choices=("primitive", "conventional"),
                        doc="the repeated FCC cell (1 or 4 atoms)"),
              Parameter("lattice_constant", "float", 3.8, gt=0, example="`lattice_constant: 3.8` (Å)",
                        doc="cubic lattice constant (Å)"),
              Parameter("species", "str_pair", ["Cu", "Au"], example="`species: [Cu, Au]`",
                        doc="two different chemical symbols, occupation 0 then 1"),
              Parameter("energy", "registry", {"name": "cluster_expansion", "model": "cuau_paper"},
                        registry=ENERGY_BACKENDS,
                        example="`energy: {name: cluster_expansion, model: cuau_paper}` or `energy: {name: ase}` (EMT)",
                        doc="the energy backend and its options"),
              Parameter("delta_mu", "float", 0.0, example="`delta_mu: 0.0` (eV)",
                        doc="chemical-potential difference Δμ = μ(species[1]) − μ(species[0]) (eV)"),
              Parameter("cv", "choice", "composition", choices=("composition", "composition_order"),
                        doc="collective variable: composition x, or (x, long-range order η)"),
          ),
          traits={"boltzmann_constant": BOLTZMANN_EV_PER_K, "temperature_unit": "K",
                  "temperature_example": "`temperature: [500, 680, 1200]` (kelvin)",
                  "chemical_potential": True, "structures": True}),
))
"""Registered systems (``system.name``)."""


def make_system(name: str, **params):
    """Build the system registered under ``name`` with keyword parameters ``params``.

    Raises ValueError for an unknown name (listing the valid ones) or for parameters the
    system does not accept / requires (listing its parameters).
    """
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; valid names: {sorted(SYSTEMS)}")
    cls = SYSTEMS[name].load()
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"system {name!r} does not accept parameter(s) {unknown}; valid parameters: {accepted}")
    missing = [
        p.name for p in signature.parameters.values()
        if p.name != "self" and p.default is inspect.Parameter.empty and p.name not in params
    ]
    if missing:
        raise ValueError(f"system {name!r} needs parameter(s) {missing}; valid parameters: {accepted}")
    return cls(**params)
