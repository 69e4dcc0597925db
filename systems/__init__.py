"""Physics of the MetaDNS project: lattices, energy models, CVs, exact results, reference MCMC.

Nothing here imports from ``pipeline``; see ``systems.base.LatticeSystem`` for the interface.
"""

import importlib

_EXPORTS = {"CVSpec": ".base", "LatticeSystem": ".base", "IsingModel": ".ising", "SquareLattice": ".lattice",
            "PottsModel": ".potts", "SYSTEMS": ".registry", "make_system": ".registry"}


def __getattr__(name: str):
    """Lazy exports: ``import systems.parameters`` (configuration checks) must not import torch."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'systems' has no attribute {name!r}")

__all__ = ["CVSpec", "LatticeSystem", "SquareLattice", "IsingModel", "PottsModel", "SYSTEMS", "make_system"]
