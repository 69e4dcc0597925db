"""Systems by name: ``make_system("ising", L=16)`` or ``make_system(**system.to_config())``."""

from __future__ import annotations

import inspect

from .alloys.alloy import BinaryAlloy
from .base import LatticeSystem
from .ising import IsingModel
from .potts import PottsModel

__all__ = ["SYSTEMS", "make_system"]

SYSTEMS: dict[str, type[LatticeSystem]] = {
    IsingModel.name: IsingModel,
    PottsModel.name: PottsModel,
    BinaryAlloy.name: BinaryAlloy,
}


def make_system(name: str, **params) -> LatticeSystem:
    """Build the system registered under ``name`` with keyword parameters ``params``.

    Raises ValueError for an unknown name (listing the valid ones) or for parameters the
    system does not accept / requires (listing its parameters).
    """
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; valid names: {sorted(SYSTEMS)}")
    cls = SYSTEMS[name]
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
