"""Physics of the MetaDNS project: lattices, energy models, CVs, exact results, reference MCMC.

Nothing here imports from ``pipeline``; see ``systems.base.LatticeSystem`` for the interface.
"""

from .base import CVSpec, LatticeSystem
from .ising import IsingModel
from .lattice import SquareLattice
from .potts import PottsModel
from .registry import SYSTEMS, make_system

__all__ = ["CVSpec", "LatticeSystem", "SquareLattice", "IsingModel", "PottsModel", "SYSTEMS", "make_system"]
