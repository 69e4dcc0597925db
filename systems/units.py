"""Physical constants shared by the systems and the analysis code.  Imports nothing.

Lattice models are in reduced units (energies in J, k_B = 1); alloys use eV and kelvin with
:data:`BOLTZMANN_EV_PER_K`.
"""

from __future__ import annotations

__all__ = ["BOLTZMANN_EV_PER_K"]

BOLTZMANN_EV_PER_K = 8.617333262e-5
"""k_B in eV/K (CODATA 2018)."""
